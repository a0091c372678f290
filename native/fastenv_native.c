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

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/*
 * Default spin budget before blocking in FUTEX_WAIT, in microseconds.
 *
 * Measured on the 2-core development VM (AMD EPYC, KVM guest, CPython 3.11)
 * with benchmarks/bench_doorbell.py --sweep: two processes ping-pong through
 * two Doorbells, 10,000 round trips, median of 3 runs (the machine was shared
 * with other jobs, hence the medians).  "idle peer" answers at once; "busy
 * peer" spends 200 us of CPU per round trip (an env step) -- there spinning
 * cannot help and only costs CPU.
 *
 *              idle peer: RT us      busy peer (200 us work)
 *   spin_us     p50     p99          p50 RT us   CPU us / RT (both procs)
 *         0    17.0    48.0            243          258
 *         2     1.3    19.5              -          259
 *         5     2.8     3.8              -          265
 *        10     2.3     3.1              -          273
 *        20     2.2     3.2            218          266
 *        50     2.2     3.2              -          306
 *       100     1.9     2.9            214          347
 *
 * Without a spin each wait costs a futex sleep + wake-up (~8 us each way in
 * this VM); a spin that covers the peer's turnaround (~1-2 us of Python) cuts
 * the round trip ~8x and the CPU ~3x (no syscalls).  Budgets of 2-10 us are
 * hit-and-miss (single runs stayed at the no-spin latency or had a 40 us
 * p99); 20 us was the smallest value with a ~2 us p50 in all three runs
 * (p99 2.9-14.7 us), while costing a slow peer under 10 us of extra CPU per
 * round trip (50 us: +50 us, 100 us: +90 us).  Hence 20.
 */
#define FASTENV_DEFAULT_SPIN_US 20

/* Within the spin budget, poll with only a pause instruction for this long,
 * then poll with sched_yield() (see spin_phase). */
#ifndef FASTENV_PAUSE_SPIN_NS
#define FASTENV_PAUSE_SPIN_NS 3000
#endif

/* A blocked wait wakes at least this often to run PyErr_CheckSignals().  It
 * only matters if a signal lands in the few instructions between our last
 * check and the futex syscall (FUTEX_WAIT has no sigmask variant); normally
 * the signal interrupts the syscall with EINTR and is handled at once. */
#define FASTENV_SIGNAL_SLICE_NS 1000000000LL

/* Timeouts above this many seconds are treated as "forever" (keeps the
 * nanosecond deadline inside int64_t). */
#define FASTENV_MAX_TIMEOUT_S 1e9

#define NS_PER_S 1000000000LL

/* ------------------------------------------------------------------------ */
/* small helpers                                                            */

static inline uint32_t
word_load(uint32_t *word)
{
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}

static inline void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

static inline int64_t
monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static inline long
futex_wait(uint32_t *word, uint32_t expected, const struct timespec *rel)
{
    return syscall(SYS_futex, word, FUTEX_WAIT, expected, rel, NULL, 0);
}

static inline long
futex_wake(uint32_t *word, int count)
{
    return syscall(SYS_futex, word, FUTEX_WAKE, count, NULL, NULL, 0);
}

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

typedef enum {
    WAIT_CHANGED,  /* the word differs from expected */
    WAIT_TIMEOUT,  /* the deadline passed */
    WAIT_CONTINUE, /* spin budget or signal slice used up: check signals, block again */
    WAIT_EINTR,    /* a signal interrupted the futex wait */
    WAIT_ERROR,    /* futex failed; errno in *err */
} wait_status;

/* Spin until the word changes or spin_end / deadline passes.  No GIL.
 *
 * The first FASTENV_PAUSE_SPIN_NS poll the word with a pause (x86) / yield
 * (aarch64) instruction between reads; after that each poll also calls
 * sched_yield(), which costs ~1 us when nothing else wants this core but
 * hands the core over when something does.  On a 2-core machine the peer we
 * wait for is often runnable on *our* core; a pure pause loop would then burn
 * the whole budget before the peer gets to run.  Measured with a third
 * process keeping one core busy: pause-only spinning gave round trips of
 * ~2.5x spin_us in a share of runs (53 us at spin_us=20, 115 us at 50);
 * with the sched_yield() phase no run was slower than not spinning at all
 * (15-30 us), and the idle-machine latency is unchanged (~2 us). */
static wait_status
spin_phase(uint32_t *word, uint32_t expected, int64_t spin_end, int forever, int64_t deadline)
{
    int64_t end = (!forever && deadline < spin_end) ? deadline : spin_end;
    int64_t pause_end = monotonic_ns() + FASTENV_PAUSE_SPIN_NS;
    for (;;) {
        for (int i = 0; i < 8; i++) {
            if (word_load(word) != expected) {
                return WAIT_CHANGED;
            }
            cpu_relax();
        }
        int64_t now = monotonic_ns();
        if (now >= end) {
            if (word_load(word) != expected) {
                return WAIT_CHANGED;
            }
            return (!forever && now >= deadline) ? WAIT_TIMEOUT : WAIT_CONTINUE;
        }
        if (now >= pause_end) {
            sched_yield();
        }
    }
}

/* Block in FUTEX_WAIT until the word changes, the deadline passes, one signal
 * slice is over, or a signal arrives.  Loops over spurious wakeups.  No GIL. */
static wait_status
block_phase(uint32_t *word, uint32_t *sleepers, uint32_t expected, int forever, int64_t deadline, int *err)
{
    int64_t slice_end = monotonic_ns() + FASTENV_SIGNAL_SLICE_NS;
    for (;;) {
        if (word_load(word) != expected) {
            return WAIT_CHANGED;
        }
        int64_t now = monotonic_ns();
        if (!forever && now >= deadline) {
            return WAIT_TIMEOUT;
        }
        if (now >= slice_end) {
            return WAIT_CONTINUE;
        }
        int64_t end = (!forever && deadline < slice_end) ? deadline : slice_end;
        int64_t remaining = end - now;
        struct timespec rel = {
            .tv_sec = (time_t)(remaining / NS_PER_S),
            .tv_nsec = (long)(remaining % NS_PER_S),
        };
        long rc;
        if (sleepers != NULL) {
            /* Announce the sleep before the final check (seq_cst on both sides,
             * see native_ring): a ringer either sees us and wakes us, or rang
             * before our check and the futex returns EAGAIN at once. */
            __atomic_add_fetch(sleepers, 1u, __ATOMIC_SEQ_CST);
            rc = futex_wait(word, expected, &rel);
            int saved = errno;
            __atomic_sub_fetch(sleepers, 1u, __ATOMIC_SEQ_CST);
            errno = saved;
        } else {
            rc = futex_wait(word, expected, &rel);
        }
        if (rc == 0) {
            continue; /* woken: re-check the word (may be spurious) */
        }
        switch (errno) {
        case EAGAIN:    /* the word was != expected on entry */
        case ETIMEDOUT: /* the loop re-checks word, deadline and slice */
            continue;
        case EINTR:
            return WAIT_EINTR;
        default:
            *err = errno;
            return WAIT_ERROR;
        }
    }
}

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
    if (timeout_obj != Py_None) {
        timeout = PyFloat_AsDouble(timeout_obj);
        if (timeout == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
        if (isnan(timeout)) {
            PyErr_SetString(PyExc_ValueError, "timeout must not be NaN");
            return NULL;
        }
        forever = timeout > FASTENV_MAX_TIMEOUT_S;
    }
    if (spin_us < 0) {
        PyErr_SetString(PyExc_ValueError, "spin_us must be >= 0");
        return NULL;
    }
    if (spin_us > 1000000) {
        spin_us = 1000000; /* a second of spinning is never what anyone wants */
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

    int64_t start = monotonic_ns();
    int64_t deadline = forever ? INT64_MAX : start + (int64_t)(timeout * (double)NS_PER_S);
    int spinning = spin_us > 0;
    wait_status status;
    int err = 0;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        if (spinning) {
            status = spin_phase(word, expected, start + (int64_t)spin_us * 1000, forever, deadline);
        }
        else {
            status = block_phase(word, sleepers, expected, forever, deadline, &err);
        }
        Py_END_ALLOW_THREADS
        spinning = 0;
        if (status == WAIT_CHANGED || status == WAIT_TIMEOUT || status == WAIT_ERROR) {
            break;
        }
        /* EINTR, end of the spin budget or of a signal slice: run the Python
         * signal handlers (KeyboardInterrupt for SIGINT) and carry on. */
        if (PyErr_CheckSignals() < 0) {
            PyBuffer_Release(&view);
            return NULL;
        }
    }
    PyBuffer_Release(&view);
    if (status == WAIT_ERROR) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyBool_FromLong(status == WAIT_CHANGED);
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
    uint32_t value = __atomic_add_fetch(word, 1u, __ATOMIC_SEQ_CST);
    long woken = 0;
    if (__atomic_load_n(sleepers, __ATOMIC_SEQ_CST) != 0) {
        woken = futex_wake(word, INT_MAX);
    }
    int saved_errno = errno;
    PyBuffer_Release(&view);
    if (woken < 0) {
        errno = saved_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromUnsignedLong(value);
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
    if (spin_us > 1000000) {
        spin_us = 1000000;
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
    {"spin_readable", (PyCFunction)(void (*)(void))native_spin_readable, METH_FASTCALL, spin_readable_doc},
    {NULL, NULL, 0, NULL},
};

static int
native_exec(PyObject *module)
{
    if (PyModule_AddIntConstant(module, "DEFAULT_SPIN_US", FASTENV_DEFAULT_SPIN_US) < 0) {
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
