/* A relative open, then chdir elsewhere before anything reads /proc/PID/cwd (section 3): a
 * cwd read later names a directory the file was never in. argv[1] is a scratch directory.
 * Prints OPEN <fd> <path>. */
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
#include "fd_path.h"

int main(int argc, char **argv)
{
    const char *base = argc > 1 ? argv[1] : "/tmp";
    char a[4096], b[4096];
    snprintf(a, sizeof(a), "%s/chdir-a-%d", base, getpid());
    snprintf(b, sizeof(b), "%s/chdir-b-%d", base, getpid());
    mkdir(a, 0700);
    mkdir(b, 0700);
    if (chdir(a))
        return 1;
    int fd = open("file", O_WRONLY | O_CREAT, 0600);
    if (fd < 0 || chdir(b))
        return 1;
    char real[4096];
    fd_path(fd, real, sizeof(real));
    printf("OPEN %d %s\n", fd, real);
    sleep(1);   /* stays in the other directory for a reader of /proc/PID/cwd */
    return 0;
}
