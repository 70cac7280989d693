/* io_uring IORING_OP_OPENAT: the open happens with no open/openat syscall (section 1).
 * argv[2] "async" sets IOSQE_ASYNC: the open then runs in an io-wq worker thread.
 * Prints the path the kernel opened: OPEN <fd> <path>. */
#include <fcntl.h>
#include <stdio.h>
#include "uring.h"
#include "fd_path.h"

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "/etc/hostname";
    struct uring u;
    if (uring_init(&u)) {
        perror("io_uring_setup");
        return 1;
    }
    struct io_uring_sqe sqe;
    memset(&sqe, 0, sizeof(sqe));
    sqe.opcode = IORING_OP_OPENAT;
    sqe.fd = AT_FDCWD;
    sqe.addr = (unsigned long)path;
    sqe.open_flags = O_RDONLY;
    if (argc > 2 && !strcmp(argv[2], "async"))
        sqe.flags = IOSQE_ASYNC;
    int fd = uring_run(&u, &sqe);
    if (fd < 0) {
        fprintf(stderr, "IORING_OP_OPENAT: %s\n", strerror(-fd));
        return 1;
    }
    char real[4096];
    fd_path(fd, real, sizeof(real));
    printf("OPEN %d %s\n", fd, real);
    return 0;
}
