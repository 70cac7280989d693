/* io_uring IORING_OP_CONNECT of a UDP socket: a connect with no connect syscall (section 1).
 * Prints the destination: CONNECT udp <addr> <port>. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include "uring.h"

int main(int argc, char **argv)
{
    const char *addr = argc > 1 ? argv[1] : "127.0.0.1";
    int port = argc > 2 ? atoi(argv[2]) : 5353;
    struct uring u;
    if (uring_init(&u)) {
        perror("io_uring_setup");
        return 1;
    }
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, addr, &sin.sin_addr);
    struct io_uring_sqe sqe;
    memset(&sqe, 0, sizeof(sqe));
    sqe.opcode = IORING_OP_CONNECT;
    sqe.fd = s;
    sqe.addr = (unsigned long)&sin;
    sqe.off = sizeof(sin);   /* addrlen */
    int res = uring_run(&u, &sqe);
    if (res < 0) {
        fprintf(stderr, "IORING_OP_CONNECT: %s\n", strerror(-res));
        return 1;
    }
    printf("CONNECT udp %s %d\n", addr, port);
    return 0;
}
