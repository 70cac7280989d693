/* sendto() on a UDP socket made outside the session and received over a unix socket
 * (SCM_RIGHTS). cgroup sock_addr programs run for the cgroup of the socket's creator, not of
 * the caller, so programs attached to the session's cgroup never see this send (found while
 * prototyping issue 9, same kind as section 1's unconnected sends).
 * argv: <unix socket path> <addr> <port>. Prints SEND received-fd <addr> <port>. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include "fdpass.h"

int main(int argc, char **argv)
{
    if (argc != 4)
        return 2;
    int fd = receive_fd(argv[1]);
    if (fd < 0) {
        perror("receive fd");
        return 1;
    }
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    inet_pton(AF_INET, argv[2], &sin.sin_addr);
    if (sendto(fd, "x", 1, 0, (struct sockaddr *)&sin, sizeof(sin)) != 1) {
        perror("sendto");
        return 1;
    }
    printf("SEND received-fd %s %s\n", argv[2], argv[3]);
    return 0;
}
