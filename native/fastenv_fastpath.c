/*
 * fastenv._layout's shared-memory fast path: the transport side of the packer.
 *
 * One C call per side and direction instead of a chain of Python calls:
 *
 *   put(program, buffer, offset, value, views, copyto, kind, layout_id, seq, bell=-1, lent=None)
 *       pack into a region's data area, write its FAST envelope header, and
 *       with bell >= 0 ring that doorbell.  lent (bytes, a flag per array)
 *       marks places whose memory the env was lent: the value must have an
 *       array at that very memory there, or put returns False without
 *       having written over any lent place.
 *   take(buffer, bell, seen, spin_us, timeout, region, layouts, copy, consumed)
 *       wait for a doorbell ring, then unpack the FAST envelope it announced
 *       if its layout is one the caller prepared (see fastpath_take_doc).
 *
 * The envelope header, the FAST kind and where a FAST envelope's data starts
 * mirror fastenv.shm.arena; the doorbell's words mirror fastenv.shm.doorbell.
 * fastpath_add_constants exports each of them, and fastenv checks them against
 * the Python values at import (a mismatch turns the native backend off).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fastenv_layout.h"
#include "fastenv_wait.h" /* the doorbells that put() rings and take() waits on */

/* The data plane's envelope header (fastenv.shm.arena.ENVELOPE, "<BBHIQ"). */
typedef struct {
    uint8_t kind;
    uint8_t flags;
    uint16_t buffers;
    uint32_t skeleton;
    uint64_t seq;
} __attribute__((packed)) envelope_header;

#define FAST_KIND 6  /* fastenv.shm.arena.FAST */
#define FAST_DATA 64 /* fastenv.shm.arena.FAST_DATA: where a FAST envelope's data area starts */

_Static_assert(sizeof(envelope_header) <= FAST_DATA, "a FAST envelope's header must fit before its data");

/* The sleepers word of the doorbell whose counter is word. */
static inline uint32_t *
bell_sleepers(uint32_t *word)
{
    return (uint32_t *)((char *)word + FASTENV_BELL_SLEEPERS);
}

/* The doorbell (counter, then sleepers word) at bell inside a buffer of len bytes, or NULL with
 * ValueError set. */
static uint32_t *
locate_bell(char *buf, Py_ssize_t len, Py_ssize_t bell)
{
    if (bell < 0 || bell % 4 != 0 || bell > len - FASTENV_BELL_BYTES) {
        PyErr_Format(PyExc_ValueError, "doorbell offset %zd misaligned or outside a buffer of %zd bytes", bell, len);
        return NULL;
    }
    return (uint32_t *)(buf + bell);
}

const char fastpath_put_doc[] =
    "put(program, buffer, offset, value, views, copyto, kind, layout_id, seq, bell=-1, lent=None) -> bool\n\n"
    "pack() into the data area of the region at offset, then write its FAST envelope header;\n"
    "with bell >= 0, then ring the doorbell at that offset (counter, sleepers word). lent: bytes\n"
    "with a flag per array whose place was lent to the env: False unless each is already there.";

PyObject *
fastpath_put(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 9 || nargs > 11) {
        PyErr_SetString(PyExc_TypeError,
                        "put(program, buffer, offset, value, views, copyto, kind, layout_id, seq, bell=-1, lent=None)");
        return NULL;
    }
    long kind = PyLong_AsLong(args[6]);
    unsigned long layout_id = PyLong_AsUnsignedLong(args[7]);
    unsigned long long seq = PyLong_AsUnsignedLongLong(args[8]);
    Py_ssize_t bell = nargs >= 10 ? PyLong_AsSsize_t(args[9]) : -1;
    if (PyErr_Occurred()) {
        return NULL;
    }
    envelope_header header = {FAST_KIND, (uint8_t)kind, 0, (uint32_t)layout_id, (uint64_t)seq};
    pack_ctx ctx = {.views = args[4], .copyto = args[5]};
    if (nargs == 11 && args[10] != Py_None) {
        if (!PyBytes_CheckExact(args[10])) {
            PyErr_SetString(PyExc_TypeError, "put: lent must be bytes (one flag per array) or None");
            return NULL;
        }
        ctx.lent = PyBytes_AS_STRING(args[10]);
        ctx.lent_len = PyBytes_GET_SIZE(args[10]);
    }
    PyObject *written = pack_region(args, &ctx, FAST_DATA, &header, sizeof header);
    if (written != Py_True || bell == -1) {
        return written;
    }
    /* Ring only after the envelope is complete: the ring's seq_cst add publishes it. */
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_WRITABLE) < 0) {
        Py_DECREF(written);
        return NULL;
    }
    uint32_t *word = locate_bell(view.buf, view.len, bell);
    long woken = 0;
    if (word != NULL) {
        doorbell_ring(word, bell_sleepers(word), &woken);
    }
    int saved_errno = errno;
    PyBuffer_Release(&view);
    if (word == NULL) {
        Py_DECREF(written);
        return NULL;
    }
    if (woken < 0) {
        Py_DECREF(written);
        errno = saved_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return written;
}

/* The u32 at offset in buffer (a writable buffer, held in *view on success,
 * released by the caller); *poke_seen gets seen_arg as a u32.  NULL with an
 * exception set when any of them is wrong. */
static uint32_t *
poke_word(PyObject *buffer, PyObject *offset_arg, PyObject *seen_arg, Py_buffer *view, uint32_t *poke_seen)
{
    Py_ssize_t offset = PyLong_AsSsize_t(offset_arg);
    unsigned long seen = PyLong_AsUnsignedLong(seen_arg);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (seen > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "poke_seen must be a u32");
        return NULL;
    }
    *poke_seen = (uint32_t)seen;
    if (PyObject_GetBuffer(buffer, view, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    if (offset < 0 || offset % 4 != 0 || offset > view->len - 4) {
        PyErr_Format(PyExc_ValueError, "poke word %zd misaligned or out of bounds", offset);
        PyBuffer_Release(view);
        return NULL;
    }
    return (uint32_t *)((char *)view->buf + offset);
}

const char fastpath_take_doc[] =
    "take(buffer, bell, seen, spin_us, timeout, region, layouts, copy, consumed[, poke, poke_offset, poke_seen])\n"
    "    -> tuple | None\n"
    "\n"
    "Wait (spinning for spin_us, then in FUTEX_WAIT, at most timeout seconds; GIL\n"
    "released) until the doorbell counter at bell differs from seen, then read the\n"
    "envelope header of the region at offset region.  None when the timeout passed.\n"
    "Otherwise (counter, kind, flags, seq, taken, value, slept): when the envelope is FAST\n"
    "and layouts (a dict) maps its layout id to (program, views, ...), the value is\n"
    "unpacked (copy as in unpack; with copy, an entry's fourth item, a list, may\n"
    "hold kept tensors, as unpack's kept: see fastenv.shm.kept), taken is True, and with consumed >= 0 the\n"
    "envelope's seq is stored (release) in the u32 at consumed; else taken is False\n"
    "and value None: the caller reads the envelope its own way. slept: whether the\n"
    "wait outlasted spin_us and blocked in the kernel.\n"
    "With poke (a writable buffer), the wait also ends, returning None, once the\n"
    "u32 at poke_offset in it no longer reads poke_seen: another thread of this\n"
    "process changes it, then wakes the doorbell's sleepers, to get the waiting\n"
    "thread back to Python without a request.";

PyObject *
fastpath_take(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if ((nargs != 9 && nargs != 12) || !PyDict_CheckExact(args[6])) {
        PyErr_SetString(PyExc_TypeError, "take(buffer, bell, seen, spin_us, timeout, region, layouts: dict, copy, "
                                         "consumed[, poke, poke_offset, poke_seen])");
        return NULL;
    }
    Py_ssize_t bell = PyLong_AsSsize_t(args[1]);
    unsigned long seen_arg = PyLong_AsUnsignedLong(args[2]);
    Py_ssize_t spin_us = PyLong_AsSsize_t(args[3]);
    double timeout = PyFloat_AsDouble(args[4]);
    Py_ssize_t region = PyLong_AsSsize_t(args[5]);
    int copy = PyObject_IsTrue(args[7]);
    Py_ssize_t consumed = PyLong_AsSsize_t(args[8]);
    if (PyErr_Occurred() || copy < 0) {
        return NULL;
    }
    if (seen_arg > UINT32_MAX || spin_us < 0 || timeout != timeout) {
        PyErr_SetString(PyExc_ValueError, "seen must be a u32, spin_us >= 0 and timeout a number");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    char *buf = view.buf;
    uint32_t *word = locate_bell(buf, view.len, bell);
    if (word == NULL) {
        goto fail;
    }
    if (region < 0 || region > view.len - FAST_DATA) {
        PyErr_Format(PyExc_ValueError, "region %zd outside a buffer of %zd bytes", region, view.len);
        goto fail;
    }
    if (consumed >= 0 && (consumed % 4 != 0 || consumed > view.len - 4)) {
        PyErr_Format(PyExc_ValueError, "consumed word %zd misaligned or out of bounds", consumed);
        goto fail;
    }
    uint32_t seen = (uint32_t)seen_arg;
    int slept = 0;
    if (word_load(word) == seen) {
        if (timeout <= 0.0) {
            PyBuffer_Release(&view);
            Py_RETURN_NONE;
        }
        int forever = timeout > FASTENV_MAX_TIMEOUT_S;
        int64_t deadline = forever ? INT64_MAX : monotonic_ns() + (int64_t)(timeout * (double)NS_PER_S);
        int changed;
        if (nargs == 12) {
            Py_buffer poke_view;
            uint32_t poke_seen = 0;
            uint32_t *poke = poke_word(args[9], args[10], args[11], &poke_view, &poke_seen);
            if (poke == NULL) {
                goto fail;
            }
            changed = wait_for_ring_or_poke(word, bell_sleepers(word), seen, spin_us, forever, deadline, poke,
                                            poke_seen, &slept);
            PyBuffer_Release(&poke_view);
        }
        else {
            changed = wait_for_ring_or_poke(word, bell_sleepers(word), seen, spin_us, forever, deadline, NULL, 0,
                                            &slept);
        }
        if (changed <= 0) {
            PyBuffer_Release(&view);
            if (changed < 0) {
                return NULL;
            }
            Py_RETURN_NONE;
        }
    }
    uint32_t counter = word_load(word); /* acquire: the envelope read below is the one rung */
    envelope_header header;
    memcpy(&header, buf + region, sizeof header);
    PyObject *value = NULL;
    if (header.kind == FAST_KIND) {
        PyObject *key = PyLong_FromUnsignedLong(header.skeleton);
        if (key == NULL) {
            goto fail;
        }
        PyObject *entry = PyDict_GetItemWithError(args[6], key); /* borrowed */
        Py_DECREF(key);
        if (entry == NULL && PyErr_Occurred()) {
            goto fail;
        }
        if (entry != NULL) {
            if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) < 2) {
                bad_program("layouts entries must be (program, views, ...)");
                goto fail;
            }
            unpack_ctx ctx = {
                .base = buf + region + FAST_DATA,
                .room = view.len - region - FAST_DATA,
                .arrays = PyTuple_GET_ITEM(entry, 1),
                .copy = copy,
                .reused = !copy, /* the caller's prepared views, handed out again */
                .readonly = 0,   /* the buffer was taken writable */
                .kept = PyTuple_GET_SIZE(entry) >= 4 ? PyTuple_GET_ITEM(entry, 3) : NULL,
            };
            value = unpack_node(&ctx, PyTuple_GET_ITEM(entry, 0), 0);
            if (value == NULL) {
                goto fail;
            }
            if (consumed >= 0) {
                __atomic_store_n((uint32_t *)(buf + consumed), (uint32_t)header.seq, __ATOMIC_RELEASE);
            }
        }
    }
    PyBuffer_Release(&view);
    PyObject *taken = value != NULL ? Py_True : Py_False;
    return Py_BuildValue("(kiiKONO)", (unsigned long)counter, (int)header.kind, (int)header.flags,
                         (unsigned long long)header.seq, taken, value != NULL ? value : Py_NewRef(Py_None),
                         slept ? Py_True : Py_False);

fail:
    PyBuffer_Release(&view);
    return NULL;
}

/* Add value (a new reference, or NULL with an exception set) to the module as name. */
static int
add_owned(PyObject *module, const char *name, PyObject *value)
{
    if (value == NULL) {
        return -1;
    }
    int status = PyModule_AddObjectRef(module, name, value);
    Py_DECREF(value);
    return status;
}

int
fastpath_add_constants(PyObject *module)
{
    static const struct { const char *name; long value; } ints[] = {
        {"FAST_KIND", FAST_KIND},
        {"FAST_DATA", FAST_DATA},
        {"ENVELOPE_SIZE", (long)sizeof(envelope_header)},
        {"BELL_SLEEPERS", FASTENV_BELL_SLEEPERS},
        {"BELL_BYTES", FASTENV_BELL_BYTES},
        {"MAX_SPIN_US", FASTENV_MAX_SPIN_US},
    };
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        if (PyModule_AddIntConstant(module, ints[i].name, ints[i].value) < 0) {
            return -1;
        }
    }
    /* Where each field of the envelope header lies and how wide it is, in the order of
     * fastenv.shm.arena.ENVELOPE's fields (kind, flags, buffers, skeleton, seq). */
    PyObject *offsets = Py_BuildValue(
        "(nnnnn)", (Py_ssize_t)offsetof(envelope_header, kind), (Py_ssize_t)offsetof(envelope_header, flags),
        (Py_ssize_t)offsetof(envelope_header, buffers), (Py_ssize_t)offsetof(envelope_header, skeleton),
        (Py_ssize_t)offsetof(envelope_header, seq));
    if (add_owned(module, "ENVELOPE_OFFSETS", offsets) < 0) {
        return -1;
    }
    envelope_header probe;
    PyObject *sizes = Py_BuildValue("(nnnnn)", (Py_ssize_t)sizeof probe.kind, (Py_ssize_t)sizeof probe.flags,
                                    (Py_ssize_t)sizeof probe.buffers, (Py_ssize_t)sizeof probe.skeleton,
                                    (Py_ssize_t)sizeof probe.seq);
    return add_owned(module, "ENVELOPE_FIELD_SIZES", sizes);
}
