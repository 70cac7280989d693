/* What the kernel says an fd of ours is: the path /proc/self/fd/N links to (the technique
 * programs print it, so the tests can compare the log with what was really opened). */
#ifndef FD_PATH_H
#define FD_PATH_H

#include <stdio.h>
#include <unistd.h>

static void fd_path(int fd, char *out, size_t size)
{
    char proc[64];
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(proc, out, size - 1);
    out[n > 0 ? n : 0] = 0;
}

#endif
