/*
** native._fastpath: the CPython binding of the hottest reads.
**
** A cffi call costs several times a CPython method call, and building bytes
** through an intermediate cffi buffer costs again; for reading one page, that
** overhead is most of the work (measured: 1.9 us through cffi against 1.1 us
** for an LMDB get).  A PageReader is a CPython object holding one state's
** (tree, dirty) pointers; its read(page_no), read_word(addr) and
** read_bytes(addr, n) call the C core directly and build their results in one
** step, and write(page_no, data, offset) does a writer's page write.
**
** It does not link against the core: native/__init__.py passes the addresses
** of the core's functions to bind() at import, so there is exactly one copy
** of the core in the process (the FREED marker of ic_dirty is compared by
** address, so two copies must never share a dirty table).
**
** States: a reader is BOUND (tree set) or UNBOUND (after unbind(): the store
** closed or failed).  Whenever a call cannot be served (unbound, or the core
** reports an error), the reader calls its Python `fallback(kind, *args)`,
** which raises the right exception or returns the result itself; so every
** error message is made in Python, in one place.
**
** The module also holds vm's pair layout and the list operations that walk
** pairs in C (cons, list->string, reverse): see "Scheme pairs" below.
*/
#include "fastpath.h"
#include <structmember.h>

page_read_fn core_page_read;
read_fn core_read;
read_u64_fn core_read_u64;
write_fn core_write;
write_u64_fn core_write_u64;
hash_fn core_hash;

PyObject *reader_fallback(PageReader *r, const char *kind, PyObject *const *args, Py_ssize_t n) {
    if (!r->fallback) {
        PyErr_SetString(PyExc_RuntimeError, "PageReader used before __init__");
        return NULL;
    }
    if (n > 3) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most 3 arguments (%zd given)", kind, n);
        return NULL;
    }
    PyObject *name = PyUnicode_FromString(kind);
    if (!name) return NULL;
    PyObject *all[4] = {name, n > 0 ? args[0] : NULL, n > 1 ? args[1] : NULL,
                        n > 2 ? args[2] : NULL};
    PyObject *result = PyObject_Vectorcall(r->fallback, all, (size_t)(1 + n), NULL);
    Py_DECREF(name);
    return result;
}

/* A Python int in [0, 2^64) as uint64, or -1 with no exception set. */
int as_u64(PyObject *o, uint64_t *out) {
    if (!PyLong_Check(o)) return -1;
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) { PyErr_Clear(); return -1; }
    *out = (uint64_t)v;
    return 0;
}

static PyObject *reader_read(PageReader *r, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t page_no;
    if (nargs != 1 || !r->tree || as_u64(args[0], &page_no))
        return reader_fallback(r, "read", args, nargs);
    const uint8_t *p = core_page_read(r->tree, r->dirty, page_no);
    if (!p) return reader_fallback(r, "read", args, nargs);
    return PyBytes_FromStringAndSize((const char *)p, r->page_size);
}

static PyObject *reader_read_word(PageReader *r, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t addr, value;
    if (nargs != 1 || !r->tree || as_u64(args[0], &addr)
        || core_read_u64(r->tree, r->dirty, addr, &value))
        return reader_fallback(r, "read_word", args, nargs);
    return PyLong_FromUnsignedLongLong(value);
}

static PyObject *reader_read_bytes(PageReader *r, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t addr, len;
    /* Large requests go to the fallback, which checks the range before it allocates. */
    if (nargs != 2 || !r->tree || as_u64(args[0], &addr) || as_u64(args[1], &len)
        || len > ((uint64_t)1 << 30))
        return reader_fallback(r, "read_bytes", args, nargs);
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
    if (!out) return NULL;
    if (core_read(r->tree, r->dirty, addr, (uint8_t *)PyBytes_AS_STRING(out), len)) {
        Py_DECREF(out);
        return reader_fallback(r, "read_bytes", args, nargs);
    }
    return out;
}

/* write(page_no, data[, offset]): the writer's page write, when it is plainly
 * in range; everything else (a reader, a bad argument, an error from the
 * core) goes to the fallback, which checks and raises. */
static PyObject *reader_write(PageReader *r, PyObject *const *args, size_t nargsf,
                              PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *all[3];
    if (kwnames && PyTuple_GET_SIZE(kwnames)) {   /* only write(page, data, offset=N) */
        if (nargs != 2 || PyTuple_GET_SIZE(kwnames) != 1
            || !PyUnicode_Check(PyTuple_GET_ITEM(kwnames, 0))
            || PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "offset") != 0) {
            PyErr_SetString(PyExc_TypeError, "write(page_no, data, offset=0)");
            return NULL;
        }
        all[0] = args[0]; all[1] = args[1]; all[2] = args[2];
        args = all;
        nargs = 3;
    }
    uint64_t page_no, offset = 0;
    if ((nargs != 2 && nargs != 3) || !r->tree || !r->dirty || as_u64(args[0], &page_no)
        || (nargs == 3 && as_u64(args[2], &offset)) || !PyBytes_CheckExact(args[1]))
        return reader_fallback(r, "write", args, nargs);
    Py_ssize_t len = PyBytes_GET_SIZE(args[1]);
    if (offset > (uint64_t)r->page_size || (uint64_t)len > (uint64_t)r->page_size - offset
        || page_no >= ((uint64_t)1 << 40))
        return reader_fallback(r, "write", args, nargs);
    uint64_t addr = page_no * (uint64_t)r->page_size + offset;
    r->generation++;
    if (core_write(r->tree, r->dirty, addr, (const uint8_t *)PyBytes_AS_STRING(args[1]),
                   (uint64_t)len))
        return reader_fallback(r, "write", args, nargs);
    Py_RETURN_NONE;
}

/* rebind(tree_addr, dirty_addr, keepalive): point at another state, holding
 * keepalive (the objects that own tree and dirty, whose finalisers free them)
 * for as long as the binding lasts.  rebind(0, 0, None): unbound. */
static PyObject *reader_rebind(PageReader *r, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "rebind(tree_addr, dirty_addr, keepalive)");
        return NULL;
    }
    void *tree = PyLong_AsVoidPtr(args[0]);
    if (PyErr_Occurred()) return NULL;
    void *dirty = PyLong_AsVoidPtr(args[1]);
    if (PyErr_Occurred()) return NULL;
    Py_INCREF(args[2]);
    Py_XSETREF(r->keepalive, args[2]);
    r->tree = tree;
    r->dirty = dirty;
    r->generation++;
    Py_RETURN_NONE;
}

/* invalidate(): page pointers given out before may be stale. */
static PyObject *reader_invalidate(PageReader *r, PyObject *noargs) {
    (void)noargs;
    r->generation++;
    Py_RETURN_NONE;
}

static PyMethodDef reader_methods[] = {
    {"read", (PyCFunction)(void (*)(void))reader_read, METH_FASTCALL, "read(page_no) -> bytes"},
    {"read_word", (PyCFunction)(void (*)(void))reader_read_word, METH_FASTCALL,
     "read_word(addr) -> int"},
    {"read_bytes", (PyCFunction)(void (*)(void))reader_read_bytes, METH_FASTCALL,
     "read_bytes(addr, length) -> bytes"},
    {"write", (PyCFunction)(void (*)(void))reader_write, METH_FASTCALL | METH_KEYWORDS,
     "write(page_no, data, offset=0)"},
    {"rebind", (PyCFunction)(void (*)(void))reader_rebind, METH_FASTCALL,
     "rebind(tree_addr, dirty_addr, keepalive)"},
    {"invalidate", (PyCFunction)reader_invalidate, METH_NOARGS,
     "invalidate(): page pointers given out before may be stale"},
    {NULL, NULL, 0, NULL},
};

static int reader_init(PageReader *r, PyObject *args, PyObject *kw) {
    Py_ssize_t page_size;
    PyObject *fb;
    static char *names[] = {"page_size", "fallback", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "nO", names, &page_size, &fb)) return -1;
    if (!core_page_read) {
        PyErr_SetString(PyExc_RuntimeError, "native._fastpath is not bound to the core");
        return -1;
    }
    if (page_size <= 0 || !PyCallable_Check(fb)) {
        PyErr_SetString(PyExc_ValueError, "PageReader(page_size > 0, callable fallback)");
        return -1;
    }
    Py_INCREF(fb);
    Py_XSETREF(r->fallback, fb);
    r->page_size = page_size;
    r->tree = r->dirty = NULL;
    return 0;
}

static void reader_dealloc(PageReader *r) {
    Py_XDECREF(r->fallback);
    Py_XDECREF(r->keepalive);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

PyTypeObject PageReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "native._fastpath.PageReader",
    .tp_basicsize = sizeof(PageReader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Direct reads of one page-table state; see native/fastpath.c.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)reader_init,
    .tp_dealloc = (destructor)reader_dealloc,
    .tp_methods = reader_methods,
};

/* -- Scheme pairs ---------------------------------------------------------------------- */
/*
** PairBase is the layout of vm's Pair (vm/_types.py: `class Pair(PairBase)`):
** a handle's fields (it derives from HandleBase, for become:) plus car and cdr.
** car and cdr are read-only members, so that reading p.car stays CPython's
** specialised slot read; every write goes through pair_setattro.  cons(a, d)
** makes a Pair in one C call (measured: a third of what HandleBase.__new__
** plus two slot stores cost).
**
** UNTRACKED PAIRS.  The cyclic collector's work for pairs was most of what a
** cons cost above the allocation (each tracked pair is traversed by young
** collections and every full one).  A pair cannot be in a reference cycle
** while everything it reaches is immutable, so such pairs are made untracked,
** as CPython untracks tuples of atoms.  The invariants:
**
**   1. A pair is UNTRACKED exactly while it is LINKED into the ring `untracked`
**      (and then its type is exactly the registered Pair class).
**   2. An untracked pair's car and cdr are each a LEAF: an object the cyclic
**      collector does not manage (int, str, float, None ...), an instance of
**      exactly one of the registered leaf types (vm's Char, Symbol, NIL/EOF,
**      MString: their fields hold only such objects, by their contract), or
**      an untracked pair.
**   3. So everything an untracked pair reaches is leaves; nothing it reaches
**      can be changed to point back at it except an untracked pair's car or
**      cdr.  Hence every write to a pair's car or cdr (set-car!, set-cdr!,
**      Python code, become:'s clearing) first TRACKS EVERY untracked pair
**      (flush_untracked): each pair is tracked at most once, so the cost is
**      bounded by the conses.  A cycle through a non-collected object (int,
**      str, a bare HandleBase) was never collectable, tracked or not.
**
** States of a pair: UNTRACKED (linked) -> TRACKED (by a flush) -> freed;
** pairs made tracked (a car or cdr that is no leaf) stay so.  check_pairs()
** verifies 1 and 2 over the ring; tests call it.
*/

typedef struct {
    PyObject_HEAD
    PyObject *img, *heap, *addr, *weakrefs;    /* HandleBase's layout (objmem.c), checked at init */
} HandleFields;

typedef struct PairLinks {
    struct PairLinks *prev, *next;              /* next == NULL: not linked (tracked) */
} PairLinks;

typedef struct {
    HandleFields handle;
    PyObject *car;
    PyObject *cdr;
    PairLinks links;
} PairObject;

#define PAIR_OF_LINKS(l) ((PairObject *)((char *)(l) - offsetof(PairObject, links)))
#define MAX_LEAF_TYPES 8

static PairLinks untracked = {&untracked, &untracked};
static Py_ssize_t untracked_count;
static PyTypeObject *pair_class;                /* vm's Pair: what cons() makes */
static PyObject *NIL_marker;                    /* vm's empty list */
static PyTypeObject *leaf_types[MAX_LEAF_TYPES];
static int n_leaf_types;
static PyTypeObject PairBaseType;

static int is_leaf(PyObject *x) {
    PyTypeObject *t = Py_TYPE(x);
    if (t == pair_class) return ((PairObject *)x)->links.next != NULL;
    if (!PyObject_IS_GC(x)) return 1;
    for (int i = 0; i < n_leaf_types; i++)
        if (t == leaf_types[i]) return 1;
    return 0;
}

static void link_untracked(PairObject *p) {
    p->links.prev = untracked.prev;
    p->links.next = &untracked;
    untracked.prev->next = &p->links;
    untracked.prev = &p->links;
    untracked_count++;
}

static void unlink_pair(PairObject *p) {
    if (!p->links.next) return;
    p->links.prev->next = p->links.next;
    p->links.next->prev = p->links.prev;
    p->links.prev = p->links.next = NULL;
    untracked_count--;
}

/* Invariant 3: before any car or cdr changes, every pair is tracked. */
static void flush_untracked(void) {
    while (untracked.next != &untracked) {
        PairObject *p = PAIR_OF_LINKS(untracked.next);
        unlink_pair(p);
        PyObject_GC_Track((PyObject *)p);
    }
}

/* A new pair of type: tracked, or untracked when type is exactly pair_class
 * and both fields are leaves.  PyObject_GC_New leaves it untracked and
 * unzeroed (PyType_GenericAlloc would zero and track it, only to untrack). */
static PyObject *make_pair(PyTypeObject *type, PyObject *car, PyObject *cdr) {
    PairObject *p = PyObject_GC_New(PairObject, type);
    if (!p) return NULL;
    p->handle.img = p->handle.heap = p->handle.addr = p->handle.weakrefs = NULL;
    p->car = Py_NewRef(car);
    p->cdr = Py_NewRef(cdr);
    p->links.prev = p->links.next = NULL;
    if (type == pair_class && is_leaf(car) && is_leaf(cdr))
        link_untracked(p);
    else
        PyObject_GC_Track((PyObject *)p);
    return (PyObject *)p;
}

static PyObject *pair_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    if (type == &PairBaseType) {
        PyErr_SetString(PyExc_TypeError, "PairBase is abstract: make a Pair");
        return NULL;
    }
    if ((kw && PyDict_GET_SIZE(kw)) || PyTuple_GET_SIZE(args) != 2) {
        PyErr_Format(PyExc_TypeError, "%s(car, cdr) takes two arguments", type->tp_name);
        return NULL;
    }
    return make_pair(type, PyTuple_GET_ITEM(args, 0), PyTuple_GET_ITEM(args, 1));
}

static PyMemberDef pair_members[] = {
    {"car", T_OBJECT_EX, offsetof(PairObject, car), READONLY, NULL},
    {"cdr", T_OBJECT_EX, offsetof(PairObject, cdr), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyObject *car_descr, *cdr_descr;         /* PairBase's members, to recognise writes */

/* Writes to car and cdr (a subclass's own attribute, such as PersistentPair's
 * property, goes the ordinary way). */
static int pair_setattro(PyObject *self, PyObject *name, PyObject *value) {
    PyObject *descr = PyUnicode_Check(name) ? _PyType_Lookup(Py_TYPE(self), name) : NULL;
    if (!descr || (descr != car_descr && descr != cdr_descr))
        return PyObject_GenericSetAttr(self, name, value);
    PairObject *p = (PairObject *)self;
    PyObject **field = descr == car_descr ? &p->car : &p->cdr;
    if (!value && !*field) {
        PyErr_SetObject(PyExc_AttributeError, name);
        return -1;
    }
    flush_untracked();
    Py_XSETREF(*field, Py_XNewRef(value));
    return 0;
}

static int pair_traverse(PairObject *p, visitproc visit, void *arg) {
    Py_VISIT(p->car);
    Py_VISIT(p->cdr);
    return 0;
}

static int pair_clear(PairObject *p) {
    Py_CLEAR(p->car);
    Py_CLEAR(p->cdr);
    return 0;
}

/* Reached through subtype_dealloc (every pair's class is a Python subclass:
 * pair_new refuses PairBase itself), whose trashcan bounds the recursion
 * down a long list.  HandleBase's dealloc is done here too (one call less):
 * the layout is HandleFields, checked in pairs_ready. */
static void pair_dealloc(PairObject *p) {
    PyObject_GC_UnTrack((PyObject *)p);
    unlink_pair(p);        /* first: clearing the fields may run code that flushes */
    if (p->handle.weakrefs) PyObject_ClearWeakRefs((PyObject *)p);
    Py_CLEAR(p->handle.img);
    Py_CLEAR(p->handle.heap);
    Py_CLEAR(p->handle.addr);
    pair_clear(p);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static PyTypeObject PairBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "native._fastpath.PairBase",
    .tp_basicsize = sizeof(PairObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The fields of vm's Pair: a handle's, then car and cdr; see native/fastpath.c.",
    .tp_new = pair_new,
    .tp_dealloc = (destructor)pair_dealloc,
    .tp_traverse = (traverseproc)pair_traverse,
    .tp_clear = (inquiry)pair_clear,
    .tp_setattro = pair_setattro,
    .tp_members = pair_members,
    .tp_free = PyObject_GC_Del,
};

/* cons(car, cdr) -> a new Pair. */
static PyObject *cons(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    (void)mod;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "cons takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!pair_class) {
        PyErr_SetString(PyExc_RuntimeError, "cons() before set_pair_class()");
        return NULL;
    }
    return make_pair(pair_class, args[0], args[1]);
}

/* set_pair_class(Pair, NIL, leaf_types): the class cons() makes (a subclass
 * of PairBase adding no fields), the empty list, and the types whose
 * instances are leaves. */
static PyObject *set_pair_class(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    (void)mod;
    if (nargs != 3 || !PyType_Check(args[0]) || !PyTuple_Check(args[2])
        || PyTuple_GET_SIZE(args[2]) > MAX_LEAF_TYPES) {
        PyErr_SetString(PyExc_TypeError, "set_pair_class(Pair, NIL, (leaf type, ...)) (at most 8)");
        return NULL;
    }
    PyTypeObject *cls = (PyTypeObject *)args[0];
    if (!PyType_IsSubtype(cls, &PairBaseType) || cls->tp_basicsize != PairBaseType.tp_basicsize) {
        PyErr_SetString(PyExc_TypeError, "the pair class must derive from PairBase and add no fields");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args[2]); i++)
        if (!PyType_Check(PyTuple_GET_ITEM(args[2], i))) {
            PyErr_SetString(PyExc_TypeError, "leaf types must be types");
            return NULL;
        }
    flush_untracked();     /* the leaf rule changes: nothing made under the old one stays untracked */
    for (int i = 0; i < n_leaf_types; i++) Py_CLEAR(leaf_types[i]);
    n_leaf_types = (int)PyTuple_GET_SIZE(args[2]);
    for (int i = 0; i < n_leaf_types; i++)
        leaf_types[i] = (PyTypeObject *)Py_NewRef(PyTuple_GET_ITEM(args[2], i));
    Py_XSETREF(pair_class, (PyTypeObject *)Py_NewRef(cls));
    Py_XSETREF(NIL_marker, Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

/* A proper list of exact Pairs: its cars as a Python list.  None for
 * anything else (an improper or circular list, a pair of another class):
 * the caller's general walk reports or handles it. */
static PyObject *pair_list_items(PyObject *mod, PyObject *x) {
    (void)mod;
    PyObject *items = PyList_New(0);
    if (!items) return NULL;
    PyObject *mark = x;
    Py_ssize_t steps = 0, power = 8;
    while (pair_class && Py_TYPE(x) == pair_class) {
        PairObject *p = (PairObject *)x;
        if (!p->car || !p->cdr) break;
        if (PyList_Append(items, p->car)) { Py_DECREF(items); return NULL; }
        x = p->cdr;
        if (x == mark) break;                       /* Brent: a cycle */
        if (++steps == power) { mark = x; steps = 0; power *= 2; }
    }
    if (x == NIL_marker && NIL_marker) return items;
    Py_DECREF(items);
    Py_RETURN_NONE;
}

/* reverse of a proper list of exact Pairs, or None (as pair_list_items). */
static PyObject *pair_reverse(PyObject *mod, PyObject *x) {
    PyObject *items = pair_list_items(mod, x);
    if (!items || items == Py_None) return items;
    PyObject *result = Py_NewRef(NIL_marker);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items) && result; i++) {
        PyObject *next = make_pair(pair_class, PyList_GET_ITEM(items, i), result);
        Py_DECREF(result);
        result = next;
    }
    Py_DECREF(items);
    return result;
}

static PyTypeObject *char_class;                /* vm's Char, and the offset of its cp slot */
static Py_ssize_t char_cp_offset;

/* The code point of an exact Char, or -1. */
static Py_UCS4 char_code(PyObject *c) {
    if (!char_class || Py_TYPE(c) != char_class) return (Py_UCS4)-1;
    PyObject *cp = *(PyObject **)((char *)c + char_cp_offset);
    if (!cp || !PyLong_CheckExact(cp)) return (Py_UCS4)-1;
    long v = PyLong_AsLong(cp);
    if (v < 0 || v > 0x10FFFF) { PyErr_Clear(); return (Py_UCS4)-1; }
    return (Py_UCS4)v;
}

/* pair_chars_text(x): the str of a proper list of exact Pairs whose cars
 * are all Chars (list->string), or None for anything else: the caller's
 * general path checks and reports. */
static PyObject *pair_chars_text(PyObject *mod, PyObject *x) {
    PyObject *items = pair_list_items(mod, x);
    if (!items || items == Py_None) return items;
    Py_ssize_t n = PyList_GET_SIZE(items);
    Py_UCS4 maxchar = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = char_code(PyList_GET_ITEM(items, i));
        if (c == (Py_UCS4)-1) { Py_DECREF(items); Py_RETURN_NONE; }
        if (c > maxchar) maxchar = c;
    }
    PyObject *text = PyUnicode_New(n, maxchar);
    if (text) {
        int kind = PyUnicode_KIND(text);
        void *data = PyUnicode_DATA(text);
        for (Py_ssize_t i = 0; i < n; i++)
            PyUnicode_WRITE(kind, data, i, char_code(PyList_GET_ITEM(items, i)));
    }
    Py_DECREF(items);
    return text;
}

/* set_char_class(Char): the class whose instances pair_chars_text reads
 * (its code point in the member slot "cp"). */
static PyObject *set_char_class(PyObject *mod, PyObject *cls) {
    (void)mod;
    PyObject *descr = PyType_Check(cls) ? PyDict_GetItemString(((PyTypeObject *)cls)->tp_dict, "cp") : NULL;
    if (!descr || Py_TYPE(descr) != &PyMemberDescr_Type
        || ((PyMemberDescrObject *)descr)->d_member->type != T_OBJECT_EX) {
        PyErr_SetString(PyExc_TypeError, "set_char_class(Char): a class with a slot cp");
        return NULL;
    }
    char_cp_offset = ((PyMemberDescrObject *)descr)->d_member->offset;
    Py_XSETREF(char_class, (PyTypeObject *)Py_NewRef(cls));
    Py_RETURN_NONE;
}

/* check_pairs() -> the number of untracked pairs; AssertionError naming the
 * first pair that breaks invariant 1 or 2. */
static PyObject *check_pairs(PyObject *mod, PyObject *noargs) {
    (void)mod; (void)noargs;
    Py_ssize_t n = 0;
    for (PairLinks *l = untracked.next; l != &untracked; l = l->next, n++) {
        PairObject *p = PAIR_OF_LINKS(l);
        const char *broken =
            l->next->prev != l ? "a broken ring"
            : Py_TYPE(p) != pair_class ? "an untracked pair of another class"
            : PyObject_GC_IsTracked((PyObject *)p) ? "a linked pair that is tracked"
            : !p->car || !p->cdr ? "an untracked pair with an empty field"
            : !is_leaf(p->car) || !is_leaf(p->cdr) ? "an untracked pair that holds a non-leaf"
            : NULL;
        if (broken) {
            PyErr_Format(PyExc_AssertionError, "pairs: %s (pair %zd of the ring)", broken, n);
            return NULL;
        }
    }
    if (n != untracked_count) {
        PyErr_Format(PyExc_AssertionError, "pairs: %zd in the ring, %zd counted", n, untracked_count);
        return NULL;
    }
    return PyLong_FromSsize_t(n);
}

static int pairs_ready(PyObject *m) {
    PyObject *base = PyObject_GetAttrString(m, "HandleBase");
    if (!base) return -1;
    PyTypeObject *hb = (PyTypeObject *)base;
    if (!PyType_Check(base) || hb->tp_basicsize != (Py_ssize_t)sizeof(HandleFields)
        || hb->tp_weaklistoffset != (Py_ssize_t)offsetof(HandleFields, weakrefs)) {
        Py_DECREF(base);
        PyErr_SetString(PyExc_ImportError, "PairBase: HandleBase's layout is not the one expected");
        return -1;
    }
    PairBaseType.tp_base = hb;     /* the module holds HandleBase for as long as PairBase lives */
    Py_DECREF(base);
    if (PyType_Ready(&PairBaseType) < 0) return -1;
    car_descr = PyDict_GetItemString(PairBaseType.tp_dict, "car");
    cdr_descr = PyDict_GetItemString(PairBaseType.tp_dict, "cdr");
    if (!car_descr || !cdr_descr) return -1;
    return PyModule_AddObjectRef(m, "PairBase", (PyObject *)&PairBaseType);
}

/* bind(page_read, read, read_u64, write, write_u64, hash): addresses of the
 * core's entry points. */
static PyObject *bind(PyObject *mod, PyObject *args) {
    PyObject *o[6];
    void *p[6];
    (void)mod;
    if (!PyArg_ParseTuple(args, "OOOOOO", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5]))
        return NULL;
    for (int i = 0; i < 6; i++) {
        p[i] = PyLong_AsVoidPtr(o[i]);
        if (PyErr_Occurred()) return NULL;
        if (!p[i]) {
            PyErr_SetString(PyExc_ValueError, "bind() needs six function addresses");
            return NULL;
        }
    }
    core_page_read = (page_read_fn)p[0];
    core_read = (read_fn)p[1];
    core_read_u64 = (read_u64_fn)p[2];
    core_write = (write_fn)p[3];
    core_write_u64 = (write_u64_fn)p[4];
    core_hash = (hash_fn)p[5];
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"bind", bind, METH_VARARGS,
     "bind(page_read, read, read_u64, write, write_u64, hash): the core's functions"},
    {"cons", (PyCFunction)(void (*)(void))cons, METH_FASTCALL, "cons(car, cdr) -> a new Pair"},
    {"set_pair_class", (PyCFunction)(void (*)(void))set_pair_class, METH_FASTCALL,
     "set_pair_class(Pair, NIL, leaf_types): what cons() makes, the empty list, the leaf types"},
    {"pair_list_items", pair_list_items, METH_O,
     "pair_list_items(x) -> the cars of a proper list of Pairs, or None"},
    {"pair_reverse", pair_reverse, METH_O,
     "pair_reverse(x) -> a proper list of Pairs reversed, or None"},
    {"pair_chars_text", pair_chars_text, METH_O,
     "pair_chars_text(x) -> the str of a proper list of Pairs of Chars, or None"},
    {"set_char_class", set_char_class, METH_O, "set_char_class(Char): what pair_chars_text reads"},
    {"check_pairs", check_pairs, METH_NOARGS,
     "check_pairs() -> the number of untracked pairs (AssertionError if an invariant fails)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "native._fastpath",
    "The CPython binding of the hottest reads; see native/fastpath.c.", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&PageReaderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&PageReaderType);
    if (PyModule_AddObject(m, "PageReader", (PyObject *)&PageReaderType) < 0) {
        Py_DECREF(&PageReaderType);
        Py_DECREF(m);
        return NULL;
    }
    if (objmem_add_to_module(m) < 0 || pairs_ready(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
