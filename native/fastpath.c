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
*/
#include "fastpath.h"

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
    if (objmem_add_to_module(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
