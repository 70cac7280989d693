/* Receives one file descriptor over a unix socket (SCM_RIGHTS) from a process outside the
 * session: how a socket or an io_uring made elsewhere gets into it. */
#ifndef TECHNIQUE_FDPASS_H
#define TECHNIQUE_FDPASS_H
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

/* Connects to the unix socket at `path` and returns the fd sent there, or -1. */
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
#endif
