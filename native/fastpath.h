/*
** What native/fastpath.c and native/objmem.c share inside the extension
** module native._fastpath: the PageReader object (one page-table state's tree
** and dirty pointers) and the addresses of the core's entry points, which
** bind() fills in at import (see fastpath.c for why the module does not link
** against the core).
*/
#ifndef IMAGO_FASTPATH_H
#define IMAGO_FASTPATH_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef const uint8_t *(*page_read_fn)(void *tree, void *dirty, uint64_t page_no);
typedef int (*read_fn)(void *tree, void *dirty, uint64_t addr, uint8_t *out, uint64_t len);
typedef int (*read_u64_fn)(void *tree, void *dirty, uint64_t addr, uint64_t *out);
typedef int (*write_fn)(void *tree, void *dirty, uint64_t addr, const uint8_t *src, uint64_t len);
typedef int (*write_u64_fn)(void *tree, void *dirty, uint64_t addr, uint64_t value);
typedef uint64_t (*hash_fn)(const uint8_t *data, size_t len, uint64_t seed);

extern page_read_fn core_page_read;
extern read_fn core_read;
extern read_u64_fn core_read_u64;
extern write_fn core_write;
extern write_u64_fn core_write_u64;
extern hash_fn core_hash;

typedef struct {
    PyObject_HEAD
    void *tree;            /* NULL: unbound */
    void *dirty;           /* NULL for readers and views */
    PyObject *keepalive;   /* the Python owners of tree and dirty: they outlive the binding */
    Py_ssize_t page_size;
    PyObject *fallback;    /* NULL until __init__ */
    /* Bumped whenever a page pointer this reader gave out may have gone
     * stale: rebind, a write that makes a copy-on-write copy, a commit, a
     * rollback, a freed page.  The store bumps it (invalidate()) for what
     * it does through cffi; objmem.c keeps page pointers across calls only
     * while it is unchanged. */
    uint64_t generation;
} PageReader;

extern PyTypeObject PageReaderType;

/* Calls the reader's Python fallback(kind, *args), which raises the error the
 * store would raise (closed, failed, read-only, damaged page) or serves the
 * call itself. */
PyObject *reader_fallback(PageReader *r, const char *kind, PyObject *const *args, Py_ssize_t n);
int as_u64(PyObject *o, uint64_t *out);

/* objmem.c: adds the Heap type and its helpers to the module. */
int objmem_add_to_module(PyObject *module);

#endif
