/* sendto() on a UDP socket made outside the session and received over a unix socket
 * (SCM_RIGHTS). cgroup sock_addr programs run for the cgroup of the socket's creator, not of
 * the caller, so programs attached to the session's cgroup never see this send (found while
 * prototyping issue 9, same kind as section 1's unconnected sends).
 * argv: <unix socket path> <addr> <port>. Prints SEND received-fd <addr> <port>. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

static int receive_fd(const char *path)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    strncpy(sun.sun_path, path, sizeof(sun.sun_path) - 1);
    int u = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(u, (struct sockaddr *)&sun, sizeof(sun)))
        return -1;
    char byte, control[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {&byte, 1};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                       .msg_controllen = sizeof(control)};
    if (recvmsg(u, &m, 0) != 1)
        return -1;
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    if (!c || c->cmsg_type != SCM_RIGHTS)
        return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof(fd));
    return fd;
}

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
