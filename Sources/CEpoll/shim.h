// Linux's epoll for the load tool (Glibc's Swift module leaves it out): the
// bench client waits on many connections without scanning them all per wait.
#include <sys/epoll.h>
