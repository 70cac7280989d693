/* io_uring_enter() on a ring made outside the session and received over a unix socket
 * (SCM_RIGHTS): refusing io_uring_setup alone would let this ring run requests unrecorded,
 * so io_uring_enter is refused too. argv[1]: the unix socket path. Prints ENTERED <ret>, or
 * says why not. */
#include <linux/io_uring.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "fdpass.h"

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    int ring = receive_fd(argv[1]);
    if (ring < 0) {
        perror("receive fd");
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
