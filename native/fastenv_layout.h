/*
 * fastenv_layout.h -- what the two source files of fastenv._layout share.
 *
 * fastenv_layout.c is the generic layout packer (pack, extract, unpack and the
 * module itself); fastenv_fastpath.c is the shared-memory transport's fast path
 * (put, take: FAST envelopes, doorbell waits and rings) built on the packer.
 * Include Python.h (with PY_SSIZE_T_CLEAN) first.
 */

#ifndef FASTENV_LAYOUT_H
#define FASTENV_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "fastenv._layout assumes a little-endian target"
#endif

/* Functions shared between the files of one extension, invisible outside it. */
#define FASTENV_INTERNAL __attribute__((visibility("hidden")))

/* What a pack step found: written, the structure differs, or a Python error. */
enum { PACK_OK = 0, PACK_MISMATCH = 1, PACK_ERROR = -1 };

typedef struct {
    char *base;      /* start of the data area */
    Py_ssize_t room; /* bytes available from base */
    PyObject *views; /* list of array views at the data area (pack's copyto targets) */
    PyObject *copyto;
    PyObject *collect; /* extract: arrays are appended here instead of copied (NULL: pack) */
    const char *lent;  /* put: lent[i] != 0 if array i was lent from its place (must already be there) */
    Py_ssize_t lent_len;
} pack_ctx;

typedef struct {
    const char *base;
    Py_ssize_t room;
    PyObject *arrays; /* list: the value of each ARRAY node, by index */
    int copy;         /* take arrays[i].copy('K') instead of arrays[i] */
    int reused;       /* arrays are views into the buffer, handed out again: check each is as it was made */
    int readonly;     /* the buffer is read-only: so are those views */
    PyObject *kept;   /* NULL, or a list: with copy, a TENSOR node whose index holds (tensor, array, ...)
                         copies its bytes into that array and returns that tensor */
} unpack_ctx;

/* ------------------------------------------------------------ the packer (fastenv_layout.c) */

/* Set ValueError "invalid layout program: what"; returns -1. */
FASTENV_INTERNAL int bad_program(const char *what);

/* Pack args[3] with program args[0] into buffer args[1] at offset args[2] + skip; with a
 * header (header_size bytes), write it at the offset once the value is packed.  Returns the
 * bool to give back, or NULL with an exception set. */
FASTENV_INTERNAL PyObject *pack_region(PyObject *const *args, pack_ctx *ctx, Py_ssize_t skip, const void *header,
                                       size_t header_size);

/* Rebuild the value of a program node; NULL with an exception set. */
FASTENV_INTERNAL PyObject *unpack_node(unpack_ctx *ctx, PyObject *node, int depth);

/* ------------------------------------------------------------ the fast path (fastenv_fastpath.c) */

FASTENV_INTERNAL PyObject *fastpath_put(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FASTENV_INTERNAL PyObject *fastpath_take(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FASTENV_INTERNAL extern const char fastpath_put_doc[];
FASTENV_INTERNAL extern const char fastpath_take_doc[];

/* Add the constants the fast path shares with Python (FAST_KIND, the envelope header layout,
 * the doorbell words) to the module; -1 with an exception set. */
FASTENV_INTERNAL int fastpath_add_constants(PyObject *module);

#endif /* FASTENV_LAYOUT_H */
