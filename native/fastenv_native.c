/*
 * fastenv._native -- atomic words and a futex doorbell inside shared buffers.
 *
 * Every function takes a writable, C-contiguous buffer (mmap, the memoryview of
 * a multiprocessing.shared_memory.SharedMemory, a bytearray, ...) and a byte
 * offset naming a 32-bit word inside it.  The offset must be a multiple of 4,
 * the word must lie inside the buffer and its address must be 4-byte aligned;
 * anything else raises ValueError.  The buffer is held (PyBUF_WRITABLE) for
 * the whole call, so it cannot be closed or resized underneath us, and is
 * released on every path out.
 *
 *   load(buf, offset) -> int                 acquire load
 *   store(buf, offset, value) -> None        release store
 *   add(buf, offset, delta) -> int           fetch-add (mod 2**32), returns old
 *   compare_exchange(buf, offset, expected, desired) -> bool
 *   wait(buf, offset, expected, timeout=None, spin_us=DEFAULT_SPIN_US) -> bool
 *   wake(buf, offset, count=1) -> int
 *   ring(buf, offset, sleepers) -> int       add 1, wake only if someone sleeps
 *   spin_readable(fd, spin_us) -> bool       poll a socket without sleeping (GIL released)
 *
 * The futex calls use the shared (non-_PRIVATE) operations because the word
 * normally lives in memory mapped by several processes.
 *
 * Linux only (x86-64 and aarch64 are the tested targets).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <poll.h>

#include "fastenv_wait.h"  /* spin/block waits, futex calls, doorbell_ring */

/* Convert a Python int to a non-negative byte offset. */
static int
parse_offset(PyObject *obj, Py_ssize_t *out)
{
    PyObject *index = PyNumber_Index(obj);
    if (index == NULL) {
        return -1;
    }
    Py_ssize_t value = PyLong_AsSsize_t(index);
    Py_DECREF(index);
    if (value == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
            return -1;
        }
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "offset out of range");
        return -1;
    }
    if (value < 0) {
        PyErr_Format(PyExc_ValueError, "offset must be >= 0, got %zd", value);
        return -1;
    }
    if (value % 4 != 0) {
        PyErr_Format(PyExc_ValueError, "offset must be a multiple of 4, got %zd", value);
        return -1;
    }
    *out = value;
    return 0;
}

/* Convert a Python int in [0, 2**32) to uint32_t. */
static int
parse_u32(PyObject *obj, const char *what, uint32_t *out)
{
    PyObject *index = PyNumber_Index(obj);
    if (index == NULL) {
        return -1;
    }
    int overflow = 0;
    long long value = PyLong_AsLongLongAndOverflow(index, &overflow);
    Py_DECREF(index);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow != 0 || value < 0 || value > (long long)UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "%s must be in [0, 2**32)", what);
        return -1;
    }
    *out = (uint32_t)value;
    return 0;
}

/* Convert any Python int to uint32_t modulo 2**32 (negative deltas wrap). */
static int
parse_u32_wrapping(PyObject *obj, uint32_t *out)
{
    PyObject *index = PyNumber_Index(obj);
    if (index == NULL) {
        return -1;
    }
    unsigned long long value = PyLong_AsUnsignedLongLongMask(index);
    Py_DECREF(index);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    *out = (uint32_t)value;
    return 0;
}

/*
 * Acquire a writable buffer on obj and locate the word at offset.  On success
 * the caller owns view and must PyBuffer_Release() it; on failure nothing is
 * held and an exception is set.
 */
static int
acquire_word(PyObject *obj, Py_ssize_t offset, Py_buffer *view, uint32_t **word)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE) < 0) {
        return -1;
    }
    if (offset > view->len - 4) {
        PyErr_Format(PyExc_ValueError,
                     "offset %zd out of bounds for a 4-byte word in a buffer of %zd bytes",
                     offset, view->len);
        PyBuffer_Release(view);
        return -1;
    }
    char *address = (char *)view->buf + offset;
    if (((uintptr_t)address & 3u) != 0) {
        PyErr_SetString(PyExc_ValueError, "word address is not 4-byte aligned");
        PyBuffer_Release(view);
        return -1;
    }
    *word = (uint32_t *)address;
    return 0;
}

static int
check_nargs(const char *name, Py_ssize_t nargs, Py_ssize_t expected)
{
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "%s() takes exactly %zd arguments (%zd given)",
                     name, expected, nargs);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* word operations                                                          */

static PyObject *
native_load(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t offset;
    Py_buffer view;
    uint32_t *word;
    if (check_nargs("load", nargs, 2) < 0 || parse_offset(args[1], &offset) < 0) {
        return NULL;
    }
    if (acquire_word(args[0], offset, &view, &word) < 0) {
        return NULL;
    }
    uint32_t value = word_load(word);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(value);
}

static PyObject *
native_store(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t offset;
    uint32_t value;
    Py_buffer view;
    uint32_t *word;
    if (check_nargs("store", nargs, 3) < 0 || parse_offset(args[1], &offset) < 0 ||
        parse_u32(args[2], "value", &value) < 0) {
        return NULL;
    }
    if (acquire_word(args[0], offset, &view, &word) < 0) {
        return NULL;
    }
    __atomic_store_n(word, value, __ATOMIC_RELEASE);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyObject *
native_add(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t offset;
    uint32_t delta;
    Py_buffer view;
    uint32_t *word;
    if (check_nargs("add", nargs, 3) < 0 || parse_offset(args[1], &offset) < 0 ||
        parse_u32_wrapping(args[2], &delta) < 0) {
        return NULL;
    }
    if (acquire_word(args[0], offset, &view, &word) < 0) {
        return NULL;
    }
    uint32_t previous = __atomic_fetch_add(word, delta, __ATOMIC_ACQ_REL);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(previous);
}

static PyObject *
native_compare_exchange(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t offset;
    uint32_t expected, desired;
    Py_buffer view;
    uint32_t *word;
    if (check_nargs("compare_exchange", nargs, 4) < 0 || parse_offset(args[1], &offset) < 0 ||
        parse_u32(args[2], "expected", &expected) < 0 ||
        parse_u32(args[3], "desired", &desired) < 0) {
        return NULL;
    }
    if (acquire_word(args[0], offset, &view, &word) < 0) {
        return NULL;
    }
    int swapped = __atomic_compare_exchange_n(word, &expected, desired, 0, __ATOMIC_ACQ_REL,
                                              __ATOMIC_ACQUIRE);
    PyBuffer_Release(&view);
    return PyBool_FromLong(swapped);
}

/* ------------------------------------------------------------------------ */
/* wait / wake                                                              */

PyDoc_STRVAR(wait_doc,
"wait(buf, offset, expected, timeout=None, spin_us=DEFAULT_SPIN_US, sleepers=-1) -> bool\n"
"\n"
"Block while the 32-bit word at offset equals expected.  Returns True as soon\n"
"as it differs (at once if it already does), False when timeout seconds pass.\n"
"timeout None waits forever, 0 (or negative) only checks.  Spins for up to\n"
"spin_us microseconds before sleeping in FUTEX_WAIT.  The GIL is released\n"
"while waiting; signals are handled (Ctrl-C raises KeyboardInterrupt).\n"
"sleepers >= 0 is the offset of a word counting the threads asleep on this\n"
"word (see ring); -1 for none.");

/* A wait's timeout (None: forever) and spin budget, checked: 0, or -1 with a Python exception set. */
static int
parse_wait_budget(PyObject *timeout_obj, Py_ssize_t spin_us, double *timeout, int *forever)
{
    if (timeout_obj != Py_None) {
        *timeout = PyFloat_AsDouble(timeout_obj);
        if (*timeout == -1.0 && PyErr_Occurred()) {
            return -1;
        }
        if (isnan(*timeout)) {
            PyErr_SetString(PyExc_ValueError, "timeout must not be NaN");
            return -1;
        }
        *forever = *timeout > FASTENV_MAX_TIMEOUT_S;
    }
    if (spin_us < 0) {
        PyErr_SetString(PyExc_ValueError, "spin_us must be >= 0");
        return -1;
    }
    return 0;
}

static PyObject *
native_wait(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"buf", "offset", "expected", "timeout", "spin_us", "sleepers", NULL};
    PyObject *buf_obj, *offset_obj, *expected_obj, *timeout_obj = Py_None;
    Py_ssize_t spin_us = FASTENV_DEFAULT_SPIN_US;
    Py_ssize_t sleepers_offset = -1;
    Py_ssize_t offset;
    uint32_t expected;
    int forever = 1;
    double timeout = 0.0;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|Onn:wait", kwlist, &buf_obj,
                                     &offset_obj, &expected_obj, &timeout_obj, &spin_us,
                                     &sleepers_offset)) {
        return NULL;
    }
    if (parse_offset(offset_obj, &offset) < 0 ||
        parse_u32(expected_obj, "expected", &expected) < 0) {
        return NULL;
    }
    if (parse_wait_budget(timeout_obj, spin_us, &timeout, &forever) < 0) {
        return NULL;
    }

    Py_buffer view;
    uint32_t *word;
    if (acquire_word(buf_obj, offset, &view, &word) < 0) {
        return NULL;
    }
    uint32_t *sleepers = NULL;
    if (sleepers_offset >= 0) {
        if (sleepers_offset % 4 != 0 || sleepers_offset > view.len - 4) {
            PyBuffer_Release(&view);
            PyErr_SetString(PyExc_ValueError, "sleepers offset misaligned or out of bounds");
            return NULL;
        }
        sleepers = (uint32_t *)((char *)view.buf + sleepers_offset);
    }
    if (word_load(word) != expected) {
        PyBuffer_Release(&view);
        Py_RETURN_TRUE;
    }
    if (!forever && timeout <= 0.0) {
        PyBuffer_Release(&view);
        Py_RETURN_FALSE;
    }

    int64_t deadline = forever ? INT64_MAX : monotonic_ns() + (int64_t)(timeout * (double)NS_PER_S);
    int changed = wait_for_ring(word, sleepers, expected, spin_us, forever, deadline);
    PyBuffer_Release(&view);
    if (changed < 0) {
        return NULL;
    }
    return PyBool_FromLong(changed);
}

PyDoc_STRVAR(wake_doc,
"wake(buf, offset, count=1) -> int\n"
"\n"
"FUTEX_WAKE up to count waiters blocked on the word (counts above INT_MAX\n"
"mean all).  Returns how many were woken.");

static PyObject *
native_wake(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"buf", "offset", "count", NULL};
    PyObject *buf_obj, *offset_obj, *count_obj = NULL;
    Py_ssize_t offset;
    int count = 1;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|O:wake", kwlist, &buf_obj, &offset_obj,
                                     &count_obj)) {
        return NULL;
    }
    if (parse_offset(offset_obj, &offset) < 0) {
        return NULL;
    }
    if (count_obj != NULL) {
        PyObject *index = PyNumber_Index(count_obj);
        if (index == NULL) {
            return NULL;
        }
        int overflow = 0;
        long long value = PyLong_AsLongLongAndOverflow(index, &overflow);
        Py_DECREF(index);
        if (value == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (overflow < 0 || (overflow == 0 && value < 0)) {
            PyErr_SetString(PyExc_ValueError, "count must be >= 0");
            return NULL;
        }
        count = (overflow > 0 || value > INT_MAX) ? INT_MAX : (int)value;
    }

    Py_buffer view;
    uint32_t *word;
    if (acquire_word(buf_obj, offset, &view, &word) < 0) {
        return NULL;
    }
    long woken = count == 0 ? 0 : futex_wake(word, count);
    int saved_errno = errno;
    PyBuffer_Release(&view);
    if (woken < 0) {
        errno = saved_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(woken);
}

PyDoc_STRVAR(ring_doc,
"ring(buf, offset, sleepers) -> int\n"
"\n"
"Increment the word (a doorbell counter) and wake its sleepers; returns the new\n"
"value.  sleepers is the offset of the word that wait(..., sleepers=) counts\n"
"sleeping waiters in: FUTEX_WAKE (a system call) runs only when it is non-zero,\n"
"so a ring answered by a spinning peer costs two atomic instructions.");

static PyObject *
native_ring(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t offset, sleepers_offset;
    Py_buffer view;
    uint32_t *word;
    if (check_nargs("ring", nargs, 3) < 0 || parse_offset(args[1], &offset) < 0 ||
        parse_offset(args[2], &sleepers_offset) < 0) {
        return NULL;
    }
    if (acquire_word(args[0], offset, &view, &word) < 0) {
        return NULL;
    }
    if (sleepers_offset > view.len - 4) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "sleepers offset out of bounds");
        return NULL;
    }
    uint32_t *sleepers = (uint32_t *)((char *)view.buf + sleepers_offset);
    long woken;
    uint32_t value = doorbell_ring(word, sleepers, &woken);
    int saved_errno = errno;
    PyBuffer_Release(&view);
    if (woken < 0) {
        errno = saved_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromUnsignedLong(value);
}

PyDoc_STRVAR(ring_wait_doc,
"ring_wait(buf, ring_offset, wait_offset, expected, timeout=None, spin_us=DEFAULT_SPIN_US) -> bool\n"
"\n"
"Ring the doorbell at ring_offset, then wait while the word at wait_offset\n"
"equals expected, as wait() does (both doorbells' sleepers words follow their\n"
"counters).  The GIL is released before the ring and the spin follows it in\n"
"the same stretch: a peer thread woken by the ring finds the GIL free, and\n"
"one that answers while this thread spins is seen without a GIL hand-over.\n"
"Returns True when the waited word changed, False on timeout.");

static PyObject *
native_ring_wait(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"buf", "ring_offset", "wait_offset", "expected", "timeout", "spin_us", NULL};
    PyObject *buf_obj, *ring_obj, *wait_obj, *expected_obj, *timeout_obj = Py_None;
    Py_ssize_t spin_us = FASTENV_DEFAULT_SPIN_US;
    Py_ssize_t ring_offset, wait_offset;
    uint32_t expected;
    int forever = 1;
    double timeout = 0.0;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|On:ring_wait", kwlist, &buf_obj, &ring_obj,
                                     &wait_obj, &expected_obj, &timeout_obj, &spin_us)) {
        return NULL;
    }
    if (parse_offset(ring_obj, &ring_offset) < 0 || parse_offset(wait_obj, &wait_offset) < 0 ||
        parse_u32(expected_obj, "expected", &expected) < 0) {
        return NULL;
    }
    if (parse_wait_budget(timeout_obj, spin_us, &timeout, &forever) < 0) {
        return NULL;
    }
    if (spin_us > FASTENV_MAX_SPIN_US) {
        spin_us = FASTENV_MAX_SPIN_US;
    }
    Py_buffer view;
    uint32_t *ring_word;
    if (acquire_word(buf_obj, ring_offset, &view, &ring_word) < 0) {
        return NULL;
    }
    if (ring_offset > view.len - FASTENV_BELL_BYTES || wait_offset > view.len - FASTENV_BELL_BYTES) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "doorbell offset out of bounds");
        return NULL;
    }
    uint32_t *ring_sleepers = (uint32_t *)((char *)view.buf + ring_offset + FASTENV_BELL_SLEEPERS);
    uint32_t *wait_word = (uint32_t *)((char *)view.buf + wait_offset);
    uint32_t *wait_sleepers = (uint32_t *)((char *)view.buf + wait_offset + FASTENV_BELL_SLEEPERS);
    int64_t start = monotonic_ns();
    int64_t deadline = forever ? INT64_MAX : start + (int64_t)(timeout * (double)NS_PER_S);
    long woken;
    wait_status status;
    Py_BEGIN_ALLOW_THREADS
    doorbell_ring(ring_word, ring_sleepers, &woken);
    status = spin_phase(wait_word, expected, start + (int64_t)spin_us * 1000, forever, deadline, NULL, 0);
    Py_END_ALLOW_THREADS
    if (woken < 0) {
        int saved_errno = errno;
        PyBuffer_Release(&view);
        errno = saved_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    int changed;
    if (status == WAIT_CHANGED || status == WAIT_TIMEOUT) {
        changed = status == WAIT_CHANGED;
    }
    else {
        changed = wait_for_ring(wait_word, wait_sleepers, expected, 0, forever, deadline);
    }
    PyBuffer_Release(&view);
    if (changed < 0) {
        return NULL;
    }
    return PyBool_FromLong(changed);
}

PyDoc_STRVAR(spin_readable_doc,
"spin_readable(fd, spin_us) -> bool\n"
"\n"
"Poll the file descriptor (a socket) without sleeping for up to spin_us\n"
"microseconds; True as soon as it is readable (data, EOF or an error), False\n"
"when the budget ran out.  The GIL is released while polling.  The TCP stream\n"
"calls it before a blocking recv: an answer that comes within the budget is\n"
"picked up without the sleep and wake-up of the receiving thread.");

static PyObject *
native_spin_readable(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (check_nargs("spin_readable", nargs, 2) < 0) {
        return NULL;
    }
    int fd = PyObject_AsFileDescriptor(args[0]);
    if (fd < 0) {
        return NULL;
    }
    long spin_us = PyLong_AsLong(args[1]);
    if (spin_us == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (spin_us > FASTENV_MAX_SPIN_US) {
        spin_us = FASTENV_MAX_SPIN_US;
    }
    int ready = 0;
    Py_BEGIN_ALLOW_THREADS
    int64_t end = monotonic_ns() + (int64_t)spin_us * 1000;
    struct pollfd entry = {.fd = fd, .events = POLLIN, .revents = 0};
    for (;;) {
        int found = poll(&entry, 1, 0);
        if (found > 0) {
            ready = 1;
            break;
        }
        if ((found < 0 && errno != EINTR) || monotonic_ns() >= end) {
            break; /* an error is left for the recv that follows to report */
        }
        cpu_relax();
    }
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(ready);
}

/* ------------------------------------------------------------------------ */
/* module                                                                   */

static PyMethodDef native_methods[] = {
    {"load", (PyCFunction)(void (*)(void))native_load, METH_FASTCALL,
     "load(buf, offset) -> int\n\nAtomic acquire load of the uint32 at offset."},
    {"store", (PyCFunction)(void (*)(void))native_store, METH_FASTCALL,
     "store(buf, offset, value) -> None\n\nAtomic release store of a uint32."},
    {"add", (PyCFunction)(void (*)(void))native_add, METH_FASTCALL,
     "add(buf, offset, delta) -> int\n\nAtomic fetch-add modulo 2**32; returns the previous value."},
    {"compare_exchange", (PyCFunction)(void (*)(void))native_compare_exchange, METH_FASTCALL,
     "compare_exchange(buf, offset, expected, desired) -> bool\n\n"
     "Atomically replace the word with desired if it equals expected."},
    {"wait", (PyCFunction)(void (*)(void))native_wait, METH_VARARGS | METH_KEYWORDS, wait_doc},
    {"wake", (PyCFunction)(void (*)(void))native_wake, METH_VARARGS | METH_KEYWORDS, wake_doc},
    {"ring", (PyCFunction)(void (*)(void))native_ring, METH_FASTCALL, ring_doc},
    {"ring_wait", (PyCFunction)(void (*)(void))native_ring_wait, METH_VARARGS | METH_KEYWORDS, ring_wait_doc},
    {"spin_readable", (PyCFunction)(void (*)(void))native_spin_readable, METH_FASTCALL, spin_readable_doc},
    {NULL, NULL, 0, NULL},
};

static int
native_exec(PyObject *module)
{
    /* MAX_SPIN_US mirrors fastenv.shm.futex.MAX_SPIN_US (checked at import). */
    if (PyModule_AddIntConstant(module, "DEFAULT_SPIN_US", FASTENV_DEFAULT_SPIN_US) < 0 ||
        PyModule_AddIntConstant(module, "MAX_SPIN_US", FASTENV_MAX_SPIN_US) < 0) {
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot native_slots[] = {
    {Py_mod_exec, (void *)native_exec},
    {0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fastenv._native",
    .m_doc = "Atomic 32-bit words and futex wait/wake inside shared buffers (fastenv's native part).",
    .m_size = 0,
    .m_methods = native_methods,
    .m_slots = native_slots,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    return PyModuleDef_Init(&native_module);
}
