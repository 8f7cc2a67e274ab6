// Process calls the server's forked snapshot writer needs that Swift cannot
// import: prctl(2) is variadic, and pipe2(2), close_range(2) and
// pthread_setname_np need _GNU_SOURCE.
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <signal.h>
#include <unistd.h>

/// Asks the kernel to send this process SIGKILL when the thread that forked
/// it ends (the server's loop thread: the server stopping or killed).
static inline int perennial_die_with_parent(void) {
    return prctl(PR_SET_PDEATHSIG, SIGKILL);
}

/// Closes every descriptor from `first` to `last` (inclusive).
static inline int perennial_close_range(unsigned int first, unsigned int last) {
    return (int)syscall(SYS_close_range, first, last, 0);
}

/// A pipe whose ends are closed on exec.
static inline int perennial_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
}

/// Names the calling thread (at most 15 bytes; longer names are refused).
static inline int perennial_name_thread(const char *name) {
    return pthread_setname_np(pthread_self(), name);
}

/// The futex system call's number on this architecture: a thread blocked
/// on a lock waits in it.
static inline long perennial_futex_syscall(void) {
    return SYS_futex;
}
