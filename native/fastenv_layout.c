/*
 * fastenv._layout -- pack and unpack values of a compiled layout in C.
 *
 * The hot path of both data planes: a step's request and reply have the same
 * structure every time, so fastenv.layout compiles that structure once into
 * a *program* (a tree of tuples, built by fastenv.layout.Layout from a spec it
 * has validated) and these two functions walk it:
 *
 *   pack(program, buffer, offset, value, views, copyto) -> bool
 *       Check value against the program (exact types, dict keys in order,
 *       array dtype and shape) and write its scalars and arrays at offset.
 *       Returns False when the structure differs (nothing is promised about
 *       the bytes written so far; the caller then uses the general codec).
 *       A non-contiguous array is copied by copyto(views[i], array).
 *   extract(program, buffer, offset, value, arrays) -> bool
 *       Like pack, but arrays are appended to the list arrays (after the
 *       same checks) instead of copied: the TCP stream sends them from
 *       their own memory and only the scalars go through the buffer.
 *   unpack(program, buffer, offset, arrays, copy=False, kept=None, reused=False) -> value
 *       Rebuild the value: scalars read from the buffer, arrays taken from
 *       the list arrays (views into the buffer), or with copy, copies of
 *       them (arrays[i].copy('K')); with copy and kept (a list), a tensor
 *       leaf whose index holds (tensor, array, ...) there is copied into
 *       that array and unpacked as that tensor (fastenv.shm.kept). With
 *       reused (views made once and handed out on every unpack), each view
 *       is checked to be as it was made (its memory, format, shape, order
 *       and writability) first, else ChangedView is raised: a caller changed
 *       a returned array in place and dropped it, and the views are made anew.
 *
 * The shared-memory plane's fast path, put() and take() (one C call per side
 * and direction instead of a chain of Python calls), lives in
 * fastenv_fastpath.c; both files share fastenv_layout.h.
 *
 * Program nodes (first item: the opcode):
 *
 *   (NONE,)                         None
 *   (CONST, value)                  a constant str/bytes leaf
 *   (BOOL, off) (INT, off) (FLOAT, off)   Python scalars: u8, int64, double
 *   (NPSCALAR, off, type, code)     numpy scalar; code one of ?bBhHiIqQefd
 *   (ARRAY, off, ndarray, format, shape, nbytes, index, fortran)
 *   (TENSOR, type, to_array, from_array, array_node, to_address, dtype, shape)
 *       a value of exactly `type` (torch.Tensor) whose bytes are an array.
 *       With a dtype (not None: one that cannot be lazily conjugated), pack
 *       first reads the value's dtype, shape (against the tuple shape),
 *       is_cpu, is_contiguous() and is_neg() itself and copies a contiguous
 *       host tensor's bytes from data_ptr(). Any other tensor (or any, with
 *       dtype None) goes to to_address(value), which returns None (the structure
 *       differs), the address of the tensor's contiguous bytes (an int: the
 *       node's nbytes are copied from there; the caller checked dtype, shape
 *       and device) or an array; extract calls to_array(value) (None or an
 *       array). An array is packed as array_node, an ARRAY node. unpack
 *       calls from_array(array) on the array array_node rebuilds (made
 *       writable first: a read-only view is copied).
 *   (TUPLE, children) (LIST, children)
 *   (DICT, keys, children, type)    type is dict or OrderedDict
 *
 * Offsets are relative to the data area; every read and write is checked
 * against the buffer's length, so a program can never touch memory outside
 * the buffer it is given. Scalars are little-endian (the build refuses
 * big-endian targets).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#include "fastenv_layout.h"

enum {
    OP_NONE = 0,
    OP_CONST = 1,
    OP_BOOL = 2,
    OP_INT = 3,
    OP_FLOAT = 4,
    OP_NPSCALAR = 5,
    OP_ARRAY = 6,
    OP_TUPLE = 7,
    OP_LIST = 8,
    OP_DICT = 9,
    OP_TENSOR = 10,
};

#define MAX_DEPTH 64

/* Interned method names (set by layout_exec): an interned name is what lets
 * CPython's method cache find ndarray.copy without walking the type's MRO,
 * about half the cost of a small array's copy. */
static PyObject *str_copy;       /* "copy" */
static PyObject *str_keep_order; /* "K" */
/* a tensor's attributes and methods the packer reads before it copies the tensor's bytes */
static PyObject *str_dtype, *str_shape, *str_is_cpu, *str_is_contiguous, *str_is_neg, *str_data_ptr;
static PyObject *ChangedView; /* fastenv._layout.ChangedView */

int
bad_program(const char *what)
{
    PyErr_Format(PyExc_ValueError, "invalid layout program: %s", what);
    return -1;
}

/* The node's opcode, or -1 with an exception set. */
static long
opcode_of(PyObject *node)
{
    if (!PyTuple_CheckExact(node) || PyTuple_GET_SIZE(node) < 1) {
        return bad_program("node is not a non-empty tuple");
    }
    PyObject *op = PyTuple_GET_ITEM(node, 0);
    if (!PyLong_CheckExact(op)) {
        return bad_program("opcode is not an int");
    }
    return PyLong_AsLong(op);
}

static int
node_size(PyObject *node, Py_ssize_t size)
{
    if (PyTuple_GET_SIZE(node) != size) {
        return bad_program("node has the wrong number of fields");
    }
    return 0;
}

/* A field of the node that must be a non-negative Py_ssize_t. */
static int
node_index(PyObject *node, Py_ssize_t at, Py_ssize_t *out)
{
    PyObject *item = PyTuple_GET_ITEM(node, at);
    if (!PyLong_CheckExact(item)) {
        return bad_program("offset or index is not an int");
    }
    Py_ssize_t value = PyLong_AsSsize_t(item);
    if (value < 0) {
        if (!PyErr_Occurred()) {
            bad_program("negative offset or index");
        }
        return -1;
    }
    *out = value;
    return 0;
}

/* Where `size` bytes at data offset `off` live, or NULL with an exception. */
static char *
locate(char *base, Py_ssize_t room, Py_ssize_t off, Py_ssize_t size)
{
    if (off > room || size > room - off) {
        PyErr_Format(PyExc_ValueError, "layout field at %zd (+%zd bytes) lies outside its region of %zd bytes",
                     off, size, room);
        return NULL;
    }
    return base + off;
}

/* The struct codes of NPSCALAR nodes (what code_size knows), in fastenv.layout's order, and the
 * codes BOOL, INT and FLOAT nodes are written with: fastenv.layout computes every offset with
 * these codes, so they are exported and checked against it at import. */
#define SCALAR_CODES "?bBhHiIqQefd"
#define PLAIN_CODES "?qd"

static Py_ssize_t
code_size(int code)
{
    switch (code) {
    case '?': case 'b': case 'B': return 1;
    case 'h': case 'H': case 'e': return 2;
    case 'i': case 'I': case 'f': return 4;
    case 'q': case 'Q': case 'd': return 8;
    default: return -1;
    }
}

/* ------------------------------------------------------------------ pack */

static int pack_node(pack_ctx *ctx, PyObject *node, PyObject *value, int depth);

static int
pack_children(pack_ctx *ctx, PyObject *children, PyObject *const *items, Py_ssize_t count, int depth)
{
    if (!PyTuple_CheckExact(children)) {
        return bad_program("children are not a tuple");
    }
    if (PyTuple_GET_SIZE(children) != count) {
        return PACK_MISMATCH;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        int status = pack_node(ctx, PyTuple_GET_ITEM(children, i), items[i], depth + 1);
        if (status != PACK_OK) {
            return status;
        }
    }
    return PACK_OK;
}

static int
pack_dict(pack_ctx *ctx, PyObject *node, PyObject *value, int depth)
{
    if (node_size(node, 4) < 0) {
        return PACK_ERROR;
    }
    PyObject *keys = PyTuple_GET_ITEM(node, 1);
    PyObject *children = PyTuple_GET_ITEM(node, 2);
    PyObject *type = PyTuple_GET_ITEM(node, 3);
    if (!PyTuple_CheckExact(keys) || !PyTuple_CheckExact(children) ||
        PyTuple_GET_SIZE(keys) != PyTuple_GET_SIZE(children)) {
        return bad_program("dict node keys and children differ");
    }
    if ((PyObject *)Py_TYPE(value) != type) {
        return PACK_MISMATCH;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(keys);
    if (PyDict_GET_SIZE(value) != count) {
        return PACK_MISMATCH;
    }
    if (PyDict_CheckExact(value)) {
        Py_ssize_t pos = 0, i = 0;
        PyObject *key, *item;
        while (PyDict_Next(value, &pos, &key, &item)) {
            PyObject *expected = PyTuple_GET_ITEM(keys, i);
            if (key != expected) {
                int same = PyObject_RichCompareBool(key, expected, Py_EQ);
                if (same <= 0) {
                    return same < 0 ? PACK_ERROR : PACK_MISMATCH;
                }
            }
            Py_INCREF(item);
            int status = pack_node(ctx, PyTuple_GET_ITEM(children, i), item, depth + 1);
            Py_DECREF(item);
            if (status != PACK_OK) {
                return status;
            }
            i++;
        }
        return PACK_OK;
    }
    /* OrderedDict (or another dict subclass the program names): its own order */
    PyObject *order = PySequence_Tuple(value);
    if (order == NULL) {
        return PACK_ERROR;
    }
    int same = PyObject_RichCompareBool(order, keys, Py_EQ);
    Py_DECREF(order);
    if (same <= 0) {
        return same < 0 ? PACK_ERROR : PACK_MISMATCH;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyObject_GetItem(value, PyTuple_GET_ITEM(keys, i));
        if (item == NULL) {
            return PACK_ERROR;
        }
        int status = pack_node(ctx, PyTuple_GET_ITEM(children, i), item, depth + 1);
        Py_DECREF(item);
        if (status != PACK_OK) {
            return status;
        }
    }
    return PACK_OK;
}

static int
pack_npscalar(pack_ctx *ctx, PyObject *node, PyObject *value)
{
    Py_ssize_t off;
    if (node_size(node, 4) < 0 || node_index(node, 1, &off) < 0) {
        return PACK_ERROR;
    }
    if ((PyObject *)Py_TYPE(value) != PyTuple_GET_ITEM(node, 2)) {
        return PACK_MISMATCH;
    }
    PyObject *code_obj = PyTuple_GET_ITEM(node, 3);
    if (!PyLong_CheckExact(code_obj)) {
        return bad_program("scalar code is not an int");
    }
    Py_ssize_t size = code_size((int)PyLong_AsLong(code_obj));
    if (size < 0) {
        return bad_program("unknown scalar code");
    }
    Py_buffer view;
    if (PyObject_GetBuffer(value, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        return PACK_MISMATCH;
    }
    int status = PACK_MISMATCH;
    if (view.len == size) {
        char *dest = locate(ctx->base, ctx->room, off, size);
        if (dest == NULL) {
            status = PACK_ERROR;
        } else {
            memcpy(dest, view.buf, (size_t)size);
            status = PACK_OK;
        }
    }
    PyBuffer_Release(&view);
    return status;
}

static int
same_shape(Py_buffer *view, PyObject *shape)
{
    Py_ssize_t ndim = PyTuple_GET_SIZE(shape);
    if (view->ndim != ndim) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < ndim; i++) {
        Py_ssize_t dim = PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, i));
        if (view->shape == NULL ? (ndim != 1 || dim != view->len / view->itemsize) : view->shape[i] != dim) {
            return 0;
        }
    }
    return 1;
}

static int
pack_array(pack_ctx *ctx, PyObject *node, PyObject *value)
{
    Py_ssize_t off, nbytes, index;
    if (node_size(node, 8) < 0 || node_index(node, 1, &off) < 0 || node_index(node, 5, &nbytes) < 0 ||
        node_index(node, 6, &index) < 0) {
        return PACK_ERROR;
    }
    if ((PyObject *)Py_TYPE(value) != PyTuple_GET_ITEM(node, 2)) {
        return PACK_MISMATCH;
    }
    PyObject *format = PyTuple_GET_ITEM(node, 3);
    PyObject *shape = PyTuple_GET_ITEM(node, 4);
    if (!PyBytes_CheckExact(format) || !PyTuple_CheckExact(shape)) {
        return bad_program("array node format or shape");
    }
    Py_buffer view;
    if (PyObject_GetBuffer(value, &view, PyBUF_RECORDS_RO) < 0) {
        PyErr_Clear(); /* e.g. datetime64 has no buffer format: the general codec handles it */
        return PACK_MISMATCH;
    }
    int status = PACK_MISMATCH;
    const char *fmt = view.format == NULL ? "B" : view.format;
    if (strcmp(fmt, PyBytes_AS_STRING(format)) != 0 || view.len != nbytes || !same_shape(&view, shape)) {
        goto done;
    }
    if (ctx->collect != NULL) { /* extract: the caller sends the array's own memory */
        status = PyList_Append(ctx->collect, value) < 0 ? PACK_ERROR : PACK_OK;
        goto done;
    }
    char *dest = locate(ctx->base, ctx->room, off, nbytes);
    if (dest == NULL) {
        status = PACK_ERROR;
        goto done;
    }
    if (index < ctx->lent_len && ctx->lent[index] && view.buf != dest) {
        /* The memory of this place was lent to the env (fastenv.reply_array) and the value has
         * something else here: writing it could destroy a lent array that sits elsewhere in the
         * value. Nothing lent has been written over so far (only places that were not lent). */
        goto done;
    }
    char order = PyObject_IsTrue(PyTuple_GET_ITEM(node, 7)) ? 'F' : 'C';
    if (PyBuffer_IsContiguous(&view, order)) {
        if (dest != view.buf) { /* an array lent from this very place (fastenv.reply_array) is already there */
            memmove(dest, view.buf, (size_t)nbytes);
        }
        status = PACK_OK;
        goto done;
    }
    /* strided: numpy copies it into the view of this array's place */
    if (!PyList_CheckExact(ctx->views) || index >= PyList_GET_SIZE(ctx->views) || ctx->copyto == Py_None) {
        PyErr_SetString(PyExc_ValueError, "pack: no view to copy a non-contiguous array into");
        status = PACK_ERROR;
        goto done;
    }
    PyObject *done_copy = PyObject_CallFunctionObjArgs(ctx->copyto, PyList_GET_ITEM(ctx->views, index), value, NULL);
    if (done_copy == NULL) {
        status = PACK_ERROR;
    } else {
        Py_DECREF(done_copy);
        status = PACK_OK;
    }
done:
    PyBuffer_Release(&view);
    return status;
}

/* Copy nbytes of the ARRAY node from the address a TENSOR node's to_address returned. */
static int
pack_address(pack_ctx *ctx, PyObject *array_node, PyObject *address_obj)
{
    Py_ssize_t off, nbytes, index;
    if (node_index(array_node, 1, &off) < 0 || node_index(array_node, 5, &nbytes) < 0 ||
        node_index(array_node, 6, &index) < 0) {
        return PACK_ERROR;
    }
    if (ctx->collect != NULL) {
        PyErr_SetString(PyExc_ValueError, "extract: a tensor's address cannot be sent from its own memory");
        return PACK_ERROR;
    }
    if (index < ctx->lent_len && ctx->lent[index]) {
        return PACK_MISMATCH; /* a lent place holds an array, never a tensor */
    }
    void *source = PyLong_AsVoidPtr(address_obj);
    if (source == NULL && PyErr_Occurred()) {
        return PACK_ERROR;
    }
    char *dest = locate(ctx->base, ctx->room, off, nbytes);
    if (dest == NULL) {
        return PACK_ERROR;
    }
    if (nbytes > 0) {
        memmove(dest, source, (size_t)nbytes);
    }
    return PACK_OK;
}

/* A TENSOR node: the value's bytes (from an address or an array the program's converter gives), packed
 * in its ARRAY node's place. */
/* Whether the tensor's attribute name (a method when call) is the object expected: 1 yes, 0 no, -1 error. */
static int
tensor_reads(PyObject *value, PyObject *name, int call, PyObject *expected)
{
    PyObject *got = call ? PyObject_CallMethodNoArgs(value, name) : PyObject_GetAttr(value, name);
    if (got == NULL) {
        return -1;
    }
    int same = got == expected;
    Py_DECREF(got);
    return same;
}

/* The fast checks of a TENSOR node with a dtype and shape (a tensor that cannot be lazily conjugated):
 * PACK_MISMATCH for another dtype or shape; PACK_OK with *address set for a contiguous host tensor
 * without a lazy negation; PACK_ERROR with nothing set when the node's converter must decide (a tensor on
 * a device, a strided or negated one); PACK_ERROR with an exception set on failure. */
static int
tensor_fast_address(PyObject *node, PyObject *value, PyObject **address)
{
    int same = tensor_reads(value, str_dtype, 0, PyTuple_GET_ITEM(node, 6));
    if (same <= 0) {
        return same < 0 ? PACK_ERROR : PACK_MISMATCH;
    }
    PyObject *shape = PyObject_GetAttr(value, str_shape);
    if (shape == NULL) {
        return PACK_ERROR;
    }
    same = PyObject_RichCompareBool(shape, PyTuple_GET_ITEM(node, 7), Py_EQ);
    Py_DECREF(shape);
    if (same <= 0) {
        return same < 0 ? PACK_ERROR : PACK_MISMATCH;
    }
    if ((same = tensor_reads(value, str_is_cpu, 0, Py_True)) <= 0 ||
        (same = tensor_reads(value, str_is_contiguous, 1, Py_True)) <= 0 ||
        (same = tensor_reads(value, str_is_neg, 1, Py_False)) <= 0) {
        return PACK_ERROR; /* an exception (same < 0), or the converter decides */
    }
    *address = PyObject_CallMethodNoArgs(value, str_data_ptr);
    return *address == NULL ? PACK_ERROR : PACK_OK;
}

static int
pack_tensor(pack_ctx *ctx, PyObject *node, PyObject *value)
{
    if (node_size(node, 8) < 0) {
        return PACK_ERROR;
    }
    if ((PyObject *)Py_TYPE(value) != PyTuple_GET_ITEM(node, 1)) {
        return PACK_MISMATCH;
    }
    PyObject *array_node = PyTuple_GET_ITEM(node, 4);
    if (opcode_of(array_node) != OP_ARRAY || node_size(array_node, 8) < 0) {
        return PyErr_Occurred() ? PACK_ERROR : bad_program("tensor node without an array node");
    }
    if (ctx->collect == NULL && PyTuple_GET_ITEM(node, 6) != Py_None) {
        PyObject *address = NULL;
        int status = tensor_fast_address(node, value, &address);
        if (status == PACK_OK) {
            status = pack_address(ctx, array_node, address);
            Py_DECREF(address);
            return status;
        }
        if (status == PACK_MISMATCH || PyErr_Occurred()) {
            return status;
        }
    }
    PyObject *convert = PyTuple_GET_ITEM(node, ctx->collect != NULL ? 2 : 5);
    PyObject *array = PyObject_CallOneArg(convert, value);
    if (array == NULL) {
        return PACK_ERROR;
    }
    int status;
    if (array == Py_None) {
        status = PACK_MISMATCH;
    } else if (PyLong_CheckExact(array)) { /* the address of the tensor's contiguous bytes */
        status = pack_address(ctx, array_node, array);
    } else {
        status = pack_array(ctx, array_node, array);
    }
    Py_DECREF(array);
    return status;
}

static int
pack_node(pack_ctx *ctx, PyObject *node, PyObject *value, int depth)
{
    if (depth > MAX_DEPTH) {
        return bad_program("too deep");
    }
    long op = opcode_of(node);
    Py_ssize_t off;
    char *dest;
    switch (op) {
    case OP_NONE:
        return value == Py_None ? PACK_OK : PACK_MISMATCH;
    case OP_CONST: {
        if (node_size(node, 2) < 0) {
            return PACK_ERROR;
        }
        PyObject *constant = PyTuple_GET_ITEM(node, 1);
        if (value == constant) {
            return PACK_OK;
        }
        if (Py_TYPE(value) != Py_TYPE(constant)) {
            return PACK_MISMATCH;
        }
        int same = PyObject_RichCompareBool(value, constant, Py_EQ);
        return same < 0 ? PACK_ERROR : (same ? PACK_OK : PACK_MISMATCH);
    }
    case OP_BOOL:
        if (node_size(node, 2) < 0 || node_index(node, 1, &off) < 0) {
            return PACK_ERROR;
        }
        if (!PyBool_Check(value)) {
            return PACK_MISMATCH;
        }
        if ((dest = locate(ctx->base, ctx->room, off, 1)) == NULL) {
            return PACK_ERROR;
        }
        *dest = (char)(value == Py_True);
        return PACK_OK;
    case OP_INT: {
        if (node_size(node, 2) < 0 || node_index(node, 1, &off) < 0) {
            return PACK_ERROR;
        }
        if (!PyLong_CheckExact(value)) {
            return PACK_MISMATCH;
        }
        int overflow = 0;
        long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow) {
            return PACK_MISMATCH; /* beyond int64: the general codec carries it */
        }
        if (number == -1 && PyErr_Occurred()) {
            return PACK_ERROR;
        }
        if ((dest = locate(ctx->base, ctx->room, off, 8)) == NULL) {
            return PACK_ERROR;
        }
        int64_t fixed = (int64_t)number;
        memcpy(dest, &fixed, 8);
        return PACK_OK;
    }
    case OP_FLOAT: {
        if (node_size(node, 2) < 0 || node_index(node, 1, &off) < 0) {
            return PACK_ERROR;
        }
        if (!PyFloat_CheckExact(value)) {
            return PACK_MISMATCH;
        }
        if ((dest = locate(ctx->base, ctx->room, off, 8)) == NULL) {
            return PACK_ERROR;
        }
        double number = PyFloat_AS_DOUBLE(value);
        memcpy(dest, &number, 8);
        return PACK_OK;
    }
    case OP_NPSCALAR:
        return pack_npscalar(ctx, node, value);
    case OP_ARRAY:
        return pack_array(ctx, node, value);
    case OP_TENSOR:
        return pack_tensor(ctx, node, value);
    case OP_TUPLE:
    case OP_LIST:
        if (node_size(node, 2) < 0) {
            return PACK_ERROR;
        }
        if (op == OP_TUPLE ? !PyTuple_CheckExact(value) : !PyList_CheckExact(value)) {
            return PACK_MISMATCH;
        }
        return pack_children(ctx, PyTuple_GET_ITEM(node, 1), PySequence_Fast_ITEMS(value),
                             PySequence_Fast_GET_SIZE(value), depth);
    case OP_DICT:
        if (!PyDict_Check(value)) {
            return PACK_MISMATCH;
        }
        return pack_dict(ctx, node, value, depth);
    case -1:
        return PACK_ERROR;
    default:
        return bad_program("unknown opcode");
    }
}

/* Acquire the region [offset, end of buffer) of buffer; fills base and room. */
static int
acquire_region(PyObject *buffer, PyObject *offset_obj, int writable, Py_buffer *view, char **base, Py_ssize_t *room)
{
    Py_ssize_t offset = PyLong_AsSsize_t(offset_obj);
    if (offset == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (PyObject_GetBuffer(buffer, view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0) {
        return -1;
    }
    if (offset < 0 || offset > view->len) {
        PyErr_Format(PyExc_ValueError, "offset %zd outside a buffer of %zd bytes", offset, view->len);
        PyBuffer_Release(view);
        return -1;
    }
    *base = (char *)view->buf + offset;
    *room = view->len - offset;
    return 0;
}


/* See fastenv_layout.h. */
PyObject *
pack_region(PyObject *const *args, pack_ctx *ctx, Py_ssize_t skip, const void *header, size_t header_size)
{
    Py_buffer view;
    char *region;
    Py_ssize_t room;
    if (acquire_region(args[1], args[2], 1, &view, &region, &room) < 0) {
        return NULL;
    }
    if (room < skip || (Py_ssize_t)header_size > skip) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "region smaller than an envelope header");
        return NULL;
    }
    ctx->base = region + skip;
    ctx->room = room - skip;
    int status = pack_node(ctx, args[0], args[3], 0);
    if (status == PACK_OK && header != NULL) {
        memcpy(region, header, header_size);
    }
    PyBuffer_Release(&view);
    if (status == PACK_ERROR) {
        return NULL;
    }
    return PyBool_FromLong(status == PACK_OK);
}

static PyObject *
layout_pack(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "pack(program, buffer, offset, value, views, copyto)");
        return NULL;
    }
    pack_ctx ctx = {.views = args[4], .copyto = args[5]};
    return pack_region(args, &ctx, 0, NULL, 0);
}


static PyObject *
layout_extract(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyList_CheckExact(args[4])) {
        PyErr_SetString(PyExc_TypeError, "extract(program, buffer, offset, value, arrays: list)");
        return NULL;
    }
    pack_ctx ctx = {.views = Py_None, .copyto = Py_None, .collect = args[4]};
    return pack_region(args, &ctx, 0, NULL, 0);
}

/* ------------------------------------------------------------------ unpack */

static PyObject *
unpack_npscalar(unpack_ctx *ctx, PyObject *node)
{
    Py_ssize_t off;
    if (node_size(node, 4) < 0 || node_index(node, 1, &off) < 0) {
        return NULL;
    }
    PyObject *type = PyTuple_GET_ITEM(node, 2);
    int code = (int)PyLong_AsLong(PyTuple_GET_ITEM(node, 3));
    Py_ssize_t size = code_size(code);
    if (size < 0) {
        bad_program("unknown scalar code");
        return NULL;
    }
    const char *src = locate((char *)ctx->base, ctx->room, off, size);
    if (src == NULL) {
        return NULL;
    }
    PyObject *plain;
    union {
        int8_t i8; uint8_t u8; int16_t i16; uint16_t u16; int32_t i32; uint32_t u32;
        int64_t i64; uint64_t u64; float f32; double f64;
    } raw;
    memcpy(&raw, src, (size_t)size);
    switch (code) {
    case '?': plain = PyBool_FromLong(raw.u8 != 0); break;
    case 'b': plain = PyLong_FromLong(raw.i8); break;
    case 'B': plain = PyLong_FromLong(raw.u8); break;
    case 'h': plain = PyLong_FromLong(raw.i16); break;
    case 'H': plain = PyLong_FromLong(raw.u16); break;
    case 'i': plain = PyLong_FromLong(raw.i32); break;
    case 'I': plain = PyLong_FromUnsignedLong(raw.u32); break;
    case 'q': plain = PyLong_FromLongLong(raw.i64); break;
    case 'Q': plain = PyLong_FromUnsignedLongLong(raw.u64); break;
    case 'e': {
        double half = PyFloat_Unpack2(src, 1);
        plain = (half == -1.0 && PyErr_Occurred()) ? NULL : PyFloat_FromDouble(half);
        break;
    }
    case 'f': plain = PyFloat_FromDouble(raw.f32); break;
    default: plain = PyFloat_FromDouble(raw.f64); break;
    }
    if (plain == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_CallOneArg(type, plain); /* exact: each value fits its own type */
    Py_DECREF(plain);
    return result;
}

static PyObject *
unpack_sequence(unpack_ctx *ctx, PyObject *node, int as_list, int depth)
{
    if (node_size(node, 2) < 0) {
        return NULL;
    }
    PyObject *children = PyTuple_GET_ITEM(node, 1);
    if (!PyTuple_CheckExact(children)) {
        bad_program("children are not a tuple");
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(children);
    PyObject *out = as_list ? PyList_New(count) : PyTuple_New(count);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = unpack_node(ctx, PyTuple_GET_ITEM(children, i), depth + 1);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        if (as_list) {
            PyList_SET_ITEM(out, i, item);
        } else {
            PyTuple_SET_ITEM(out, i, item);
        }
    }
    return out;
}

static PyObject *
unpack_dict(unpack_ctx *ctx, PyObject *node, int depth)
{
    if (node_size(node, 4) < 0) {
        return NULL;
    }
    PyObject *keys = PyTuple_GET_ITEM(node, 1);
    PyObject *children = PyTuple_GET_ITEM(node, 2);
    PyObject *type = PyTuple_GET_ITEM(node, 3);
    if (!PyTuple_CheckExact(keys) || !PyTuple_CheckExact(children) ||
        PyTuple_GET_SIZE(keys) != PyTuple_GET_SIZE(children)) {
        bad_program("dict node keys and children differ");
        return NULL;
    }
    PyObject *out = type == (PyObject *)&PyDict_Type ? PyDict_New() : PyObject_CallNoArgs(type);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(keys); i++) {
        PyObject *item = unpack_node(ctx, PyTuple_GET_ITEM(children, i), depth + 1);
        if (item == NULL || PyObject_SetItem(out, PyTuple_GET_ITEM(keys, i), item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
    }
    return out;
}

/* A TENSOR node's kept tensor (ctx->kept[index] = (tensor, array, ...), see fastenv.shm.kept) with the
 * bytes of the node's array copied into that array; Py_None (borrowed) when none is kept for this node. */
static PyObject *
unpack_kept(unpack_ctx *ctx, PyObject *array_node)
{
    Py_ssize_t index;
    if (node_size(array_node, 8) < 0 || node_index(array_node, 6, &index) < 0) {
        return NULL;
    }
    if (!PyList_CheckExact(ctx->kept) || index >= PyList_GET_SIZE(ctx->kept) || !PyList_CheckExact(ctx->arrays) ||
        index >= PyList_GET_SIZE(ctx->arrays)) {
        return Py_None;
    }
    PyObject *slot = PyList_GET_ITEM(ctx->kept, index);
    if (!PyTuple_CheckExact(slot) || PyTuple_GET_SIZE(slot) < 2) {
        return Py_None;
    }
    Py_buffer source, target;
    if (PyObject_GetBuffer(PyList_GET_ITEM(ctx->arrays, index), &source, PyBUF_RECORDS_RO) < 0) {
        PyErr_Clear();
        return Py_None;
    }
    if (PyObject_GetBuffer(PyTuple_GET_ITEM(slot, 1), &target, PyBUF_RECORDS) < 0) {
        PyErr_Clear();
        PyBuffer_Release(&source);
        return Py_None;
    }
    /* the same bytes in the same order: the kept array was made like the region's view (np.empty_like) */
    int same = source.len == target.len && source.itemsize == target.itemsize &&
               ((PyBuffer_IsContiguous(&source, 'C') && PyBuffer_IsContiguous(&target, 'C')) ||
                (PyBuffer_IsContiguous(&source, 'F') && PyBuffer_IsContiguous(&target, 'F')));
    if (same && source.len > 0) {
        memcpy(target.buf, source.buf, (size_t)source.len);
    }
    PyBuffer_Release(&source);
    PyBuffer_Release(&target);
    return same ? Py_NewRef(PyTuple_GET_ITEM(slot, 0)) : Py_None;
}

/* The view of an ARRAY node, handed out again (a new reference), once it is checked to be as it was made: a
 * caller may have changed a returned array's shape, strides, dtype or flags in place and dropped it. Raises
 * ChangedView if it is not: the caller makes new views and unpacks again. */
static PyObject *
handed_out_view(const unpack_ctx *ctx, PyObject *node, PyObject *view_obj)
{
    Py_ssize_t off, nbytes;
    if (node_index(node, 1, &off) < 0 || node_index(node, 5, &nbytes) < 0) {
        return NULL;
    }
    PyObject *format = PyTuple_GET_ITEM(node, 3);
    PyObject *shape = PyTuple_GET_ITEM(node, 4);
    if (!PyBytes_CheckExact(format) || !PyTuple_CheckExact(shape)) {
        bad_program("array node format or shape");
        return NULL;
    }
    Py_buffer probe;
    int as_made = 0;
    if (PyObject_GetBuffer(view_obj, &probe, PyBUF_RECORDS_RO) == 0) {
        const char *fmt = probe.format == NULL ? "B" : probe.format;
        char order = PyObject_IsTrue(PyTuple_GET_ITEM(node, 7)) ? 'F' : 'C';
        as_made = probe.buf == ctx->base + off && probe.len == nbytes && probe.readonly == ctx->readonly &&
                  strcmp(fmt, PyBytes_AS_STRING(format)) == 0 && same_shape(&probe, shape) &&
                  PyBuffer_IsContiguous(&probe, order);
        PyBuffer_Release(&probe);
    }
    else {
        PyErr_Clear();
    }
    if (!as_made) {
        PyErr_SetString(ChangedView, "a view handed out before was changed in place: make new views");
        return NULL;
    }
    return Py_NewRef(view_obj);
}

PyObject *
unpack_node(unpack_ctx *ctx, PyObject *node, int depth)
{
    if (depth > MAX_DEPTH) {
        bad_program("too deep");
        return NULL;
    }
    long op = opcode_of(node);
    Py_ssize_t off, index;
    const char *src;
    switch (op) {
    case OP_NONE:
        Py_RETURN_NONE;
    case OP_CONST:
        if (node_size(node, 2) < 0) {
            return NULL;
        }
        return Py_NewRef(PyTuple_GET_ITEM(node, 1));
    case OP_BOOL:
        if (node_size(node, 2) < 0 || node_index(node, 1, &off) < 0 ||
            (src = locate((char *)ctx->base, ctx->room, off, 1)) == NULL) {
            return NULL;
        }
        return PyBool_FromLong(*src != 0);
    case OP_INT: {
        if (node_size(node, 2) < 0 || node_index(node, 1, &off) < 0 ||
            (src = locate((char *)ctx->base, ctx->room, off, 8)) == NULL) {
            return NULL;
        }
        int64_t number;
        memcpy(&number, src, 8);
        return PyLong_FromLongLong(number);
    }
    case OP_FLOAT: {
        if (node_size(node, 2) < 0 || node_index(node, 1, &off) < 0 ||
            (src = locate((char *)ctx->base, ctx->room, off, 8)) == NULL) {
            return NULL;
        }
        double number;
        memcpy(&number, src, 8);
        return PyFloat_FromDouble(number);
    }
    case OP_NPSCALAR:
        return unpack_npscalar(ctx, node);
    case OP_ARRAY:
        if (node_size(node, 8) < 0 || node_index(node, 6, &index) < 0) {
            return NULL;
        }
        if (!PyList_CheckExact(ctx->arrays) || index >= PyList_GET_SIZE(ctx->arrays)) {
            PyErr_SetString(PyExc_ValueError, "unpack: fewer arrays than the layout has");
            return NULL;
        }
        if (ctx->copy) { /* a view in the layout's order: copy() keeps C order, 'K' keeps F */
            PyObject *source = PyList_GET_ITEM(ctx->arrays, index);
            if (PyObject_IsTrue(PyTuple_GET_ITEM(node, 7))) {
                return PyObject_CallMethodOneArg(source, str_copy, str_keep_order);
            }
            return PyObject_CallMethodNoArgs(source, str_copy);
        }
        if (ctx->reused) {
            return handed_out_view(ctx, node, PyList_GET_ITEM(ctx->arrays, index));
        }
        return Py_NewRef(PyList_GET_ITEM(ctx->arrays, index));
    case OP_TENSOR: {
        if (node_size(node, 8) < 0) {
            return NULL;
        }
        PyObject *array_node = PyTuple_GET_ITEM(node, 4);
        long inner = opcode_of(array_node);
        if (inner != OP_ARRAY) {
            if (inner != -1) {
                bad_program("tensor node without an array node");
            }
            return NULL;
        }
        if (ctx->copy && ctx->kept != NULL) {
            PyObject *tensor = unpack_kept(ctx, array_node);
            if (tensor != Py_None) {
                return tensor; /* the kept tensor, or NULL with an exception set */
            }
        }
        int reused = ctx->reused;
        ctx->reused = 0; /* the view under a tensor is never handed out: only the tensor built on it */
        PyObject *array = unpack_node(ctx, array_node, depth + 1);
        ctx->reused = reused;
        if (array == NULL) {
            return NULL;
        }
        if (!ctx->copy) { /* a view: torch has no read-only tensors, so a read-only one is copied first */
            Py_buffer probe;
            if (PyObject_GetBuffer(array, &probe, PyBUF_WRITABLE | PyBUF_STRIDES) == 0) {
                PyBuffer_Release(&probe);
            }
            else {
                PyErr_Clear();
                PyObject *owned = PyObject_CallMethodNoArgs(array, str_copy);
                Py_DECREF(array);
                if (owned == NULL) {
                    return NULL;
                }
                array = owned;
            }
        }
        PyObject *tensor = PyObject_CallOneArg(PyTuple_GET_ITEM(node, 3), array);
        Py_DECREF(array);
        return tensor;
    }
    case OP_TUPLE:
        return unpack_sequence(ctx, node, 0, depth);
    case OP_LIST:
        return unpack_sequence(ctx, node, 1, depth);
    case OP_DICT:
        return unpack_dict(ctx, node, depth);
    case -1:
        return NULL;
    default:
        bad_program("unknown opcode");
        return NULL;
    }
}

static PyObject *
layout_unpack(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 4 || nargs > 7) {
        PyErr_SetString(PyExc_TypeError, "unpack(program, buffer, offset, arrays, copy=False, kept=None, reused=False)");
        return NULL;
    }
    Py_buffer view;
    char *base;
    unpack_ctx ctx = {
        .arrays = args[3],
        .copy = nargs >= 5 && PyObject_IsTrue(args[4]) == 1,
        .kept = nargs >= 6 && args[5] != Py_None ? args[5] : NULL,
        .reused = nargs == 7 && PyObject_IsTrue(args[6]) == 1,
    };
    if (acquire_region(args[1], args[2], 0, &view, &base, &ctx.room) < 0) {
        return NULL;
    }
    ctx.base = base;
    ctx.readonly = view.readonly;
    PyObject *value = unpack_node(&ctx, args[0], 0);
    PyBuffer_Release(&view);
    return value;
}


/* ------------------------------------------------------------------ module */

static PyMethodDef layout_methods[] = {
    {"pack", (PyCFunction)(void (*)(void))layout_pack, METH_FASTCALL,
     "pack(program, buffer, offset, value, views, copyto) -> bool\n\n"
     "Write value at offset if it has the program's structure; False if it does not."},
    {"put", (PyCFunction)(void (*)(void))fastpath_put, METH_FASTCALL, fastpath_put_doc},
    {"take", (PyCFunction)(void (*)(void))fastpath_take, METH_FASTCALL, fastpath_take_doc},
    {"extract", (PyCFunction)(void (*)(void))layout_extract, METH_FASTCALL,
     "extract(program, buffer, offset, value, arrays) -> bool\n\n"
     "Like pack, but only the scalars are written: the arrays (checked) are appended to the list arrays."},
    {"unpack", (PyCFunction)(void (*)(void))layout_unpack, METH_FASTCALL,
     "unpack(program, buffer, offset, arrays, copy=False, kept=None, reused=False) -> value\n\n"
     "Rebuild a value packed at offset (copy: arrays are copies of arrays[i]; kept: tensors to copy into;\n"
     "reused: arrays are views handed out before, checked first: ChangedView if one was changed in place)."},
    {NULL, NULL, 0, NULL},
};

static int
layout_exec(PyObject *module)
{
    if (str_copy == NULL) {
        str_copy = PyUnicode_InternFromString("copy");
        str_keep_order = PyUnicode_InternFromString("K");
        str_dtype = PyUnicode_InternFromString("dtype");
        str_shape = PyUnicode_InternFromString("shape");
        str_is_cpu = PyUnicode_InternFromString("is_cpu");
        str_is_contiguous = PyUnicode_InternFromString("is_contiguous");
        str_is_neg = PyUnicode_InternFromString("is_neg");
        str_data_ptr = PyUnicode_InternFromString("data_ptr");
        if (str_copy == NULL || str_keep_order == NULL || str_dtype == NULL || str_shape == NULL ||
            str_is_cpu == NULL || str_is_contiguous == NULL || str_is_neg == NULL || str_data_ptr == NULL) {
            return -1;
        }
    }
    if (ChangedView == NULL) {
        ChangedView = PyErr_NewExceptionWithDoc(
            "fastenv._layout.ChangedView",
            "unpack met a view it handed out before changed in place (shape, strides, dtype, flags): "
            "make new views and unpack again.",
            NULL, NULL);
        if (ChangedView == NULL) {
            return -1;
        }
    }
    if (PyModule_AddObjectRef(module, "ChangedView", ChangedView) < 0) {
        return -1;
    }
    static const struct { const char *name; int value; } opcodes[] = {
        {"NONE", OP_NONE}, {"CONST", OP_CONST}, {"BOOL", OP_BOOL}, {"INT", OP_INT},
        {"FLOAT", OP_FLOAT}, {"NPSCALAR", OP_NPSCALAR}, {"ARRAY", OP_ARRAY},
        {"TUPLE", OP_TUPLE}, {"LIST", OP_LIST}, {"DICT", OP_DICT},
        {"TENSOR", OP_TENSOR},
    };
    for (size_t i = 0; i < sizeof(opcodes) / sizeof(opcodes[0]); i++) {
        if (PyModule_AddIntConstant(module, opcodes[i].name, opcodes[i].value) < 0) {
            return -1;
        }
    }
    if (PyModule_AddStringConstant(module, "SCALAR_CODES", SCALAR_CODES) < 0 ||
        PyModule_AddStringConstant(module, "PLAIN_CODES", PLAIN_CODES) < 0) {
        return -1;
    }
    return fastpath_add_constants(module);
}

static PyModuleDef_Slot layout_slots[] = {
    {Py_mod_exec, (void *)layout_exec},
    {0, NULL},
};

static struct PyModuleDef layout_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fastenv._layout",
    .m_doc = "Pack and unpack values of a compiled layout (fastenv's hot-path encoding).",
    .m_size = 0,
    .m_methods = layout_methods,
    .m_slots = layout_slots,
};

PyMODINIT_FUNC
PyInit__layout(void)
{
    return PyModuleDef_Init(&layout_module);
}