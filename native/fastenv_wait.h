/*
 * fastenv_wait.h -- the doorbell's waiting and ringing, shared by fastenv._native
 * (the doorbell functions) and fastenv._layout (the shared-memory fast path,
 * which waits for and rings doorbells around its packing).
 *
 * A doorbell is a 32-bit sequence counter followed by a 32-bit count of the
 * threads asleep on it in FUTEX_WAIT (see fastenv/shm/doorbell.py).  Nothing
 * here touches Python objects; wait_for_ring releases the GIL while it waits
 * (include Python.h first).
 */

#ifndef FASTENV_WAIT_H
#define FASTENV_WAIT_H

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
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

/* Spin budgets are capped at this many microseconds (a second of spinning is
 * never what anyone wants); fastenv.shm.futex.MAX_SPIN_US is the fallback's cap. */
#define FASTENV_MAX_SPIN_US 1000000

/* A doorbell's words (fastenv.shm.doorbell): the sleepers word lies this many
 * bytes after the counter, and the doorbell takes this many bytes in all. */
#define FASTENV_BELL_SLEEPERS 4
#define FASTENV_BELL_BYTES 8

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

typedef enum {
    WAIT_CHANGED,  /* the word differs from expected */
    WAIT_TIMEOUT,  /* the deadline passed */
    WAIT_CONTINUE, /* spin budget or signal slice used up: check signals, block again */
    WAIT_EINTR,    /* a signal interrupted the futex wait */
    WAIT_ERROR,    /* futex failed; errno in *err */
    WAIT_POKED,    /* the poke word changed (see wait_for_ring_or_poke) */
} wait_status;

/* Whether a poke word (NULL: none) no longer reads poke_seen. */
static inline int
poked(uint32_t *poke, uint32_t poke_seen)
{
    return poke != NULL && __atomic_load_n(poke, __ATOMIC_SEQ_CST) != poke_seen;
}

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
spin_phase(uint32_t *word, uint32_t expected, int64_t spin_end, int forever, int64_t deadline, uint32_t *poke,
           uint32_t poke_seen)
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
        if (poked(poke, poke_seen)) {
            return WAIT_POKED;
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
 * slice is over, a signal arrives, or the poke word (when not NULL) changes.
 * Loops over spurious wakeups.  No GIL.
 *
 * A poke does not change the word the futex waits on, so a poker wakes the
 * word's sleepers after changing the poke word; one that wakes between our
 * last check and the syscall is missed, and the poker wakes again until its
 * poke is taken (fastenv.session.envthread). */
static wait_status
block_phase(uint32_t *word, uint32_t *sleepers, uint32_t expected, int forever, int64_t deadline, int *err,
            uint32_t *poke, uint32_t poke_seen)
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
            if (poked(poke, poke_seen)) {
                __atomic_sub_fetch(sleepers, 1u, __ATOMIC_SEQ_CST);
                return WAIT_POKED;
            }
            rc = futex_wait(word, expected, &rel);
            int saved = errno;
            __atomic_sub_fetch(sleepers, 1u, __ATOMIC_SEQ_CST);
            errno = saved;
        } else {
            if (poked(poke, poke_seen)) {
                return WAIT_POKED;
            }
            rc = futex_wait(word, expected, &rel);
        }
        if (poked(poke, poke_seen)) {
            return WAIT_POKED;
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

/* Wait while *word == expected: spin for up to spin_us, then block in
 * FUTEX_WAIT (counted in *sleepers when not NULL) until deadline (ignored when
 * forever); spin_us is capped at a second.  Call with the GIL held: it is released while waiting and taken
 * back to run the Python signal handlers between slices (Ctrl-C raises
 * KeyboardInterrupt).  With a poke word (not NULL), it also stops waiting once
 * *poke no longer reads poke_seen; *slept (when not NULL) is set to 1 once it
 * blocks in the kernel (the spin budget ran out).  Returns 1 when the word changed, 0 on timeout or a poke, -1 with
 * a Python exception set.  The caller keeps the buffer holding word alive. */
static int
wait_for_ring_or_poke(uint32_t *word, uint32_t *sleepers, uint32_t expected, Py_ssize_t spin_us, int forever,
                      int64_t deadline, uint32_t *poke, uint32_t poke_seen, int *slept)
{
    if (spin_us > FASTENV_MAX_SPIN_US) {
        spin_us = FASTENV_MAX_SPIN_US;
    }
    int64_t start = monotonic_ns();
    int spinning = spin_us > 0;
    wait_status status;
    int err = 0;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        if (spinning) {
            status = spin_phase(word, expected, start + (int64_t)spin_us * 1000, forever, deadline, poke, poke_seen);
        }
        else {
            if (slept != NULL) {
                *slept = 1;
            }
            status = block_phase(word, sleepers, expected, forever, deadline, &err, poke, poke_seen);
        }
        Py_END_ALLOW_THREADS
        spinning = 0;
        if (status == WAIT_CHANGED || status == WAIT_TIMEOUT || status == WAIT_POKED) {
            return status == WAIT_CHANGED;
        }
        if (status == WAIT_ERROR) {
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        /* EINTR, end of the spin budget or of a signal slice: run the Python
         * signal handlers (KeyboardInterrupt for SIGINT) and carry on. */
        if (PyErr_CheckSignals() < 0) {
            return -1;
        }
    }
}

/* wait_for_ring_or_poke without a poke word. */
static inline int
wait_for_ring(uint32_t *word, uint32_t *sleepers, uint32_t expected, Py_ssize_t spin_us, int forever,
              int64_t deadline)
{
    return wait_for_ring_or_poke(word, sleepers, expected, spin_us, forever, deadline, NULL, 0, NULL);
}

/* Add 1 to the doorbell counter and wake its sleepers, if any.  Returns the new
 * counter value; *woken gets FUTEX_WAKE's result (0 when nobody slept, -1 with
 * errno set on failure).  seq_cst pairs with block_phase's announcement: a
 * waiter either counted itself in before our load (and is woken) or checks
 * the counter after our add (and does not sleep). */
static inline uint32_t
doorbell_ring(uint32_t *word, uint32_t *sleepers, long *woken)
{
    uint32_t value = __atomic_add_fetch(word, 1u, __ATOMIC_SEQ_CST);
    *woken = 0;
    if (__atomic_load_n(sleepers, __ATOMIC_SEQ_CST) != 0) {
        *woken = futex_wake(word, INT_MAX);
    }
    return value;
}

#endif /* FASTENV_WAIT_H */
