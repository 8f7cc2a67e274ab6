// A SIGBUS handler for guarded file mappings (perennial_mapping_guard.h).
// A fault outside every guarded range goes to whatever handled SIGBUS
// before (the Swift runtime's crash report, or the default: the process
// ends), so a real bug still stops the process as it would have.
#define _GNU_SOURCE
#include "perennial_mapping_guard.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#define SLOTS 8

// A slot is free when its end is 0, and guards only while its start is
// not 0: a guard claims the slot by its end, then sets the start and the
// end; unguarding clears the start, then the end. So a handler never sees
// a range that starts at 0 (which, read between the two stores, took
// faults of other mappings: review finding, helper-87). The handler reads
// only atomics, and mmap is a plain system call on Linux, so it is safe
// in a signal handler.
static _Atomic uintptr_t slot_start[SLOTS], slot_end[SLOTS];
static atomic_int slot_tripped[SLOTS];
static uintptr_t page_size;
static struct sigaction previous;
static pthread_once_t installed = PTHREAD_ONCE_INIT;

static void on_sigbus(int sig, siginfo_t *info, void *context) {
    int saved_errno = errno;
    // (A SIGBUS sent by kill or tgkill is not a fault: never one of ours.)
    int sent = info->si_code <= 0;
    uintptr_t a = (uintptr_t)info->si_addr;
    for (int s = 0; s < SLOTS && !sent; s++) {
        uintptr_t start = atomic_load(&slot_start[s]), end = atomic_load(&slot_end[s]);
        if (start != 0 && a >= start && a < end) {
            void *page = (void *)(a & ~(page_size - 1));
            if (mmap(page, page_size, PROT_READ, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) != MAP_FAILED) {
                atomic_store(&slot_tripped[s], 1);
                errno = saved_errno;
                return;  // the faulting read runs again, on zeros
            }
        }
    }
    // Not ours: the previous handler, under the mask the kernel would have
    // given it (the Swift runtime's crash report needs SIGBUS unblocked in
    // the thread it starts: helper-87).
    sigset_t mask = previous.sa_mask;
    if (previous.sa_flags & SA_NODEFER) sigdelset(&mask, sig); else sigaddset(&mask, sig);
    pthread_sigmask(SIG_SETMASK, &mask, NULL);
    if (previous.sa_flags & SA_SIGINFO) {
        previous.sa_sigaction(sig, info, context);
    } else if (previous.sa_handler == SIG_IGN) {
        // Ignored as before; a fault cannot be ignored, and runs again
        // under the default action.
        if (!sent) signal(SIGBUS, SIG_DFL);
    } else if (previous.sa_handler != SIG_DFL) {
        previous.sa_handler(sig);
    } else {
        // The default action: a fault runs again and ends the process; a
        // sent signal is sent again, and ends it once this handler returns.
        signal(SIGBUS, SIG_DFL);
        if (sent) raise(SIGBUS);
    }
    errno = saved_errno;
}

static void install(void) {
    page_size = (uintptr_t)sysconf(_SC_PAGESIZE);
    struct sigaction sa = {0};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &previous);
}

int pk_mapping_guard(const void *start, size_t length) {
    pthread_once(&installed, install);
    for (int s = 0; s < SLOTS; s++) {
        uintptr_t free_end = 0;
        // Claim the slot by its end (a marker first), then publish the range.
        if (atomic_compare_exchange_strong(&slot_end[s], &free_end, (uintptr_t)1)) {
            atomic_store(&slot_tripped[s], 0);
            atomic_store(&slot_start[s], (uintptr_t)start);
            atomic_store(&slot_end[s], (uintptr_t)start + length);
            return s;
        }
    }
    return -1;
}

int pk_mapping_guard_tripped(int slot) {
    return slot >= 0 && slot < SLOTS && atomic_load(&slot_tripped[slot]);
}

void pk_mapping_unguard(int slot) {
    if (slot < 0 || slot >= SLOTS) return;
    // (Start first: from then on the handler skips the slot; clearing the
    // end frees it for the next guard.)
    atomic_store(&slot_start[slot], 0);
    atomic_store(&slot_end[slot], 0);
}
