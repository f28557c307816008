/*
** native/objmem.c: the object memory's per-word and per-object work.
**
** image/ owns the policy (handles, transactions, the collector's phases,
** blobs); this file owns the bytes: the tagged-word and header layout, the
** allocator, encoding Python values into objects and decoding them back, the
** chunked vector, the hash table, marking, sweeping and the heap verifier.
** A Heap reads and writes through a PageReader, so it always sees the store's
** current state (and nothing at all once the store is closed or failed).
**
** WORDS.  A value is a little-endian 64-bit word; its low three bits are a tag.
**
**   low bits | kind            | payload
**   ---------+-----------------+-------------------------------------------
**      000   | object pointer  | the object's logical address (8-aligned);
**            |                 | word 0 is EMPTY, an unused slot, never a value
**      001   | fixnum          | signed 61-bit integer in bits 3..63
**      010   | character       | Unicode code point in bits 3..34
**      011   | short string    | length 0..7 in bits 3..5, UTF-8 in bits 8..63
**      100   | immediate float | an IEEE double whose exponent fits, rotated
**            |                 | (see float_word); other doubles are boxed
**      101   | short bytes     | as short string, for byte strings
**      110   | special         | index in bits 3..: '(), #t, #f, None
**            |                 | (unspecified), eof, ABSENT (internal)
**      111   | (invalid)       |
**
** Short strings make the keys of a typical record ("from", "subject") cost no
** object at all.
**
** OBJECTS.  An object is a header word, an overflow size word when the size
** does not fit the header, and its payload, padded to whole words; every
** object is at least two words, so that any object can become a free chunk
** with a link.
**
**   header bits | field
**   ------------+---------------------------------------------------------
**      0..3     | format: 0 pointers (tagged words, traced), 1 bytes, 2 words
**      4..7     | flags (none yet)
**      8..31    | size: slots for pointers and words, bytes for bytes;
**               | SIZE_OVERFLOW means the size is the next word
**     32..43    | check: 12 bits derived from the address, so a header that
**               | is not where it was made, or a pointer into the middle of
**               | an object, is caught (objects never move: it is also the
**               | identity hash)
**     44..63    | class index into the class table
**
** PAGE 0 holds the image's meta words (M_*): the heap bounds, the roots,
** accounting and the free-list bins.  The heap is [M_BASE, M_TOP).  Page 0
** is not a store page: it lives in the Heap and travels in every commit
** record ("the meta page", below), so an allocation dirties no page of its
** own.
**
** INVARIANTS (verified by heap_check, which the tests run after every
** collection):
**   1. The heap parses: from M_BASE, headers and sizes lead exactly to M_TOP.
**   2. Every pointer slot of every object is EMPTY, an immediate, or the
**      address of the header of an object that is not a free chunk.
**   3. Every free chunk is on exactly one bin list, in the bin of its size,
**      and every bin entry is a free chunk.
**   4. M_OBJECTS, M_OBJ_WORDS, M_FREE_WORDS and M_FREE_CHUNKS count exactly
**      what the heap holds; object words + free words = heap words.
**   5. A vector's length is the sum of its leaves' counts, and each interior
**      entry's size is the total of that child's subtree.  A table's count
**      is its live entries, and every live entry is found by probing.
**
** Every address and size read from the image is checked before use; what
** fails raises image.CorruptObject naming the address (never a crash).
** Errors from the page store (damaged page, closed, read-only) come from the
** reader's Python fallback, so they are the store's own exceptions.
*/
#include "fastpath.h"
#include <structmember.h>
#include <string.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "imago's object memory stores little-endian words and reads them natively"
#endif

/* -- words ------------------------------------------------------------------ */

#define TAG_MASK 7u
#define TAG_PTR 0u
#define TAG_FIX 1u
#define TAG_CHAR 2u
#define TAG_SSTR 3u
#define TAG_FLOAT 4u
#define TAG_SBYTES 5u
#define TAG_SPECIAL 6u

#define SPECIAL(k) (((uint64_t)(k) << 3) | TAG_SPECIAL)
#define W_EMPTY 0u                /* an unused slot: not a value */
#define W_NIL SPECIAL(0)          /* '() */
#define W_TRUE SPECIAL(1)
#define W_FALSE SPECIAL(2)
#define W_NONE SPECIAL(3)         /* Python None; Scheme's unspecified value */
#define W_EOF SPECIAL(4)
#define W_ABSENT SPECIAL(5)       /* a deleted table entry; never stored by users */
#define N_SPECIALS 6

#define FIX_MIN (-((int64_t)1 << 60))
#define FIX_MAX (((int64_t)1 << 60) - 1)
#define FX(n) ((((uint64_t)(int64_t)(n)) << 3) | TAG_FIX)
#define IS_FIX(w) (((w) & TAG_MASK) == TAG_FIX)
#define UNFX(w) ((int64_t)(w) >> 3)
#define IS_PTR(w) ((w) != W_EMPTY && ((w) & TAG_MASK) == TAG_PTR)
#define SHORT_MAX 7

/* -- headers and classes --------------------------------------------------- */

#define FMT_POINTERS 0u
#define FMT_BYTES 1u
#define FMT_WORDS 2u
#define SIZE_OVERFLOW 0xFFFFFFu
#define CLASS_MAX ((1u << 20) - 1)

enum {
    C_FREE = 0, C_FLOAT, C_BIGINT, C_STRING, C_BYTES, C_TUPLE, C_VECTOR, C_VLEAF, C_VNODE,
    C_TABLE, C_TSTORE, C_BLOB, C_PAIR, C_SYMBOL, C_MSTRING, C_RECORD, C_CLOSURE, C_ACTOR,
    C_CLASS,
    /* Classes below this are the system's; the Scheme layer adds record types
     * and its own classes above it.  Reserved room, so formats never shift. */
    N_SYSTEM_CLASSES = 32
};

typedef struct { const char *name; int format; int fixed; } class_def;

/* format, and the exact slot count for fixed-shape classes (-1: any). */
static const class_def system_classes[N_SYSTEM_CLASSES] = {
    [C_FREE] = {"free", FMT_WORDS, -1},       [C_FLOAT] = {"float", FMT_WORDS, 1},
    [C_BIGINT] = {"bigint", FMT_BYTES, -1},   [C_STRING] = {"string", FMT_BYTES, -1},
    [C_BYTES] = {"bytes", FMT_BYTES, -1},     [C_TUPLE] = {"tuple", FMT_POINTERS, -1},
    [C_VECTOR] = {"vector", FMT_POINTERS, 2}, [C_VLEAF] = {"vector-leaf", FMT_POINTERS, -1},
    [C_VNODE] = {"vector-node", FMT_POINTERS, -1}, [C_TABLE] = {"table", FMT_POINTERS, 3},
    [C_TSTORE] = {"table-store", FMT_POINTERS, -1}, [C_BLOB] = {"blob", FMT_POINTERS, 3},
    [C_PAIR] = {"pair", FMT_POINTERS, 2},     [C_SYMBOL] = {"symbol", FMT_POINTERS, -1},
    [C_MSTRING] = {"mutable-string", FMT_POINTERS, -1},
    [C_RECORD] = {"record", FMT_POINTERS, -1}, [C_CLOSURE] = {"closure", FMT_POINTERS, -1},
    [C_ACTOR] = {"actor", FMT_POINTERS, -1},  [C_CLASS] = {"class", FMT_POINTERS, -1},
};

/* -- page 0: the meta words ------------------------------------------------ */

enum {
    M_MAGIC = 0, M_VERSION, M_BASE, M_TOP, M_ROOT, M_CLASSES, M_SYMBOLS, M_BLOBS, M_SEED,
    M_NCLASSES, M_OBJECTS, M_OBJ_WORDS, M_FREE_WORDS, M_FREE_CHUNKS, M_GCS, M_ACTORS,
    M_BLOB_KEY = 16,          /* four words: the per-image key of blob hashes */
    M_SYSTEM = 20,            /* a table of the layers above (Scheme's sources, journal); 0: none yet */
    M_BINS = 32,              /* N_BINS words: heads of the free lists */
    N_BINS = 64,
    META_WORDS = 128          /* 1 KiB: fits the smallest page (1 KiB) */
};
#define OM_MAGIC 0x314d4f6f67616d69ull   /* "imagoOM1" */
#define OM_VERSION 1u
/* Bins 0..N_EXACT-1 hold chunks of exactly 2..N_EXACT+1 words; the others
 * hold chunks of [2^k, 2^(k+1)) words for k from EXACT_LOG up. */
#define N_EXACT 32
#define EXACT_LOG 5
/* The pager addresses 2^40 pages; the heap ends where they do (h->max_heap,
 * 2^50 bytes at 1 KiB pages).  MAX_HEAP bounds every address and length
 * before it is added to another, so no sum can wrap. */
#define MAX_PAGES_LOG 40
#define MAX_HEAP ((uint64_t)1 << 56)

/* -- vectors and tables ------------------------------------------------------ */

#define MAX_HEIGHT 12          /* 255^12 items: far past any heap */
#define LEAF_SMALL 4           /* a new vector's first leaf; doubles up to leaf_max */
#define TABLE_LINEAR 8         /* stores this small have no index: a scan is cheaper */

/* Vector header slots, leaf and node layout. */
#define V_HEIGHT 0
#define V_ROOT 1
#define T_COUNT 0
#define T_USED 1
#define T_STORE 2
#define B_HASH 0
#define B_DATA 1
#define B_LENGTH 2

static uint64_t mix64(uint64_t x);

/* A bitmap over heap words, sparse: chunks of CHUNK_BYTES of bits (each
 * covering 2 MiB of heap) are made as bits are set, and found through a
 * small open-addressing table.  So a mark of a heap costs memory in
 * proportion to where objects are, and a heap top or an object forged far
 * past the real heap costs one chunk, not a bitmap of the whole range. */
#define CHUNK_BYTES 32768u
#define CHUNK_WORDS ((uint64_t)CHUNK_BYTES * 8)

typedef struct {
    uint64_t *keys;      /* chunk index + 1; 0: empty slot */
    uint8_t **chunks;
    size_t cap, count;
    uint64_t base;
} bitmap;

static void bm_init(bitmap *b, uint64_t base) {
    b->keys = NULL;
    b->chunks = NULL;
    b->cap = b->count = 0;
    b->base = base;
}

static void bm_free(bitmap *b) {
    for (size_t i = 0; i < b->cap; i++) PyMem_Free(b->chunks[i]);
    PyMem_Free(b->keys);
    PyMem_Free(b->chunks);
    bm_init(b, b->base);
}

static size_t bm_slot(const bitmap *b, uint64_t key) {
    size_t i = (size_t)(mix64(key) & (b->cap - 1));
    while (b->keys[i] && b->keys[i] != key) i = (i + 1) & (b->cap - 1);
    return i;
}

static uint8_t *bm_chunk(const bitmap *b, uint64_t index) {
    if (!b->cap) return NULL;
    size_t i = bm_slot(b, index + 1);
    return b->keys[i] ? b->chunks[i] : NULL;
}

static int bm_grow(bitmap *b) {
    bitmap bigger = {NULL, NULL, b->cap ? b->cap * 2 : 64, 0, b->base};
    bigger.keys = PyMem_Calloc(bigger.cap, sizeof *bigger.keys);
    bigger.chunks = PyMem_Calloc(bigger.cap, sizeof *bigger.chunks);
    if (!bigger.keys || !bigger.chunks) {
        PyMem_Free(bigger.keys);
        PyMem_Free(bigger.chunks);
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < b->cap; i++) {
        if (!b->keys[i]) continue;
        size_t j = bm_slot(&bigger, b->keys[i]);
        bigger.keys[j] = b->keys[i];
        bigger.chunks[j] = b->chunks[i];
        bigger.count++;
    }
    PyMem_Free(b->keys);
    PyMem_Free(b->chunks);
    *b = bigger;
    return 0;
}

static int bm_get(const bitmap *b, uint64_t addr) {
    uint64_t w = (addr - b->base) >> 3;
    const uint8_t *c = bm_chunk(b, w / CHUNK_WORDS);
    w %= CHUNK_WORDS;
    return c ? (c[w >> 3] >> (w & 7)) & 1 : 0;
}

static int bm_set(bitmap *b, uint64_t addr) {
    uint64_t w = (addr - b->base) >> 3, index = w / CHUNK_WORDS;
    uint8_t *c = bm_chunk(b, index);
    if (!c) {
        if ((b->count + 1) * 2 > b->cap && bm_grow(b)) return -1;
        if (!(c = PyMem_Calloc(CHUNK_BYTES, 1))) { PyErr_NoMemory(); return -1; }
        size_t i = bm_slot(b, index + 1);
        b->keys[i] = index + 1;
        b->chunks[i] = c;
        b->count++;
    }
    w %= CHUNK_WORDS;
    c[w >> 3] |= (uint8_t)(1u << (w & 7));
    return 0;
}

/* Is any bit set for the words in [from, to)? */
static int bm_any(const bitmap *b, uint64_t from, uint64_t to) {
    uint64_t lo = (from - b->base) >> 3, hi = (to - b->base) >> 3;
    while (lo < hi) {
        uint64_t index = lo / CHUNK_WORDS, end = (index + 1) * CHUNK_WORDS;
        const uint8_t *c = bm_chunk(b, index);
        if (end > hi) end = hi;
        for (uint64_t w = lo; c && w < end;) {
            uint64_t k = w % CHUNK_WORDS;
            if (!(k & 7) && w + 8 <= end) {
                if (c[k >> 3]) return 1;
                w += 8;
            } else {
                if ((c[k >> 3] >> (k & 7)) & 1) return 1;
                w++;
            }
        }
        lo = end;
    }
    return 0;
}

/* Page pointers remembered between reads.  A pointer the core gives out is
 * valid until that page is written (copy-on-write moves it) or the store
 * commits, rolls back, frees a page or refreshes (which frees dirty copies
 * or swaps the table).  Our own writes drop the pages they touch; everything
 * else the store does bumps the reader's generation, and a changed
 * generation empties the cache before the next lookup.  After calling out
 * to Python code the cache is emptied too (belt and braces).  The heap
 * bounds of page 0 are cached on the same terms. */
#define PAGE_CACHE 16
/* Nesting deeper than this is a runaway recursion, not a program's design. */
#define MAX_SAVEPOINTS 256

typedef struct {
    PyObject_HEAD
    PageReader *r;
    PyObject *handle_classes; /* class index -> handle class; others get default_class */
    PyObject *default_class;
    PyObject *img_ref;        /* weakref to the Image, which handles hold as _img */
    PyObject *txn_made;       /* list: weakrefs of handles made in this transaction */
    int in_txn;
    Py_ssize_t handles_after_sweep;
    Py_ssize_t off_img, off_heap, off_addr;   /* where a handle keeps its three slots */
    PyObject *make_special;   /* make_special(kind, payload) -> value, for chars, '(), eof */
    PyObject *handle_type;    /* handles are instances; they carry _heap and _addr */
    uint64_t page_size;
    int page_shift;
    uint64_t max_heap;        /* the pager's last address: 2^40 pages */
    uint64_t seed;            /* keyed hash of table keys; fixed at format */
    uint64_t leaf_max, node_max;
    uint64_t txn_top;         /* M_TOP when the transaction began */
    uint64_t *reused;         /* chunks the free lists gave out in this transaction */
    size_t n_reused, cap_reused;
    bitmap marks;             /* the collector's side bitmap: one bit per heap word */
    int marking;              /* marks holds a mark of [marks_base, marks_top) */
    uint64_t marks_base, marks_top;
    uint64_t *stack;          /* the mark stack */
    size_t n_stack, cap_stack;
    uint64_t *scratch;        /* a reusable buffer for node and store images */
    size_t cap_scratch;
    PyObject *handles;        /* addr -> weakref of its one handle; dead ones pruned */
    /* Savepoints: while one is open, every write first logs the bytes it
     * replaces, as [old bytes, padded][addr][len]; rolling back to a
     * savepoint writes them back newest first. */
    uint8_t *undo;
    size_t undo_len, undo_cap;
    int n_sp;
    struct { size_t log; size_t reused; uint64_t top; } sp[MAX_SAVEPOINTS];
    struct { uint64_t page; const uint8_t *bytes; } pages[PAGE_CACHE];
    uint64_t generation;      /* the reader's generation the cache belongs to */
    int bounds_ok;            /* base, top and nclasses below are page 0's */
    uint64_t base, top, nclasses;
    PyObject *encode_hook;    /* describes the layer above's values (see "the encode hook") */
    PyObject *made;           /* while recording: [value, address, ...] (see "made objects") */
    int recording;            /* record_made() calls not yet matched by made() */
    /* Page 0, the meta words, lives here and not in the store: it travels in
     * each commit's record (meta_block / load_meta), so an allocation does
     * not dirty a page of its own (see "the meta page" below). */
    uint8_t *meta_page;
} Heap;

static PyObject *CorruptObject;   /* image.CorruptObject, set by set_errors() */
static PyObject *StaleHandle;

static uint64_t mix64(uint64_t x) {   /* splitmix64's finaliser */
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27; x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static inline uint64_t check_bits(uint64_t addr) { return mix64(addr) >> 52; }

static inline uint64_t make_header(uint64_t cls, unsigned fmt, uint64_t size, uint64_t addr) {
    uint64_t sz = size >= SIZE_OVERFLOW ? SIZE_OVERFLOW : size;
    return (cls << 44) | (check_bits(addr) << 32) | (sz << 8) | fmt;
}

static uint64_t payload_words(unsigned fmt, uint64_t size) {
    return fmt == FMT_BYTES ? (size + 7) / 8 : size;
}

/* Whole words an object occupies. */
static uint64_t object_words(unsigned fmt, uint64_t size) {
    uint64_t w = 1 + (size >= SIZE_OVERFLOW) + payload_words(fmt, size);
    return w < 2 ? 2 : w;
}

/* -- errors ----------------------------------------------------------------- */

/* Raises CorruptObject("object at 0x...: detail", addr).  The detail is
 * formatted by vsnprintf (PyUnicode_FromFormat has no %llx). */
static int corrupt(uint64_t addr, const char *fmt, ...) {
    char detail[320], msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    snprintf(msg, sizeof msg, "object at 0x%llx: %s", (unsigned long long)addr, detail);
    PyObject *exc = PyObject_CallFunction(CorruptObject ? CorruptObject : PyExc_ValueError,
                                          "sK", msg, (unsigned long long)addr);
    if (!exc) return -1;
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return -1;
}

static void pc_clear(Heap *h);

/* The core refused an access: let the store say why (closed, failed,
 * read-only, a damaged page), in its own exception. */
static int store_error(Heap *h, const char *kind, uint64_t addr, uint64_t len) {
    PyObject *args[3];
    Py_ssize_t n;
    if (strcmp(kind, "write") == 0) {
        args[0] = PyLong_FromUnsignedLongLong(addr / h->page_size);
        args[1] = PyBytes_FromStringAndSize(NULL, 0);
        args[2] = PyLong_FromUnsignedLongLong(0);
        n = 3;
    } else {
        args[0] = PyLong_FromUnsignedLongLong(addr);
        args[1] = PyLong_FromUnsignedLongLong(len);
        args[2] = NULL;
        n = 2;
    }
    PyObject *res = NULL;
    if (args[0] && args[1] && (n == 2 || args[2])) {
        /* A write that failed for want of memory is the only case a retry
         * through the fallback can pass; its result is then an empty write. */
        res = reader_fallback(h->r, kind, args, n);
        pc_clear(h);
    }
    for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(args[i]);
    if (!res) return -1;
    Py_DECREF(res);
    if (strcmp(kind, "write") == 0) {
        PyErr_NoMemory();
        return -1;
    }
    return corrupt(addr, "the page store refused %llu bytes here", (unsigned long long)len);
}

/* -- raw access --------------------------------------------------------------- */

static void pc_clear(Heap *h) {
    for (int i = 0; i < PAGE_CACHE; i++) h->pages[i].page = UINT64_MAX;
    h->bounds_ok = 0;
}

static void pc_drop(Heap *h, uint64_t addr, uint64_t len) {
    if (addr < META_WORDS * 8) h->bounds_ok = 0;
    uint64_t first = addr >> h->page_shift, last = (addr + (len ? len - 1 : 0)) >> h->page_shift;
    if (last - first >= PAGE_CACHE) { pc_clear(h); return; }
    for (uint64_t p = first; p <= last; p++)
        if (h->pages[p & (PAGE_CACHE - 1)].page == p) h->pages[p & (PAGE_CACHE - 1)].page = UINT64_MAX;
}

/* The bytes of page p (NULL when the core refuses: unbound, damaged, range). */
static const uint8_t *page_bytes(Heap *h, uint64_t p) {
    if (p == 0) return h->meta_page;
    if (h->generation != h->r->generation) {
        pc_clear(h);
        h->generation = h->r->generation;
    }
    unsigned slot = (unsigned)(p & (PAGE_CACHE - 1));
    if (h->pages[slot].page == p) return h->pages[slot].bytes;
    PageReader *r = h->r;
    if (!r->tree) return NULL;
    const uint8_t *bytes = core_page_read(r->tree, r->dirty, p);
    if (bytes) {
        h->pages[slot].page = p;
        h->pages[slot].bytes = bytes;
    }
    return bytes;
}

static int rd(Heap *h, uint64_t addr, void *out, uint64_t len) {
    uint64_t ps = h->page_size;
    uint8_t *dst = out;
    if (addr > MAX_HEAP || len > MAX_HEAP) return store_error(h, "read_bytes", addr, len);
    while (len) {
        uint64_t off = addr & (ps - 1), n = ps - off < len ? ps - off : len;
        const uint8_t *p = page_bytes(h, addr >> h->page_shift);
        if (!p) return store_error(h, "read_bytes", addr, len);
        memcpy(dst, p + off, n);
        dst += n; addr += n; len -= n;
    }
    return 0;
}

static int rd64(Heap *h, uint64_t addr, uint64_t *out) {
    uint64_t off = addr & (h->page_size - 1);
    if (off + 8 <= h->page_size && addr <= MAX_HEAP) {
        const uint8_t *p = page_bytes(h, addr >> h->page_shift);
        if (!p) return store_error(h, "read_bytes", addr, 8);
        memcpy(out, p + off, 8);
        return 0;
    }
    return rd(h, addr, out, 8);
}

static int log_old(Heap *h, uint64_t addr, uint64_t len) {
    uint64_t padded = (len + 7) & ~(uint64_t)7;
    if (h->undo_len + padded + 16 > h->undo_cap) {
        size_t cap = h->undo_cap ? h->undo_cap : 4096;
        while (h->undo_len + padded + 16 > cap) cap *= 2;
        uint8_t *u = PyMem_Realloc(h->undo, cap);
        if (!u) { PyErr_NoMemory(); return -1; }
        h->undo = u;
        h->undo_cap = cap;
    }
    uint8_t *at = h->undo + h->undo_len;
    if (rd(h, addr, at, len)) return -1;
    memcpy(at + padded, &addr, 8);
    memcpy(at + padded + 8, &len, 8);
    h->undo_len += padded + 16;
    return 0;
}

/* A write into page 0 changes the in-memory meta page (savepoints log it
 * like any write); no object lies there, so a write never spans into it. */
static int meta_write(Heap *h, uint64_t addr, const void *src, uint64_t len) {
    if (addr + len > META_WORDS * 8) return corrupt(addr, "a write of %llu bytes runs past the meta words",
                                                    (unsigned long long)len);
    if (h->n_sp && log_old(h, addr, len)) return -1;
    h->bounds_ok = 0;
    memcpy(h->meta_page + addr, src, len);
    return 0;
}

static int wr(Heap *h, uint64_t addr, const void *src, uint64_t len) {
    PageReader *r = h->r;
    if (!r->tree || !r->dirty) return store_error(h, "write", addr, len);
    if (addr < h->page_size) return meta_write(h, addr, src, len);
    if (h->n_sp && log_old(h, addr, len)) return -1;
    pc_drop(h, addr, len);
    if (core_write(r->tree, r->dirty, addr, src, len)) return store_error(h, "read_bytes", addr, len);
    return 0;
}

static int wr64(Heap *h, uint64_t addr, uint64_t value) {
    PageReader *r = h->r;
    if (!r->tree || !r->dirty) return store_error(h, "write", addr, 8);
    if (addr < h->page_size) return meta_write(h, addr, &value, 8);
    if (h->n_sp && log_old(h, addr, 8)) return -1;
    pc_drop(h, addr, 8);
    if (core_write_u64(r->tree, r->dirty, addr, value))
        return store_error(h, "read_bytes", addr, 8);
    return 0;
}

static int meta(Heap *h, int i, uint64_t *out) { return rd64(h, (uint64_t)i * 8, out); }
static int set_meta(Heap *h, int i, uint64_t v) { return wr64(h, (uint64_t)i * 8, v); }

static int add_meta(Heap *h, int i, int64_t delta) {
    uint64_t v;
    if (meta(h, i, &v)) return -1;
    return set_meta(h, i, v + (uint64_t)delta);
}

/* n words at addr: straight from the page when they lie in one page, else
 * copied into the heap's scratch buffer (valid until the next view). */
static const uint64_t *view(Heap *h, uint64_t addr, uint64_t n) {
    uint64_t ps = h->page_size, off = addr & (ps - 1);
    if (n && off + n * 8 <= ps && addr <= MAX_HEAP) {
        const uint8_t *p = page_bytes(h, addr >> h->page_shift);
        if (p) return (const uint64_t *)(p + off);
    }
    if (n > h->cap_scratch) {
        uint64_t *s = PyMem_Realloc(h->scratch, n * 8);
        if (!s) { PyErr_NoMemory(); return NULL; }
        h->scratch = s;
        h->cap_scratch = n;
    }
    if (rd(h, addr, h->scratch, n * 8)) return NULL;
    return h->scratch;
}

/* -- object headers ------------------------------------------------------------ */

typedef struct {
    uint64_t addr;
    uint64_t cls;
    unsigned fmt;
    uint64_t size;      /* slots, or bytes for FMT_BYTES */
    uint64_t body;      /* address of the first payload byte */
    uint64_t words;     /* whole words the object occupies */
} objinfo;

static uint64_t class_format(uint64_t cls, int *fixed) {
    if (cls < N_SYSTEM_CLASSES && system_classes[cls].name) {
        *fixed = system_classes[cls].fixed;
        return (uint64_t)system_classes[cls].format;
    }
    *fixed = -1;
    return 99;   /* user classes: any format */
}

/* Parses and checks the header at addr against heap bounds [base, top). */
static int parse_header(Heap *h, uint64_t addr, uint64_t base, uint64_t top, uint64_t nclasses,
                        objinfo *o) {
    uint64_t hd;
    if (addr & 7 || addr < base || addr > top || top - addr < 16)
        return corrupt(addr, "not an object address (heap is 0x%llx..0x%llx)",
                       (unsigned long long)base, (unsigned long long)top);
    if (rd64(h, addr, &hd)) return -1;
    o->addr = addr;
    o->cls = hd >> 44;
    o->fmt = hd & 0xF;
    o->size = (hd >> 8) & 0xFFFFFF;
    o->body = addr + 8;
    if (((hd >> 32) & 0xFFF) != check_bits(addr))
        return corrupt(addr, "bad header 0x%016llx (its check bits do not match the address)",
                       (unsigned long long)hd);
    if (o->fmt > FMT_WORDS || (hd & 0xF0))
        return corrupt(addr, "bad header 0x%016llx (format %u)", (unsigned long long)hd, o->fmt);
    if (o->cls >= nclasses)
        return corrupt(addr, "bad header: class %llu, but the class table has %llu",
                       (unsigned long long)o->cls, (unsigned long long)nclasses);
    if (o->size == SIZE_OVERFLOW) {
        if (rd64(h, addr + 8, &o->size)) return -1;
        o->body = addr + 16;
        if (o->size < SIZE_OVERFLOW)
            return corrupt(addr, "bad overflow size %llu", (unsigned long long)o->size);
    }
    if (o->size > top - addr)
        return corrupt(addr, "size %llu runs past the end of the heap",
                       (unsigned long long)o->size);
    o->words = object_words(o->fmt, o->size);
    if (addr + o->words * 8 > top)
        return corrupt(addr, "size %llu runs past the end of the heap",
                       (unsigned long long)o->size);
    int fixed;
    uint64_t want = class_format(o->cls, &fixed);
    if (want != 99 && want != o->fmt)
        return corrupt(addr, "a %s object with format %u", system_classes[o->cls].name, o->fmt);
    if (fixed >= 0 && o->size != (uint64_t)fixed)
        return corrupt(addr, "a %s object with %llu slots", system_classes[o->cls].name,
                       (unsigned long long)o->size);
    return 0;
}

static int heap_bounds(Heap *h, uint64_t *base, uint64_t *top, uint64_t *nclasses) {
    if (h->bounds_ok && h->generation == h->r->generation) {
        *base = h->base;
        *top = h->top;
        *nclasses = h->nclasses;
        return 0;
    }
    if (meta(h, M_BASE, base) || meta(h, M_TOP, top) || meta(h, M_NCLASSES, nclasses)) return -1;
    if (*base < META_WORDS * 8 || *top < *base || *top > h->max_heap || (*base | *top) & 7)
        return corrupt(0, "the image's heap bounds 0x%llx..0x%llx are impossible",
                       (unsigned long long)*base, (unsigned long long)*top);
    if (*nclasses > CLASS_MAX + 1)
        return corrupt(0, "the class count %llu is impossible", (unsigned long long)*nclasses);
    /* The heap's last byte lies in a page the store holds: a top forged past
     * the heap would point into pages that were never written.  (Collection
     * lowers the top over a dead tail, so the last page always holds live
     * bytes.)  The core returns one shared zero page for every absent page;
     * the last page number it can address is never part of a heap. */
    if (*top > *base) {
        PageReader *r = h->r;
        const uint8_t *absent = r->tree ? core_page_read(r->tree, NULL, ((uint64_t)1 << MAX_PAGES_LOG) - 1) : NULL;
        const uint8_t *last = page_bytes(h, (*top - 1) >> h->page_shift);
        if (!last) return store_error(h, "read_bytes", *top - 1, 1);
        if (last == absent)
            return corrupt(0, "the heap's top 0x%llx lies past its last page", (unsigned long long)*top);
    }
    h->base = *base;
    h->top = *top;
    h->nclasses = *nclasses;
    h->bounds_ok = 1;
    return 0;
}

/* The object a live pointer names, checked. */
static int obj(Heap *h, uint64_t addr, objinfo *o) {
    uint64_t base, top, n;
    if (heap_bounds(h, &base, &top, &n)) return -1;
    if (parse_header(h, addr, base, top, n, o)) return -1;
    if (o->cls == C_FREE) return corrupt(addr, "a reference to freed memory");
    return 0;
}

static int obj_of_class(Heap *h, uint64_t addr, uint64_t cls, objinfo *o) {
    if (obj(h, addr, o)) return -1;
    if (o->cls != cls)
        return corrupt(addr, "expected a %s, found class %llu", system_classes[cls].name,
                       (unsigned long long)o->cls);
    return 0;
}

static int slot(Heap *h, const objinfo *o, uint64_t i, uint64_t *out) {
    if (i >= o->size) return corrupt(o->addr, "slot %llu of %llu", (unsigned long long)i,
                                     (unsigned long long)o->size);
    return rd64(h, o->body + 8 * i, out);
}

/* A fixnum slot that structure depends on: anything else is corruption. */
static int fix_slot(Heap *h, const objinfo *o, uint64_t i, int64_t lo, int64_t hi, int64_t *out) {
    uint64_t w;
    if (slot(h, o, i, &w)) return -1;
    if (!IS_FIX(w) || UNFX(w) < lo || UNFX(w) > hi)
        return corrupt(o->addr, "slot %llu should be a count in %lld..%lld, holds 0x%llx",
                       (unsigned long long)i, (long long)lo, (long long)hi, (unsigned long long)w);
    *out = UNFX(w);
    return 0;
}

/* -- the allocator ------------------------------------------------------------ */
/*
** Allocation takes from the free lists that the last sweep built, else bumps
** M_TOP.  Free chunks are headers of class C_FREE whose first payload word
** links the next chunk of the same bin; a chunk is split when it is larger
** than the request by at least a minimal chunk.  Every allocation in a
** transaction is either at or above txn_top or logged in `reused`, which is
** how image/ tells which handles a rollback must invalidate.
*/

static int bin_of(uint64_t words) {
    if (words < 2 + N_EXACT) return (int)(words - 2);
    int k = 63 - __builtin_clzll(words);
    int b = N_EXACT + (k - EXACT_LOG);
    return b < N_BINS ? b : N_BINS - 1;
}

static uint64_t free_link_addr(uint64_t chunk, uint64_t words) {
    return chunk + (words - 1 < SIZE_OVERFLOW ? 8 : 16);   /* after the overflow word, if any */
}

/* Writes one free chunk of exactly `words` words (never SIZE_OVERFLOW + 1,
 * which no header can say: free_run splits that case). */
static int write_free_chunk(Heap *h, uint64_t addr, uint64_t words, uint64_t next) {
    uint64_t hd[3];
    int n;
    if (words - 1 < SIZE_OVERFLOW) {
        hd[0] = make_header(C_FREE, FMT_WORDS, words - 1, addr);
        hd[1] = next;
        n = 2;
    } else {
        hd[0] = make_header(C_FREE, FMT_WORDS, words - 2, addr);
        hd[1] = words - 2;
        hd[2] = next;
        n = 3;
    }
    return wr(h, addr, hd, (uint64_t)n * 8);
}

static int read_bins(Heap *h, uint64_t *bins) { return rd(h, M_BINS * 8, bins, N_BINS * 8); }

static int push_free(Heap *h, uint64_t *bins, uint64_t addr, uint64_t words) {
    int b = bin_of(words);
    if (write_free_chunk(h, addr, words, bins[b])) return -1;
    bins[b] = addr;
    return wr64(h, (uint64_t)(M_BINS + b) * 8, addr);
}

/* Adds [addr, addr + words*8) to the free lists as one or two chunks. */
static int free_run(Heap *h, uint64_t *bins, uint64_t addr, uint64_t words, uint64_t *chunks) {
    if (words == (uint64_t)SIZE_OVERFLOW + 1) {
        if (push_free(h, bins, addr, 2)) return -1;
        addr += 16;
        words -= 2;
        ++*chunks;
    }
    ++*chunks;
    return push_free(h, bins, addr, words);
}

static int log_reuse(Heap *h, uint64_t addr) {
    if (h->n_reused == h->cap_reused) {
        size_t cap = h->cap_reused ? h->cap_reused * 2 : 64;
        uint64_t *p = PyMem_Realloc(h->reused, cap * 8);
        if (!p) { PyErr_NoMemory(); return -1; }
        h->reused = p;
        h->cap_reused = cap;
    }
    h->reused[h->n_reused++] = addr;
    return 0;
}

/* Takes chunk `c` (of `cw` words, linked from `link_at`) for an object of
 * `words` words, returning the rest to the free lists. */
static int take_chunk(Heap *h, uint64_t *bins, uint64_t link_at, uint64_t c, uint64_t cw,
                      uint64_t words) {
    uint64_t next, chunks = 0;
    if (rd64(h, free_link_addr(c, cw), &next)) return -1;
    if (wr64(h, link_at, next)) return -1;
    if (link_at >= M_BINS * 8 && link_at < (M_BINS + N_BINS) * 8) bins[link_at / 8 - M_BINS] = next;
    if (cw > words && free_run(h, bins, c + words * 8, cw - words, &chunks)) return -1;
    if (add_meta(h, M_FREE_WORDS, -(int64_t)words) || add_meta(h, M_FREE_CHUNKS, (int64_t)chunks - 1))
        return -1;
    return log_reuse(h, c);
}

/* A free chunk's size in words, checking that it is one. */
static int free_chunk_words(Heap *h, uint64_t c, uint64_t *words) {
    uint64_t base, top, n;
    objinfo o;
    if (heap_bounds(h, &base, &top, &n) || parse_header(h, c, base, top, n, &o)) return -1;
    if (o.cls != C_FREE) return corrupt(c, "on a free list but not free (class %llu)",
                                        (unsigned long long)o.cls);
    *words = o.words;
    return 0;
}

/* Bounded first fit over one bin: long lists of too-small chunks in a log
 * bin must not make allocation slow, so give up after this many. */
#define FIT_SCAN_LIMIT 32

static int take_free(Heap *h, uint64_t words, uint64_t *out) {
    uint64_t bins[N_BINS], cw;
    if (read_bins(h, bins)) return -1;
    int first = bin_of(words);
    for (int b = first; b < N_BINS; b++) {
        if (b < N_EXACT) {
            uint64_t size = (uint64_t)b + 2;
            if (!bins[b] || (size != words && size < words + 2)) continue;
            if (free_chunk_words(h, bins[b], &cw)) return -1;
            if (cw != size) return corrupt(bins[b], "a free chunk of %llu words on the list of %llu",
                                           (unsigned long long)cw, (unsigned long long)size);
            uint64_t c = bins[b];
            if (take_chunk(h, bins, (uint64_t)(M_BINS + b) * 8, c, cw, words)) return -1;
            *out = c;
            return 1;
        }
        uint64_t link_at = (uint64_t)(M_BINS + b) * 8, c = bins[b];
        for (int scanned = 0; c && scanned < FIT_SCAN_LIMIT; scanned++) {
            if (free_chunk_words(h, c, &cw)) return -1;
            if (bin_of(cw) != b) return corrupt(c, "a free chunk of %llu words on free list %d",
                                                (unsigned long long)cw, b);
            if (cw == words || cw >= words + 2) {
                if (take_chunk(h, bins, link_at, c, cw, words)) return -1;
                *out = c;
                return 1;
            }
            link_at = free_link_addr(c, cw);
            if (rd64(h, link_at, &c)) return -1;
        }
    }
    return 0;
}

/* The meta words an allocation reads and changes, read and written as one
 * block (M_TOP..M_FREE_WORDS are contiguous in page 0). */
#define ACCT_FIRST M_TOP
#define ACCT_WORDS (M_FREE_WORDS - M_TOP + 1)
#define ACCT(m) ((m) - ACCT_FIRST)

/* An object of exactly one page (a full vector leaf or node) gets a page of
 * its own, so that writing one of its slots dirties one page, not two: the
 * bump pointer moves to the next page boundary, and the gap becomes free
 * chunks (a one-word gap, too small for a chunk, takes the page after it). */
static int align_top_to_page(Heap *h, uint64_t *acct) {
    uint64_t top = acct[ACCT(M_TOP)], gap = (h->page_size - (top & (h->page_size - 1))) % h->page_size / 8;
    if (gap == 0) return 0;
    if (gap == 1) gap += h->page_size / 8;
    if (top + gap * 8 > h->max_heap) {
        PyErr_SetString(PyExc_MemoryError, "the image's heap is full");
        return -1;
    }
    uint64_t bins[N_BINS], chunks = 0;
    if (read_bins(h, bins) || free_run(h, bins, top, gap, &chunks)
        || add_meta(h, M_FREE_CHUNKS, (int64_t)chunks))
        return -1;
    acct[ACCT(M_TOP)] = top + gap * 8;
    acct[ACCT(M_FREE_WORDS)] += gap;
    return 0;
}

/* A new object of class cls: header written, payload left to the caller
 * (which must write every payload word). */
static int alloc(Heap *h, uint64_t cls, unsigned fmt, uint64_t size, uint64_t *out) {
    uint64_t words = object_words(fmt, size), addr = 0, acct[ACCT_WORDS];
    if (size > h->max_heap) { PyErr_SetString(PyExc_MemoryError, "object too large"); return -1; }
    int got = 0, whole_page = words * 8 == h->page_size;
    if (rd(h, ACCT_FIRST * 8, acct, sizeof acct)) return -1;
    if (whole_page) {
        if (align_top_to_page(h, acct)) return -1;
    } else if (acct[ACCT(M_FREE_WORDS)]) {
        if ((got = take_free(h, words, &addr)) < 0) return -1;
        if (got && rd(h, ACCT_FIRST * 8, acct, sizeof acct)) return -1;   /* take_free changed them */
    }
    if (!got) {
        uint64_t top = acct[ACCT(M_TOP)];
        if (words > h->max_heap / 8 || top + words * 8 > h->max_heap) {
            PyErr_SetString(PyExc_MemoryError, "the image's heap is full");
            return -1;
        }
        addr = top;
        acct[ACCT(M_TOP)] = top + words * 8;
    }
    acct[ACCT(M_OBJECTS)] += 1;
    acct[ACCT(M_OBJ_WORDS)] += words;
    if (wr(h, ACCT_FIRST * 8, acct, sizeof acct)) return -1;
    uint64_t hd[2] = {make_header(cls, fmt, size, addr), size};
    if (wr(h, addr, hd, size >= SIZE_OVERFLOW ? 16 : 8)) return -1;
    if (payload_words(fmt, size) == 0 && wr64(h, addr + 8, 0)) return -1;
    *out = addr;
    return 0;
}

static uint64_t body_of(uint64_t addr, uint64_t size) { return addr + (size >= SIZE_OVERFLOW ? 16 : 8); }

/* An object whose payload is `n` words from `src`. */
static int new_words(Heap *h, uint64_t cls, unsigned fmt, const uint64_t *src, uint64_t n,
                     uint64_t *out) {
    if (alloc(h, cls, fmt, n, out)) return -1;
    return n ? wr(h, body_of(*out, n), src, n * 8) : 0;
}

static int new_bytes(Heap *h, uint64_t cls, const char *data, uint64_t n, uint64_t *out) {
    if (alloc(h, cls, FMT_BYTES, n, out)) return -1;
    uint64_t body = body_of(*out, n), whole = n & ~(uint64_t)7;
    if (whole && wr(h, body, data, whole)) return -1;
    if (n & 7) {
        uint64_t last = 0;
        memcpy(&last, data + whole, n & 7);
        if (wr64(h, body + whole, last)) return -1;
    }
    return 0;
}

/* An object of n pointer slots, all EMPTY. */
static int new_empty(Heap *h, uint64_t cls, uint64_t n, uint64_t *out) {
    uint64_t *zeros = PyMem_Calloc(n ? n : 1, 8);
    if (!zeros) { PyErr_NoMemory(); return -1; }
    int rc = new_words(h, cls, FMT_POINTERS, zeros, n, out);
    PyMem_Free(zeros);
    return rc;
}

/* -- immediates ---------------------------------------------------------------- */

/* A double is immediate when its exponent is within 2^-127..2^128 (the range
 * of nearly every float a program meets) or it is +0.0: the word is the
 * double rotated left by one (sign to bit 0) with the exponent rebased, as in
 * Spur's SmallFloat64. */
#define FLOAT_EXP_LO 896u
#define FLOAT_EXP_HI 1151u

static int float_word(double d, uint64_t *out) {
    uint64_t bits;
    memcpy(&bits, &d, 8);
    uint64_t rot = (bits << 1) | (bits >> 63), e = (bits >> 52) & 0x7FF;
    if (rot == 0) { *out = TAG_FLOAT; return 1; }
    if (e <= FLOAT_EXP_LO || e > FLOAT_EXP_HI) return 0;
    *out = ((rot - ((uint64_t)FLOAT_EXP_LO << 53)) << 3) | TAG_FLOAT;
    return 1;
}

static double word_float(uint64_t w) {
    uint64_t rot = w >> 3;
    if (rot) rot += (uint64_t)FLOAT_EXP_LO << 53;
    uint64_t bits = (rot >> 1) | (rot << 63);
    double d;
    memcpy(&d, &bits, 8);
    return d;
}

static uint64_t short_word(unsigned tag, const char *s, size_t n) {
    uint64_t w = 0;
    memcpy((char *)&w + 1, s, n);
    return w | ((uint64_t)n << 3) | tag;
}

/* A handle, as opposed to a value of the layer above that shares the handle
 * type so that it can become one (adopt): such a value's fields are unset. */
static int is_handle(Heap *h, PyObject *v) {
    return h->handle_type && PyObject_TypeCheck(v, (PyTypeObject *)h->handle_type)
           && *(PyObject **)((char *)v + h->off_heap) != NULL;
}

/* The word of a handle of this heap. */
static int handle_word(Heap *h, PyObject *v, uint64_t *out) {
    PyObject *owner = PyObject_GetAttrString(v, "_heap");
    pc_clear(h);   /* attribute lookups may run Python code (a subclass's __getattr__) */
    if (!owner) return -1;
    int mine = owner == (PyObject *)h, stale = owner == Py_None;
    Py_DECREF(owner);
    if (stale) {   /* image/_handles.make_stale cleared it */
        PyErr_SetString(StaleHandle ? StaleHandle : PyExc_ValueError,
                        "this handle's object is gone (made in a transaction that rolled back, "
                        "or its image was closed)");
        return -1;
    }
    if (!mine) {
        PyErr_SetString(PyExc_ValueError, "this handle belongs to another image (or a closed one); "
                                          "copy its contents instead");
        return -1;
    }
    PyObject *a = PyObject_GetAttrString(v, "_addr");
    pc_clear(h);
    if (!a) return -1;
    uint64_t addr;
    int bad = as_u64(a, &addr);
    Py_DECREF(a);
    if (bad || addr == 0) {
        PyErr_SetString(StaleHandle ? StaleHandle : PyExc_ValueError,
                        "this handle's object was made in a transaction that rolled back");
        return -1;
    }
    *out = addr;
    return 0;
}

/* The immediate word of v, if v is a value that is always immediate; 0 if
 * it is not (or needs an object), -1 with an exception for handle errors. */
static int immediate_of(Heap *h, PyObject *v, uint64_t *out) {
    if (v == Py_None) { *out = W_NONE; return 1; }
    if (v == Py_True) { *out = W_TRUE; return 1; }
    if (v == Py_False) { *out = W_FALSE; return 1; }
    if (PyLong_Check(v)) {
        int overflow;
        long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (n == -1 && PyErr_Occurred()) return -1;
        if (overflow || n < FIX_MIN || n > FIX_MAX) return 0;
        *out = FX(n);
        return 1;
    }
    if (PyFloat_Check(v)) return float_word(PyFloat_AS_DOUBLE(v), out);
    if (PyUnicode_Check(v)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(v, &n);
        if (!s) return -1;
        if (n > SHORT_MAX) return 0;
        *out = short_word(TAG_SSTR, s, (size_t)n);
        return 1;
    }
    if (PyBytes_Check(v)) {
        if (PyBytes_GET_SIZE(v) > SHORT_MAX) return 0;
        *out = short_word(TAG_SBYTES, PyBytes_AS_STRING(v), (size_t)PyBytes_GET_SIZE(v));
        return 1;
    }
    if (is_handle(h, v)) return handle_word(h, v, out) ? -1 : 1;
    return 0;
}

/* -- encoding Python values into objects -------------------------------------- */

static int encode(Heap *h, PyObject *v, PyObject **memo, uint64_t *out);
static int vector_build(Heap *h, uint64_t vaddr, const uint64_t *items, uint64_t n);
static int table_build(Heap *h, uint64_t taddr, PyObject *dict, PyObject **memo);

static int memo_get(PyObject *memo, PyObject *v, uint64_t *out) {
    if (!memo) return 0;
    PyObject *key = PyLong_FromVoidPtr(v);
    if (!key) return -1;
    PyObject *w = PyDict_GetItemWithError(memo, key);
    Py_DECREF(key);
    if (!w) return PyErr_Occurred() ? -1 : 0;
    *out = PyLong_AsUnsignedLongLong(w);
    return 1;
}

static int memo_put(PyObject **memo, PyObject *v, uint64_t w) {
    if (!*memo && !(*memo = PyDict_New())) return -1;
    PyObject *key = PyLong_FromVoidPtr(v), *val = PyLong_FromUnsignedLongLong(w);
    int rc = key && val ? PyDict_SetItem(*memo, key, val) : -1;
    Py_XDECREF(key);
    Py_XDECREF(val);
    return rc;
}

static int store_build(Heap *h, uint64_t taddr, const uint64_t *triples, uint64_t n);
static int new_leaf(Heap *h, uint64_t cap, const uint64_t *items, uint64_t n, uint64_t *out);
static int vec_header_set(Heap *h, uint64_t vaddr, int height, uint64_t root);

/* Storing a container failed half way (an unsupported item, say): its header
 * is already allocated, so make it a valid empty container, which the heap
 * verifier accepts and the collector frees.  The error being raised stays. */
static void unbuilt(Heap *h, uint64_t addr, uint64_t cls) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    uint64_t leaf, none[1];
    objinfo o;
    int rc = 0;
    if (cls == C_VECTOR) {
        rc = new_leaf(h, LEAF_SMALL, NULL, 0, &leaf) || vec_header_set(h, addr, 0, leaf);
    } else if (cls == C_TABLE) {
        rc = store_build(h, addr, none, 0);
    } else if (!(rc = obj(h, addr, &o))) {   /* a tuple or a record: None in every slot */
        for (uint64_t i = 0; !rc && i < o.size; i++) rc = wr64(h, o.body + 8 * i, W_NONE);
    }
    if (rc) PyErr_Clear();   /* the first error is the one to report */
    PyErr_Restore(type, value, tb);
}

static int encode_bigint(Heap *h, PyObject *v, uint64_t *out) {
    PyObject *bits = PyObject_CallMethod(v, "bit_length", NULL);
    if (!bits) return -1;
    Py_ssize_t nbits = PyLong_AsSsize_t(bits);
    Py_DECREF(bits);
    if (nbits < 0) return -1;
    PyObject *b = PyObject_CallMethod(v, "to_bytes", "ns", nbits / 8 + 1, "little", NULL);
    if (!b) {   /* to_bytes(n, "little") refuses negatives without signed=True */
        PyErr_Clear();
        PyObject *args = Py_BuildValue("(ns)", nbits / 8 + 1, "little");
        PyObject *kw = Py_BuildValue("{s:O}", "signed", Py_True);
        PyObject *fn = PyObject_GetAttrString(v, "to_bytes");
        b = args && kw && fn ? PyObject_Call(fn, args, kw) : NULL;
        Py_XDECREF(args); Py_XDECREF(kw); Py_XDECREF(fn);
        if (!b) return -1;
    }
    pc_clear(h);   /* an int subclass may run Python code in these methods */
    int rc = new_bytes(h, C_BIGINT, PyBytes_AS_STRING(b), (uint64_t)PyBytes_GET_SIZE(b), out);
    Py_DECREF(b);
    return rc;
}

static int encode_tuple(Heap *h, PyObject *v, PyObject **memo, uint64_t *out) {
    Py_ssize_t n = PyTuple_GET_SIZE(v);
    if (alloc(h, C_TUPLE, FMT_POINTERS, (uint64_t)n, out)) return -1;
    uint64_t body = body_of(*out, (uint64_t)n);
    for (Py_ssize_t i = 0; i < n; i++)   /* EMPTY first: the slots may hold old bytes */
        if (wr64(h, body + 8 * (uint64_t)i, W_EMPTY)) return -1;
    if (memo_put(memo, v, *out)) return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t w;
        if (encode(h, PyTuple_GET_ITEM(v, i), memo, &w) || wr64(h, body + 8 * (uint64_t)i, w)) {
            unbuilt(h, *out, C_TUPLE);
            return -1;
        }
    }
    return 0;
}

static int encode_list(Heap *h, PyObject *v, PyObject **memo, uint64_t *out) {
    uint64_t hdr[2] = {FX(0), W_EMPTY};
    if (new_words(h, C_VECTOR, FMT_POINTERS, hdr, 2, out) || memo_put(memo, v, *out)) return -1;
    Py_ssize_t n = PyList_GET_SIZE(v);
    uint64_t *items = PyMem_Malloc((size_t)(n ? n : 1) * 8);
    if (!items) { PyErr_NoMemory(); return -1; }
    int rc = 0;
    /* The list may change under us only through our own encode of its items,
     * which never runs Python code; still, index defensively. */
    for (Py_ssize_t i = 0; i < n && i < PyList_GET_SIZE(v) && !rc; i++) {
        PyObject *item = PyList_GET_ITEM(v, i);
        Py_INCREF(item);
        rc = encode(h, item, memo, &items[i]);
        Py_DECREF(item);
    }
    if (!rc) rc = vector_build(h, *out, items, (uint64_t)n);
    PyMem_Free(items);
    if (rc) unbuilt(h, *out, C_VECTOR);
    return rc;
}

/* -- values of the layers above: the encode hook -----------------------------
** A type this file does not know (the Scheme layer's pairs, symbols,
** characters, mutable strings, records, procedures) is described by the
** encode hook the layer above installs: hook(v) returns a tuple
**
**     ("char", code point)        the character immediate
**     ("nil",) / ("eof",)         the empty list / the end-of-file object
**     ("symbol", name)            the image's one symbol of that name (M_SYMBOLS)
**     ("same", value)             store value instead (a dict for a hash table)
**     ("object", class, [slots])  a new pointer object of a Scheme class
**     ("pair", car, cdr)          a pair; a chain of cdrs is built in a loop,
**                                 so a long list costs no C stack
**
** and raises TypeError for what cannot be stored.  Objects are memoised by
** identity, so sharing and cycles survive; the hook's results are kept alive
** in the memo until the store is done (memo keys are addresses).
*/

/* MADE OBJECTS.  The layer above promotes what it stores (a transient pair
** becomes the handle of its copy): it needs each value the hook described as
** a "pair" or an "object" with the address it was stored at.  Between
** record_made() and made(), every such store appends value, address to
** h->made (the values are held: no id is reused while the list lives), so the
** layer above maps each transient to its copy without decoding the copy.
** States: IDLE (made NULL, recording 0) --record_made--> RECORDING (n) --made,
** n -> 0--> IDLE.  Nested calls share one list; only the outermost made()
** drops it.  Outside RECORDING nothing is kept.  turn() then makes the
** values handles of their addresses in bulk (become:, see m_turn), and
** vec_store() writes several vector items as one value (one memo).
*/
static int made_put(Heap *h, PyObject *v, uint64_t addr) {
    if (!h->made) return 0;
    PyObject *a = PyLong_FromUnsignedLongLong(addr);
    int rc = a && !PyList_Append(h->made, v) && !PyList_Append(h->made, a) ? 0 : -1;
    Py_XDECREF(a);
    return rc;
}

static int memo_keep(PyObject **memo, PyObject *v) {
    if (!*memo && !(*memo = PyDict_New())) return -1;
    PyObject *keep = PyDict_GetItemWithError(*memo, Py_None);
    if (!keep) {
        if (PyErr_Occurred() || !(keep = PyList_New(0))) return -1;
        int rc = PyDict_SetItem(*memo, Py_None, keep);
        Py_DECREF(keep);
        if (rc) return -1;
    }
    return PyList_Append(keep, v);
}

static int is_scheme_class(uint64_t cls) {
    return cls == C_PAIR || cls == C_MSTRING || cls == C_RECORD || cls == C_CLOSURE || cls >= N_SYSTEM_CLASSES;
}

static PyObject *call_hook(Heap *h, PyObject *v, PyObject **memo) {
    PyObject *t = PyObject_CallOneArg(h->encode_hook, v);
    pc_clear(h);   /* Python code ran */
    if (!t) return NULL;
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) < 1 || !PyUnicode_Check(PyTuple_GET_ITEM(t, 0))) {
        Py_DECREF(t);
        PyErr_SetString(PyExc_TypeError, "the encode hook must return a (kind, ...) tuple");
        return NULL;
    }
    if (memo_keep(memo, t)) { Py_DECREF(t); return NULL; }
    Py_DECREF(t);   /* the memo holds it */
    return t;
}

static int hook_args(PyObject *t, Py_ssize_t n, const char *kind) {
    if (PyTuple_GET_SIZE(t) == n) return 0;
    PyErr_Format(PyExc_TypeError, "the encode hook's %s takes %zd values", kind, n - 1);
    return -1;
}

static int symbol_word(Heap *h, PyObject *name, uint64_t *out);

/* ("object", class, [slots]): the object first (memoised), then its slots. */
static int encode_scheme_object(Heap *h, PyObject *v, PyObject *t, PyObject **memo, uint64_t *out) {
    if (hook_args(t, 3, "object")) return -1;
    uint64_t cls, nclasses, w;
    PyObject *slots = PyTuple_GET_ITEM(t, 2);
    if (as_u64(PyTuple_GET_ITEM(t, 1), &cls) || meta(h, M_NCLASSES, &nclasses)) return -1;
    if (!is_scheme_class(cls) || cls >= nclasses || !PyList_Check(slots)) {
        PyErr_SetString(PyExc_TypeError, "the encode hook's object needs a Scheme or user class and a list");
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(slots);
    if (new_empty(h, cls, (uint64_t)n, out) || memo_put(memo, v, *out) || made_put(h, v, *out)) return -1;
    for (Py_ssize_t i = 0; i < n; i++)
        if (encode(h, PyList_GET_ITEM(slots, i), memo, &w) || wr64(h, body_of(*out, (uint64_t)n) + 8 * (uint64_t)i, w))
            return -1;
    return 0;
}

/* A word for v when it needs no hook (immediate, seen, or a Python type);
 * 1 when found, 0 when v is foreign and not yet stored. */
static int plain_word(Heap *h, PyObject *v, PyObject **memo, uint64_t *out) {
    int imm = immediate_of(h, v, out);
    if (imm) return imm;
    int seen = memo_get(*memo, v, out);
    if (seen) return seen;
    if (PyLong_Check(v) || PyFloat_Check(v) || PyUnicode_Check(v) || PyBytes_Check(v) || PyByteArray_Check(v)
        || PyTuple_Check(v) || PyList_Check(v) || PyDict_Check(v))
        return encode(h, v, memo, out) ? -1 : 1;
    return 0;
}

static int encode_hooked(Heap *h, PyObject *v, PyObject *t, PyObject **memo, uint64_t *out);

/* ("pair", car, cdr), and the pairs down its cdr, in a loop. */
static int encode_pairs(Heap *h, PyObject *v, PyObject *t, PyObject **memo, uint64_t *out) {
    uint64_t link = 0, w;
    for (;;) {
        if (hook_args(t, 3, "pair")) return -1;
        uint64_t pair;
        if (new_empty(h, C_PAIR, 2, &pair) || memo_put(memo, v, pair) || made_put(h, v, pair)) return -1;
        if (link ? wr64(h, link, pair) : (*out = pair, 0)) return -1;
        if (encode(h, PyTuple_GET_ITEM(t, 1), memo, &w) || wr64(h, body_of(pair, 2), w)) return -1;
        link = body_of(pair, 2) + 8;
        v = PyTuple_GET_ITEM(t, 2);   /* the cdr: kept alive by t, which the memo keeps */
        int got = plain_word(h, v, memo, &w);
        if (got < 0) return -1;
        if (got) return wr64(h, link, w);
        if (Py_EnterRecursiveCall(" while storing a list in the image")) return -1;
        t = call_hook(h, v, memo);
        Py_LeaveRecursiveCall();
        if (!t) return -1;
        if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(t, 0), "pair") != 0)
            return encode_hooked(h, v, t, memo, &w) || wr64(h, link, w) ? -1 : 0;
    }
}

static int encode_hooked(Heap *h, PyObject *v, PyObject *t, PyObject **memo, uint64_t *out) {
    PyObject *kind = PyTuple_GET_ITEM(t, 0);
    if (PyUnicode_CompareWithASCIIString(kind, "pair") == 0) return encode_pairs(h, v, t, memo, out);
    if (PyUnicode_CompareWithASCIIString(kind, "object") == 0) return encode_scheme_object(h, v, t, memo, out);
    if (PyUnicode_CompareWithASCIIString(kind, "same") == 0)
        return hook_args(t, 2, "same") || encode(h, PyTuple_GET_ITEM(t, 1), memo, out) ? -1 : 0;
    if (PyUnicode_CompareWithASCIIString(kind, "symbol") == 0)
        return hook_args(t, 2, "symbol") || symbol_word(h, PyTuple_GET_ITEM(t, 1), out) ? -1 : 0;
    if (PyUnicode_CompareWithASCIIString(kind, "nil") == 0) { *out = W_NIL; return 0; }
    if (PyUnicode_CompareWithASCIIString(kind, "eof") == 0) { *out = W_EOF; return 0; }
    if (PyUnicode_CompareWithASCIIString(kind, "char") == 0) {
        uint64_t cp;
        if (hook_args(t, 2, "char") || as_u64(PyTuple_GET_ITEM(t, 1), &cp)) return -1;
        if (cp > 0x10FFFF) { PyErr_SetString(PyExc_ValueError, "a character past U+10FFFF"); return -1; }
        *out = (cp << 3) | TAG_CHAR;
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "the encode hook returned an unknown kind %R", kind);
    return -1;
}

static int encode_foreign(Heap *h, PyObject *v, PyObject **memo, uint64_t *out) {
    PyObject *t = call_hook(h, v, memo);
    return t ? encode_hooked(h, v, t, memo, out) : -1;
}

static int encode_object(Heap *h, PyObject *v, PyObject **memo, uint64_t *out) {
    if (PyLong_Check(v)) return encode_bigint(h, v, out);
    if (PyFloat_Check(v)) {
        double d = PyFloat_AS_DOUBLE(v);
        uint64_t bits;
        memcpy(&bits, &d, 8);
        return new_words(h, C_FLOAT, FMT_WORDS, &bits, 1, out);
    }
    if (PyUnicode_Check(v)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(v, &n);
        return s ? new_bytes(h, C_STRING, s, (uint64_t)n, out) : -1;
    }
    if (PyBytes_Check(v))
        return new_bytes(h, C_BYTES, PyBytes_AS_STRING(v), (uint64_t)PyBytes_GET_SIZE(v), out);
    if (PyByteArray_Check(v)) {
        Py_ssize_t n = PyByteArray_GET_SIZE(v);
        if (n <= SHORT_MAX) { *out = short_word(TAG_SBYTES, PyByteArray_AS_STRING(v), (size_t)n); return 0; }
        return new_bytes(h, C_BYTES, PyByteArray_AS_STRING(v), (uint64_t)n, out);
    }
    int seen = memo_get(*memo, v, out);
    if (seen) return seen < 0 ? -1 : 0;
    if (PyTuple_Check(v)) return encode_tuple(h, v, memo, out);
    if (PyList_Check(v)) return encode_list(h, v, memo, out);
    if (PyDict_Check(v)) {
        uint64_t hdr[3] = {FX(0), FX(0), W_EMPTY};
        if (new_words(h, C_TABLE, FMT_POINTERS, hdr, 3, out) || memo_put(memo, v, *out)) return -1;
        if (!table_build(h, *out, v, memo)) return 0;
        unbuilt(h, *out, C_TABLE);
        return -1;
    }
    if (h->encode_hook) return encode_foreign(h, v, memo, out);
    PyErr_Format(PyExc_TypeError,
                 "cannot store a '%.100s' in the image: it holds None, bool, int, float, str, "
                 "bytes, list, tuple, dict, blobs and handles", Py_TYPE(v)->tp_name);
    return -1;
}

static int encode(Heap *h, PyObject *v, PyObject **memo, uint64_t *out) {
    int imm = immediate_of(h, v, out);
    if (imm) return imm < 0 ? -1 : 0;
    if (Py_EnterRecursiveCall(" while storing a value in the image")) return -1;
    int rc = encode_object(h, v, memo, out);
    Py_LeaveRecursiveCall();
    return rc;
}

static int encode_top(Heap *h, PyObject *v, uint64_t *out) {
    PyObject *memo = NULL;
    int rc = encode(h, v, &memo, out);
    Py_XDECREF(memo);
    return rc;
}

/* -- decoding ------------------------------------------------------------------ */

static PyObject *decode(Heap *h, uint64_t w);
static PyObject *decode_in(Heap *h, uint64_t w, uint64_t holder);

static PyObject *decode_short(uint64_t w) {
    size_t n = (w >> 3) & 7;
    const char *s = (const char *)&w + 1;
    if ((w & TAG_MASK) == TAG_SBYTES) return PyBytes_FromStringAndSize(s, (Py_ssize_t)n);
    return PyUnicode_DecodeUTF8(s, (Py_ssize_t)n, "strict");
}

static PyObject *decode_bytes(Heap *h, const objinfo *o) {
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)o->size);
    if (!b) return NULL;
    if (rd(h, o->body, PyBytes_AS_STRING(b), o->size)) { Py_DECREF(b); return NULL; }
    if (o->cls == C_BYTES) return b;
    PyObject *v = NULL;
    if (o->cls == C_STRING) {
        v = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), "strict");
    } else {   /* C_BIGINT */
        PyObject *fn = PyObject_GetAttrString((PyObject *)&PyLong_Type, "from_bytes");
        PyObject *args = Py_BuildValue("(Os)", b, "little");
        PyObject *kw = Py_BuildValue("{s:O}", "signed", Py_True);
        v = fn && args && kw ? PyObject_Call(fn, args, kw) : NULL;
        Py_XDECREF(fn); Py_XDECREF(args); Py_XDECREF(kw);
    }
    Py_DECREF(b);
    if (!v && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
        corrupt(o->addr, "a string that is not UTF-8");
    }
    return v;
}

static PyObject *decode_tuple(Heap *h, const objinfo *o) {
    PyObject *t = PyTuple_New((Py_ssize_t)o->size);
    if (!t) return NULL;
    for (uint64_t i = 0; i < o->size; i++) {
        uint64_t w;
        PyObject *item = slot(h, o, i, &w) ? NULL : decode_in(h, w, o->addr);
        if (!item) { Py_DECREF(t); return NULL; }
        PyTuple_SET_ITEM(t, (Py_ssize_t)i, item);
    }
    return t;
}

/* -- handles ----------------------------------------------------------------------- */
/*
** One handle per address: `handles` maps each address to a weak reference
** to its handle.  Dead references are left in place (a lookup treats them as
** missing) and pruned when the map has doubled since the last pruning, which
** keeps handle creation free of weakref callbacks.  A handle is an instance of
** a Python class with slots _img, _heap and _addr (image/_handles.py).
*/

static PyObject *S_img, *S_heap, *S_addr;   /* interned slot names */

static int made_in_txn(Heap *h, uint64_t addr) {
    if (addr >= h->txn_top) return 1;
    for (size_t i = 0; i < h->n_reused; i++)
        if (h->reused[i] == addr) return 1;
    return 0;
}

static int prune_handles(Heap *h) {
    PyObject *live = PyDict_New(), *key, *ref;
    Py_ssize_t pos = 0;
    if (!live) return -1;
    while (PyDict_Next(h->handles, &pos, &key, &ref)) {
        PyObject *o = PyWeakref_GetObject(ref);
        if (o && o != Py_None && PyDict_SetItem(live, key, ref)) { Py_DECREF(live); return -1; }
    }
    Py_SETREF(h->handles, live);
    h->handles_after_sweep = PyDict_GET_SIZE(live);
    return 0;
}

static PyObject *new_handle(Heap *h, uint64_t cls, uint64_t addr, PyObject *key) {
    PyObject *c = PyLong_FromUnsignedLongLong(cls);
    if (!c) return NULL;
    PyObject *type = PyDict_GetItemWithError(h->handle_classes, c);
    Py_DECREF(c);
    if (!type && PyErr_Occurred()) return NULL;
    if (!type) type = h->default_class;
    PyObject *img = PyWeakref_GetObject(h->img_ref);
    if (!img || img == Py_None) {
        PyErr_SetString(StaleHandle ? StaleHandle : PyExc_ValueError, "the image is gone");
        return NULL;
    }
    if (!PyType_IsSubtype((PyTypeObject *)type, (PyTypeObject *)h->handle_type)) {
        PyErr_SetString(PyExc_TypeError, "a handle class is not a subclass of the handle type");
        return NULL;
    }
    PyObject *handle = ((PyTypeObject *)type)->tp_alloc((PyTypeObject *)type, 0);
    if (!handle) return NULL;
    /* The slots are the handle type's own (subclasses add none), empty after
     * tp_alloc: filled directly, as object.__setattr__ would. */
    *(PyObject **)((char *)handle + h->off_img) = Py_NewRef(img);
    *(PyObject **)((char *)handle + h->off_heap) = Py_NewRef((PyObject *)h);
    *(PyObject **)((char *)handle + h->off_addr) = Py_NewRef(key);
    PyObject *ref = NULL;
    if (!(ref = PyWeakref_NewRef(handle, NULL))
        || PyDict_SetItem(h->handles, key, ref)
        || (h->in_txn && made_in_txn(h, addr) && PyList_Append(h->txn_made, ref))) {
        Py_XDECREF(ref);
        Py_DECREF(handle);
        return NULL;
    }
    Py_DECREF(ref);
    return handle;
}

/* The one handle of addr, whose object is of class cls. */
static PyObject *make_handle(Heap *h, uint64_t cls, uint64_t addr) {
    PyObject *key = PyLong_FromUnsignedLongLong(addr);
    if (!key) return NULL;
    PyObject *ref = PyDict_GetItemWithError(h->handles, key), *handle = NULL;
    if (ref) {
        handle = PyWeakref_GetObject(ref);
        if (handle && handle != Py_None) { Py_DECREF(key); return Py_NewRef(handle); }
    } else if (PyErr_Occurred()) {
        Py_DECREF(key);
        return NULL;
    }
    if (PyDict_GET_SIZE(h->handles) > 2 * h->handles_after_sweep + 1024 && prune_handles(h)) {
        Py_DECREF(key);
        return NULL;
    }
    handle = new_handle(h, cls, addr, key);
    Py_DECREF(key);
    pc_clear(h);   /* setting attributes of a Python class may run Python code */
    return handle;
}

static PyObject *special(Heap *h, const char *kind, uint64_t value) {
    PyObject *v = PyObject_CallFunction(h->make_special, "sK", kind, (unsigned long long)value);
    pc_clear(h);
    return v;
}

static PyObject *decode_object(Heap *h, uint64_t addr) {
    objinfo o;
    if (obj(h, addr, &o)) return NULL;
    switch (o.cls) {
    case C_FLOAT: {
        uint64_t bits;
        double d;
        if (rd64(h, o.body, &bits)) return NULL;
        memcpy(&d, &bits, 8);
        return PyFloat_FromDouble(d);
    }
    case C_STRING: case C_BYTES: case C_BIGINT:
        return decode_bytes(h, &o);
    case C_TUPLE: {
        if (Py_EnterRecursiveCall(" while reading a tuple from the image")) return NULL;
        PyObject *t = decode_tuple(h, &o);
        Py_LeaveRecursiveCall();
        return t;
    }
    case C_VLEAF: case C_VNODE: case C_TSTORE:
        corrupt(addr, "a reference to the inside of a vector or table");
        return NULL;
    case C_SYMBOL: {   /* the layer above's one symbol of that name */
        uint64_t w;
        if (o.size != 1) { corrupt(addr, "a symbol of %llu slots", (unsigned long long)o.size); return NULL; }
        if (slot(h, &o, 0, &w)) return NULL;
        PyObject *name = decode_in(h, w, addr);
        if (name && !PyUnicode_Check(name)) {
            Py_DECREF(name);
            corrupt(addr, "a symbol whose name is not a string");
            return NULL;
        }
        PyObject *v = name ? PyObject_CallFunction(h->make_special, "sO", "symbol", name) : NULL;
        Py_XDECREF(name);
        pc_clear(h);
        return v;
    }
    default:
        return make_handle(h, o.cls, addr);
    }
}

/* The value of word w, read from the object at holder (named in errors). */
static PyObject *decode_in(Heap *h, uint64_t w, uint64_t holder) {
    switch (w & TAG_MASK) {
    case TAG_PTR:
        if (w == W_EMPTY) { corrupt(holder, "an empty slot where a value should be"); return NULL; }
        return decode_object(h, w);
    case TAG_FIX: return PyLong_FromLongLong(UNFX(w));
    case TAG_SSTR: case TAG_SBYTES: {
        PyObject *v = decode_short(w);
        if (!v && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            corrupt(holder, "holds a short string 0x%llx that is not UTF-8", (unsigned long long)w);
        }
        return v;
    }
    case TAG_FLOAT: return PyFloat_FromDouble(word_float(w));
    case TAG_CHAR:
        return special(h, "char", w >> 3);
    case TAG_SPECIAL:
        if (w == W_NONE) Py_RETURN_NONE;
        if (w == W_TRUE) Py_RETURN_TRUE;
        if (w == W_FALSE) Py_RETURN_FALSE;
        if (w == W_NIL) return special(h, "nil", 0);
        if (w == W_EOF) return special(h, "eof", 0);
        /* fall through: ABSENT and unknown specials are never values */
    default:
        corrupt(holder, "holds 0x%llx, which is not a value", (unsigned long long)w);
        return NULL;
    }
}

static PyObject *decode(Heap *h, uint64_t w) { return decode_in(h, w, 0); }

/* -- the chunked vector -------------------------------------------------------- */
/*
** A growable vector is a counted B+tree: the VECTOR header (height, root)
** never moves, so handles stay valid, and changes only when the root does.
** Leaves hold up to leaf_max items after a count; interior nodes hold up to
** node_max (start, child) pairs after a count, start being the number of
** items under the node that lie before that child (so entry 0 starts at 0,
** and starts strictly increase).  A child's size is the next entry's start
** minus its own; the last child's is what the node holds minus its start,
** and what the root holds is found down the rightmost path.  So appending
** writes one leaf slot and nothing else until the leaf fills (a durable
** single append is one data page); inserting or deleting in the middle
** shifts items within one leaf and the later starts of the nodes above it;
** growth splits a leaf or a node and never copies the array.  A new
** vector's only leaf starts small and doubles until it reaches leaf_max (a
** bounded copy).  Unused leaf and node slots hold EMPTY, so the collector
** can trace every slot.  Every descent checks the starts of each node it
** passes and each leaf's count against what its parent says it holds.
*/

typedef struct {
    uint64_t vaddr, len, root;
    int height;
    uint64_t node[MAX_HEIGHT];
    uint64_t pos[MAX_HEIGHT];     /* the entry taken in node[lvl] */
    uint64_t held[MAX_HEIGHT];    /* the items under node[lvl], before the change */
    uint64_t leaf, leaf_cap, leaf_count, off;
} vpath;

static int node_open(Heap *h, uint64_t addr, objinfo *o, uint64_t *count);
static int leaf_open(Heap *h, uint64_t addr, objinfo *o, uint64_t *count);

static uint64_t item_addr(uint64_t leaf, uint64_t k) { return leaf + 16 + 8 * k; }
static uint64_t entry_addr(uint64_t node, uint64_t k) { return node + 16 + 16 * k; }

/* The entries of a node that is to hold `held` items: starts begin at 0,
 * strictly increase and stay below held.  Returns them in place, or NULL. */
static const uint64_t *node_entries(Heap *h, uint64_t node, uint64_t held, objinfo *o, uint64_t *count) {
    if (node_open(h, node, o, count)) return NULL;
    const uint64_t *e = view(h, o->body + 8, 2 * *count);
    if (!e) return NULL;
    for (uint64_t k = 0; k < *count; k++) {
        uint64_t w = e[2 * k];
        if (!IS_FIX(w) || UNFX(w) < 0 || (uint64_t)UNFX(w) >= held
            || (k == 0 ? UNFX(w) != 0 : UNFX(w) <= UNFX(e[2 * k - 2]))) {
            corrupt(node, "entry %llu starts at %s, not after its neighbour and below the %llu items "
                    "the node holds", (unsigned long long)k, IS_FIX(w) ? "a bad item" : "no item",
                    (unsigned long long)held);
            return NULL;
        }
    }
    return e;
}

/* The most items a subtree with `nodes` levels of nodes above its leaves
 * can hold: leaf_max * node_max^nodes, saturated just past limit. */
static uint64_t subtree_cap(const Heap *h, int nodes, uint64_t limit) {
    uint64_t cap = h->leaf_max;
    for (int k = 0; k < nodes && cap <= limit; k++)
        cap = cap > limit / h->node_max ? limit + 1 : cap * h->node_max;
    return cap;
}

/* The length, down the rightmost path: each last entry's start, then the
 * last leaf's count.  Two bounds, so that a forged length is an error and
 * never an allocation that size (v[:], list(v)): every item is a word of
 * the heap, and, since the heap's top is itself only a meta word, the
 * shape of the real tree: a node's entries lead to subtrees no fuller
 * than full, so its last entry starts at most at count * subtree_cap (the
 * node full; a slack of one subtree, so that a length a little wrong still
 * opens and only the items it misplaces are refused, by the descent's
 * checks).  Inflating the length past that takes real
 * node objects down the path (a taller tree), not a forged word.  (A bound
 * by the page table's page count would close that too; the core offers
 * objmem.c no such count yet.) */
static int vec_open(Heap *h, uint64_t vaddr, vpath *p) {
    objinfo o, r;
    int64_t height;
    uint64_t count, base, top, n;
    if (obj_of_class(h, vaddr, C_VECTOR, &o) || fix_slot(h, &o, V_HEIGHT, 0, MAX_HEIGHT - 1, &height)
        || slot(h, &o, V_ROOT, &p->root) || heap_bounds(h, &base, &top, &n))
        return -1;
    uint64_t limit = (top - base) / 8, cur = p->root, len = 0;   /* every item is a word of the heap */
    p->vaddr = vaddr;
    p->height = (int)height;
    for (int lvl = 0; lvl < p->height; lvl++) {
        if (node_open(h, cur, &r, &count)) return -1;
        const uint64_t *e = view(h, r.body + 8 + 16 * (count - 1), 2);
        if (!e) return -1;
        uint64_t cap = subtree_cap(h, p->height - lvl - 1, limit);
        uint64_t most = count > limit / cap ? limit : count * cap;   /* the node full */
        if (!IS_FIX(e[0]) || UNFX(e[0]) < 0 || (uint64_t)UNFX(e[0]) > limit - len)
            return corrupt(cur, "its last entry starts at no item, or past the heap");
        if ((uint64_t)UNFX(e[0]) > most)
            return corrupt(cur, "its last entry starts at item %llu, past what %llu entries of a "
                           "height-%d vector can hold", (unsigned long long)UNFX(e[0]),
                           (unsigned long long)count, p->height);
        len += (uint64_t)UNFX(e[0]);
        cur = e[1];
    }
    if (leaf_open(h, cur, &r, &count)) return -1;
    if (p->height && count == 0) return corrupt(cur, "an empty leaf under a vector node");
    p->len = len + count;
    if (p->len > limit)
        return corrupt(p->root, "it holds %llu items, more than the heap has words", (unsigned long long)p->len);
    return 0;
}

static int node_open(Heap *h, uint64_t addr, objinfo *o, uint64_t *count) {
    int64_t c;
    if (obj_of_class(h, addr, C_VNODE, o)) return -1;
    if (o->size < 3 || !(o->size & 1) || (o->size - 1) / 2 > h->node_max)
        return corrupt(addr, "a vector node of %llu slots", (unsigned long long)o->size);
    if (fix_slot(h, o, 0, 1, (int64_t)(o->size - 1) / 2, &c)) return -1;
    *count = (uint64_t)c;
    return 0;
}

static int leaf_open(Heap *h, uint64_t addr, objinfo *o, uint64_t *count) {
    int64_t c;
    if (obj_of_class(h, addr, C_VLEAF, o)) return -1;
    if (o->size < 1 || o->size - 1 > h->leaf_max)
        return corrupt(addr, "a vector leaf of %llu slots", (unsigned long long)o->size);
    if (fix_slot(h, o, 0, 0, (int64_t)o->size - 1, &c)) return -1;
    *count = (uint64_t)c;
    return 0;
}

/* The last entry whose start is at most i (binary search: starts increase). */
static uint64_t entry_before(const uint64_t *e, uint64_t count, uint64_t i) {
    uint64_t lo = 0, hi = count;   /* e[0] starts at 0 <= i */
    while (hi - lo > 1) {
        uint64_t mid = (lo + hi) / 2;
        if ((uint64_t)UNFX(e[2 * mid]) <= i) lo = mid; else hi = mid;
    }
    return lo;
}

/* Finds item i (or, for an insert, the place before item i; i may be len)
 * in a vector vec_open has read into p. */
static int vec_descend(Heap *h, vpath *p, uint64_t i, int for_insert) {
    uint64_t cur = p->root, held = p->len;   /* the items the parent says lie below cur */
    if (i > held || (i == held && !for_insert))
        return corrupt(p->vaddr, "item %llu of %llu", (unsigned long long)i, (unsigned long long)held);
    for (int lvl = 0; lvl < p->height; lvl++) {
        objinfo o;
        uint64_t count;
        const uint64_t *e = node_entries(h, cur, held, &o, &count);
        if (!e) return -1;
        uint64_t k = entry_before(e, count, i), start = (uint64_t)UNFX(e[2 * k]);
        p->node[lvl] = cur;
        p->pos[lvl] = k;
        p->held[lvl] = held;
        held = (k + 1 < count ? (uint64_t)UNFX(e[2 * k + 2]) : held) - start;
        i -= start;
        cur = e[2 * k + 1];
    }
    objinfo lo;
    if (leaf_open(h, cur, &lo, &p->leaf_count)) return -1;
    if (p->height && p->leaf_count != held)
        return corrupt(cur, "holds %llu items, its parent 0x%llx says %llu",
                       (unsigned long long)p->leaf_count, (unsigned long long)p->node[p->height - 1],
                       (unsigned long long)held);
    p->leaf = cur;
    p->leaf_cap = lo.size - 1;
    p->off = i;
    return 0;
}

static int vec_locate(Heap *h, uint64_t vaddr, uint64_t i, int for_insert, vpath *p) {
    return vec_open(h, vaddr, p) || vec_descend(h, p, i, for_insert) ? -1 : 0;
}

static int check_index(PyObject *idx, uint64_t len, int for_insert, uint64_t *out) {
    Py_ssize_t i = PyNumber_AsSsize_t(idx, PyExc_IndexError);
    if (i == -1 && PyErr_Occurred()) return -1;
    if (i < 0) i += (Py_ssize_t)len;
    if (for_insert) {   /* list.insert clamps */
        if (i < 0) i = 0;
        if ((uint64_t)i > len) i = (Py_ssize_t)len;
    } else if (i < 0 || (uint64_t)i >= len) {
        PyErr_SetString(PyExc_IndexError, "vector index out of range");
        return -1;
    }
    *out = (uint64_t)i;
    return 0;
}

static int vec_header_set(Heap *h, uint64_t vaddr, int height, uint64_t root) {
    uint64_t w[2] = {FX(height), root};
    return wr(h, vaddr + 8, w, 16);
}

static int new_leaf(Heap *h, uint64_t cap, const uint64_t *items, uint64_t n, uint64_t *out) {
    uint64_t *buf = PyMem_Calloc(cap + 1, 8);
    if (!buf) { PyErr_NoMemory(); return -1; }
    buf[0] = FX(n);
    if (n) memcpy(buf + 1, items, n * 8);
    int rc = new_words(h, C_VLEAF, FMT_POINTERS, buf, cap + 1, out);
    PyMem_Free(buf);
    return rc;
}

/* entries: n (start, child) pairs as raw words, rebased so the first starts at 0. */
static int new_node(Heap *h, uint64_t cap, const uint64_t *entries, uint64_t n, uint64_t *out) {
    uint64_t *buf = PyMem_Calloc(2 * cap + 1, 8);
    if (!buf) { PyErr_NoMemory(); return -1; }
    buf[0] = FX(n);
    int64_t first = UNFX(entries[0]);
    for (uint64_t k = 0; k < n; k++) {
        buf[1 + 2 * k] = FX(UNFX(entries[2 * k]) - first);
        buf[2 + 2 * k] = entries[2 * k + 1];
    }
    int rc = new_words(h, C_VNODE, FMT_POINTERS, buf, 2 * cap + 1, out);
    PyMem_Free(buf);
    return rc;
}

/* Full leaves, then levels of full nodes; level holds (start, child) pairs
 * with starts counted from the vector's first item. */
static int vector_build(Heap *h, uint64_t vaddr, const uint64_t *items, uint64_t n) {
    uint64_t root;
    if (n <= h->leaf_max) {
        if (new_leaf(h, n < LEAF_SMALL ? LEAF_SMALL : n, items, n, &root)) return -1;
        return vec_header_set(h, vaddr, 0, root);
    }
    uint64_t nodes = (n + h->leaf_max - 1) / h->leaf_max;
    uint64_t *level = PyMem_Malloc(nodes * 16);
    if (!level) { PyErr_NoMemory(); return -1; }
    int rc = 0, height = 0;
    for (uint64_t k = 0; k < nodes && !rc; k++) {
        uint64_t take = n - k * h->leaf_max < h->leaf_max ? n - k * h->leaf_max : h->leaf_max;
        level[2 * k] = FX(k * h->leaf_max);
        rc = new_leaf(h, h->leaf_max, items + k * h->leaf_max, take, &level[2 * k + 1]);
    }
    while (!rc && nodes > 1) {
        uint64_t up = (nodes + h->node_max - 1) / h->node_max;
        for (uint64_t k = 0; k < up && !rc; k++) {
            uint64_t take = nodes - k * h->node_max < h->node_max ? nodes - k * h->node_max : h->node_max;
            uint64_t first = level[2 * k * h->node_max], addr;
            rc = new_node(h, h->node_max, level + 2 * k * h->node_max, take, &addr);
            level[2 * k] = first;
            level[2 * k + 1] = addr;
        }
        nodes = up;
        height++;
    }
    if (!rc) rc = vec_header_set(h, vaddr, height, level[1]);
    PyMem_Free(level);
    return rc;
}

/* What an insert hands up a level: one more item below (PLUS), a leaf that
 * grew into a new object (REPLACE), or a split into two (SPLIT) of lsize
 * and rsize items. */
enum carry_kind { CARRY_PLUS, CARRY_REPLACE, CARRY_SPLIT };
typedef struct { enum carry_kind kind; uint64_t addr, lsize, rsize; } carry;

/* Moves the starts of entries from..count-1 of node by delta items (one
 * item came or went under an entry before them). */
static int shift_starts(Heap *h, uint64_t node, uint64_t from, int64_t delta) {
    objinfo o;
    uint64_t count;
    if (node_open(h, node, &o, &count)) return -1;
    for (uint64_t k = from; k < count; k++) {
        uint64_t w;
        if (rd64(h, entry_addr(node, k), &w)) return -1;
        if (!IS_FIX(w) || UNFX(w) + delta < 1)
            return corrupt(node, "entry %llu has a bad start", (unsigned long long)k);
        if (wr64(h, entry_addr(node, k), FX(UNFX(w) + delta))) return -1;
    }
    return 0;
}

/* Child k of node (which held `held` items) split into lsize and rsize
 * items: the right part becomes entry k+1.  A full node splits in turn. */
static int node_insert(Heap *h, uint64_t node, uint64_t k, uint64_t held, const carry *in, carry *out) {
    objinfo o;
    uint64_t count;
    if (node_open(h, node, &o, &count)) return -1;
    uint64_t cap = (o.size - 1) / 2;
    uint64_t *e = PyMem_Malloc((count + 1) * 16);
    if (!e) { PyErr_NoMemory(); return -1; }
    int rc = rd(h, entry_addr(node, 0), e, count * 16);
    if (!rc) {
        memmove(e + 2 * (k + 2), e + 2 * (k + 1), (count - k - 1) * 16);
        e[2 * (k + 1)] = FX(UNFX(e[2 * k]) + (int64_t)in->lsize);
        e[2 * (k + 1) + 1] = in->addr;
        for (uint64_t j = k + 2; j <= count; j++) e[2 * j] = FX(UNFX(e[2 * j]) + 1);
        count++;
        if (count <= cap) {
            rc = wr(h, entry_addr(node, k + 1), e + 2 * (k + 1), (count - k - 1) * 16)
                 || wr64(h, node + 8, FX(count));
            out->kind = CARRY_PLUS;
        } else {
            uint64_t half = count / 2, right, lsize = (uint64_t)UNFX(e[2 * half]);
            uint64_t *zeros = PyMem_Calloc(count - half, 16);
            rc = !zeros;
            if (rc) PyErr_NoMemory();
            if (!rc) rc = new_node(h, h->node_max > cap ? h->node_max : cap, e + 2 * half, count - half, &right);
            if (!rc) rc = wr(h, entry_addr(node, 0), e, half * 16)
                          || wr(h, entry_addr(node, half), zeros, (count - 1 - half) * 16)
                          || wr64(h, node + 8, FX(half));
            PyMem_Free(zeros);
            *out = (carry){CARRY_SPLIT, right, lsize, held + 1 - lsize};
        }
    }
    PyMem_Free(e);
    return rc ? -1 : 0;
}

/* The leaf step of an insert: room in the leaf, a bigger leaf, or a split. */
static int leaf_insert(Heap *h, const vpath *p, uint64_t w, carry *out) {
    uint64_t c = p->leaf_count, cap = p->leaf_cap, off = p->off;
    if (c < cap) {   /* the common case, an append above all: write from off on */
        uint64_t *items = PyMem_Malloc((c - off + 1) * 8);
        if (!items) { PyErr_NoMemory(); return -1; }
        items[0] = w;
        int rc = rd(h, item_addr(p->leaf, off), items + 1, (c - off) * 8)
                 || wr(h, item_addr(p->leaf, off), items, (c + 1 - off) * 8) || wr64(h, p->leaf + 8, FX(c + 1));
        PyMem_Free(items);
        out->kind = CARRY_PLUS;
        return rc ? -1 : 0;
    }
    uint64_t *items = PyMem_Malloc((c + 1) * 8);
    if (!items) { PyErr_NoMemory(); return -1; }
    int rc = rd(h, item_addr(p->leaf, 0), items, c * 8);
    if (!rc) {
        memmove(items + off + 1, items + off, (c - off) * 8);
        items[off] = w;
        if (cap < h->leaf_max) {
            uint64_t bigger = cap * 2 < LEAF_SMALL ? LEAF_SMALL : cap * 2;
            if (bigger > h->leaf_max) bigger = h->leaf_max;
            out->kind = CARRY_REPLACE;
            rc = new_leaf(h, bigger, items, c + 1, &out->addr);
        } else {
            /* An append leaves the full leaf full and starts a new one, so that
             * a vector built by appends has full leaves; a middle insert splits. */
            uint64_t keep = off == c ? c : (c + 1) / 2;
            uint64_t *zeros = PyMem_Calloc(c + 1 - keep, 8);
            rc = !zeros;
            if (rc) PyErr_NoMemory();
            if (!rc) rc = new_leaf(h, h->leaf_max, items + keep, c + 1 - keep, &out->addr);
            if (!rc && keep < c)
                rc = wr(h, item_addr(p->leaf, 0), items, keep * 8)
                     || wr(h, item_addr(p->leaf, keep), zeros, (c - keep) * 8)
                     || wr64(h, p->leaf + 8, FX(keep));
            PyMem_Free(zeros);
            out->kind = CARRY_SPLIT;
            out->lsize = keep;
            out->rsize = c + 1 - keep;
        }
    }
    PyMem_Free(items);
    return rc ? -1 : 0;
}

/* Inserts w before item i of the vector opened in p. */
static int vec_insert_word(Heap *h, vpath *opened, uint64_t i, uint64_t w) {
    vpath p = *opened;
    uint64_t vaddr = p.vaddr;
    carry c;
    if (vec_descend(h, &p, i, 1) || leaf_insert(h, &p, w, &c)) return -1;
    uint64_t child = p.leaf;
    for (int lvl = p.height - 1; lvl >= 0; lvl--) {
        uint64_t node = p.node[lvl], k = p.pos[lvl];
        if (c.kind == CARRY_PLUS) {
            if (shift_starts(h, node, k + 1, 1)) return -1;
        } else if (c.kind == CARRY_REPLACE) {
            if (wr64(h, entry_addr(node, k) + 8, c.addr) || shift_starts(h, node, k + 1, 1)) return -1;
            c.kind = CARRY_PLUS;
        } else {
            carry up;
            if (node_insert(h, node, k, p.held[lvl], &c, &up)) return -1;
            c = up;
        }
        child = node;
    }
    uint64_t root = p.root;
    int height = p.height;
    if (c.kind == CARRY_REPLACE) root = c.addr;
    if (c.kind == CARRY_SPLIT) {
        if (height + 1 >= MAX_HEIGHT) { PyErr_SetString(PyExc_MemoryError, "vector too deep"); return -1; }
        uint64_t e[4] = {FX(0), child, FX(c.lsize), c.addr};
        if (new_node(h, h->node_max, e, 2, &root)) return -1;
        height++;
    }
    return root == p.root && height == p.height ? 0 : vec_header_set(h, vaddr, height, root);
}

/* Drops entry k (its child emptied) from a node of count entries. */
static int drop_entry(Heap *h, uint64_t node, uint64_t k, uint64_t count) {
    uint64_t *e = PyMem_Calloc(count, 16);
    if (!e) { PyErr_NoMemory(); return -1; }
    int rc = rd(h, entry_addr(node, k + 1), e, (count - k - 1) * 16);
    for (uint64_t j = 0; !rc && j + k + 1 < count; j++) {
        if (!IS_FIX(e[2 * j]) || UNFX(e[2 * j]) < 1) rc = corrupt(node, "entry %llu has a bad start",
                                                                  (unsigned long long)(j + k + 1));
        else e[2 * j] = FX(UNFX(e[2 * j]) - 1);
    }
    if (!rc) rc = wr(h, entry_addr(node, k), e, (count - k) * 16);
    PyMem_Free(e);
    return rc || (count > 1 && wr64(h, node + 8, FX(count - 1))) ? -1 : 0;
}

static int vec_delete_at(Heap *h, uint64_t vaddr, uint64_t i) {
    vpath p;
    if (vec_locate(h, vaddr, i, 0, &p)) return -1;
    uint64_t c = p.leaf_count, off = p.off;
    uint64_t *buf = PyMem_Malloc((c + 1) * 8);
    if (!buf) { PyErr_NoMemory(); return -1; }
    int rc = rd(h, item_addr(p.leaf, off + 1), buf, (c - off - 1) * 8);
    buf[c - off - 1] = W_EMPTY;
    if (!rc) rc = wr(h, item_addr(p.leaf, off), buf, (c - off) * 8) || wr64(h, p.leaf + 8, FX(c - 1));
    PyMem_Free(buf);
    if (rc) return -1;
    int empty = c == 1;
    for (int lvl = p.height - 1; lvl >= 0; lvl--) {
        uint64_t node = p.node[lvl], k = p.pos[lvl], count;
        objinfo o;
        if (!empty) {
            if (shift_starts(h, node, k + 1, -1)) return -1;
            continue;
        }
        if (node_open(h, node, &o, &count) || drop_entry(h, node, k, count)) return -1;
        empty = count == 1;   /* a node with no entries is dropped from its parent in turn */
    }
    uint64_t root = p.root, len = p.len - 1;
    int height = p.height;
    if (len == 0 && height > 0) {
        if (new_leaf(h, LEAF_SMALL, NULL, 0, &root)) return -1;
        height = 0;
    }
    while (height > 0) {   /* a root with one child gives way to it */
        objinfo o;
        uint64_t count;
        if (node_open(h, root, &o, &count)) return -1;
        if (count != 1) break;
        if (rd64(h, entry_addr(root, 0) + 8, &root)) return -1;
        height--;
    }
    return root == p.root && height == p.height ? 0 : vec_header_set(h, vaddr, height, root);
}

/* -- the table ---------------------------------------------------------------- */
/*
** A table is CPython's compact dict, persistent: the TABLE header (count,
** used, store) never moves; its store holds the capacity E, the index size I
** (0 for stores of at most TABLE_LINEAR entries, which are scanned), I index
** slots (fixnum entry numbers, -1 for empty) and E entries of (hash, key,
** value) in insertion order.  A deleted entry keeps its hash and has key and
** value ABSENT, so iteration order is insertion order, as in a Python dict.
** An insert writes one entry and one index slot; a full store is rebuilt with
** room to grow (entries_for: at least half again the live count, so amortised
** O(1) pages per insert).  A store copied from a dict of at most TABLE_LINEAR
** keys fits it exactly (entries_for_copy).
**
** Key hashes must be the same in every process, so they are not Python's
** str hash: numbers use Python's numeric hash (deterministic, and 1, 1.0 and
** True hash alike, as they must since they are equal), strings and bytes a
** keyed XXH64, handles their address.
*/

#define HASH_MASK (((uint64_t)1 << 60) - 1)
#define SEED_BYTES 0x62797465735f5f5full   /* keeps b"a" and "a" apart */
#define SEED_TUPLE 0x7475706c655f5f5full

typedef struct {
    uint64_t taddr, count, used, store, E, I, index, entries;
} tab;

static int foreign_key_word(Heap *h, PyObject *k, int create, uint64_t *w);

/* The hash of a table key.  A value of the layer above (a symbol, a
 * character, '()) is hashed by its word, which *kword gets (0 for other
 * keys); a symbol the image has never seen is made when create is set, and
 * otherwise 1 is returned: no table can hold it.  -1: an error. */
static int key_hash_of(Heap *h, PyObject *k, int create, uint64_t *out, uint64_t *kword) {
    uint64_t x;
    if (kword) *kword = 0;
    if (PyUnicode_Check(k)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(k, &n);
        if (!s) return -1;
        x = core_hash((const uint8_t *)s, (size_t)n, h->seed);
    } else if (PyBytes_Check(k)) {
        x = core_hash((const uint8_t *)PyBytes_AS_STRING(k), (size_t)PyBytes_GET_SIZE(k), h->seed ^ SEED_BYTES);
    } else if (PyLong_Check(k) || PyFloat_Check(k)) {   /* bool is an int */
        if (PyFloat_Check(k) && PyFloat_AS_DOUBLE(k) != PyFloat_AS_DOUBLE(k)) {
            x = 0;   /* NaN: Python hashes it by identity, which does not persist */
        } else {
            Py_hash_t ph = PyObject_Hash(k);
            pc_clear(h);   /* a subclass's __hash__ is Python code */
            if (ph == -1 && PyErr_Occurred()) return -1;
            x = mix64((uint64_t)ph);
        }
    } else if (k == Py_None) {
        x = mix64(W_NONE);
    } else if (PyTuple_Check(k)) {
        x = SEED_TUPLE ^ (uint64_t)PyTuple_GET_SIZE(k);
        if (Py_EnterRecursiveCall(" while hashing a key")) return -1;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(k); i++) {
            uint64_t e;
            int r = key_hash_of(h, PyTuple_GET_ITEM(k, i), create, &e, NULL);
            if (r) { Py_LeaveRecursiveCall(); return r; }
            x = mix64(x ^ e) + (uint64_t)i;
        }
        Py_LeaveRecursiveCall();
    } else if (is_handle(h, k)) {
        uint64_t w;
        if (handle_word(h, k, &w)) return -1;
        x = mix64(w);
    } else {
        uint64_t w;
        int r = foreign_key_word(h, k, create, &w);
        if (r <= 0) return r < 0 ? -1 : 1;
        if (kword) *kword = w;
        x = mix64(w);
    }
    *out = x & HASH_MASK;
    return 0;
}

static int key_hash(Heap *h, PyObject *k, uint64_t *out) {
    int r = key_hash_of(h, k, 1, out, NULL);
    return r ? -1 : 0;
}

static int tab_open(Heap *h, uint64_t taddr, tab *t) {
    objinfo o, s;
    int64_t count, used, E, I;
    if (obj_of_class(h, taddr, C_TABLE, &o) || slot(h, &o, T_STORE, &t->store)
        || obj_of_class(h, t->store, C_TSTORE, &s) || fix_slot(h, &s, 0, 1, (int64_t)s.size, &E)
        || fix_slot(h, &s, 1, 0, (int64_t)s.size, &I)
        || fix_slot(h, &o, T_USED, 0, E, &used) || fix_slot(h, &o, T_COUNT, 0, used, &count))
        return -1;
    if ((I && (I & (I - 1))) || (I && I <= E) || s.size != 2 + (uint64_t)I + 3 * (uint64_t)E)
        return corrupt(t->store, "a table store of %llu slots for %lld entries and index %lld",
                       (unsigned long long)s.size, (long long)E, (long long)I);
    t->taddr = taddr;
    t->count = (uint64_t)count;
    t->used = (uint64_t)used;
    t->E = (uint64_t)E;
    t->I = (uint64_t)I;
    t->index = s.body + 16;
    t->entries = t->index + 8 * t->I;
    return 0;
}

static uint64_t ent(const tab *t, uint64_t e) { return t->entries + 24 * e; }

static int bytes_equal(Heap *h, uint64_t w, uint64_t cls, const char *s, Py_ssize_t n) {
    objinfo o;
    if (!IS_PTR(w)) return 0;
    if (obj(h, w, &o)) return -1;
    if (o.cls != cls || o.size != (uint64_t)n) return 0;
    char buf[256];
    for (uint64_t done = 0; done < (uint64_t)n;) {
        uint64_t take = (uint64_t)n - done < sizeof buf ? (uint64_t)n - done : sizeof buf;
        if (rd(h, o.body + done, buf, take)) return -1;
        if (memcmp(buf, s + done, take)) return 0;
        done += take;
    }
    return 1;
}

/* Is the stored key word w equal to the Python key k (whose immediate word,
 * if it has one, is kimm)? */
static int key_equals(Heap *h, uint64_t w, PyObject *k, uint64_t kimm) {
    if (kimm && w == kimm) return 1;
    if (w == W_ABSENT || w == W_EMPTY) return 0;
    if (PyUnicode_Check(k)) {
        if (kimm) return 0;   /* a short string is always immediate */
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(k, &n);
        return s ? bytes_equal(h, w, C_STRING, s, n) : -1;
    }
    if (PyBytes_Check(k))
        return kimm ? 0 : bytes_equal(h, w, C_BYTES, PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k));
    if (k == Py_None || is_handle(h, k)) return 0;   /* identity only */
    PyObject *stored = decode(h, w);   /* numbers of other types, tuples */
    if (!stored) return -1;
    int eq = PyObject_RichCompareBool(stored, k, Py_EQ);
    pc_clear(h);
    Py_DECREF(stored);
    return eq;
}

static int entry_matches(Heap *h, const tab *t, uint64_t e, uint64_t hash, PyObject *k, uint64_t kimm) {
    uint64_t hk[2];
    if (rd(h, ent(t, e), hk, 16)) return -1;
    if (hk[0] != FX(hash)) return 0;
    return key_equals(h, hk[1], k, kimm);
}

/* 1 and the entry when found; 0 and the free index slot (if indexed) when not. */
static int tab_find(Heap *h, const tab *t, PyObject *k, uint64_t hash, uint64_t kimm,
                    uint64_t *entry, uint64_t *islot) {
    if (!t->I) {
        for (uint64_t e = 0; e < t->used; e++) {
            int m = entry_matches(h, t, e, hash, k, kimm);
            if (m) { *entry = e; return m; }
        }
        return 0;
    }
    uint64_t mask = t->I - 1, j = hash & mask;
    for (uint64_t probes = 0; probes < t->I; probes++, j = (j + 1) & mask) {
        uint64_t w;
        if (rd64(h, t->index + 8 * j, &w)) return -1;
        if (w == FX(-1)) { *islot = j; return 0; }
        if (!IS_FIX(w) || UNFX(w) < 0 || (uint64_t)UNFX(w) >= t->used)
            return corrupt(t->store, "index slot %llu holds 0x%llx", (unsigned long long)j, (unsigned long long)w);
        int m = entry_matches(h, t, (uint64_t)UNFX(w), hash, k, kimm);
        if (m) { *entry = (uint64_t)UNFX(w); return m; }
    }
    return corrupt(t->store, "its index has no free slot");
}

static uint64_t entries_for(uint64_t count) {
    uint64_t want = count + (count / 2 > 2 ? count / 2 : 2);
    if (want <= 4) return 4;
    if (want <= TABLE_LINEAR) return TABLE_LINEAR;
    uint64_t e = TABLE_LINEAR;
    while (e < want) e *= 2;
    return e;
}

/* A store made from a Python dict fits it exactly when a scan serves it (up
 * to TABLE_LINEAR entries): most such dicts (a mail, a record-like mapping)
 * never gain a key, and the headroom entries_for leaves would be most of
 * their bytes (a 6-key dict: 160 bytes of store instead of 656, with an
 * index).  Inserting into a full store rebuilds it with the usual headroom. */
static uint64_t entries_for_copy(uint64_t count) {
    if (count > TABLE_LINEAR) return entries_for(count);
    return count > 4 ? count : 4;
}

/* Builds a store of E entries for n of them (hash, key, value triples) and
 * points the table at it. */
static int store_build_sized(Heap *h, uint64_t taddr, const uint64_t *triples, uint64_t n,
                             uint64_t E) {
    uint64_t I = E > TABLE_LINEAR ? 2 * E : 0, size = 2 + I + 3 * E, addr;
    uint64_t *buf = PyMem_Calloc(size, 8);
    if (!buf) { PyErr_NoMemory(); return -1; }
    buf[0] = FX(E);
    buf[1] = FX(I);
    for (uint64_t j = 0; j < I; j++) buf[2 + j] = FX(-1);
    memcpy(buf + 2 + I, triples, n * 24);
    for (uint64_t e = 0; e < n && I; e++) {
        uint64_t j = (uint64_t)UNFX(triples[3 * e]) & (I - 1);
        while (buf[2 + j] != FX(-1)) j = (j + 1) & (I - 1);
        buf[2 + j] = FX(e);
    }
    int rc = new_words(h, C_TSTORE, FMT_POINTERS, buf, size, &addr);
    PyMem_Free(buf);
    if (rc) return -1;
    uint64_t hdr[3] = {FX(n), FX(n), addr};
    return wr(h, taddr + 8, hdr, 24);
}

static int store_build(Heap *h, uint64_t taddr, const uint64_t *triples, uint64_t n) {
    return store_build_sized(h, taddr, triples, n, entries_for(n));
}

static int table_build(Heap *h, uint64_t taddr, PyObject *dict, PyObject **memo) {
    Py_ssize_t n = PyDict_GET_SIZE(dict), pos = 0, i = 0;
    uint64_t *triples = PyMem_Calloc((size_t)(n ? n : 1) * 3, 8);
    if (!triples) { PyErr_NoMemory(); return -1; }
    PyObject *k, *v;
    int rc = 0;
    while (!rc && i < n && PyDict_Next(dict, &pos, &k, &v)) {
        uint64_t hash;
        Py_INCREF(k);
        Py_INCREF(v);
        rc = key_hash(h, k, &hash) || encode(h, k, memo, &triples[3 * i + 1])
             || encode(h, v, memo, &triples[3 * i + 2]);
        triples[3 * i] = FX(hash);
        Py_DECREF(k);
        Py_DECREF(v);
        i++;
    }
    if (!rc) rc = store_build_sized(h, taddr, triples, (uint64_t)i, entries_for_copy((uint64_t)i));
    PyMem_Free(triples);
    return rc;
}

/* Rebuilds the store with only the live entries, in order. */
static int tab_rebuild(Heap *h, const tab *t) {
    uint64_t *all = PyMem_Malloc((t->used ? t->used : 1) * 24), n = 0;
    if (!all) { PyErr_NoMemory(); return -1; }
    int rc = rd(h, t->entries, all, t->used * 24);
    for (uint64_t e = 0; !rc && e < t->used; e++)
        if (all[3 * e + 1] != W_ABSENT) {
            memmove(all + 3 * n, all + 3 * e, 24);
            n++;
        }
    if (!rc && n != t->count) rc = corrupt(t->taddr, "counts %llu entries but holds %llu",
                                           (unsigned long long)t->count, (unsigned long long)n);
    if (!rc) rc = store_build(h, t->taddr, all, n);
    PyMem_Free(all);
    return rc;
}

static int tab_set_word(Heap *h, uint64_t taddr, PyObject *k, uint64_t vw);

static int tab_set(Heap *h, uint64_t taddr, PyObject *k, PyObject *v) {
    uint64_t vw;
    return encode_top(h, v, &vw) || tab_set_word(h, taddr, k, vw) ? -1 : 0;
}

/* Binds key k to the value word vw (already encoded). */
static int tab_set_word(Heap *h, uint64_t taddr, PyObject *k, uint64_t vw) {
    tab t;
    uint64_t hash, kimm = 0, e, j = 0, kw;
    if (tab_open(h, taddr, &t) || key_hash_of(h, k, 1, &hash, &kimm) || (!kimm && immediate_of(h, k, &kimm) < 0))
        return -1;
    int found = tab_find(h, &t, k, hash, kimm, &e, &j);
    if (found < 0) return -1;
    if (found) return wr64(h, ent(&t, e) + 16, vw);
    if (encode_top(h, k, &kw)) return -1;
    if (t.used == t.E) {
        if (tab_rebuild(h, &t) || tab_open(h, taddr, &t)) return -1;
        if (t.I && tab_find(h, &t, k, hash, kimm, &e, &j) != 0)
            return PyErr_Occurred() ? -1 : corrupt(taddr, "a key reappeared while rebuilding");
    }
    uint64_t triple[3] = {FX(hash), kw, vw}, hdr[2] = {FX(t.count + 1), FX(t.used + 1)};
    if (wr(h, ent(&t, t.used), triple, 24)) return -1;
    if (t.I && wr64(h, t.index + 8 * j, FX(t.used))) return -1;
    return wr(h, taddr + 8, hdr, 16);
}

/* 1 (and the value, if out is given) when k is present. */
static int tab_lookup(Heap *h, uint64_t taddr, PyObject *k, tab *t, uint64_t *entry) {
    uint64_t hash, kimm = 0, j;
    if (tab_open(h, taddr, t)) return -1;
    int r = key_hash_of(h, k, 0, &hash, &kimm);
    if (r) return r < 0 ? -1 : 0;   /* 1: a symbol the image has never seen is in no table */
    if (!kimm && immediate_of(h, k, &kimm) < 0) return -1;
    return tab_find(h, t, k, hash, kimm, entry, &j);
}

/* See key_hash_of.  1: the word; 0: an unseen symbol (create off); -1: error. */
static int foreign_key_word(Heap *h, PyObject *k, int create, uint64_t *w) {
    if (!h->encode_hook) {
        PyErr_Format(PyExc_TypeError, "unhashable type for an image table key: '%.100s'", Py_TYPE(k)->tp_name);
        return -1;
    }
    PyObject *memo = NULL, *t = call_hook(h, k, &memo);
    int rc = -1;
    if (t) {
        PyObject *kind = PyTuple_GET_ITEM(t, 0);
        if (PyUnicode_CompareWithASCIIString(kind, "symbol") == 0 && PyTuple_GET_SIZE(t) == 2) {
            if (create) {
                rc = symbol_word(h, PyTuple_GET_ITEM(t, 1), w) ? -1 : 1;
            } else {
                uint64_t table, e;
                tab tb;
                int found = meta(h, M_SYMBOLS, &table) ? -1 : tab_lookup(h, table, PyTuple_GET_ITEM(t, 1), &tb, &e);
                rc = found < 0 ? -1 : !found ? 0 : rd64(h, ent(&tb, e) + 16, w) ? -1 : 1;
            }
        } else if (PyUnicode_CompareWithASCIIString(kind, "char") == 0
                   || PyUnicode_CompareWithASCIIString(kind, "nil") == 0
                   || PyUnicode_CompareWithASCIIString(kind, "eof") == 0) {
            rc = encode_hooked(h, k, t, &memo, w) ? -1 : 1;
        } else {
            PyErr_Format(PyExc_TypeError, "unhashable type for an image table key: '%.100s'", Py_TYPE(k)->tp_name);
        }
    }
    Py_XDECREF(memo);
    return rc;
}

/* The image's one symbol of this name, made and interned on first use. */
static int symbol_word(Heap *h, PyObject *name, uint64_t *out) {
    uint64_t table, e;
    tab tb;
    if (!PyUnicode_Check(name)) { PyErr_SetString(PyExc_TypeError, "a symbol's name is a str"); return -1; }
    if (meta(h, M_SYMBOLS, &table)) return -1;
    int found = tab_lookup(h, table, name, &tb, &e);
    if (found < 0) return -1;
    if (found) return rd64(h, ent(&tb, e) + 16, out);
    uint64_t nw;
    if (encode_top(h, name, &nw) || new_words(h, C_SYMBOL, FMT_POINTERS, &nw, 1, out)) return -1;
    return tab_set_word(h, table, name, *out);
}

static int tab_remove_entry(Heap *h, const tab *t, uint64_t e) {
    uint64_t gone[2] = {W_ABSENT, W_ABSENT};
    if (wr(h, ent(t, e) + 8, gone, 16)) return -1;
    if (t->count == 1) {   /* empty again: start over small, dropping the tombstones */
        uint64_t none[1];
        return store_build(h, t->taddr, none, 0);
    }
    return wr64(h, t->taddr + 8, FX(t->count - 1));
}

/* -- the collector: marking into a side bitmap, and sweeping ------------------ */
/*
** mark() sets one bit per heap word, at object starts, in memory of its own:
** marking reads pages but never writes them.  The blob index is weak: its
** store is kept but not traced, and afterwards entries whose blob is
** unmarked are cleared (the only writes marking makes).  sweep() walks the
** heap once, turns every run of dead objects and old free chunks into one
** free chunk, rebuilds the bins and the accounting, lowers M_TOP over a dead
** tail, and returns the pages that now hold no object header or data, for
** the page table to drop.  No allocation may happen between mark and sweep.
*/

static int marked(Heap *h, uint64_t addr) { return bm_get(&h->marks, addr); }

static int mark_push(Heap *h, uint64_t w, uint64_t from) {
    if (!IS_PTR(w)) return 0;
    if (w & 7 || w < h->marks_base || w >= h->marks_top)
        return corrupt(from, "holds a reference 0x%llx outside the heap", (unsigned long long)w);
    if (bm_get(&h->marks, w)) return 0;
    objinfo o;   /* checked before it is marked: the bitmap grows only over real objects */
    if (parse_header(h, w, h->marks_base, h->marks_top, CLASS_MAX + 1, &o)) return -1;
    if (bm_set(&h->marks, w)) return -1;
    if (h->n_stack == h->cap_stack) {
        size_t cap = h->cap_stack ? h->cap_stack * 2 : 1024;
        uint64_t *s = PyMem_Realloc(h->stack, cap * 8);
        if (!s) { PyErr_NoMemory(); return -1; }
        h->stack = s;
        h->cap_stack = cap;
    }
    h->stack[h->n_stack++] = w;
    return 0;
}

/* Slots traced per view: a page's worth keeps the scratch buffer small. */
#define TRACE_CHUNK 512

static int mark_drain(Heap *h, uint64_t nclasses, uint64_t weak_store) {
    while (h->n_stack) {
        uint64_t a = h->stack[--h->n_stack];
        objinfo o;
        if (parse_header(h, a, h->marks_base, h->marks_top, nclasses, &o)) return -1;
        if (o.cls == C_FREE) return corrupt(a, "a live reference to freed memory");
        if (o.fmt != FMT_POINTERS || a == weak_store) continue;
        for (uint64_t i = 0; i < o.size; i += TRACE_CHUNK) {
            uint64_t n = o.size - i < TRACE_CHUNK ? o.size - i : TRACE_CHUNK;
            const uint64_t *w = view(h, o.body + 8 * i, n);
            if (!w) return -1;
            uint64_t copy[TRACE_CHUNK];
            memcpy(copy, w, n * 8);   /* mark_push may grow the stack, never the view; be safe */
            for (uint64_t j = 0; j < n; j++)
                if (mark_push(h, copy[j], a)) return -1;
        }
    }
    return 0;
}

/* Clears the weak table's entries whose value died; keeps the keys of the rest. */
static int clear_weak(Heap *h, uint64_t taddr, uint64_t nclasses) {
    tab t;
    if (!taddr || tab_open(h, taddr, &t)) return taddr ? -1 : 0;
    uint64_t cleared = 0;
    for (uint64_t e = 0; e < t.used; e++) {
        uint64_t kv[2];
        if (rd(h, ent(&t, e) + 8, kv, 16)) return -1;
        if (kv[0] == W_ABSENT) continue;
        if (IS_PTR(kv[1]) && kv[1] >= h->marks_base && kv[1] < h->marks_top && !marked(h, kv[1])) {
            uint64_t gone[2] = {W_ABSENT, W_ABSENT};
            if (wr(h, ent(&t, e) + 8, gone, 16)) return -1;
            cleared++;
        } else if (mark_push(h, kv[0], t.store) || mark_drain(h, nclasses, 0)) {
            return -1;
        }
    }
    return cleared ? wr64(h, taddr + 8, FX(t.count - cleared)) : 0;
}

static const int meta_roots[] = {M_ROOT, M_CLASSES, M_SYMBOLS, M_BLOBS, M_ACTORS, M_SYSTEM};

/* The class each meta root must be; M_ACTORS may also be 0 (none yet).  A
 * collection that skipped a damaged root would free everything only it
 * reaches, so a root that is not what it must be stops the collection. */
static int check_meta_root(Heap *h, int index, uint64_t w) {
    static const struct { int index; uint64_t cls; int optional; } want[] = {
        {M_ROOT, C_TABLE, 0}, {M_CLASSES, C_VECTOR, 0}, {M_SYMBOLS, C_TABLE, 0},
        {M_BLOBS, C_TABLE, 0}, {M_ACTORS, C_TABLE, 1}, {M_SYSTEM, C_TABLE, 1}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        if (want[i].index != index) continue;
        objinfo o;
        if (!w && want[i].optional) return 0;
        if (!IS_PTR(w))
            return corrupt(0, "meta word %d holds 0x%llx, not an object", index, (unsigned long long)w);
        return obj_of_class(h, w, want[i].cls, &o);
    }
    return 0;
}

static int mark_all(Heap *h, PyObject *roots) {
    uint64_t base, top, n, w, weak = 0, weak_store = 0;
    if (heap_bounds(h, &base, &top, &n)) return -1;
    bm_free(&h->marks);
    bm_init(&h->marks, base);
    h->marking = 1;
    h->marks_base = base;
    h->marks_top = top;
    h->n_stack = 0;
    if (meta(h, M_BLOBS, &weak)) return -1;
    if (weak) {
        tab t;
        if (tab_open(h, weak, &t)) return -1;
        weak_store = t.store;
    }
    for (size_t i = 0; i < sizeof meta_roots / sizeof meta_roots[0]; i++)
        if (meta(h, meta_roots[i], &w) || check_meta_root(h, meta_roots[i], w) || mark_push(h, w, 0))
            return -1;
    Py_ssize_t nroots = PyList_GET_SIZE(roots);
    for (Py_ssize_t i = 0; i < nroots; i++) {
        if (as_u64(PyList_GET_ITEM(roots, i), &w)) {
            PyErr_SetString(PyExc_TypeError, "mark() takes a list of addresses");
            return -1;
        }
        if (mark_push(h, w, 0)) return -1;
    }
    if (mark_drain(h, n, weak_store)) return -1;
    return clear_weak(h, weak, n);
}

typedef struct {
    uint64_t objects, obj_words, free_words, chunks, freed_objects, freed_words;
    uint64_t bins[N_BINS];
    PyObject *pages;
} sweep_state;

static int release_pages(Heap *h, sweep_state *s, uint64_t first, uint64_t end) {
    if (first >= end) return 0;
    PyObject *range = Py_BuildValue("(KK)", (unsigned long long)first, (unsigned long long)(end - first));
    int rc = range ? PyList_Append(s->pages, range) : -1;
    Py_XDECREF(range);
    return rc;
}

static int sweep_flush(Heap *h, sweep_state *s, uint64_t start, uint64_t end) {
    uint64_t ps = h->page_size;
    s->free_words += (end - start) / 8;
    if (free_run(h, s->bins, start, (end - start) / 8, &s->chunks)) return -1;
    /* A chunk's first page keeps its header (and link); pages wholly past it go. */
    return release_pages(h, s, (start + 24 + ps - 1) / ps, end / ps);
}

static int sweep_all(Heap *h, sweep_state *s) {
    uint64_t base, top, n, ps = h->page_size, run = 0, addr;
    if (heap_bounds(h, &base, &top, &n)) return -1;
    if (!h->marking || base != h->marks_base || top != h->marks_top) {
        PyErr_SetString(PyExc_RuntimeError, "sweep() needs a mark() of the same heap just before");
        return -1;
    }
    memset(s->bins, 0, sizeof s->bins);
    if (wr(h, M_BINS * 8, s->bins, sizeof s->bins)) return -1;
    for (addr = base; addr < top;) {
        objinfo o;
        if (parse_header(h, addr, base, top, n, &o)) return -1;
        if (o.cls == C_FREE || !marked(h, addr)) {
            /* A dead extent must hold no marked object: a forged size would
             * free a live one. */
            if (bm_any(&h->marks, addr + 8, addr + o.words * 8))
                return corrupt(addr, "its size covers a live object");
            if (!run) run = addr;
            if (o.cls != C_FREE) { s->freed_objects++; s->freed_words += o.words; }
        } else {
            if (run && sweep_flush(h, s, run, addr)) return -1;
            run = 0;
            s->objects++;
            s->obj_words += o.words;
        }
        addr += o.words * 8;
    }
    if (run) {   /* a dead tail goes back to the bump region */
        if (release_pages(h, s, (run + ps - 1) / ps, (top + ps - 1) / ps) || set_meta(h, M_TOP, run))
            return -1;
    }
    bm_free(&h->marks);
    h->marking = 0;
    return set_meta(h, M_OBJECTS, s->objects) || set_meta(h, M_OBJ_WORDS, s->obj_words)
           || set_meta(h, M_FREE_WORDS, s->free_words) || set_meta(h, M_FREE_CHUNKS, s->chunks)
           || add_meta(h, M_GCS, 1);
}

/* -- the heap verifier ---------------------------------------------------------- */
/*
** heap_check proves the invariants of the header comment by walking the heap
** twice: once to learn where objects and free chunks start, once to check
** every reference and every structure.  Beyond references, it checks that
**  - every slot that holds a value holds a valid value word (not EMPTY,
**    ABSENT, tag 7, an unknown special, a short string that is not UTF-8 or
**    not zero-padded, a code point past U+10FFFF);
**  - the inside of a vector or table (leaves, nodes, stores) is referred to
**    only by its own vector or table, exactly once;
**  - every table entry's hash is the hash of its key, every index slot names
**    a used entry and no entry twice;
**  - the meta roots are objects of the classes they must be.
** Blobs' contents (their hash and length) are checked by image/ in Python,
** where the blob key and zstd live.
*/

typedef struct {
    uint64_t base, top, nclasses;
    bitmap starts, frees, inner;   /* object starts, free chunks, inner objects reached */
    uint64_t objects, obj_words, free_words, chunks, vectors, tables;
} verify_state;

static int is_object_start(const verify_state *v, uint64_t w) {
    return !(w & 7) && w >= v->base && w < v->top && bm_get(&v->starts, w) && !bm_get(&v->frees, w);
}

static int utf8_ok(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!len || i + len > n) return 0;
        uint32_t cp = len == 1 ? c : len == 2 ? c & 0x1F : len == 3 ? c & 0x0F : c & 0x07;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        static const uint32_t least[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < least[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += len;
    }
    return 1;
}

/* Is w a word a user-visible slot may hold (references are checked apart)? */
static int value_word_ok(uint64_t w) {
    switch (w & TAG_MASK) {
    case TAG_PTR: return w != W_EMPTY;
    case TAG_FIX: case TAG_FLOAT: return 1;
    case TAG_CHAR: return (w >> 3) <= 0x10FFFF;
    case TAG_SSTR: case TAG_SBYTES: {
        size_t n = (w >> 3) & 7;
        if (n < 7 && (w >> (8 + 8 * n))) return 0;   /* not zero-padded: equality by word fails */
        return (w & TAG_MASK) == TAG_SBYTES || utf8_ok((const uint8_t *)&w + 1, n);
    }
    case TAG_SPECIAL: return (w >> 3) < N_SPECIALS && w != W_ABSENT;
    default: return 0;
    }
}

static int check_value(uint64_t holder, uint64_t i, uint64_t w) {
    if (value_word_ok(w)) return 0;
    return corrupt(holder, "slot %llu holds 0x%llx, which is not a value", (unsigned long long)i,
                   (unsigned long long)w);
}

/* An inner object (leaf, node, store) may be reached from its owner only,
 * and once. */
static int reach_inner(verify_state *v, uint64_t holder, uint64_t k, uint64_t addr) {
    if (!is_object_start(v, addr))
        return corrupt(holder, "entry %llu refers to 0x%llx, where no object starts",
                       (unsigned long long)k, (unsigned long long)addr);
    if (bm_get(&v->inner, addr))
        return corrupt(addr, "reached twice (a vector or table shares it)");
    return bm_set(&v->inner, addr);
}

/* The items under a vector subtree; checks counts, sizes, values and empty slots. */
static int verify_subtree(Heap *h, verify_state *v, uint64_t holder, uint64_t k, uint64_t addr,
                          int height, uint64_t *total) {
    objinfo o;
    uint64_t count;
    if (reach_inner(v, holder, k, addr)) return -1;
    if (height == 0) {
        if (leaf_open(h, addr, &o, &count)) return -1;
        for (uint64_t j = 0; j + 1 < o.size; j++) {
            uint64_t w;
            if (rd64(h, item_addr(addr, j), &w)) return -1;
            if (j < count ? check_value(addr, j + 1, w) : w != W_EMPTY
                                ? corrupt(addr, "leaf slot %llu past its count is not empty", (unsigned long long)j)
                                : 0)
                return -1;
        }
        *total = count;
        return 0;
    }
    if (node_open(h, addr, &o, &count)) return -1;
    uint64_t sum = 0, *e = PyMem_Malloc((o.size - 1) * 8);
    if (!e) { PyErr_NoMemory(); return -1; }
    int rc = rd(h, entry_addr(addr, 0), e, (o.size - 1) * 8);
    for (uint64_t j = 2 * count; !rc && j < o.size - 1; j++)
        if (e[j] != W_EMPTY) rc = corrupt(addr, "node slot %llu past its count is not empty", (unsigned long long)(j + 1));
    for (uint64_t j = 0; !rc && j < count; j++) {   /* each start is the items before it */
        uint64_t sub = 0;
        if (!IS_FIX(e[2 * j]) || UNFX(e[2 * j]) < 0 || (uint64_t)UNFX(e[2 * j]) != sum)
            rc = corrupt(addr, "entry %llu starts at item %lld, its siblings before it hold %llu",
                         (unsigned long long)j, (long long)UNFX(e[2 * j]), (unsigned long long)sum);
        if (!rc) rc = verify_subtree(h, v, addr, j, e[2 * j + 1], height - 1, &sub);
        if (!rc && sub == 0) rc = corrupt(e[2 * j + 1], "an empty subtree under a vector node");
        sum += sub;
    }
    PyMem_Free(e);
    *total = sum;
    return rc;
}

static int verify_vector(Heap *h, verify_state *v, uint64_t addr) {
    vpath p;
    uint64_t total;
    if (vec_open(h, addr, &p) || verify_subtree(h, v, addr, V_ROOT, p.root, p.height, &total)) return -1;
    if (total != p.len)
        return corrupt(addr, "a vector of length %llu holds %llu items", (unsigned long long)p.len,
                       (unsigned long long)total);
    return 0;
}

/* Every live entry: a value key and value, the hash of its key, found by probing. */
static int verify_entry(Heap *h, const tab *t, uint64_t e, const uint64_t *tr) {
    if (check_value(t->store, 2 + t->I + 3 * e + 1, tr[1]) || check_value(t->store, 2 + t->I + 3 * e + 2, tr[2]))
        return -1;
    uint64_t hash;
    /* Keys of the layer above (symbols, characters, '()) are hashed by their word. */
    int by_word = (tr[1] & TAG_MASK) == TAG_CHAR || tr[1] == W_NIL || tr[1] == W_EOF;
    if (!by_word && IS_PTR(tr[1])) {
        objinfo ko;
        if (obj(h, tr[1], &ko)) return -1;
        by_word = ko.cls == C_SYMBOL;
    }
    if (by_word) {
        hash = mix64(tr[1]) & HASH_MASK;
    } else {
        PyObject *key = decode_in(h, tr[1], t->store);
        if (!key) return -1;
        int bad = key_hash(h, key, &hash);
        Py_DECREF(key);
        if (bad) {
            if (!PyErr_ExceptionMatches(PyExc_TypeError)) return -1;
            PyErr_Clear();
            return corrupt(t->store, "entry %llu has a key that cannot be hashed", (unsigned long long)e);
        }
    }
    if (FX(hash) != tr[0])
        return corrupt(t->store, "entry %llu's hash is not its key's", (unsigned long long)e);
    if (!t->I) return 0;
    uint64_t mask = t->I - 1, j = hash & mask, w = FX(-1);
    for (uint64_t probes = 0; probes < t->I; probes++, j = (j + 1) & mask) {
        if (rd64(h, t->index + 8 * j, &w)) return -1;
        if (w == FX(e) || w == FX(-1)) break;
    }
    if (w != FX(e)) return corrupt(t->store, "entry %llu cannot be found through the index", (unsigned long long)e);
    return 0;
}

static int verify_index(Heap *h, const tab *t) {
    bitmap named;
    bm_init(&named, 0);
    int rc = 0;
    for (uint64_t j = 0; !rc && j < t->I; j++) {
        uint64_t w;
        if ((rc = rd64(h, t->index + 8 * j, &w))) break;
        if (w == FX(-1)) continue;
        if (!IS_FIX(w) || UNFX(w) < 0 || (uint64_t)UNFX(w) >= t->used)
            rc = corrupt(t->store, "index slot %llu holds 0x%llx, not a used entry", (unsigned long long)j, (unsigned long long)w);
        else if (bm_get(&named, (uint64_t)UNFX(w) * 8))
            rc = corrupt(t->store, "two index slots name entry %lld", (long long)UNFX(w));
        else
            rc = bm_set(&named, (uint64_t)UNFX(w) * 8);
    }
    bm_free(&named);
    return rc;
}

static int verify_table(Heap *h, verify_state *v, uint64_t addr) {
    tab t;
    uint64_t live = 0;
    if (tab_open(h, addr, &t) || reach_inner(v, addr, T_STORE, t.store) || verify_index(h, &t)) return -1;
    for (uint64_t e = 0; e < t.E; e++) {
        uint64_t tr[3];
        if (rd(h, ent(&t, e), tr, 24)) return -1;
        if (e >= t.used) {
            if (tr[0] || tr[1] || tr[2]) return corrupt(t.store, "entry %llu past the used ones is not empty", (unsigned long long)e);
            continue;
        }
        if (!IS_FIX(tr[0])) return corrupt(t.store, "entry %llu has no hash", (unsigned long long)e);
        if (tr[1] == W_ABSENT) {
            if (tr[2] != W_ABSENT) return corrupt(t.store, "deleted entry %llu keeps a value", (unsigned long long)e);
            continue;
        }
        live++;
        if (verify_entry(h, &t, e, tr)) return -1;
    }
    if (live != t.count)
        return corrupt(addr, "a table counting %llu entries holds %llu", (unsigned long long)t.count,
                       (unsigned long long)live);
    return 0;
}

static int is_inner_class(uint64_t cls) { return cls == C_VLEAF || cls == C_VNODE || cls == C_TSTORE; }

/* Classes whose every slot is a value (the structured ones are checked by
 * their own walks). */
static int holds_values(uint64_t cls) {
    return cls != C_VECTOR && cls != C_VLEAF && cls != C_VNODE && cls != C_TABLE && cls != C_TSTORE
           && cls != C_BLOB;
}

static int verify_slots(Heap *h, verify_state *v, const objinfo *o) {
    int values = holds_values(o->cls), owner = o->cls == C_VECTOR || o->cls == C_VNODE || o->cls == C_TABLE;
    for (uint64_t i = 0; i < o->size; i += TRACE_CHUNK) {
        uint64_t n = o->size - i < TRACE_CHUNK ? o->size - i : TRACE_CHUNK, copy[TRACE_CHUNK];
        const uint64_t *w = view(h, o->body + 8 * i, n);
        if (!w) return -1;
        memcpy(copy, w, n * 8);
        for (uint64_t j = 0; j < n; j++) {
            uint64_t x = copy[j], tag = x & TAG_MASK;
            if (IS_PTR(x)) {
                uint64_t hd;
                if (!is_object_start(v, x))
                    return corrupt(o->addr, "slot %llu refers to 0x%llx, where no object starts",
                                   (unsigned long long)(i + j), (unsigned long long)x);
                if (!owner && (rd64(h, x, &hd) || is_inner_class(hd >> 44)))
                    return PyErr_Occurred() ? -1 : corrupt(o->addr, "slot %llu refers to the inside of a vector or table at 0x%llx",
                                                           (unsigned long long)(i + j), (unsigned long long)x);
            }
            if (tag == 7 || (tag == TAG_SPECIAL && (x >> 3) >= N_SPECIALS))
                return corrupt(o->addr, "slot %llu holds 0x%llx, which is not a value",
                               (unsigned long long)(i + j), (unsigned long long)x);
            if (values && check_value(o->addr, i + j, x)) return -1;
        }
    }
    if (o->cls == C_VECTOR) { v->vectors++; return verify_vector(h, v, o->addr); }
    if (o->cls == C_TABLE) { v->tables++; return verify_table(h, v, o->addr); }
    if (o->cls == C_BLOB) {
        uint64_t w[3];
        objinfo d;
        if (rd(h, o->body, w, 24)) return -1;
        for (int k = 0; k < 2; k++)
            if (!IS_PTR(w[k]) || obj_of_class(h, w[k], C_BYTES, &d))
                return PyErr_Occurred() ? -1 : corrupt(o->addr, "blob slot %d is not a byte string", k);
        if (!IS_FIX(w[2]) || UNFX(w[2]) < 0) return corrupt(o->addr, "a blob without a length");
    }
    return 0;
}

static int verify_bins(Heap *h, verify_state *v) {
    uint64_t bins[N_BINS], seen = 0;
    if (read_bins(h, bins)) return -1;
    for (int b = 0; b < N_BINS; b++) {
        for (uint64_t c = bins[b]; c; seen++) {
            uint64_t words;
            if (seen >= v->chunks)
                return corrupt(c, "the free lists hold more chunks than the heap (a cycle?)");
            if (c & 7 || c < v->base || c >= v->top || !bm_get(&v->frees, c))
                return corrupt(c, "on free list %d, but not a free chunk", b);
            if (free_chunk_words(h, c, &words)) return -1;
            if (bin_of(words) != b) return corrupt(c, "a free chunk of %llu words on list %d",
                                                   (unsigned long long)words, b);
            if (rd64(h, free_link_addr(c, words), &c)) return -1;
        }
    }
    if (seen != v->chunks)
        return corrupt(0, "the heap has %llu free chunks, the free lists %llu",
                       (unsigned long long)v->chunks, (unsigned long long)seen);
    return 0;
}

static int verify_accounts(Heap *h, verify_state *v) {
    static const struct { int index; const char *name; } acct[] = {
        {M_OBJECTS, "objects"}, {M_OBJ_WORDS, "object words"}, {M_FREE_WORDS, "free words"},
        {M_FREE_CHUNKS, "free chunks"}};
    uint64_t actual[4] = {v->objects, v->obj_words, v->free_words, v->chunks};
    for (int i = 0; i < 4; i++) {
        uint64_t m;
        if (meta(h, acct[i].index, &m)) return -1;
        if (m != actual[i])
            return corrupt(0, "the image counts %llu %s, the heap holds %llu", (unsigned long long)m,
                           acct[i].name, (unsigned long long)actual[i]);
    }
    static const struct { int index; uint64_t cls; int optional; } roots[] = {
        {M_ROOT, C_TABLE, 0}, {M_CLASSES, C_VECTOR, 0}, {M_SYMBOLS, C_TABLE, 0}, {M_BLOBS, C_TABLE, 0},
        {M_ACTORS, C_TABLE, 1}, {M_SYSTEM, C_TABLE, 1}};
    for (size_t i = 0; i < sizeof roots / sizeof roots[0]; i++) {
        uint64_t w;
        objinfo o;
        if (meta(h, roots[i].index, &w)) return -1;
        if (!w && roots[i].optional) continue;
        if (!IS_PTR(w) || !is_object_start(v, w))
            return corrupt(0, "meta word %d holds 0x%llx, where no object starts", roots[i].index,
                           (unsigned long long)w);
        if (obj_of_class(h, w, roots[i].cls, &o)) return -1;
    }
    uint64_t n;
    if (meta(h, M_CLASSES, &n)) return -1;
    vpath p;
    if (vec_open(h, n, &p)) return -1;
    if (p.len != v->nclasses)
        return corrupt(0, "the image counts %llu classes, its class table holds %llu",
                       (unsigned long long)v->nclasses, (unsigned long long)p.len);
    return 0;
}

static int verify_heap(Heap *h, verify_state *v) {
    objinfo o;
    for (uint64_t addr = v->base; addr < v->top; addr += o.words * 8) {   /* 1: it parses */
        if (parse_header(h, addr, v->base, v->top, v->nclasses, &o) || bm_set(&v->starts, addr)) return -1;
        if (o.cls == C_FREE) {
            if (bm_set(&v->frees, addr)) return -1;
            v->chunks++;
            v->free_words += o.words;
        } else {
            v->objects++;
            v->obj_words += o.words;
        }
    }
    for (uint64_t addr = v->base; addr < v->top; addr += o.words * 8) {   /* 2, 5: references */
        if (parse_header(h, addr, v->base, v->top, v->nclasses, &o)) return -1;
        if (o.cls == C_STRING) {
            PyObject *str = decode_bytes(h, &o);
            if (!str) return -1;
            Py_DECREF(str);
        }
        if (o.cls != C_FREE && o.fmt == FMT_POINTERS && verify_slots(h, v, &o)) return -1;
    }
    return verify_bins(h, v) || verify_accounts(h, v);   /* 3, 4 */
}

static PyObject *heap_check(Heap *h) {
    verify_state v;
    memset(&v, 0, sizeof v);
    if (heap_bounds(h, &v.base, &v.top, &v.nclasses)) return NULL;
    bm_init(&v.starts, v.base);
    bm_init(&v.frees, v.base);
    bm_init(&v.inner, v.base);
    int rc = verify_heap(h, &v);
    bm_free(&v.starts);
    bm_free(&v.frees);
    bm_free(&v.inner);
    if (rc) return NULL;
    return Py_BuildValue("{sKsKsKsKsKsKsK}", "objects", (unsigned long long)v.objects,
                         "object_bytes", (unsigned long long)(v.obj_words * 8),
                         "free_chunks", (unsigned long long)v.chunks,
                         "free_bytes", (unsigned long long)(v.free_words * 8),
                         "heap_bytes", (unsigned long long)(v.top - v.base),
                         "vectors", (unsigned long long)v.vectors, "tables", (unsigned long long)v.tables);
}

/* -- the Python face: Heap methods ------------------------------------------------ */

static int arg_u64(PyObject *const *args, Py_ssize_t i, uint64_t *out) {
    if (as_u64(args[i], out)) {
        PyErr_Format(PyExc_TypeError, "argument %zd must be an address or a word", i + 1);
        return -1;
    }
    return 0;
}

static int nargs_is(Py_ssize_t got, Py_ssize_t want, const char *sig) {
    if (got == want) return 0;
    PyErr_Format(PyExc_TypeError, "%s takes %zd arguments (%zd given)", sig, want, got);
    return -1;
}

#define ARGS(n, sig) if (nargs_is(nargs, n, sig)) return NULL
#define U64(i, var) uint64_t var; if (arg_u64(args, i, &var)) return NULL

static PyObject *m_encode(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(1, "encode(value)");
    uint64_t w;
    return encode_top(h, args[0], &w) ? NULL : PyLong_FromUnsignedLongLong(w);
}

static PyObject *m_decode(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(1, "decode(word)");
    U64(0, w);
    return decode(h, w);
}

static PyObject *m_meta(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(1, "meta(index)");
    U64(0, i);
    uint64_t v;
    if (i >= META_WORDS) { PyErr_SetString(PyExc_IndexError, "meta index"); return NULL; }
    return meta(h, (int)i, &v) ? NULL : PyLong_FromUnsignedLongLong(v);
}

static PyObject *m_set_meta(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(2, "set_meta(index, value)");
    U64(0, i);
    U64(1, v);
    if (i >= META_WORDS) { PyErr_SetString(PyExc_IndexError, "meta index"); return NULL; }
    if (set_meta(h, (int)i, v)) return NULL;
    Py_RETURN_NONE;
}

/* set_encode_hook(fn or None): see "the encode hook". */
static PyObject *m_set_encode_hook(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(1, "set_encode_hook(fn)");
    if (args[0] != Py_None && !PyCallable_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "the encode hook must be callable or None");
        return NULL;
    }
    Py_XSETREF(h->encode_hook, args[0] == Py_None ? NULL : Py_NewRef(args[0]));
    Py_RETURN_NONE;
}

/* obj becomes the one handle of addr (key: addr as a Python int). */
static int adopt_at(Heap *h, PyObject *obj, PyObject *key, uint64_t addr) {
    PyObject *img = PyWeakref_GetObject(h->img_ref);
    if (!PyObject_TypeCheck(obj, (PyTypeObject *)h->handle_type) || !img || img == Py_None) {
        PyErr_SetString(PyExc_TypeError, "adopt() needs a handle-class instance and a live image");
        return -1;
    }
    PyObject *ref = PyWeakref_NewRef(obj, NULL);
    if (!ref || PyDict_SetItem(h->handles, key, ref)
        || (h->in_txn && made_in_txn(h, addr) && PyList_Append(h->txn_made, ref))) {
        Py_XDECREF(ref);
        return -1;
    }
    Py_DECREF(ref);
    Py_XSETREF(*(PyObject **)((char *)obj + h->off_img), Py_NewRef(img));
    Py_XSETREF(*(PyObject **)((char *)obj + h->off_heap), Py_NewRef((PyObject *)h));
    Py_XSETREF(*(PyObject **)((char *)obj + h->off_addr), Py_NewRef(key));
    return 0;
}

/* adopt(obj, addr): obj (an instance of a handle class, its fields unset:
 * a transient value the layer above just stored at addr and switched to
 * that class) becomes the one handle of addr (Smalltalk's become:). */
static PyObject *m_adopt(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(2, "adopt(obj, addr)");
    U64(1, addr);
    PyObject *key = PyLong_FromUnsignedLongLong(addr);
    int rc = key ? adopt_at(h, args[0], key, addr) : -1;
    Py_XDECREF(key);
    if (rc) return NULL;
    Py_RETURN_NONE;
}

static PyObject *S_class;   /* "__class__", interned */

/* v.__class__ = cls.  What Python's assignment checks depends on the two
 * classes only (layouts, no instance dict: handle classes have __slots__),
 * so after one checked assignment per pair of classes (remembered in
 * checked), the others of that pair are done as it does them. */
static int set_class(PyObject *v, PyObject *cls, PyTypeObject *checked[2]) {
    PyTypeObject *from = Py_TYPE(v), *to = (PyTypeObject *)cls;
    if (checked[0] != from || checked[1] != to || !PyType_Check(cls)) {
        if (PyObject_SetAttr(v, S_class, cls)) return -1;
        checked[0] = from;
        checked[1] = to;
        return 0;
    }
    if (to->tp_flags & Py_TPFLAGS_HEAPTYPE) Py_INCREF(to);
    Py_SET_TYPE(v, to);
    if (from->tp_flags & Py_TPFLAGS_HEAPTYPE) Py_DECREF(from);
    return 0;
}

/* One value of turn(): its field values (names) appended to saved (unless
 * NULL), then the value and its class; the fields cleared, the class set to
 * persistent, the value adopted at addr.  A failure before the class is
 * set puts the fields back; the log entry is written first (undo skips an
 * entry whose value is not a stale handle). */
static int turn_one(Heap *h, PyObject *v, PyObject *key, PyObject *persistent, PyObject *names,
                    PyObject *saved, PyTypeObject *checked[2]) {
    enum { FEW = 8 };   /* most transients have one or two fields: no tuple for them */
    uint64_t addr;
    Py_ssize_t n = PyTuple_GET_SIZE(names), i, got = 0, cleared = 0;
    PyObject *few[FEW], *many = n > FEW ? PyTuple_New(n) : NULL, *cls = (PyObject *)Py_TYPE(v);
    PyObject **values = many ? &PyTuple_GET_ITEM(many, 0) : few;
    if ((n > FEW && !many) || as_u64(key, &addr)) { Py_XDECREF(many); return -1; }
    Py_INCREF(cls);
    int rc = 0;
    while (got < n && (values[got] = PyObject_GetAttr(v, PyTuple_GET_ITEM(names, got)))) got++;
    if (got < n) rc = -1;
    /* logged first: undo skips a logged value that is not a stale handle */
    for (i = 0; i < n && !rc && saved; i++) rc = PyList_Append(saved, values[i]);
    if (!rc && saved) rc = PyList_Append(saved, v) || PyList_Append(saved, cls) ? -1 : 0;
    while (!rc && cleared < n && !(rc = PyObject_SetAttr(v, PyTuple_GET_ITEM(names, cleared), NULL))) cleared++;
    if (!rc) rc = set_class(v, persistent, checked);
    if (rc && cleared) {   /* still of its transient class: put back what was cleared */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        for (i = 0; i < cleared; i++)
            if (PyObject_SetAttr(v, PyTuple_GET_ITEM(names, i), values[i])) PyErr_Clear();
        PyErr_Restore(type, value, tb);
    }
    if (!rc) rc = adopt_at(h, v, key, addr);
    if (many) Py_DECREF(many);   /* its items are values[0..got) */
    else for (i = 0; i < got; i++) Py_DECREF(values[i]);
    Py_DECREF(cls);
    pc_clear(h);   /* attribute access may run Python code */
    return rc;
}

/* turn(made, classes, saved) -> rest: become:, in bulk, for the layer
 * above's promotion.  made is made()'s list; classes maps a transient class
 * to (its persistent class, its field names).  Each value of exactly such a
 * class is turned (turn_one; saved: a list, or None when nothing is to be
 * undone); what is of no class in classes (already turned, a procedure...)
 * is returned as [value, address, ...]. */
static PyObject *m_turn(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(3, "turn(made, classes, saved)");
    PyObject *made = args[0], *classes = args[1], *saved = args[2] == Py_None ? NULL : args[2];
    if (!PyList_Check(made) || PyList_GET_SIZE(made) % 2 || !PyDict_Check(classes)
        || (saved && !PyList_Check(saved))) {
        PyErr_SetString(PyExc_TypeError, "turn(made, classes, saved) takes made()'s list, a dict "
                                         "and a list or None");
        return NULL;
    }
    PyObject *cls, *how;
    Py_ssize_t pos = 0;
    while (PyDict_Next(classes, &pos, &cls, &how))
        if (!PyTuple_Check(how) || PyTuple_GET_SIZE(how) != 2 || !PyType_Check(PyTuple_GET_ITEM(how, 0))
            || !PyType_IsSubtype((PyTypeObject *)PyTuple_GET_ITEM(how, 0), (PyTypeObject *)h->handle_type)
            || !PyTuple_Check(PyTuple_GET_ITEM(how, 1))) {
            PyErr_SetString(PyExc_TypeError, "turn(): classes maps a class to (a handle class, field names)");
            return NULL;
        }
    PyObject *rest = PyList_New(0);
    PyTypeObject *checked[2] = {NULL, NULL};   /* see set_class */
    for (Py_ssize_t i = 0; rest && i + 1 < PyList_GET_SIZE(made); i += 2) {
        PyObject *v = PyList_GET_ITEM(made, i), *key = PyList_GET_ITEM(made, i + 1);
        how = PyDict_GetItemWithError(classes, (PyObject *)Py_TYPE(v));
        int rc;
        if (how) {   /* checked above; v is held: turning it may drop the last other reference */
            Py_INCREF(v);
            rc = turn_one(h, v, key, PyTuple_GET_ITEM(how, 0), PyTuple_GET_ITEM(how, 1), saved, checked);
            Py_DECREF(v);
        } else {
            rc = PyErr_Occurred() || PyList_Append(rest, v) || PyList_Append(rest, key) ? -1 : 0;
        }
        if (rc) Py_CLEAR(rest);
    }
    return rest;
}

/* record_made(): begin (or nest) recording the objects made for the layer
 * above's values; made() ends it (see "made objects"). */
static PyObject *m_record_made(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(0, "record_made()");
    (void)args;
    if (!h->made && !(h->made = PyList_New(0))) return NULL;
    h->recording++;
    Py_RETURN_NONE;
}

/* made() -> [value, address, ...] stored since record_made(). */
static PyObject *m_made(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(0, "made()");
    (void)args;
    if (!h->recording) {
        PyErr_SetString(PyExc_RuntimeError, "made() without record_made()");
        return NULL;
    }
    PyObject *list = Py_NewRef(h->made);
    if (--h->recording == 0) Py_CLEAR(h->made);
    return list;
}

/* format(seed): the meta words of an empty heap. */
static PyObject *m_format(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(1, "format(seed)");
    U64(0, seed);
    uint64_t m[META_WORDS] = {0};
    uint64_t base = (META_WORDS * 8 + h->page_size - 1) / h->page_size * h->page_size;
    m[M_MAGIC] = OM_MAGIC;
    m[M_VERSION] = OM_VERSION;
    m[M_BASE] = m[M_TOP] = base;
    m[M_SEED] = seed;
    m[M_NCLASSES] = N_SYSTEM_CLASSES;
    if (wr(h, 0, m, sizeof m)) return NULL;
    h->seed = seed;
    Py_RETURN_NONE;
}

/* -- the meta page --------------------------------------------------------------
** The meta words (page 0) are the root of everything: heap bounds, the
** allocator's accounting and free lists, the roots.  An allocation changes
** them, so if they lived in a store page every allocating commit would write
** that page too.  Instead, as LMDB's meta pages are the root of its tree,
** they travel in the commit record: the image passes meta_block() with every
** commit, and after open, refresh or rollback hands the newest record's block
** back with load_meta().  So the newest record always holds them, a view of
** an old commit finds them in that commit's record, and page 0 is never a
** store page.
*/

/* meta_block() -> the META_WORDS meta words, as the next commit carries them. */
static PyObject *m_meta_block(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(0, "meta_block()");
    (void)args;
    return PyBytes_FromStringAndSize((const char *)h->meta_page, META_WORDS * 8);
}

/* load_meta(block): the meta words of a commit (b"" for a store holding no
 * object memory yet: all zero, which reload() reads as unformatted). */
static PyObject *m_load_meta(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(1, "load_meta(block)");
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_SIMPLE)) return NULL;
    int ok = b.len == 0 || b.len == META_WORDS * 8;
    if (ok) {
        memset(h->meta_page, 0, h->page_size);
        memcpy(h->meta_page, b.buf, (size_t)b.len);
        h->bounds_ok = 0;
    }
    PyBuffer_Release(&b);
    if (!ok) return PyErr_Format(PyExc_ValueError, "a meta block is %d bytes", META_WORDS * 8), NULL;
    Py_RETURN_NONE;
}

/* reload(): reads the fixed meta words after open, refresh or rollback. */
static PyObject *m_reload(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(0, "reload()");
    (void)args;
    uint64_t magic, version, base, top, n;
    if (meta(h, M_MAGIC, &magic) || meta(h, M_VERSION, &version)) return NULL;
    if (magic != OM_MAGIC) return PyBool_FromLong(0);
    if (version != OM_VERSION) {
        corrupt(0, "the object memory is version %llu; this imago reads version %u",
                (unsigned long long)version, OM_VERSION);
        return NULL;
    }
    if (meta(h, M_SEED, &h->seed) || heap_bounds(h, &base, &top, &n)) return NULL;
    return PyBool_FromLong(1);
}

static PyObject *m_txn_begin(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(0, "txn_begin()");
    (void)args;
    if (meta(h, M_TOP, &h->txn_top)) return NULL;
    h->n_reused = 0;
    h->n_sp = 0;
    h->undo_len = 0;
    h->in_txn = 1;
    if (PyList_SetSlice(h->txn_made, 0, PY_SSIZE_T_MAX, NULL)) return NULL;
    Py_RETURN_NONE;
}

/* txn_end() -> the live handles of objects made in the transaction. */
static PyObject *m_txn_end(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(0, "txn_end()");
    (void)args;
    PyObject *out = PyList_New(0);
    for (Py_ssize_t i = 0; out && i < PyList_GET_SIZE(h->txn_made); i++) {
        PyObject *o = PyWeakref_GetObject(PyList_GET_ITEM(h->txn_made, i));
        if (o && o != Py_None && PyList_Append(out, o)) Py_CLEAR(out);
    }
    h->in_txn = 0;
    h->n_reused = 0;
    h->n_sp = 0;
    h->undo_len = 0;
    if (PyList_SetSlice(h->txn_made, 0, PY_SSIZE_T_MAX, NULL)) Py_CLEAR(out);
    return out;
}

/* savepoint(): a point a nested transaction can roll back to. */
static PyObject *m_savepoint(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(0, "savepoint()");
    (void)args;
    if (!h->in_txn) { PyErr_SetString(PyExc_RuntimeError, "a savepoint needs a transaction"); return NULL; }
    if (h->n_sp == MAX_SAVEPOINTS) {
        PyErr_SetString(PyExc_RecursionError, "transactions nested too deeply");
        return NULL;
    }
    if (meta(h, M_TOP, &h->sp[h->n_sp].top)) return NULL;
    h->sp[h->n_sp].log = h->undo_len;
    h->sp[h->n_sp].reused = h->n_reused;
    h->n_sp++;
    Py_RETURN_NONE;
}

/* release_savepoint(): the nested transaction succeeded; its changes now
 * belong to the enclosing one. */
static PyObject *m_release_savepoint(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(0, "release_savepoint()");
    (void)args;
    if (!h->n_sp) { PyErr_SetString(PyExc_RuntimeError, "no savepoint"); return NULL; }
    if (--h->n_sp == 0) h->undo_len = 0;
    Py_RETURN_NONE;
}

/* rollback_savepoint() -> the live handles of objects made since it. */
static PyObject *m_rollback_savepoint(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(0, "rollback_savepoint()");
    (void)args;
    if (!h->n_sp) { PyErr_SetString(PyExc_RuntimeError, "no savepoint"); return NULL; }
    int level = --h->n_sp;
    PageReader *r = h->r;
    while (h->undo_len > h->sp[level].log) {
        uint64_t addr, len;
        memcpy(&addr, h->undo + h->undo_len - 16, 8);
        memcpy(&len, h->undo + h->undo_len - 8, 8);
        uint64_t padded = (len + 7) & ~(uint64_t)7;
        h->undo_len -= padded + 16;
        pc_drop(h, addr, len);
        if (addr < h->page_size && addr + len <= META_WORDS * 8) {   /* n_sp is lowered: no logging */
            memcpy(h->meta_page + addr, h->undo + h->undo_len, len);
            continue;
        }
        if (!r->tree || !r->dirty || core_write(r->tree, r->dirty, addr, h->undo + h->undo_len, len))
            return store_error(h, "write", addr, len), NULL;
    }
    uint64_t top = h->sp[level].top;
    size_t reused = h->sp[level].reused;
    PyObject *stale = PyList_New(0), *keep = PyList_New(0);
    for (Py_ssize_t i = 0; stale && keep && i < PyList_GET_SIZE(h->txn_made); i++) {
        PyObject *ref = PyList_GET_ITEM(h->txn_made, i), *o = PyWeakref_GetObject(ref);
        if (!o || o == Py_None) continue;
        PyObject *a = PyObject_GetAttr(o, S_addr);
        uint64_t addr = 0;
        int bad = !a || as_u64(a, &addr);
        Py_XDECREF(a);
        if (bad) { Py_CLEAR(stale); break; }
        int after = addr >= top;
        for (size_t j = reused; !after && j < h->n_reused; j++) after = h->reused[j] == addr;
        if (PyList_Append(after ? stale : keep, after ? o : ref)) Py_CLEAR(stale);
    }
    pc_clear(h);
    h->n_reused = reused;
    if (level == 0) h->undo_len = 0;
    if (!stale || !keep) { Py_XDECREF(stale); Py_XDECREF(keep); return NULL; }
    Py_SETREF(h->txn_made, keep);
    return stale;
}

/* preserve_page(page_no): the page is about to leave the page table; keep
 * its bytes in the undo log if a savepoint could need them back. */
static PyObject *m_preserve_page(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(1, "preserve_page(page_no)");
    U64(0, page);
    if (h->n_sp && log_old(h, page << h->page_shift, h->page_size)) return NULL;
    Py_RETURN_NONE;
}

/* live_handles() -> {addr: handle} of every live handle. */
static PyObject *m_live_handles(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(0, "live_handles()");
    (void)args;
    if (prune_handles(h)) return NULL;
    PyObject *out = PyDict_New(), *key, *ref;
    Py_ssize_t pos = 0;
    while (out && PyDict_Next(h->handles, &pos, &key, &ref)) {
        PyObject *o = PyWeakref_GetObject(ref);
        if (o && o != Py_None && PyDict_SetItem(out, key, o)) Py_CLEAR(out);
    }
    return out;
}

static PyObject *m_forget_handle(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(1, "forget_handle(addr)");
    if (PyDict_DelItem(h->handles, args[0]) && !PyErr_ExceptionMatches(PyExc_KeyError)) return NULL;
    PyErr_Clear();
    Py_RETURN_NONE;
}

static PyObject *m_class_of(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(1, "class_of(addr)");
    U64(0, a);
    objinfo o;
    return obj(h, a, &o) ? NULL : PyLong_FromUnsignedLongLong(o.cls);
}

static PyObject *m_new_object(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(2, "new_object(class_index, values)");
    U64(0, cls);
    uint64_t nclasses;
    if (meta(h, M_NCLASSES, &nclasses)) return NULL;
    if (cls == C_FREE || cls >= nclasses || (cls < N_SYSTEM_CLASSES && cls != C_BLOB)
        || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_ValueError, "new_object(a blob or a defined class, list of values)");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(args[1]);
    uint64_t addr, w;
    if (new_empty(h, cls, (uint64_t)n, &addr)) return NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        if (encode_top(h, PyList_GET_ITEM(args[1], i), &w) || wr64(h, body_of(addr, (uint64_t)n) + 8 * (uint64_t)i, w)) {
            unbuilt(h, addr, C_RECORD);
            return NULL;
        }
    return PyLong_FromUnsignedLongLong(addr);
}

static PyObject *m_slot(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(2, "slot(addr, index)");
    U64(0, a);
    U64(1, i);
    objinfo o;
    uint64_t w;
    if (obj(h, a, &o)) return NULL;
    if (o.fmt != FMT_POINTERS) { PyErr_SetString(PyExc_TypeError, "a byte object has no slots"); return NULL; }
    if (i >= o.size) { PyErr_SetString(PyExc_IndexError, "slot index out of range"); return NULL; }
    return slot(h, &o, i, &w) ? NULL : decode_in(h, w, a);
}

static PyObject *m_set_slot(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(3, "set_slot(addr, index, value)");
    U64(0, a);
    U64(1, i);
    objinfo o;
    uint64_t w;
    if (obj(h, a, &o)) return NULL;
    if (o.fmt != FMT_POINTERS || !is_scheme_class(o.cls)) {
        PyErr_Format(PyExc_TypeError, "the slots of a %s are not set directly",
                     o.cls < N_SYSTEM_CLASSES ? system_classes[o.cls].name : "byte object");
        return NULL;
    }
    if (i >= o.size) { PyErr_SetString(PyExc_IndexError, "slot index out of range"); return NULL; }
    if (encode_top(h, args[2], &w) || obj(h, a, &o) || wr64(h, o.body + 8 * i, w)) return NULL;
    Py_RETURN_NONE;
}

static PyObject *m_size(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(1, "size(addr)");
    U64(0, a);
    objinfo o;
    return obj(h, a, &o) ? NULL : PyLong_FromUnsignedLongLong(o.size);
}

/* vectors */

static PyObject *m_vec_len(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(1, "vec_len(v)");
    U64(0, v);
    vpath p;
    return vec_open(h, v, &p) ? NULL : PyLong_FromUnsignedLongLong(p.len);
}

static PyObject *m_vec_get(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(2, "vec_get(v, i)");
    U64(0, v);
    vpath p;
    uint64_t i, w;
    if (vec_open(h, v, &p) || check_index(args[1], p.len, 0, &i) || vec_descend(h, &p, i, 0)
        || rd64(h, item_addr(p.leaf, p.off), &w))
        return NULL;
    return decode_in(h, w, p.leaf);
}

static PyObject *m_vec_set(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(3, "vec_set(v, i, value)");
    U64(0, v);
    vpath p;
    uint64_t i, w;
    if (vec_open(h, v, &p) || check_index(args[1], p.len, 0, &i) || encode_top(h, args[2], &w)
        || vec_locate(h, v, i, 0, &p) || wr64(h, item_addr(p.leaf, p.off), w))
        return NULL;
    Py_RETURN_NONE;
}

/* vec_store(v, start, items): v[start + k] = items[k] for each k, the items
 * encoded as one value (one memo), so that items sharing a value share its
 * copy: (vector-fill! v s) stores s once.  start + len(items) <= len(v). */
static PyObject *m_vec_store(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(3, "vec_store(v, start, items)");
    U64(0, v);
    U64(1, start);
    PyObject *items = args[2];
    if (!PyList_Check(items)) {
        PyErr_SetString(PyExc_TypeError, "vec_store(v, start, items) takes a list of items");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(items);
    vpath p;
    if (vec_open(h, v, &p)) return NULL;
    if (start > p.len || (uint64_t)n > p.len - start) {
        PyErr_SetString(PyExc_IndexError, "vec_store: the items do not fit in the vector");
        return NULL;
    }
    uint64_t *words = PyMem_Malloc((size_t)(n ? n : 1) * 8);
    if (!words) return PyErr_NoMemory();
    PyObject *memo = NULL;
    int rc = 0;
    Py_INCREF(items);   /* the encode hook is Python code: hold what we walk */
    for (Py_ssize_t i = 0; i < n && !rc; i++) {
        if (i >= PyList_GET_SIZE(items)) {
            PyErr_SetString(PyExc_RuntimeError, "vec_store: the items changed while being stored");
            rc = -1;
            break;
        }
        PyObject *item = Py_NewRef(PyList_GET_ITEM(items, i));
        rc = encode(h, item, &memo, &words[i]);
        Py_DECREF(item);
    }
    /* the length again: storing ran the hook, which could have changed v */
    if (!rc && (vec_open(h, v, &p) || (uint64_t)n > p.len - start || start > p.len)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_IndexError, "vec_store: the vector shrank while storing");
        rc = -1;
    }
    for (Py_ssize_t i = 0; i < n && !rc; i++)
        rc = vec_locate(h, v, start + (uint64_t)i, 0, &p) || wr64(h, item_addr(p.leaf, p.off), words[i]) ? -1 : 0;
    Py_DECREF(items);
    Py_XDECREF(memo);
    PyMem_Free(words);
    if (rc) return NULL;
    Py_RETURN_NONE;
}

static PyObject *m_vec_insert(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(3, "vec_insert(v, i, value)");
    U64(0, v);
    vpath p;
    uint64_t i, w;
    if (vec_open(h, v, &p) || check_index(args[1], p.len, 1, &i) || encode_top(h, args[2], &w)
        || vec_open(h, v, &p) || vec_insert_word(h, &p, i, w))
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *m_vec_append(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(2, "vec_append(v, value)");
    U64(0, v);
    vpath p;
    uint64_t w;
    if (encode_top(h, args[1], &w) || vec_open(h, v, &p) || vec_insert_word(h, &p, p.len, w)) return NULL;
    Py_RETURN_NONE;
}

static PyObject *m_vec_delete(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(2, "vec_delete(v, i)");
    U64(0, v);
    vpath p;
    uint64_t i;
    if (vec_open(h, v, &p) || check_index(args[1], p.len, 0, &i) || vec_delete_at(h, v, i)) return NULL;
    Py_RETURN_NONE;
}

static PyObject *m_vec_clear(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(1, "vec_clear(v)");
    U64(0, v);
    vpath p;
    uint64_t leaf;
    if (vec_open(h, v, &p) || new_leaf(h, LEAF_SMALL, NULL, 0, &leaf) || vec_header_set(h, v, 0, leaf))
        return NULL;
    Py_RETURN_NONE;
}

/* vec_slice(v, start, stop) -> list of items [start, stop), clamped. */
static PyObject *m_vec_slice(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(3, "vec_slice(v, start, stop)");
    U64(0, v);
    U64(1, start);
    U64(2, stop);
    vpath p;
    if (vec_open(h, v, &p)) return NULL;
    if (stop > p.len) stop = p.len;
    if (start > stop) start = stop;
    PyObject *out = PyList_New((Py_ssize_t)(stop - start));
    uint64_t *words = PyMem_Malloc((h->leaf_max + 1) * 8), done = 0;
    if (!out || !words) { Py_XDECREF(out); PyMem_Free(words); return PyErr_NoMemory(); }
    while (start + done < stop) {   /* a leaf at a time, so errors name the leaf */
        if (vec_locate(h, v, start + done, 0, &p)) goto fail;
        uint64_t take = p.leaf_count - p.off, leaf = p.leaf;
        if (take > stop - start - done) take = stop - start - done;
        if (rd(h, item_addr(leaf, p.off), words, take * 8)) goto fail;
        for (uint64_t i = 0; i < take; i++) {
            PyObject *item = decode_in(h, words[i], leaf);
            if (!item) goto fail;
            PyList_SET_ITEM(out, (Py_ssize_t)(done + i), item);
        }
        done += take;
    }
    PyMem_Free(words);
    return out;
fail:
    PyMem_Free(words);
    Py_DECREF(out);
    return NULL;
}

/* tables */

static PyObject *m_tab_len(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(1, "tab_len(t)");
    U64(0, t);
    tab tb;
    return tab_open(h, t, &tb) ? NULL : PyLong_FromUnsignedLongLong(tb.count);
}

/* tab_get(t, key, default): default (which may be a sentinel) when absent. */
static PyObject *m_tab_get(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(3, "tab_get(t, key, default)");
    U64(0, t);
    tab tb;
    uint64_t e, w;
    int found = tab_lookup(h, t, args[1], &tb, &e);
    if (found < 0) return NULL;
    if (!found) return Py_NewRef(args[2]);
    return rd64(h, ent(&tb, e) + 16, &w) ? NULL : decode_in(h, w, tb.store);
}

static PyObject *m_tab_set(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(3, "tab_set(t, key, value)");
    U64(0, t);
    if (tab_set(h, t, args[1], args[2])) return NULL;
    Py_RETURN_NONE;
}

static PyObject *m_tab_del(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(2, "tab_del(t, key)");
    U64(0, t);
    tab tb;
    uint64_t e;
    int found = tab_lookup(h, t, args[1], &tb, &e);
    if (found < 0 || (found && tab_remove_entry(h, &tb, e))) return NULL;
    return PyBool_FromLong(found);
}

static PyObject *m_tab_clear(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(1, "tab_clear(t)");
    U64(0, t);
    tab tb;
    uint64_t none[1];
    if (tab_open(h, t, &tb) || store_build(h, t, none, 0)) return NULL;
    Py_RETURN_NONE;
}

/* tab_items(t, what, start, limit) -> (next, list): keys (0), values (1) or
 * (key, value) pairs (2) of live entries from entry number start on. */
static PyObject *m_tab_items(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(4, "tab_items(t, what, start, limit)");
    U64(0, t);
    U64(1, what);
    U64(2, start);
    U64(3, limit);
    tab tb;
    if (tab_open(h, t, &tb)) return NULL;
    PyObject *out = PyList_New(0);
    uint64_t e = start;
    for (; out && e < tb.used && (uint64_t)PyList_GET_SIZE(out) < limit; e++) {
        uint64_t kv[2];
        if (rd(h, ent(&tb, e) + 8, kv, 16)) { Py_CLEAR(out); break; }
        if (kv[0] == W_ABSENT) continue;
        PyObject *k = what != 1 ? decode_in(h, kv[0], tb.store) : NULL;
        PyObject *v = what != 0 && (what == 1 || k) ? decode_in(h, kv[1], tb.store) : NULL;
        PyObject *item = what == 0 ? Py_XNewRef(k) : what == 1 ? Py_XNewRef(v)
                         : (k && v ? PyTuple_Pack(2, k, v) : NULL);
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (!item || PyList_Append(out, item)) Py_CLEAR(out);
        Py_XDECREF(item);
    }
    if (!out) return NULL;
    PyObject *res = Py_BuildValue("(KN)", (unsigned long long)e, out);
    return res;
}

/* the collector */

static PyObject *m_mark(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(1, "mark(roots)");
    if (!PyList_Check(args[0])) { PyErr_SetString(PyExc_TypeError, "mark(list of addresses)"); return NULL; }
    if (mark_all(h, args[0])) {
        bm_free(&h->marks);
        h->marking = 0;
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *m_sweep(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(0, "sweep()");
    (void)args;
    sweep_state s;
    memset(&s, 0, sizeof s);
    if (!(s.pages = PyList_New(0))) return NULL;
    if (sweep_all(h, &s)) {
        Py_DECREF(s.pages);
        return NULL;
    }
    return Py_BuildValue("{sKsKsN}", "objects", (unsigned long long)s.freed_objects,
                         "bytes", (unsigned long long)(s.freed_words * 8), "pages", s.pages);
}

static PyObject *m_check(Heap *h, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(0, "check()");
    (void)args;
    return heap_check(h);
}

#define M(name, doc) {#name, (PyCFunction)(void (*)(void))m_##name, METH_FASTCALL, doc}
static PyMethodDef heap_methods[] = {
    M(encode, "encode(value) -> word: stores the value's objects (if any)"),
    M(decode, "decode(word) -> value or handle"),
    M(meta, "meta(i) -> page-0 word i"),
    M(set_meta, "set_meta(i, value)"),
    M(format, "format(seed): write the meta words of an empty heap"),
    M(reload, "reload() -> False if the meta words hold no object memory"),
    M(meta_block, "meta_block() -> the meta words, as the next commit carries them"),
    M(set_encode_hook, "set_encode_hook(fn): how values of the layer above are stored"),
    M(adopt, "adopt(obj, addr): obj becomes the handle of addr"),
    M(record_made, "record_made(): log the objects stored for hooked values until made()"),
    M(made, "made() -> [value, address, ...] stored since record_made()"),
    M(turn, "turn(made, classes, saved) -> rest: become: in bulk (see m_turn)"),
    M(load_meta, "load_meta(block): the meta words of the commit the store now shows"),
    M(txn_begin, "txn_begin(): remember where this transaction's objects start"),
    M(txn_end, "txn_end() -> live handles of objects made in the transaction"),
    M(savepoint, "savepoint(): begin a nested transaction"),
    M(release_savepoint, "release_savepoint(): the nested transaction succeeded"),
    M(rollback_savepoint, "rollback_savepoint() -> handles made since it"),
    M(preserve_page, "preserve_page(page_no): log a page about to be freed"),
    M(live_handles, "live_handles() -> {addr: handle}"),
    M(forget_handle, "forget_handle(addr): the address has no handle any more"),
    M(class_of, "class_of(addr) -> class index"),
    M(new_object, "new_object(class, values) -> addr"),
    M(slot, "slot(addr, i) -> value"),
    M(size, "size(addr) -> slots or bytes"),
    M(set_slot, "set_slot(addr, i, value): slots of user-class objects"),
    M(vec_len, "vec_len(v)"), M(vec_get, "vec_get(v, i)"), M(vec_set, "vec_set(v, i, x)"),
    M(vec_insert, "vec_insert(v, i, x)"), M(vec_append, "vec_append(v, x)"),
    M(vec_store, "vec_store(v, start, items): items written from start, encoded as one value"),
    M(vec_delete, "vec_delete(v, i)"), M(vec_clear, "vec_clear(v)"),
    M(vec_slice, "vec_slice(v, start, stop) -> list"),
    M(tab_len, "tab_len(t)"), M(tab_get, "tab_get(t, k, default)"), M(tab_set, "tab_set(t, k, v)"),
    M(tab_del, "tab_del(t, k) -> found"), M(tab_clear, "tab_clear(t)"),
    M(tab_items, "tab_items(t, what, start, limit) -> (next, list)"),
    M(mark, "mark(roots): mark everything reachable into the side bitmap"),
    M(sweep, "sweep() -> {objects, bytes, pages}"),
    M(check, "check() -> statistics; raises CorruptObject"),
    {NULL, NULL, 0, NULL},
};

static int heap_init(Heap *h, PyObject *args, PyObject *kw) {
    PyObject *reader, *img, *handle_type, *classes, *default_class, *make_special;
    static char *names[] = {"reader", "image", "handle_type", "handle_classes", "default_class",
                            "make_special", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!OOO!OO", names, &PageReaderType, &reader, &img,
                                     &handle_type, &PyDict_Type, &classes, &default_class,
                                     &make_special))
        return -1;
    if (!PyType_Check(handle_type) || !PyType_Check(default_class)) {
        PyErr_SetString(PyExc_TypeError, "handle_type and default_class must be classes");
        return -1;
    }
    PyObject *slot_names[3] = {S_img, S_heap, S_addr};
    Py_ssize_t *offs[3] = {&h->off_img, &h->off_heap, &h->off_addr};
    for (int i = 0; i < 3; i++) {   /* the slot descriptors of handle_type's __slots__ */
        PyObject *d = PyObject_GetAttr(handle_type, slot_names[i]);
        int ok = d && Py_TYPE(d) == &PyMemberDescr_Type
                 && ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX;
        if (ok) *offs[i] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_XDECREF(d);
        if (!ok) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "the handle type needs a field %R", slot_names[i]);
            return -1;
        }
    }
    PyObject *ref = PyWeakref_NewRef(img, NULL);
    if (!ref) return -1;
    Py_XSETREF(h->img_ref, ref);
    Py_XSETREF(h->r, (PageReader *)Py_NewRef(reader));
    Py_XSETREF(h->handle_type, Py_NewRef(handle_type));
    Py_XSETREF(h->handle_classes, Py_NewRef(classes));
    Py_XSETREF(h->default_class, Py_NewRef(default_class));
    Py_XSETREF(h->make_special, Py_NewRef(make_special));
    Py_XSETREF(h->handles, PyDict_New());
    Py_XSETREF(h->txn_made, PyList_New(0));
    if (!h->handles || !h->txn_made) return -1;
    h->page_size = (uint64_t)h->r->page_size;
    h->page_shift = 0;
    while (((uint64_t)1 << h->page_shift) < h->page_size) h->page_shift++;
    h->max_heap = (uint64_t)1 << (MAX_PAGES_LOG + h->page_shift);
    if (((uint64_t)1 << h->page_shift) != h->page_size || h->page_size < META_WORDS * 8) {
        PyErr_SetString(PyExc_ValueError, "the page size must be a power of two of at least 1 KiB");
        return -1;
    }
    /* A leaf or node fills one page: a full leaf is one page write away. */
    h->leaf_max = h->page_size / 8 - 2;
    h->node_max = (h->page_size / 8 - 2) / 2;
    PyMem_Free(h->meta_page);
    h->meta_page = PyMem_Calloc(h->page_size, 1);
    if (!h->meta_page) { PyErr_NoMemory(); return -1; }
    pc_clear(h);
    return 0;
}

static void heap_dealloc(Heap *h) {
    PyMem_Free(h->meta_page);
    Py_XDECREF(h->encode_hook);
    Py_XDECREF(h->made);
    Py_XDECREF(h->r);
    Py_XDECREF(h->img_ref);
    Py_XDECREF(h->handle_classes);
    Py_XDECREF(h->default_class);
    Py_XDECREF(h->handles);
    Py_XDECREF(h->txn_made);
    Py_XDECREF(h->make_special);
    Py_XDECREF(h->handle_type);
    PyMem_Free(h->reused);
    bm_free(&h->marks);
    PyMem_Free(h->stack);
    PyMem_Free(h->scratch);
    PyMem_Free(h->undo);
    Py_TYPE(h)->tp_free((PyObject *)h);
}

static PyTypeObject HeapType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "native._fastpath.Heap",
    .tp_basicsize = sizeof(Heap),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The object memory's bytes over one PageReader; see native/objmem.c.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)heap_init,
    .tp_dealloc = (destructor)heap_dealloc,
    .tp_methods = heap_methods,
};

static PyObject *set_errors(PyObject *mod, PyObject *args) {
    PyObject *corrupt_cls, *stale_cls;
    (void)mod;
    if (!PyArg_ParseTuple(args, "OO", &corrupt_cls, &stale_cls)) return NULL;
    Py_XSETREF(CorruptObject, Py_NewRef(corrupt_cls));
    Py_XSETREF(StaleHandle, Py_NewRef(stale_cls));
    Py_RETURN_NONE;
}

/* layout() -> the constants image/ shares with this file, so they are written once. */
static PyObject *layout(PyObject *mod, PyObject *noargs) {
    (void)mod; (void)noargs;
    PyObject *classes = PyList_New(0);
    for (int c = 0; classes && c < N_SYSTEM_CLASSES; c++) {
        PyObject *name = system_classes[c].name ? PyUnicode_FromString(system_classes[c].name)
                                                : PyUnicode_FromFormat("reserved-%d", c);
        if (!name || PyList_Append(classes, name)) Py_CLEAR(classes);
        Py_XDECREF(name);
    }
    if (!classes) return NULL;
    static const struct { const char *name; int value; } names[] = {
        {"C_VECTOR", C_VECTOR}, {"C_TABLE", C_TABLE}, {"C_BLOB", C_BLOB}, {"C_TUPLE", C_TUPLE},
        {"C_PAIR", C_PAIR}, {"C_SYMBOL", C_SYMBOL}, {"C_RECORD", C_RECORD}, {"C_MSTRING", C_MSTRING}, {"C_CLOSURE", C_CLOSURE},
        {"N_SYSTEM_CLASSES", N_SYSTEM_CLASSES},
        {"M_ROOT", M_ROOT}, {"M_CLASSES", M_CLASSES}, {"M_SYMBOLS", M_SYMBOLS}, {"M_BLOBS", M_BLOBS},
        {"M_NCLASSES", M_NCLASSES}, {"M_OBJECTS", M_OBJECTS}, {"M_OBJ_WORDS", M_OBJ_WORDS},
        {"M_FREE_WORDS", M_FREE_WORDS}, {"M_FREE_CHUNKS", M_FREE_CHUNKS}, {"M_GCS", M_GCS},
        {"M_ACTORS", M_ACTORS}, {"M_SYSTEM", M_SYSTEM}, {"M_BLOB_KEY", M_BLOB_KEY}, {"M_TOP", M_TOP}, {"M_BASE", M_BASE},
        {"META_WORDS", META_WORDS}};
    PyObject *d = PyDict_New();
    if (!d || PyDict_SetItemString(d, "classes", classes)) { Py_XDECREF(d); Py_DECREF(classes); return NULL; }
    Py_DECREF(classes);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        PyObject *v = PyLong_FromLong(names[i].value);
        if (!v || PyDict_SetItemString(d, names[i].name, v)) { Py_XDECREF(v); Py_DECREF(d); return NULL; }
        Py_DECREF(v);
    }
    return d;
}

static PyMethodDef objmem_functions[] = {
    {"set_errors", set_errors, METH_VARARGS, "set_errors(CorruptObject, StaleHandle)"},
    {"layout", layout, METH_NOARGS, "layout() -> the object memory's constants"},
    {NULL, NULL, 0, NULL},
};


/* -- handle base types --------------------------------------------------------------- */
/*
** HandleBase holds a handle's three fields (_img, _heap, _addr) and its weak
** references; image/_handles.Handle derives from it.  VectorBase and
** TableBase add the subscript and length slots in C, so that inbox[i] and
** mail["subject"] run without a Python frame; slices and everything else
** stay in Python (a slice calls the subclass's _slice method).
*/

typedef struct {
    PyObject_HEAD
    PyObject *img;
    PyObject *heap;
    PyObject *addr;
    PyObject *weakrefs;
} HandleObject;

static PyMemberDef handle_members[] = {
    {"_img", T_OBJECT_EX, offsetof(HandleObject, img), 0, NULL},
    {"_heap", T_OBJECT_EX, offsetof(HandleObject, heap), 0, NULL},
    {"_addr", T_OBJECT_EX, offsetof(HandleObject, addr), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static void handle_dealloc(HandleObject *o) {
    if (o->weakrefs) PyObject_ClearWeakRefs((PyObject *)o);
    Py_CLEAR(o->img);
    Py_CLEAR(o->heap);
    Py_CLEAR(o->addr);
    Py_TYPE(o)->tp_free((PyObject *)o);
}

static PyTypeObject HandleBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "native._fastpath.HandleBase",
    .tp_basicsize = sizeof(HandleObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    /* Instances made from Python have no fields: values of the layer above
     * that may become handles (adopt); every use of the fields checks them. */
    .tp_new = PyType_GenericNew,
    .tp_doc = "The fields of a handle; see image/_handles.py.",
    .tp_dealloc = (destructor)handle_dealloc,
    .tp_members = handle_members,
    .tp_weaklistoffset = offsetof(HandleObject, weakrefs),
};

/* The handle's heap and address, or NULL with an exception (a stale or
 * half-made handle goes through Python, which says why). */
static Heap *handle_heap(HandleObject *o) {
    if (!o->heap || Py_TYPE(o->heap) != &HeapType || !o->addr) return NULL;
    return (Heap *)o->heap;
}

/* len() of a vector or table handle, through the heap method `count`. */
static Py_ssize_t handle_length(HandleObject *o, PyObject *(*count)(Heap *, PyObject *const *, Py_ssize_t)) {
    Heap *h = handle_heap(o);
    if (!h) {
        PyObject *r = PyObject_CallMethod((PyObject *)o, "_gone", NULL);
        Py_XDECREF(r);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "not a live handle");
        return -1;
    }
    PyObject *n = count(h, &o->addr, 1);
    if (!n) return -1;
    Py_ssize_t len = PyLong_AsSsize_t(n);
    Py_DECREF(n);
    return len;
}

static Py_ssize_t vector_length(HandleObject *o) { return handle_length(o, m_vec_len); }
static Py_ssize_t table_length(HandleObject *o) { return handle_length(o, m_tab_len); }

static PyObject *vector_subscript(HandleObject *o, PyObject *index) {
    Heap *h = handle_heap(o);
    if (!h || !PyLong_Check(index)) return PyObject_CallMethod((PyObject *)o, "_subscript", "O", index);
    PyObject *args[2] = {o->addr, index};
    return m_vec_get(h, args, 2);
}

static PyObject *Missing;   /* a sentinel no table holds */

static PyObject *table_subscript(HandleObject *o, PyObject *key) {
    Heap *h = handle_heap(o);
    if (!h) return PyObject_CallMethod((PyObject *)o, "_gone", NULL);
    PyObject *args[3] = {o->addr, key, Missing};
    PyObject *v = m_tab_get(h, args, 3);
    if (v == Missing) {
        Py_DECREF(v);
        PyObject *err = PyTuple_Pack(1, key);   /* KeyError(key), as a dict raises it */
        if (err) PyErr_SetObject(PyExc_KeyError, err);
        Py_XDECREF(err);
        return NULL;
    }
    return v;
}

static PyMappingMethods vector_mapping = {(lenfunc)vector_length, (binaryfunc)vector_subscript, NULL};
static PySequenceMethods vector_sequence = {.sq_length = (lenfunc)vector_length};
static PyMappingMethods table_mapping = {(lenfunc)table_length, (binaryfunc)table_subscript, NULL};
static PySequenceMethods table_sequence = {.sq_length = (lenfunc)table_length};

static PyTypeObject VectorBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "native._fastpath.VectorBase",
    .tp_basicsize = sizeof(HandleObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "len(v) and v[i] of a vector handle, in C.",
    .tp_base = &HandleBaseType,
    .tp_as_mapping = &vector_mapping,
    .tp_as_sequence = &vector_sequence,
};

static PyTypeObject TableBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "native._fastpath.TableBase",
    .tp_basicsize = sizeof(HandleObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "len(t) and t[key] of a table handle, in C.",
    .tp_base = &HandleBaseType,
    .tp_as_mapping = &table_mapping,
    .tp_as_sequence = &table_sequence,
};

int objmem_add_to_module(PyObject *m) {
    if (!(S_img = PyUnicode_InternFromString("_img")) || !(S_heap = PyUnicode_InternFromString("_heap"))
        || !(S_addr = PyUnicode_InternFromString("_addr")) || !(S_class = PyUnicode_InternFromString("__class__")))
        return -1;
    if (PyType_Ready(&HeapType) < 0 || PyType_Ready(&HandleBaseType) < 0
        || PyType_Ready(&VectorBaseType) < 0 || PyType_Ready(&TableBaseType) < 0)
        return -1;
    if (!(Missing = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type))) return -1;
    if (PyModule_AddObjectRef(m, "Heap", (PyObject *)&HeapType) < 0
        || PyModule_AddObjectRef(m, "HandleBase", (PyObject *)&HandleBaseType) < 0
        || PyModule_AddObjectRef(m, "VectorBase", (PyObject *)&VectorBaseType) < 0
        || PyModule_AddObjectRef(m, "TableBase", (PyObject *)&TableBaseType) < 0)
        return -1;
    return PyModule_AddFunctions(m, objmem_functions);
}
