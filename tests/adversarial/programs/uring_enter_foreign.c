/* io_uring_enter() on a ring set up by a process outside the session, taken from it with
 * pidfd_getfd() (root may; SCM_RIGHTS refuses io_uring fds on this kernel): refusing
 * io_uring_setup alone would let such a ring run requests unrecorded, so io_uring_enter is
 * refused too. argv: <pid> <fd> of the ring's owner. Prints ENTERED <ret>, or says why not. */
#include <linux/io_uring.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    int pidfd = syscall(SYS_pidfd_open, atoi(argv[1]), 0);
    int ring = pidfd < 0 ? -1 : syscall(SYS_pidfd_getfd, pidfd, atoi(argv[2]), 0);
    if (ring < 0) {
        perror("pidfd_getfd");
        return 1;
    }
    long r = syscall(__NR_io_uring_enter, ring, 0, 0, IORING_ENTER_GETEVENTS, NULL, 0);
    if (r < 0) {
        perror("io_uring_enter");
        return 1;
    }
    printf("ENTERED %ld\n", r);
    return 0;
}
