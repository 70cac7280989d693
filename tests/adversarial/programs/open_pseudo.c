/* Opens of files that have no path in any directory: a pipe and a memfd reopened through
 * /proc/self/fd/N, and an O_TMPFILE file (how the capture names them; not an issue-9
 * technique itself). argv[1]: a directory for O_TMPFILE. Prints OPEN <fd> <d_path> each. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
#include "fd_path.h"

static void report(int fd)
{
    char real[4096];
    fd_path(fd, real, sizeof(real));
    printf("OPEN %d %s\n", fd, real);
}

static int reopen(int fd, int flags)
{
    char proc[64];
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    return open(proc, flags);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "/tmp";
    int p[2];
    if (pipe(p))
        return 1;
    int fd = reopen(p[0], O_RDONLY | O_NONBLOCK);
    if (fd < 0)
        return 1;
    report(fd);
    int memfd = memfd_create("pseudo-name", 0);
    fd = reopen(memfd, O_RDWR);
    if (fd < 0)
        return 1;
    report(fd);
    fd = open(dir, O_TMPFILE | O_RDWR, 0600);
    if (fd < 0)
        return 1;
    report(fd);
    return 0;
}
