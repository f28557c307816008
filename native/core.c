/*
** imago's C core: page translation, copy-on-write buffers, dirty tracking,
** checksums, and word and byte-range access at logical addresses.
**
** WHAT IT OWNS
**   ic_store  the mapped segments of one image (read-only MAP_SHARED mappings),
**             per slot a tag of the (checksum, seed) it was verified with, the
**             log's end in each segment, the image salt, a zero page and the last
**             error message.
**   ic_tree   one state of the page table: a radix tree mapping a logical page
**             number to a 32-byte entry.  Nodes are either on disk (inside a
**             mapped segment, immutable) or in memory (copied on first write,
**             "dirty since the last checkpoint").  A writer and every read-only
**             view each own one ic_tree; they share the ic_store.
**   ic_dirty  the writer's uncommitted pages: an open-addressing hash from
**             logical page number to a private page-sized buffer.
**
** Python (pager/) owns files, records, the commit protocol and recovery; this
** file never interprets a record, and writes to disk only in ic_commit_write
** (a commit's one write and sync, run for the pager: see its section).
**
** ENTRY LAYOUT (32 bytes, little-endian, in leaves and interior nodes alike)
**     0  loc     u64   (segment << 32) | slot; 0 = absent (reads as zeros)
**     8  sum     u64   checksum of the page or child node it points at
**    16  commit  u64   leaves: the commit that wrote the page (for errors)
**    24  aux     u64   reserved, written as 0, never interpreted
**   A node holds page_size/32 entries (128 at 4 KiB).  Level 0 is a leaf; a
**   tree of depth d covers page numbers below fanout^d.
**
** INVARIANTS (checked by ic_tree_check, which tests call)
**   1. Every byte read from a mapping is first bounds-checked against that
**      mapping, and every page or node is checked against its checksum before
**      its bytes are first used in this process (each slot's tag remembers the
**      checksum it passed with; committed slots are never rewritten, so a
**      pass stays true).  No location at or past a segment's log end is used.
**   2. A memory node's kids[] pointer, when set, supersedes the (loc, sum) in
**      its entry; disk bytes are never interpreted as pointers.
**   3. t->usage[s] equals the number of leaf pages plus disk nodes reachable
**      from the current state that live in segment s (a disk node copied to
**      memory is no longer reachable from it).  No slot is reachable twice.
**   4. A page in ic_dirty supersedes the tree; the FREED marker reads as zeros.
**
** Not thread-safe: one thread uses a store at a time (the error buffer and
** the verified tags are shared, unguarded state).
*/
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <time.h>

#include "core_api.h"

#define ENTRY_SIZE 32
#define MAX_PAGE_BITS 40       /* 2^40 logical pages: 4 PiB at 4 KiB, far past any disk */
#define SEG_HEADER_BYTES 128   /* the part of slot 0 that a segment header uses */
#define SEG_MAGIC "IMAGOSEG"
#define NODE_SEED 0x6e6f64652d6c766cULL   /* "node-lvl": keeps node and page sums apart */
#define GOLDEN 0x9E3779B97F4A7C15ULL      /* spreads page numbers over the seed space */

static uint8_t *const FREED = (uint8_t *)&FREED;   /* ic_dirty marker: page dropped */

/* ------------------------------------------------------------------ */
/* little-endian loads and stores, portable and alignment-free        */

/* memcpy compiles to one unaligned load or store; a byte loop does not (gcc
 * 12 -O2 left it a loop, and XXH64 ran at 1 GB/s instead of 8). */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define LE64(v) __builtin_bswap64(v)
#define LE32(v) __builtin_bswap32(v)
#else
#define LE64(v) (v)
#define LE32(v) (v)
#endif

static inline uint64_t ld64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return LE64(v);
}

static inline void st64(uint8_t *p, uint64_t v) {
    v = LE64(v);
    memcpy(p, &v, 8);
}

static inline uint32_t ld32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return LE32(v);
}

static inline void st32(uint8_t *p, uint32_t v) {
    v = LE32(v);
    memcpy(p, &v, 4);
}

static inline void st16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* ------------------------------------------------------------------ */
/* XXH64: fast, well-distributed, portable; the same function checks  */
/* pages, nodes, records and segment headers.                         */

#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL
#define P4 0x85EBCA77C2B2AE63ULL
#define P5 0x27D4EB2F165667C5ULL

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t xxh_round(uint64_t acc, uint64_t input) {
    acc += input * P2;
    return rotl64(acc, 31) * P1;
}

static inline uint64_t xxh_merge(uint64_t acc, uint64_t val) {
    acc ^= xxh_round(0, val);
    return acc * P1 + P4;
}

uint64_t ic_hash(const uint8_t *p, size_t len, uint64_t seed) {
    const uint8_t *end = p + len;
    uint64_t h;
    if (len >= 32) {
        uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
        const uint8_t *limit = end - 32;
        do {
            v1 = xxh_round(v1, ld64(p)); v2 = xxh_round(v2, ld64(p + 8));
            v3 = xxh_round(v3, ld64(p + 16)); v4 = xxh_round(v4, ld64(p + 24));
            p += 32;
        } while (p <= limit);
        h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
        h = xxh_merge(h, v1); h = xxh_merge(h, v2);
        h = xxh_merge(h, v3); h = xxh_merge(h, v4);
    } else {
        h = seed + P5;
    }
    h += (uint64_t)len;
    while (p + 8 <= end) {
        h ^= xxh_round(0, ld64(p));
        h = rotl64(h, 27) * P1 + P4;
        p += 8;
    }
    if (p + 4 <= end) {
        h ^= (uint64_t)ld32(p) * P1;
        h = rotl64(h, 23) * P2 + P3;
        p += 4;
    }
    while (p < end) {
        h ^= (*p++) * P5;
        h = rotl64(h, 11) * P1;
    }
    h ^= h >> 33; h *= P2; h ^= h >> 29; h *= P3; h ^= h >> 32;
    return h;
}

/* ------------------------------------------------------------------ */
/* the store: mapped segments                                          */

typedef struct {
    uint8_t *base;        /* NULL: not mapped */
    uint64_t len;
    uint64_t nslots;      /* len / page_size */
    uint64_t limit;       /* the log's end: no location at or past it is valid */
    uint32_t *verified;   /* per slot: tag of the (sum, seed) it passed, 0 if none */
    int header_ok;        /* header checked against this image once */
} ic_seg;

struct ic_store {
    uint32_t page_size;
    int page_shift;
    int fanout_shift;      /* log2(page_size / ENTRY_SIZE) */
    uint64_t salt;
    uint8_t image_id[16];
    ic_seg *segs;          /* indexed by segment number */
    uint32_t nsegs;
    uint8_t *zero_page;
    int code;              /* the ic_status of the last failure */
    char err[320];
};

static int fail(ic_store *st, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(ic_store *st, int code, const char *fmt, ...) {
    va_list ap;
    st->code = code;
    va_start(ap, fmt);
    vsnprintf(st->err, sizeof st->err, fmt, ap);
    va_end(ap);
    return code;
}

const char *ic_errmsg(ic_store *st) { return st->err; }

static int err_code(ic_store *st) { return st->code ? st->code : IC_CORRUPT; }

int ic_errcode(ic_store *st) { return err_code(st); }

static void clear_err(ic_store *st) { st->err[0] = 0; st->code = IC_OK; }

static int log2_exact(uint32_t v) {
    int s = 0;
    while ((1u << s) < v) s++;
    return (1u << s) == v ? s : -1;
}

ic_store *ic_store_new(uint32_t page_size, uint64_t salt, const uint8_t *image_id) {
    int shift = log2_exact(page_size);
    if (shift < 10 || shift > 16) return NULL;   /* 1 KiB .. 64 KiB */
    ic_store *st = calloc(1, sizeof *st);
    if (!st) return NULL;
    st->page_size = page_size;
    st->page_shift = shift;
    st->fanout_shift = shift - 5;                 /* 32-byte entries */
    st->salt = salt;
    memcpy(st->image_id, image_id, 16);
    st->zero_page = calloc(1, page_size);
    if (!st->zero_page) { free(st); return NULL; }
    return st;
}

void ic_store_free(ic_store *st) {
    if (!st) return;
    for (uint32_t i = 0; i < st->nsegs; i++) ic_store_unmap(st, i);
    free(st->segs);
    free(st->zero_page);
    free(st);
}

static int grow_segs(ic_store *st, uint32_t segno) {
    if (segno < st->nsegs) return IC_OK;
    uint32_t n = st->nsegs ? st->nsegs : 16;
    while (n <= segno) n *= 2;
    ic_seg *s = realloc(st->segs, (size_t)n * sizeof *s);
    if (!s) return fail(st, IC_NOMEM, "out of memory growing the segment table");
    memset(s + st->nsegs, 0, (size_t)(n - st->nsegs) * sizeof *s);
    st->segs = s;
    st->nsegs = n;
    return IC_OK;
}

int ic_store_map(ic_store *st, uint32_t segno, int fd, uint64_t len) {
    if (segno == 0 || len < st->page_size || len % st->page_size)
        return fail(st, IC_RANGE, "segment %u: bad mapping length %llu", segno,
                    (unsigned long long)len);
    int rc = grow_segs(st, segno);
    if (rc) return rc;
    ic_store_unmap(st, segno);
    void *p = mmap(NULL, (size_t)len, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return fail(st, IC_IO, "segment %u: mmap failed: %s", segno, strerror(errno));
    uint64_t nslots = len / st->page_size;
    uint32_t *tags = calloc((size_t)nslots, sizeof *tags);
    if (!tags) { munmap(p, (size_t)len); return fail(st, IC_NOMEM, "out of memory"); }
    ic_seg *s = &st->segs[segno];
    s->base = p; s->len = len; s->nslots = nslots; s->limit = nslots; s->verified = tags;
    s->header_ok = 0;
    return IC_OK;
}

void ic_store_unmap(ic_store *st, uint32_t segno) {
    if (segno >= st->nsegs || !st->segs[segno].base) return;
    ic_seg *s = &st->segs[segno];
    munmap(s->base, (size_t)s->len);
    free(s->verified);
    memset(s, 0, sizeof *s);
}

/* Where a segment's log ends (the writer's and readers' tail): a location at
 * or past it points at bytes no commit they hold has written. */
void ic_store_set_limit(ic_store *st, uint32_t segno, uint64_t limit) {
    if (segno < st->nsegs && st->segs[segno].base)
        st->segs[segno].limit = limit < st->segs[segno].nslots ? limit : st->segs[segno].nslots;
}

const uint8_t *ic_store_segment(ic_store *st, uint32_t segno, uint64_t *len_out) {
    if (segno >= st->nsegs || !st->segs[segno].base) { *len_out = 0; return NULL; }
    *len_out = st->segs[segno].len;
    return st->segs[segno].base;
}

/* A segment's header is checked once, on first use: magic, checksum, number,
 * image identity and page size.  A segment from another image or a renamed
 * file cannot serve pages to this one. */
static int check_header(ic_store *st, uint32_t segno, ic_seg *s) {
    const uint8_t *h = s->base;
    if (memcmp(h, SEG_MAGIC, 8) != 0)
        return fail(st, IC_CORRUPT, "seg-%06u: not an imago segment (bad magic)", segno);
    if (ic_hash(h, 120, 0) != ld64(h + 120))
        return fail(st, IC_CORRUPT, "seg-%06u: segment header fails its checksum", segno);
    if (ld32(h + 12) != st->page_size || ld32(h + 24) != segno || ld64(h + 16) != s->len
        || memcmp(h + 32, st->image_id, 16) != 0)
        return fail(st, IC_CORRUPT, "seg-%06u: header does not match this image", segno);
    s->header_ok = 1;
    return IC_OK;
}

/* Open, check and map segment `segno` of the image directory dirfd, the
 * whole of what pager/_segments.py Image.attach does, in one call: opening an
 * image maps every segment, and at a few syscalls each this is what keeps that
 * cheap when there are many.  The header must be a valid one of this image
 * (magic, version, checksum, geometry, number, identity, salt) and the file
 * exactly as long as it says.  Any failure returns non-zero and maps nothing:
 * the caller then runs the Python path, which names what is wrong. */
#define SEG_FORMAT_VERSION 1
#define SEG_MIN_SLOTS 16           /* pager/_format.py geometry_ok */
#define SEG_MAX_BYTES (1ull << 40)  /* pager/_format.py MAX_SEGMENT */

static int header_matches(ic_store *st, uint32_t segno, const uint8_t *h, uint64_t file_len) {
    uint64_t seg_size = ld64(h + 16);
    return memcmp(h, SEG_MAGIC, 8) == 0 && ic_hash(h, 120, 0) == ld64(h + 120)
        && ld32(h + 8) == SEG_FORMAT_VERSION && ld32(h + 12) == st->page_size
        && seg_size % st->page_size == 0 && seg_size >= (uint64_t)SEG_MIN_SLOTS * st->page_size
        && seg_size <= SEG_MAX_BYTES && ld32(h + 24) == segno
        && memcmp(h + 32, st->image_id, 16) == 0 && ld64(h + 48) == st->salt
        && seg_size == file_len;
}

int ic_store_attach(ic_store *st, int dirfd, uint32_t segno, uint64_t *seg_size_out) {
    char name[32];
    uint8_t h[SEG_HEADER_BYTES];
    struct stat sb;
    snprintf(name, sizeof name, "seg-%06u", segno);
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fail(st, IC_IO, "%s: %s", name, strerror(errno));
    int rc = IC_CORRUPT;
    if (fstat(fd, &sb) == 0 && pread(fd, h, sizeof h, 0) == (ssize_t)sizeof h
        && header_matches(st, segno, h, (uint64_t)sb.st_size)) {
        rc = ic_store_map(st, segno, fd, (uint64_t)sb.st_size);
        if (rc == IC_OK) {
            st->segs[segno].header_ok = 1;
            *seg_size_out = (uint64_t)sb.st_size;
        }
    } else {
        fail(st, IC_CORRUPT, "%s: not a segment of this image", name);
    }
    close(fd);
    return rc;
}

static inline uint32_t loc_seg(uint64_t loc) { return (uint32_t)(loc >> 32); }
static inline uint32_t loc_slot(uint64_t loc) { return (uint32_t)loc; }

/* The address of the slot `loc` names, bounds-checked; NULL with st->err set. */
static const uint8_t *slot_ptr(ic_store *st, uint64_t loc, ic_seg **seg_out) {
    uint32_t segno = loc_seg(loc), slot = loc_slot(loc);
    if (segno >= st->nsegs || !st->segs[segno].base) {
        fail(st, IC_MISSING, "segment seg-%06u is missing", segno);
        return NULL;
    }
    ic_seg *s = &st->segs[segno];
    if (slot == 0 || slot >= s->nslots) {
        fail(st, IC_CORRUPT, "location seg-%06u slot %u is outside the segment", segno, slot);
        return NULL;
    }
    if (slot >= s->limit) {
        fail(st, IC_CORRUPT, "location seg-%06u slot %u lies past the end of the log", segno,
             slot);
        return NULL;
    }
    if (!s->header_ok && check_header(st, segno, s) != IC_OK) return NULL;
    *seg_out = s;
    return s->base + ((uint64_t)slot << st->page_shift);
}

static inline uint64_t page_seed(ic_store *st, uint64_t page_no) {
    return st->salt ^ (page_no * GOLDEN);
}

static inline uint64_t node_seed(ic_store *st, int level) {
    return st->salt ^ (NODE_SEED + (uint64_t)level);
}

uint64_t ic_page_sum(ic_store *st, uint64_t page_no, const uint8_t *data) {
    return ic_hash(data, st->page_size, page_seed(st, page_no));
}

uint64_t ic_node_sum(ic_store *st, int level, const uint8_t *data) {
    return ic_hash(data, st->page_size, node_seed(st, level));
}

static inline uint32_t verified_tag(uint64_t sum, uint64_t seed) {
    return (uint32_t)(((sum ^ seed) * GOLDEN) >> 32) | 1u;   /* never 0, which means "not verified" */
}

/* Return the verified bytes of a slot.  A slot remembers a tag of the
 * (checksum, seed) it passed with, so a second reference that names another
 * checksum or seed (a data page used as a node, two entries for one slot) is
 * hashed again, not trusted.  `force` re-hashes regardless (ic_tree_check). */
static const uint8_t *verified_slot(ic_store *st, uint64_t loc, uint64_t sum, uint64_t seed,
                                    int force, int *mismatch) {
    ic_seg *s;
    *mismatch = 0;
    const uint8_t *p = slot_ptr(st, loc, &s);
    if (!p) return NULL;
    uint32_t slot = loc_slot(loc);
    uint32_t tag = verified_tag(sum, seed);
    if (!force && s->verified[slot] == tag) return p;
    if (ic_hash(p, st->page_size, seed) != sum) { *mismatch = 1; return NULL; }
    s->verified[slot] = tag;
    return p;
}

static const uint8_t *page_bytes(ic_store *st, uint64_t page_no, const uint8_t *entry, int force) {
    uint64_t loc = ld64(entry);
    int mismatch;
    const uint8_t *p = verified_slot(st, loc, ld64(entry + 8), page_seed(st, page_no), force,
                                     &mismatch);
    if (mismatch)
        fail(st, IC_CORRUPT,
             "page %llu (written by commit %llu, at seg-%06u slot %u) fails its checksum",
             (unsigned long long)page_no, (unsigned long long)ld64(entry + 16), loc_seg(loc),
             loc_slot(loc));
    return p;
}

static const uint8_t *node_bytes(ic_store *st, int level, uint64_t loc, uint64_t sum, int force) {
    int mismatch;
    const uint8_t *p = verified_slot(st, loc, sum, node_seed(st, level), force, &mismatch);
    if (mismatch)
        fail(st, IC_CORRUPT, "page-table node at seg-%06u slot %u (level %d) fails its checksum",
             loc_seg(loc), loc_slot(loc), level);
    return p;
}

int ic_verify_slot(ic_store *st, uint64_t loc, uint64_t sum, uint64_t page_no, uint64_t commit) {
    clear_err(st);
    uint8_t e[ENTRY_SIZE] = {0};
    st64(e, loc); st64(e + 8, sum); st64(e + 16, commit);
    return page_bytes(st, page_no, e, 1) ? IC_OK : err_code(st);
}

/* ------------------------------------------------------------------ */
/* the page table: a copy-on-write radix tree                          */

typedef struct ic_mnode {
    struct ic_mnode **kids;   /* interior nodes only; NULL entries: see the disk entry */
    uint64_t orig_loc;        /* the disk node this copy replaces, 0 if new */
    uint8_t data[];           /* page_size bytes of entries */
} ic_mnode;

struct ic_tree {
    ic_store *st;
    int depth;                 /* 0: empty */
    uint8_t root[ENTRY_SIZE];  /* the disk root, when root_mem is NULL */
    ic_mnode *root_mem;
    uint64_t nmem;             /* memory nodes: what the next checkpoint writes */
    uint64_t *usage;           /* live slots per segment (invariant 3) */
    uint32_t usage_cap;
    uint32_t fanout;           /* a copy, so freeing a tree never reads its store */
};

static inline uint32_t fanout(ic_store *st) { return 1u << st->fanout_shift; }

static inline uint32_t index_at(ic_store *st, uint64_t page_no, int level) {
    return (uint32_t)(page_no >> (st->fanout_shift * level)) & (fanout(st) - 1);
}


/* The deepest tree page numbers below 2^MAX_PAGE_BITS need at this page size. */
static int max_depth(ic_store *st) {
    return (MAX_PAGE_BITS + st->fanout_shift - 1) / st->fanout_shift;
}

static int depth_for(ic_store *st, uint64_t page_no) {
    int d = 1;
    while (d < max_depth(st) && (page_no >> (st->fanout_shift * d)) != 0) d++;
    return d;
}

ic_tree *ic_tree_new(ic_store *st, const uint8_t *root_entry, int depth) {
    int rooted = root_entry && ld64(root_entry);
    if (depth < 0 || depth > max_depth(st) || (rooted && depth == 0)) return NULL;
    ic_tree *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->st = st;
    t->fanout = fanout(st);
    t->depth = root_entry && ld64(root_entry) ? depth : 0;
    if (t->depth) memcpy(t->root, root_entry, ENTRY_SIZE);
    return t;
}

static void free_mnode(ic_tree *t, ic_mnode *m, int level) {
    if (!m) return;
    if (m->kids) {
        for (uint32_t i = 0; i < t->fanout; i++) free_mnode(t, m->kids[i], level - 1);
        free(m->kids);
    }
    free(m);
}

void ic_tree_free(ic_tree *t) {
    if (!t) return;
    free_mnode(t, t->root_mem, t->depth - 1);
    free(t->usage);
    free(t);
}

int ic_tree_depth(ic_tree *t) { return t->depth; }
uint64_t ic_tree_dirty_nodes(ic_tree *t) { return t->nmem; }

/* Segment numbers from disk are bounded before they size anything: 2^24
 * segments of 64 MiB is an exabyte-scale image. */
#define MAX_SEGMENTS (1u << 24)

static int usage_add(ic_tree *t, uint64_t loc, int64_t delta) {
    if (!loc) return IC_OK;
    uint32_t s = loc_seg(loc);
    if (s == 0 || s >= MAX_SEGMENTS)
        return fail(t->st, IC_CORRUPT, "location names segment %u, which cannot exist", s);
    if (s >= t->usage_cap) {
        uint64_t n = t->usage_cap ? t->usage_cap : 16;
        while (n <= s) n *= 2;
        uint64_t *u = realloc(t->usage, (size_t)n * sizeof *u);
        if (!u) return fail(t->st, IC_NOMEM, "out of memory growing segment usage");
        memset(u + t->usage_cap, 0, (size_t)(n - t->usage_cap) * sizeof *u);
        t->usage = u;
        t->usage_cap = (uint32_t)n;
    }
    if (delta < 0 && t->usage[s] < (uint64_t)-delta)
        return fail(t->st, IC_CORRUPT, "seg-%06u: segment usage would fall below zero "
                    "(the page table and its accounting disagree)", s);
    t->usage[s] += (uint64_t)delta;
    return IC_OK;
}

uint32_t ic_tree_usage_next(ic_tree *t, uint32_t from) {
    for (uint32_t s = from; s < t->usage_cap; s++)
        if (t->usage[s]) return s;
    return UINT32_MAX;
}

uint64_t ic_tree_usage(ic_tree *t, uint32_t s) { return s < t->usage_cap ? t->usage[s] : 0; }

int ic_tree_set_usage(ic_tree *t, uint32_t s, uint64_t live) {
    clear_err(t->st);
    int rc = usage_add(t, (uint64_t)s << 32 | 1, 0);
    if (rc == IC_OK) t->usage[s] = live;
    return rc;
}

/* A memory copy of the node an entry points at (or an empty node). */
static ic_mnode *new_mnode(ic_tree *t, int level, const uint8_t *entry) {
    ic_store *st = t->st;
    ic_mnode *m = malloc(sizeof *m + st->page_size);
    if (!m) { fail(st, IC_NOMEM, "out of memory for a page-table node"); return NULL; }
    m->kids = NULL;
    m->orig_loc = entry ? ld64(entry) : 0;
    if (level > 0) {
        m->kids = calloc(fanout(st), sizeof *m->kids);
        if (!m->kids) { free(m); fail(st, IC_NOMEM, "out of memory"); return NULL; }
    }
    if (m->orig_loc) {
        const uint8_t *src = node_bytes(st, level, m->orig_loc, ld64(entry + 8), 0);
        if (!src || usage_add(t, m->orig_loc, -1) != IC_OK) { free(m->kids); free(m); return NULL; }
        memcpy(m->data, src, st->page_size);
    } else {
        memset(m->data, 0, st->page_size);
    }
    t->nmem++;
    return m;
}

int ic_tree_get(ic_tree *t, uint64_t page_no, uint8_t *out) {
    ic_store *st = t->st;
    clear_err(st);
    memset(out, 0, ENTRY_SIZE);
    if (t->depth == 0 || depth_for(st, page_no) > t->depth) return IC_OK;
    ic_mnode *m = t->root_mem;
    const uint8_t *node = m ? m->data : NULL;
    uint64_t loc = ld64(t->root), sum = ld64(t->root + 8);
    for (int level = t->depth - 1;; level--) {
        if (!node && !(node = node_bytes(st, level, loc, sum, 0))) return err_code(st);
        const uint8_t *e = node + (size_t)index_at(st, page_no, level) * ENTRY_SIZE;
        if (level == 0) { memcpy(out, e, ENTRY_SIZE); return IC_OK; }
        ic_mnode *kid = m ? m->kids[index_at(st, page_no, level)] : NULL;
        if (kid) { m = kid; node = kid->data; continue; }
        loc = ld64(e); sum = ld64(e + 8);
        if (!loc) return IC_OK;
        m = NULL; node = NULL;
    }
}

/* Make the tree deep enough for page_no: each new root holds the old one at 0. */
static int grow(ic_tree *t, uint64_t page_no) {
    int need = depth_for(t->st, page_no);
    if (t->depth == 0) { t->depth = need; return IC_OK; }
    while (t->depth < need) {
        ic_mnode *r = new_mnode(t, t->depth, NULL);
        if (!r) return IC_NOMEM;
        if (t->root_mem) r->kids[0] = t->root_mem;
        else memcpy(r->data, t->root, ENTRY_SIZE);
        t->root_mem = r;
        memset(t->root, 0, ENTRY_SIZE);
        t->depth++;
    }
    return IC_OK;
}

/* The leaf entry for page_no, with every node on its path copied to memory. */
static uint8_t *leaf_for_write(ic_tree *t, uint64_t page_no) {
    ic_store *st = t->st;
    if (grow(t, page_no) != IC_OK) return NULL;
    if (!t->root_mem) {
        t->root_mem = new_mnode(t, t->depth - 1, ld64(t->root) ? t->root : NULL);
        if (!t->root_mem) return NULL;
    }
    ic_mnode *m = t->root_mem;
    for (int level = t->depth - 1; level > 0; level--) {
        uint32_t i = index_at(st, page_no, level);
        if (!m->kids[i]) {
            uint8_t *e = m->data + (size_t)i * ENTRY_SIZE;
            m->kids[i] = new_mnode(t, level - 1, ld64(e) ? e : NULL);
            if (!m->kids[i]) return NULL;
        }
        m = m->kids[i];
    }
    return m->data + (size_t)index_at(st, page_no, 0) * ENTRY_SIZE;
}

static int set_entry(ic_tree *t, uint64_t page_no, const uint8_t *entry, uint8_t *old_out) {
    if (page_no >> MAX_PAGE_BITS)
        return fail(t->st, IC_RANGE, "page number %llu is past the largest image",
                    (unsigned long long)page_no);
    uint8_t *leaf = leaf_for_write(t, page_no);
    if (!leaf) return err_code(t->st);
    if (old_out) memcpy(old_out, leaf, ENTRY_SIZE);
    int rc = usage_add(t, ld64(leaf), -1);
    if (rc) return rc;
    rc = usage_add(t, ld64(entry), +1);
    if (rc) { usage_add(t, ld64(leaf), +1); return rc; }
    memcpy(leaf, entry, ENTRY_SIZE);
    return IC_OK;
}

/* Apply one commit's page list: pairs are (page_no u64, sum u64), written at
 * consecutive slots from first_loc. */
/* On failure part-way, an apply given olds_out puts back what it changed, so
 * the caller sees all or nothing. */
static int unwind(ic_tree *t, int rc, uint64_t done, const uint8_t *keys, uint64_t stride,
                  const uint8_t *olds) {
    char saved[sizeof t->st->err];
    int code = t->st->code;
    memcpy(saved, t->st->err, sizeof saved);
    if (olds) ic_tree_restore(t, done, keys, stride, olds);
    memcpy(t->st->err, saved, sizeof saved);
    t->st->code = code;
    return rc;
}

int ic_tree_apply(ic_tree *t, uint64_t n, const uint8_t *pairs, uint64_t first_loc,
                  uint64_t commit, uint8_t *olds_out) {
    clear_err(t->st);
    uint8_t e[ENTRY_SIZE] = {0};
    for (uint64_t i = 0; i < n; i++) {
        st64(e, first_loc + i);
        st64(e + 8, ld64(pairs + 16 * i + 8));
        st64(e + 16, commit);
        int rc = set_entry(t, ld64(pairs + 16 * i), e, olds_out ? olds_out + ENTRY_SIZE * i : NULL);
        if (rc) return unwind(t, rc, i, pairs, 16, olds_out);
    }
    return IC_OK;
}

int ic_tree_apply_freed(ic_tree *t, uint64_t n, const uint8_t *pages, uint64_t commit,
                        uint8_t *olds_out) {
    clear_err(t->st);
    uint8_t e[ENTRY_SIZE] = {0};
    (void)commit;   /* a dropped page has no location, so nothing names its commit */
    for (uint64_t i = 0; i < n; i++) {
        int rc = set_entry(t, ld64(pages + 8 * i), e, olds_out ? olds_out + ENTRY_SIZE * i : NULL);
        if (rc) return unwind(t, rc, i, pages, 8, olds_out);
    }
    return IC_OK;
}

/* Undo an apply that could not be committed: put back the old entries, last first. */
int ic_tree_restore(ic_tree *t, uint64_t n, const uint8_t *pages, uint64_t stride,
                    const uint8_t *olds) {
    for (uint64_t i = n; i-- > 0;) {
        int rc = set_entry(t, ld64(pages + stride * i), olds + ENTRY_SIZE * i, NULL);
        if (rc) return rc;
    }
    return IC_OK;
}

/* Write every memory node, children first, to out[] as if at consecutive
 * slots from first_loc.  Does not change the tree: the caller adopts the new
 * root only once the checkpoint is durable. */
static int serialize(ic_tree *t, ic_mnode *m, int level, uint64_t first_loc, uint8_t *out,
                     uint64_t cap, uint64_t *count, uint8_t *entry_out) {
    ic_store *st = t->st;
    uint8_t *copy = malloc(st->page_size);
    if (!copy) return fail(st, IC_NOMEM, "out of memory in checkpoint");
    memcpy(copy, m->data, st->page_size);
    for (uint32_t i = 0; m->kids && i < fanout(st); i++) {
        if (!m->kids[i]) continue;
        int rc = serialize(t, m->kids[i], level - 1, first_loc, out, cap, count,
                           copy + (size_t)i * ENTRY_SIZE);
        if (rc) { free(copy); return rc; }
    }
    if (*count >= cap) { free(copy); return fail(st, IC_RANGE, "checkpoint buffer too small"); }
    uint64_t loc = first_loc + *count;
    memcpy(out + (*count << st->page_shift), copy, st->page_size);
    free(copy);
    memset(entry_out, 0, ENTRY_SIZE);
    st64(entry_out, loc);
    st64(entry_out + 8, ic_node_sum(st, level, out + (*count << st->page_shift)));
    (*count)++;
    return IC_OK;
}

int ic_tree_serialize(ic_tree *t, uint64_t first_loc, uint8_t *out, uint64_t cap,
                      uint8_t *root_out, int *depth_out) {
    clear_err(t->st);
    *depth_out = t->depth;
    if (!t->root_mem) { memcpy(root_out, t->root, ENTRY_SIZE); return IC_OK; }
    uint64_t count = 0;
    int rc = serialize(t, t->root_mem, t->depth - 1, first_loc, out, cap, &count, root_out);
    if (rc == IC_OK && count != t->nmem)
        rc = fail(t->st, IC_CORRUPT, "checkpoint wrote %llu nodes, expected %llu",
                  (unsigned long long)count, (unsigned long long)t->nmem);
    return rc;
}

static void retire(ic_tree *t, ic_mnode *m, int level) {
    if (!m) return;
    if (m->kids) {
        for (uint32_t i = 0; i < fanout(t->st); i++) retire(t, m->kids[i], level - 1);
        free(m->kids);
    }
    free(m);
}

/* The checkpoint written by ic_tree_serialize is durable: drop the memory
 * nodes, account the nodes they replaced, and read from the new root. */
void ic_tree_adopt(ic_tree *t, const uint8_t *root_entry, int depth, uint64_t first_loc,
                   uint64_t nnodes) {
    retire(t, t->root_mem, t->depth - 1);
    t->root_mem = NULL;
    t->nmem = 0;
    t->depth = ld64(root_entry) ? depth : 0;
    memcpy(t->root, root_entry, ENTRY_SIZE);
    if (nnodes) usage_add(t, first_loc, (int64_t)nnodes);
}

/* ------------------------------------------------------------------ */
/* the verifier                                                        */

typedef struct {
    ic_tree *t;
    uint64_t pages, nodes;
    uint64_t *counts;          /* per segment, compared with t->usage */
    uint8_t **seen;            /* per segment bitmap: invariant 3, no slot twice */
} checker;

static int mark_seen(checker *c, uint64_t loc) {
    ic_store *st = c->t->st;
    uint32_t s = loc_seg(loc), slot = loc_slot(loc);
    if (s >= st->nsegs || !st->segs[s].base)
        return fail(st, IC_MISSING, "segment seg-%06u is missing", s);
    if (slot >= st->segs[s].limit)
        return fail(st, IC_CORRUPT, "location seg-%06u slot %u is outside the segment's log",
                    s, slot);
    if (!c->seen[s] && !(c->seen[s] = calloc(1, (size_t)(st->segs[s].nslots + 7) / 8)))
        return fail(st, IC_NOMEM, "out of memory in check");
    uint8_t bit = (uint8_t)(1u << (slot & 7));
    if (c->seen[s][slot >> 3] & bit)
        return fail(st, IC_CORRUPT, "seg-%06u slot %u is reachable twice", s, slot);
    c->seen[s][slot >> 3] |= bit;
    c->counts[s]++;
    return IC_OK;
}

static int check_node(checker *c, ic_mnode *m, const uint8_t *entry, int level, uint64_t prefix) {
    ic_store *st = c->t->st;
    const uint8_t *node;
    c->nodes++;
    if (m) {
        node = m->data;
    } else {
        int rc = mark_seen(c, ld64(entry));
        if (rc) return rc;
        if (!(node = node_bytes(st, level, ld64(entry), ld64(entry + 8), 1))) return err_code(st);
    }
    for (uint32_t i = 0; i < fanout(st); i++) {
        const uint8_t *e = node + (size_t)i * ENTRY_SIZE;
        uint64_t page_no = (prefix << st->fanout_shift) | i;
        ic_mnode *kid = m && m->kids ? m->kids[i] : NULL;
        if (level > 0 && (kid || ld64(e))) {
            int rc = check_node(c, kid, e, level - 1, page_no);
            if (rc) return rc;
        } else if (level == 0 && ld64(e)) {
            int rc = mark_seen(c, ld64(e));
            if (rc) return rc;
            if (!page_bytes(st, page_no, e, 1)) return err_code(st);
            c->pages++;
        }
    }
    return IC_OK;
}

int ic_tree_check(ic_tree *t, uint64_t *pages_out, uint64_t *nodes_out) {
    ic_store *st = t->st;
    clear_err(st);
    checker c = {t, 0, 0, calloc(st->nsegs + 1, sizeof(uint64_t)), calloc(st->nsegs + 1, sizeof(uint8_t *))};
    int rc = (!c.counts || !c.seen) ? fail(st, IC_NOMEM, "out of memory in check") : IC_OK;
    if (rc == IC_OK && t->depth)
        rc = check_node(&c, t->root_mem, t->root, t->depth - 1, 0);
    uint32_t top = st->nsegs > t->usage_cap ? st->nsegs : t->usage_cap;
    for (uint32_t s = 0; rc == IC_OK && s < top; s++) {
        uint64_t counted = s < st->nsegs ? c.counts[s] : 0;
        if (counted != ic_tree_usage(t, s))
            rc = fail(st, IC_CORRUPT, "seg-%06u: %llu live slots reachable, accounting says %llu",
                      s, (unsigned long long)counted, (unsigned long long)ic_tree_usage(t, s));
    }
    for (uint32_t s = 0; c.seen && s < st->nsegs; s++) free(c.seen[s]);
    free(c.seen);
    free(c.counts);
    *pages_out = c.pages;
    *nodes_out = c.nodes;
    return rc;
}

/* ------------------------------------------------------------------ */
/* segment cleaning (vacuum): what a tree reaches, and moving it       */
/*
** pager/_vacuum.py cleans a segment by copying the slots that retained
** commits still reach out of it.  These functions walk one tree (memory and
** disk nodes alike, every disk node verified before use: invariant 1):
**   ic_tree_mark      sets one bit per disk slot the tree reaches (pages and
**                     nodes) in a caller's bitmap laid out by segment
**   ic_vac_collect    lists the leaf pages a set of trees holds in a set of
**                     victim segments, in one walk per tree: sorted by
**                     location, each slot once
**   ic_vac_relocate   moves every reference into the victims elsewhere: leaf
**                     entries to base + their index in that list, and disk
**                     nodes there copied to memory (so the next serialize
**                     writes them anew); afterwards the tree reaches nothing
**                     in them (checked)
**   ic_vac_copy       copies the listed pages, each verified, into one buffer
** None writes to disk.  The tree's accounting (invariant 3) follows each move.
*/

typedef struct {
    ic_tree *t;
    int (*node)(void *ctx, uint64_t loc, int level, uint64_t prefix);
    int (*page)(void *ctx, uint64_t page_no, const uint8_t *entry);
    void *ctx;
} vac_walk;

static int vac_walk_node(vac_walk *w, ic_mnode *m, const uint8_t *entry, int level,
                         uint64_t prefix) {
    ic_store *st = w->t->st;
    const uint8_t *node;
    if (m) {
        node = m->data;
    } else {
        int rc = w->node(w->ctx, ld64(entry), level, prefix);
        if (rc) return rc;
        if (!(node = node_bytes(st, level, ld64(entry), ld64(entry + 8), 0))) return err_code(st);
    }
    for (uint32_t i = 0; i < fanout(st); i++) {
        const uint8_t *e = node + (size_t)i * ENTRY_SIZE;
        uint64_t below = (prefix << st->fanout_shift) | i;
        ic_mnode *kid = m && m->kids ? m->kids[i] : NULL;
        int rc = IC_OK;
        if (level > 0 && (kid || ld64(e))) rc = vac_walk_node(w, kid, e, level - 1, below);
        else if (level == 0 && ld64(e)) rc = w->page(w->ctx, below, e);
        if (rc) return rc;
    }
    return IC_OK;
}

static int vac_walk_tree(vac_walk *w) {
    clear_err(w->t->st);
    if (!w->t->depth) return IC_OK;
    return vac_walk_node(w, w->t->root_mem, w->t->root, w->t->depth - 1, 0);
}

typedef struct {
    ic_store *st;
    uint8_t *bitmap;
    const uint64_t *seg_base;   /* bit of slot 0 of each segment; UINT64_MAX: not listed */
    uint32_t nsegs;
} vac_marker;

static int vac_mark_loc(void *ctx, uint64_t loc, int level, uint64_t prefix) {
    vac_marker *mk = ctx;
    (void)level; (void)prefix;
    uint32_t s = loc_seg(loc);
    if (s >= mk->nsegs || mk->seg_base[s] == UINT64_MAX)
        return fail(mk->st, IC_MISSING, "segment seg-%06u is missing", s);
    uint64_t bit = mk->seg_base[s] + loc_slot(loc);
    mk->bitmap[bit >> 3] |= (uint8_t)(1u << (bit & 7));
    return IC_OK;
}

static int vac_mark_page(void *ctx, uint64_t page_no, const uint8_t *entry) {
    (void)page_no;
    return vac_mark_loc(ctx, ld64(entry), 0, 0);
}

int ic_tree_mark(ic_tree *t, uint8_t *bitmap, const uint64_t *seg_base, uint32_t nsegs) {
    vac_marker mk = {t->st, bitmap, seg_base, nsegs};
    vac_walk w = {t, vac_mark_loc, vac_mark_page, &mk};
    return vac_walk_tree(&w);
}

typedef struct {
    ic_store *st;
    const uint8_t *victims;   /* one byte per segment number below nflags: nonzero = victim */
    uint32_t nflags;
    uint8_t *out;             /* collect: (loc, page_no, sum) x n */
    uint64_t cap, n;
    uint64_t *targets;        /* relocate: (level, prefix-or-page) pairs */
    uint64_t ntargets, tcap;
} vac_collector;

static inline int vac_is_victim(const vac_collector *c, uint64_t loc) {
    uint32_t s = loc_seg(loc);
    return s < c->nflags && c->victims[s];
}

static int vac_skip_node(void *ctx, uint64_t loc, int level, uint64_t prefix) {
    (void)ctx; (void)loc; (void)level; (void)prefix;
    return IC_OK;
}

static int vac_collect_page(void *ctx, uint64_t page_no, const uint8_t *entry) {
    vac_collector *c = ctx;
    if (!vac_is_victim(c, ld64(entry))) return IC_OK;
    if (c->n >= c->cap) return fail(c->st, IC_RANGE, "vacuum: collect buffer too small");
    uint8_t *p = c->out + 24 * c->n++;
    st64(p, ld64(entry)); st64(p + 8, page_no); st64(p + 16, ld64(entry + 8));
    return IC_OK;
}

static int vac_cmp_loc(const void *a, const void *b) {
    uint64_t x = ld64(a), y = ld64(b);
    return (x > y) - (x < y);
}

/* Sort (loc, page_no, sum) triples by loc and drop repeats; two trees naming
 * one slot for different pages (or sums) is damage. */
static int vac_sort_unique(ic_store *st, uint8_t *out, uint64_t *n) {
    if (*n == 0) return IC_OK;
    qsort(out, (size_t)*n, 24, vac_cmp_loc);
    uint64_t kept = 1;
    for (uint64_t i = 1; i < *n; i++) {
        uint8_t *prev = out + 24 * (kept - 1), *cur = out + 24 * i;
        if (ld64(cur) != ld64(prev)) { memmove(out + 24 * kept++, cur, 24); continue; }
        if (memcmp(cur + 8, prev + 8, 16))
            return fail(st, IC_CORRUPT, "seg-%06u slot %u is named by two page-table entries "
                        "that disagree", loc_seg(ld64(cur)), loc_slot(ld64(cur)));
    }
    *n = kept;
    return IC_OK;
}

int ic_vac_collect(ic_tree **trees, uint32_t ntrees, const uint8_t *victims, uint32_t nflags,
                   uint8_t *out, uint64_t cap, uint64_t *n_out) {
    *n_out = 0;
    if (!ntrees) return IC_OK;
    vac_collector c = {trees[0]->st, victims, nflags, out, cap, 0, NULL, 0, 0};
    int rc = IC_OK;
    for (uint32_t i = 0; rc == IC_OK && i < ntrees; i++) {
        vac_walk w = {trees[i], vac_skip_node, vac_collect_page, &c};
        rc = vac_walk_tree(&w);
    }
    if (rc == IC_OK) rc = vac_sort_unique(c.st, out, &c.n);
    *n_out = rc == IC_OK ? c.n : 0;
    return rc;
}

static int vac_push_target(vac_collector *c, uint64_t level, uint64_t key) {
    if (c->ntargets + 2 > c->tcap) {
        uint64_t n = c->tcap ? 2 * c->tcap : 256;
        uint64_t *p = realloc(c->targets, (size_t)n * sizeof *p);
        if (!p) return fail(c->st, IC_NOMEM, "out of memory in vacuum");
        c->targets = p;
        c->tcap = n;
    }
    c->targets[c->ntargets++] = level;
    c->targets[c->ntargets++] = key;
    return IC_OK;
}

static int vac_target_node(void *ctx, uint64_t loc, int level, uint64_t prefix) {
    vac_collector *c = ctx;
    return vac_is_victim(c, loc) ? vac_push_target(c, (uint64_t)level + 1, prefix) : IC_OK;
}

static int vac_target_page(void *ctx, uint64_t page_no, const uint8_t *entry) {
    vac_collector *c = ctx;
    return vac_is_victim(c, ld64(entry)) ? vac_push_target(c, 0, page_no) : IC_OK;
}

/* Copy to memory the node at `level` on page_no's path, and every node above
 * it (leaf_for_write, stopping at a level). */
static int vac_node_for_write(ic_tree *t, uint64_t page_no, int level) {
    ic_store *st = t->st;
    if (!t->root_mem) {
        t->root_mem = new_mnode(t, t->depth - 1, ld64(t->root) ? t->root : NULL);
        if (!t->root_mem) return err_code(st);
    }
    ic_mnode *m = t->root_mem;
    for (int l = t->depth - 1; l > level; l--) {
        uint32_t i = index_at(st, page_no, l);
        if (!m->kids[i]) {
            uint8_t *e = m->data + (size_t)i * ENTRY_SIZE;
            m->kids[i] = new_mnode(t, l - 1, ld64(e) ? e : NULL);
            if (!m->kids[i]) return err_code(st);
        }
        m = m->kids[i];
    }
    return IC_OK;
}

/* The index of old_loc among the n sorted (loc, page_no, sum) triples, or n. */
static uint64_t vac_lookup(const uint8_t *pages, uint64_t n, uint64_t old_loc) {
    uint64_t lo = 0, hi = n;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        uint64_t key = ld64(pages + 24 * mid);
        if (key == old_loc) return mid;
        if (key < old_loc) lo = mid + 1; else hi = mid;
    }
    return n;
}

static int vac_apply_target(ic_tree *t, uint64_t level, uint64_t key, const uint8_t *pages,
                            uint64_t n, uint64_t base) {
    ic_store *st = t->st;
    if (level) {   /* a disk node at level-1 whose page range starts at key's prefix */
        int l = (int)level - 1;
        return vac_node_for_write(t, key << (st->fanout_shift * (l + 1)), l);
    }
    uint8_t e[ENTRY_SIZE];
    int rc = ic_tree_get(t, key, e);
    if (rc) return rc;
    uint64_t i = vac_lookup(pages, n, ld64(e));
    if (i == n || ld64(pages + 24 * i + 8) != key)
        return fail(st, IC_CORRUPT, "vacuum: page %llu at seg-%06u slot %u has no new place",
                    (unsigned long long)key, loc_seg(ld64(e)), loc_slot(ld64(e)));
    st64(e, base + i);
    return set_entry(t, key, e, NULL);
}

int ic_vac_relocate(ic_tree *t, const uint8_t *victims, uint32_t nflags, const uint8_t *pages,
                    uint64_t n, uint64_t base) {
    vac_collector c = {t->st, victims, nflags, NULL, 0, 0, NULL, 0, 0};
    vac_walk w = {t, vac_target_node, vac_target_page, &c};
    int rc = vac_walk_tree(&w);
    for (uint64_t i = 0; rc == IC_OK && i < c.ntargets; i += 2)
        rc = vac_apply_target(t, c.targets[i], c.targets[i + 1], pages, n, base);
    free(c.targets);
    for (uint32_t s = 0; rc == IC_OK && s < nflags; s++)
        if (victims[s] && ic_tree_usage(t, s))
            rc = fail(t->st, IC_CORRUPT, "vacuum: the tree still reaches %llu slots of seg-%06u",
                      (unsigned long long)ic_tree_usage(t, s), s);
    return rc;
}

/* Copy the n collected pages into dst (page after page), each checked against
 * the checksum its leaf carries first (invariant 1): a damaged page is never
 * given a fresh home.  pairs_out gets (page_no, sum) per page, as a record
 * lists them. */
int ic_vac_copy(ic_store *st, const uint8_t *pages, uint64_t n, uint8_t *dst,
                uint8_t *pairs_out) {
    clear_err(st);
    uint8_t e[ENTRY_SIZE] = {0};
    for (uint64_t i = 0; i < n; i++) {
        const uint8_t *p = pages + 24 * i;
        st64(e, ld64(p)); st64(e + 8, ld64(p + 16));
        const uint8_t *src = page_bytes(st, ld64(p + 8), e, 0);
        if (!src) return err_code(st);
        memcpy(dst + (i << st->page_shift), src, st->page_size);
        st64(pairs_out + 16 * i, ld64(p + 8));
        st64(pairs_out + 16 * i + 8, ld64(p + 16));
    }
    return IC_OK;
}

/* ------------------------------------------------------------------ */
/* dirty pages: open addressing, linear probing                        */

#define EMPTY_KEY UINT64_MAX
#define DIRTY_MIN_CAP 64      /* a power of two; the table halves load at 50% */

struct ic_dirty {
    uint32_t page_size;
    uint64_t cap, count;       /* cap is a power of two; count <= cap / 2 */
    uint64_t *keys;
    uint8_t **vals;
};

static int dirty_alloc(ic_dirty *d, uint64_t cap) {
    d->keys = malloc(cap * sizeof *d->keys);
    d->vals = calloc(cap, sizeof *d->vals);
    if (!d->keys || !d->vals) { free(d->keys); free(d->vals); return IC_NOMEM; }
    for (uint64_t i = 0; i < cap; i++) d->keys[i] = EMPTY_KEY;
    d->cap = cap;
    d->count = 0;
    return IC_OK;
}

ic_dirty *ic_dirty_new(uint32_t page_size) {
    ic_dirty *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->page_size = page_size;
    if (dirty_alloc(d, DIRTY_MIN_CAP) != IC_OK) { free(d); return NULL; }
    return d;
}

static void free_vals(ic_dirty *d) {
    for (uint64_t i = 0; i < d->cap; i++)
        if (d->keys[i] != EMPTY_KEY && d->vals[i] != FREED) free(d->vals[i]);
}

void ic_dirty_free(ic_dirty *d) {
    if (!d) return;
    free_vals(d);
    free(d->keys);
    free(d->vals);
    free(d);
}

/* Clearing shrinks a table that a bulk commit grew, so that clearing after
 * each small commit costs what the small commit used, not the largest one. */
void ic_dirty_clear(ic_dirty *d) {
    free_vals(d);
    if (d->cap > DIRTY_MIN_CAP) {
        uint64_t *keys = d->keys;
        uint8_t **vals = d->vals;
        if (dirty_alloc(d, DIRTY_MIN_CAP) == IC_OK) { free(keys); free(vals); return; }
        d->keys = keys;
        d->vals = vals;
    }
    for (uint64_t i = 0; i < d->cap; i++) { d->keys[i] = EMPTY_KEY; d->vals[i] = NULL; }
    d->count = 0;
}

uint64_t ic_dirty_count(ic_dirty *d) { return d->count; }

static inline uint64_t slot_of(ic_dirty *d, uint64_t key) {
    uint64_t i = (key * GOLDEN) >> 17;   /* high bits mix best for sequential page numbers */
    for (i &= d->cap - 1; d->keys[i] != EMPTY_KEY && d->keys[i] != key; i = (i + 1) & (d->cap - 1)) {}
    return i;
}

static uint8_t *dirty_find(ic_dirty *d, uint64_t key) {
    uint64_t i = slot_of(d, key);
    return d->keys[i] == key ? d->vals[i] : NULL;
}

static int dirty_put(ic_dirty *d, uint64_t key, uint8_t *val) {
    if ((d->count + 1) * 2 > d->cap) {
        ic_dirty old = *d;
        if (dirty_alloc(d, old.cap * 2) != IC_OK) { *d = old; return IC_NOMEM; }
        for (uint64_t i = 0; i < old.cap; i++)
            if (old.keys[i] != EMPTY_KEY) dirty_put(d, old.keys[i], old.vals[i]);
        free(old.keys);
        free(old.vals);
    }
    uint64_t i = slot_of(d, key);
    if (d->keys[i] == EMPTY_KEY) d->count++;
    else if (d->vals[i] != FREED && d->vals[i] != val) free(d->vals[i]);
    d->keys[i] = key;
    d->vals[i] = val;
    return IC_OK;
}

int ic_dirty_drop(ic_dirty *d, uint64_t page_no) {
    if (page_no >> MAX_PAGE_BITS) return IC_RANGE;
    return dirty_put(d, page_no, FREED);
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* ------------------------------------------------------------------ */
/* page and address access                                             */

const uint8_t *ic_page_read(ic_tree *t, ic_dirty *d, uint64_t page_no) {
    ic_store *st = t->st;
    clear_err(st);
    if (page_no >> MAX_PAGE_BITS) {
        fail(st, IC_RANGE, "page number %llu is past the largest image", (unsigned long long)page_no);
        return NULL;
    }
    if (d) {
        uint8_t *p = dirty_find(d, page_no);
        if (p) return p == FREED ? st->zero_page : p;
    }
    uint8_t e[ENTRY_SIZE];
    if (ic_tree_get(t, page_no, e) != IC_OK) return NULL;
    if (!ld64(e)) return st->zero_page;
    return page_bytes(st, page_no, e, 0);
}

uint8_t *ic_page_for_write(ic_tree *t, ic_dirty *d, uint64_t page_no) {
    ic_store *st = t->st;
    clear_err(st);
    uint8_t *p = dirty_find(d, page_no);
    if (p && p != FREED) return p;
    const uint8_t *src = p == FREED ? st->zero_page : ic_page_read(t, NULL, page_no);
    if (!src) return NULL;
    uint8_t *copy = malloc(st->page_size);
    if (!copy) { fail(st, IC_NOMEM, "out of memory for a dirty page"); return NULL; }
    memcpy(copy, src, st->page_size);
    if (dirty_put(d, page_no, copy) != IC_OK) {
        free(copy);
        fail(st, IC_NOMEM, "out of memory for the dirty table");
        return NULL;
    }
    return copy;
}

static int range_ok(ic_store *st, uint64_t addr, uint64_t len) {
    uint64_t limit = (uint64_t)1 << (MAX_PAGE_BITS + st->page_shift);
    if (addr > limit || len > limit - addr)
        return fail(st, IC_RANGE, "address range %llu+%llu is past the largest image",
                    (unsigned long long)addr, (unsigned long long)len);
    return IC_OK;
}

int ic_read(ic_tree *t, ic_dirty *d, uint64_t addr, uint8_t *out, uint64_t len) {
    ic_store *st = t->st;
    if (range_ok(st, addr, len)) return IC_RANGE;
    while (len) {
        uint64_t off = addr & (st->page_size - 1), n = st->page_size - off;
        if (n > len) n = len;
        const uint8_t *p = ic_page_read(t, d, addr >> st->page_shift);
        if (!p) return err_code(st);
        memcpy(out, p + off, n);
        out += n; addr += n; len -= n;
    }
    return IC_OK;
}

int ic_write(ic_tree *t, ic_dirty *d, uint64_t addr, const uint8_t *src, uint64_t len) {
    ic_store *st = t->st;
    if (range_ok(st, addr, len)) return IC_RANGE;
    /* Make every page writable first, so that a failure (a damaged page) leaves
     * nothing half written: copying a page into the dirty table changes no bytes. */
    uint64_t last = len ? (addr + len - 1) >> st->page_shift : 0;
    for (uint64_t p = addr >> st->page_shift; len && p <= last; p++)
        if (!ic_page_for_write(t, d, p)) return err_code(st);
    while (len) {
        uint64_t off = addr & (st->page_size - 1), n = st->page_size - off;
        if (n > len) n = len;
        uint8_t *p = ic_page_for_write(t, d, addr >> st->page_shift);
        if (!p) return err_code(st);
        memcpy(p + off, src, n);
        src += n; addr += n; len -= n;
    }
    return IC_OK;
}

int ic_read_u64(ic_tree *t, ic_dirty *d, uint64_t addr, uint64_t *out) {
    ic_store *st = t->st;
    uint64_t off = addr & (st->page_size - 1);
    if (off + 8 <= st->page_size && !(addr >> (MAX_PAGE_BITS + st->page_shift))) {
        const uint8_t *p = ic_page_read(t, d, addr >> st->page_shift);
        if (!p) return err_code(st);
        *out = ld64(p + off);
        return IC_OK;
    }
    uint8_t b[8];
    int rc = ic_read(t, d, addr, b, 8);
    if (rc == IC_OK) *out = ld64(b);
    return rc;
}

int ic_write_u64(ic_tree *t, ic_dirty *d, uint64_t addr, uint64_t value) {
    uint8_t b[8];
    st64(b, value);
    return ic_write(t, d, addr, b, 8);
}

/* ------------------------------------------------------------------ */
/* the commit builder                                                  */
/*
** ic_commit_build lays out one commit as whole slots, starting at c->slot:
**
**     [record: record_slots][data pages: npages][checkpoint nodes: nnodes][zero slot]
**
** and applies it to the page table, keeping what it replaced so that
** ic_commit_undo can put it back (the write failed) and ic_commit_done can
** finish it (the sync returned).  The trailing zeroed slot is written with the
** commit (when the segment has room): in every acknowledged state the slot
** past the log's end is zero, so stale bytes of an interrupted commit never
** come to sit there.  Record layout (pager/_format.py reads it):
**
**     0 magic "IMAGOREC"  8 version u16  10 flags u16  12 length u32
**     16 seq  24 parent  32 prev_sum  40 time_ns                 (u64 each)
**     48 npages u32  52 nnodes u32  56 nfreed u32  60 meta_len u32
**     64 nusage u32  68 depth u16  70 0 u16
**     72 root_loc  80 root_sum  88 ckpt_slot  96 prev_ckpt  104 nodes_sum
**     112 slot u32  116 segno u32  120 0 u64
**     128 body: npages x (page_no, sum), nfreed x page_no, nusage x (segno, live), meta
**     length - 8: sum = xxh64(record[0 : length - 8], salt)
**   length is a multiple of RECORD_BLOCK.
*/
#define REC_HEADER 128
#define RECORD_BLOCK 512
#define FLAG_CHECKPOINT 1
#define FORMAT_VERSION 1

typedef struct {
    uint64_t *written;       /* page numbers, ascending */
    uint64_t *freed;
    uint8_t *olds;           /* the entries replaced: written first, then freed */
    uint64_t nwritten, nfreed, applied;
} undo_log;

static void free_undo(ic_commit *c) {
    undo_log *u = c->undo;
    if (u) { free(u->written); free(u->freed); free(u->olds); free(u); }
    c->undo = NULL;
    c->buf_len = 0;   /* the buffer itself is kept for the next commit */
}

/* Buffers up to this size are kept between commits; a bulk commit's larger
 * one is freed, so a single big transaction does not pin its memory. */
#define KEEP_BUFFER (1u << 20)

void ic_commit_release(ic_commit *c) {
    free_undo(c);
    free(c->buf);
    c->buf = NULL;
    c->buf_cap = 0;
}

static int commit_buffer(ic_store *st, ic_commit *c, uint64_t bytes) {
    if (c->buf_cap < bytes || (c->buf_cap > KEEP_BUFFER && bytes <= KEEP_BUFFER)) {
        free(c->buf);
        c->buf = malloc(bytes);
        c->buf_cap = c->buf ? bytes : 0;
        if (!c->buf) return fail(st, IC_NOMEM, "out of memory in commit");
    }
    return IC_OK;
}

static int collect_keys(ic_store *st, ic_dirty *d, undo_log *u) {
    uint64_t n = d->count ? d->count : 1;
    u->written = malloc(n * sizeof(uint64_t));
    u->freed = malloc(n * sizeof(uint64_t));
    u->olds = malloc(n * ENTRY_SIZE);
    if (!u->written || !u->freed || !u->olds) return fail(st, IC_NOMEM, "out of memory in commit");
    for (uint64_t i = 0; i < d->cap; i++) {
        if (d->keys[i] == EMPTY_KEY) continue;
        if (d->vals[i] == FREED) u->freed[u->nfreed++] = d->keys[i];
        else u->written[u->nwritten++] = d->keys[i];
    }
    qsort(u->written, u->nwritten, sizeof(uint64_t), cmp_u64);
    qsort(u->freed, u->nfreed, sizeof(uint64_t), cmp_u64);
    return IC_OK;
}

static void undo_apply(ic_tree *t, undo_log *u) {
    uint8_t key[8];
    for (uint64_t i = u->applied; i-- > 0;) {
        uint64_t page = i < u->nwritten ? u->written[i] : u->freed[i - u->nwritten];
        st64(key, page);
        ic_tree_restore(t, 1, key, 8, u->olds + i * ENTRY_SIZE);
    }
    u->applied = 0;
}

static uint32_t usage_segments(ic_tree *t) {
    uint32_t n = 0;
    for (uint32_t s = 0; s < t->usage_cap; s++) n += t->usage[s] != 0;
    return n;
}

static uint64_t record_length(uint64_t npages, uint64_t nfreed, uint64_t nusage, uint64_t meta) {
    uint64_t raw = REC_HEADER + 16 * npages + 8 * nfreed + 16 * nusage + meta + 8;
    return (raw + RECORD_BLOCK - 1) / RECORD_BLOCK * RECORD_BLOCK;
}

static uint64_t slots_for(ic_store *st, uint64_t bytes) {
    return (bytes + st->page_size - 1) >> st->page_shift;
}

/* Apply every dirty page at its slot-to-be; pages go after record_slots. */
static int apply_pages(ic_tree *t, ic_commit *c, undo_log *u, uint64_t record_slots) {
    uint8_t e[ENTRY_SIZE] = {0};
    uint64_t base = ((uint64_t)c->segno << 32) | (c->slot + record_slots);
    for (uint64_t i = 0; i < u->nwritten + u->nfreed; i++) {
        memset(e, 0, ENTRY_SIZE);
        uint64_t page = i < u->nwritten ? u->written[i] : u->freed[i - u->nwritten];
        if (i < u->nwritten) {
            st64(e, base + i);
            st64(e + 16, c->seq);   /* the sum is filled in when the bytes are laid out */
        }
        int rc = set_entry(t, page, e, u->olds + i * ENTRY_SIZE);
        if (rc) return rc;
        u->applied = i + 1;
    }
    return IC_OK;
}

/* Copy the pages into place and put their checksums in the record body and
 * in the leaf entries (a written page's leaf is already a memory node). */
static void copy_pages(ic_store *st, ic_dirty *d, const undo_log *u, uint8_t *pages,
                       uint8_t *pairs) {
    for (uint64_t i = 0; i < u->nwritten; i++) {
        uint8_t *dst = pages + (i << st->page_shift);
        memcpy(dst, dirty_find(d, u->written[i]), st->page_size);
        st64(pairs + 16 * i, u->written[i]);
        st64(pairs + 16 * i + 8, ic_page_sum(st, u->written[i], dst));
    }
}

static void lay_out_pages(ic_tree *t, ic_dirty *d, undo_log *u, uint8_t *pages, uint8_t *pairs) {
    copy_pages(t->st, d, u, pages, pairs);
    for (uint64_t i = 0; i < u->nwritten; i++)
        st64(leaf_for_write(t, u->written[i]) + 8, ld64(pairs + 16 * i + 8));
}

/* The dirty pages as a commit would lay them out, without building one:
 * pairs_out gets (page_no, sum) in page order, pages_out the bytes, freed_out
 * the dropped pages.  (The tests use it to look at the dirty table.) */
int ic_gather(ic_tree *t, ic_dirty *d, uint8_t *pairs_out, uint8_t *pages_out,
              uint64_t *nwritten, uint8_t *freed_out, uint64_t *nfreed) {
    undo_log u = {0};
    int rc = collect_keys(t->st, d, &u);
    if (rc == IC_OK) {
        copy_pages(t->st, d, &u, pages_out, pairs_out);
        for (uint64_t i = 0; i < u.nfreed; i++) st64(freed_out + 8 * i, u.freed[i]);
        *nwritten = u.nwritten;
        *nfreed = u.nfreed;
    }
    free(u.written);
    free(u.freed);
    free(u.olds);
    return rc;
}

static uint8_t *write_usage(ic_tree *t, ic_commit *c, uint8_t *p, uint32_t *nusage) {
    uint32_t n = 0;
    for (uint32_t s = 0; s < t->usage_cap || s <= c->segno; s++) {
        uint64_t live = ic_tree_usage(t, s) + (s == c->segno ? c->nnodes : 0);
        if (!live) continue;
        st64(p, s); st64(p + 8, live);
        p += 16;
        n++;
    }
    *nusage = n;
    return p;
}

static void write_header(ic_commit *c, uint8_t *r, uint64_t length, uint32_t nusage,
                         uint64_t nodes_sum) {
    memcpy(r, "IMAGOREC", 8);
    st16(r + 8, FORMAT_VERSION);
    st16(r + 10, c->checkpoint ? FLAG_CHECKPOINT : 0);
    st32(r + 12, (uint32_t)length);
    st64(r + 16, c->seq); st64(r + 24, c->parent); st64(r + 32, c->prev_sum);
    st64(r + 40, c->time_ns);
    st32(r + 48, c->npages); st32(r + 52, c->nnodes); st32(r + 56, c->nfreed);
    st32(r + 60, c->meta_len); st32(r + 64, nusage);
    st16(r + 68, (uint16_t)(c->checkpoint ? c->depth : 0));
    if (c->checkpoint) { memcpy(r + 72, c->root, 16); }
    st64(r + 88, c->checkpoint ? c->slot : c->ckpt_slot);
    st64(r + 96, c->checkpoint ? c->prev_ckpt : 0);
    st64(r + 104, nodes_sum);
    st32(r + 112, c->slot); st32(r + 116, c->segno);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Whether a slot of a mapped segment holds only zero bytes. */
static int slot_reads_zero(ic_store *st, uint32_t segno, uint64_t slot) {
    if (segno >= st->nsegs || !st->segs[segno].base || slot >= st->segs[segno].nslots) return 0;
    const uint64_t *w = (const uint64_t *)(st->segs[segno].base + (slot << st->page_shift));
    for (uint64_t i = 0; i < st->page_size / 8; i++)
        if (w[i]) return 0;
    return 1;
}

int ic_commit_build(ic_tree *t, ic_dirty *d, ic_commit *c) {
    ic_store *st = t->st;
    clear_err(st);
    c->buf_len = 0; c->undo = NULL; c->nnodes = 0; c->depth = 0;
    c->time_ns = now_ns();
    c->checkpoint = c->ckpt_slot == 0 || c->since_ckpt >= c->ckpt_records
                    || t->nmem >= c->ckpt_nodes
                    || c->pages_since_ckpt + d->count > c->ckpt_pages;
    uint64_t room = c->seg_slots > c->slot ? c->seg_slots - c->slot : 0;
    if (c->seq >= ((uint64_t)1 << 62))
        return fail(st, IC_RANGE, "commit number %llu is past the last one",
                    (unsigned long long)c->seq);
    if (d->count > UINT32_MAX / 32)
        return fail(st, IC_RANGE, "a commit of %llu pages is too large",
                    (unsigned long long)d->count);
    memset(c->root, 0, sizeof c->root);
    undo_log *u = calloc(1, sizeof *u);
    if (!u) return fail(st, IC_NOMEM, "out of memory in commit");
    c->undo = u;
    int rc = collect_keys(st, d, u);
    if (rc) { free_undo(c); return rc; }
    c->npages = (uint32_t)u->nwritten;
    c->nfreed = (uint32_t)u->nfreed;
    /* Usage can only gain the segment being written, so this bounds nusage. */
    uint64_t nusage_max = c->checkpoint ? usage_segments(t) + 1 : 0;
    uint64_t length = record_length(u->nwritten, u->nfreed, nusage_max, c->meta_len);
    uint64_t record_slots = slots_for(st, length);
    rc = apply_pages(t, c, u, record_slots);
    if (rc) { undo_apply(t, u); free_undo(c); return rc; }
    uint64_t nodes = c->checkpoint ? t->nmem : 0;
    if (c->checkpoint && usage_segments(t) + (nodes && !ic_tree_usage(t, c->segno)) > nusage_max) {
        undo_apply(t, u);
        free_undo(c);
        return fail(st, IC_CORRUPT, "segment usage grew while applying a commit "
                    "(the page table and its accounting disagree)");
    }
    uint64_t nslots = record_slots + u->nwritten + nodes;
    if (nslots > room) {
        uint64_t fresh = record_length(u->nwritten, u->nfreed, usage_segments(t) + 1, c->meta_len);
        c->need_slots = slots_for(st, fresh) + u->nwritten + t->nmem + 1;
        undo_apply(t, u);
        free_undo(c);
        return IC_FULL;
    }
    /* The zeroed slot past the commit, when it fits and is not zero already:
     * known zero (past zero_from), or read as zeros now.  What reads as zeros
     * is zeros on disk, or zeros another writer left in the page cache, which
     * this commit's fdatasync makes durable with its own pages. */
    uint64_t buf_slots = nslots + (nslots < room && c->slot + nslots < c->zero_from
                                   && !slot_reads_zero(st, c->segno, c->slot + nslots));
    if (commit_buffer(st, c, buf_slots << st->page_shift)) {
        undo_apply(t, u);
        free_undo(c);
        return IC_NOMEM;
    }
    /* Pages and nodes are copied over whole; the record's slots and the zero
     * slot are what must start as zeros. */
    memset(c->buf, 0, record_slots << st->page_shift);
    if (buf_slots > nslots) memset(c->buf + (nslots << st->page_shift), 0, st->page_size);
    c->buf_len = buf_slots << st->page_shift;
    c->nslots = nslots;
    c->record_slots = (uint32_t)record_slots;
    uint8_t *pages = c->buf + (record_slots << st->page_shift);
    lay_out_pages(t, d, u, pages, c->buf + REC_HEADER);
    uint64_t nodes_sum = 0;
    if (c->checkpoint) {
        uint8_t *node_buf = pages + (u->nwritten << st->page_shift);
        uint64_t first = ((uint64_t)c->segno << 32) | (c->slot + record_slots + u->nwritten);
        rc = ic_tree_serialize(t, first, node_buf, nodes, c->root, &c->depth);
        if (rc) { undo_apply(t, u); free_undo(c); return rc; }
        c->nnodes = (uint32_t)nodes;
        nodes_sum = ic_hash(node_buf, nodes << st->page_shift, c->salt);
    }
    uint8_t *p = c->buf + REC_HEADER + 16 * u->nwritten;
    for (uint64_t i = 0; i < u->nfreed; i++, p += 8) st64(p, u->freed[i]);
    uint32_t nusage = 0;
    if (c->checkpoint) p = write_usage(t, c, p, &nusage);
    if (c->meta_len) memcpy(p, c->meta, c->meta_len);
    write_header(c, c->buf, length, nusage, nodes_sum);
    c->record_sum = ic_hash(c->buf, length - 8, c->salt);
    st64(c->buf + length - 8, c->record_sum);
    /* Whatever happens to the write, it touches nothing past buf. */
    if (c->slot + buf_slots > c->zero_from) c->zero_from = c->slot + buf_slots;
    return IC_OK;
}

void ic_commit_undo(ic_tree *t, ic_commit *c) {
    if (c->undo) undo_apply(t, c->undo);
    free_undo(c);
}

/* The pages of a durable commit are the bytes this process hashed while
 * building it: their slots are marked verified, so the next read of each
 * does not hash it again (verified_slot's tags, invariant 1). */
static void trust_written_pages(ic_store *st, const ic_commit *c) {
    if (c->segno >= st->nsegs || !st->segs[c->segno].base) return;
    ic_seg *s = &st->segs[c->segno];
    const uint8_t *pairs = c->buf + REC_HEADER;
    for (uint32_t i = 0; i < c->npages; i++) {
        uint64_t slot = (uint64_t)c->slot + c->record_slots + i;
        if (slot >= s->nslots) return;
        s->verified[slot] = verified_tag(ld64(pairs + 16 * i + 8), page_seed(st, ld64(pairs + 16 * i)));
    }
}

/* The commit is durable: finish it, and make c describe the commit after. */
void ic_commit_done(ic_tree *t, ic_dirty *d, ic_commit *c) {
    trust_written_pages(t->st, c);
    if (c->checkpoint) {
        uint64_t first = ((uint64_t)c->segno << 32) | (c->slot + c->record_slots + c->npages);
        ic_tree_adopt(t, c->root, c->depth, first, c->nnodes);
        c->ckpt_slot = c->slot;
        c->prev_ckpt = ((uint64_t)c->segno << 32) | c->slot;
    }
    ic_dirty_clear(d);
    free_undo(c);
    c->since_ckpt = c->checkpoint ? 0 : c->since_ckpt + 1;
    c->pages_since_ckpt = c->checkpoint ? 0 : c->pages_since_ckpt + c->npages;
    c->parent = c->seq;
    c->seq++;
    c->prev_sum = c->record_sum;
    c->slot += (uint32_t)c->nslots;
    ic_store_set_limit(t->st, c->segno, c->slot);
}

/* ------------------------------------------------------------------ */
/* a whole commit in one call (pager/_store.py, the real file system)  */
/*
** ic_commit_write is one commit of the pager's protocol, made in one call:
** ic_commit_build, one pwrite of the slots it laid out at the commit's slot
** (pager/__init__, invariant 2: one contiguous write), one fdatasync
** (F_FULLFSYNC on macOS, whose fsync does not reach the platter), then
** ic_commit_done.  The pager calls it when its Vfs is the real file system,
** so that a small commit costs one crossing into C (cffi releases the GIL
** around it); with any other Vfs (the tests' crash and fault shims) it runs
** the same steps in Python, through the Vfs, with the same outcomes.  It is
** the only function of this file that writes to a file, and it writes only
** the bytes the builder laid out, at c->slot of the segment fd is open on.
**
** meta (meta_len bytes) is the record's caller metadata; it is copied into
** the record during the call and not kept.
**
** Outcomes, by return value and io->stage:
**   IC_OK                  durable and finished: c describes the next commit
**   IC_FULL, other status  nothing was written and the page table is as it
**                          was (IC_FULL: the commit does not fit the segment)
**   IC_IO, IC_STAGE_WRITE  the write failed with errno io->err after
**                          io->written bytes reached the file; the page
**                          table is as it was (the caller clears the bytes)
**   IC_IO, IC_STAGE_SYNC   the sync failed with io->err: what the disk holds
**                          is unknown; the page table is as it was and the
**                          caller enters FAILED (invariant 6: never retry)
** EINTR is retried, as Python's os.pwrite and os.fdatasync retry it (PEP 475).
*/
#include <fcntl.h>
#include <unistd.h>

static int write_whole(int fd, const uint8_t *buf, uint64_t len, uint64_t offset, ic_io *io) {
    while (io->written < len) {
        ssize_t n = pwrite(fd, buf + io->written, (size_t)(len - io->written),
                           (off_t)(offset + io->written));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) { io->err = n < 0 ? errno : EIO; return IC_IO; }
        io->written += (uint64_t)n;
    }
    return IC_OK;
}

static int sync_data(int fd, ic_io *io) {
    int rc;
#if defined(__APPLE__)
    do rc = fcntl(fd, F_FULLFSYNC); while (rc < 0 && errno == EINTR);
#else
    do rc = fdatasync(fd); while (rc < 0 && errno == EINTR);
#endif
    if (rc < 0) { io->err = errno; return IC_IO; }
    return IC_OK;
}

int ic_commit_write(ic_tree *t, ic_dirty *d, ic_commit *c, int fd, const char *meta,
                    uint32_t meta_len, ic_io *io) {
    io->stage = IC_STAGE_NONE; io->err = 0; io->written = 0;
    c->meta = (const uint8_t *)meta;
    c->meta_len = meta_len;
    int rc = ic_commit_build(t, d, c);
    c->meta = NULL;   /* copied into the record, or not needed: never kept */
    c->meta_len = 0;
    if (rc) return rc;
    uint64_t offset = (uint64_t)c->slot << t->st->page_shift;
    io->stage = IC_STAGE_WRITE;
    if (write_whole(fd, c->buf, c->buf_len, offset, io) == IC_OK) {
        io->stage = IC_STAGE_SYNC;
        if (sync_data(fd, io) == IC_OK) {
            io->stage = IC_STAGE_NONE;
            ic_commit_done(t, d, c);
            return IC_OK;
        }
    }
    ic_commit_undo(t, c);
    return fail(t->st, IC_IO, "%s failed: %s", io->stage == IC_STAGE_SYNC ? "sync" : "write",
                strerror(io->err));
}
