/* Reopen through /proc/self/fd/N: the path given names a magic link, not the file
 * (section 1). Prints OPEN <fd> <path>. */
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
#include "fd_path.h"

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "/etc/hostname";
    int first = open(path, O_RDONLY);
    char proc[64], real[4096];
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", first);
    int fd = open(proc, O_RDONLY);
    if (first < 0 || fd < 0) {
        perror("open");
        return 1;
    }
    fd_path(fd, real, sizeof(real));
    printf("OPEN %d %s\n", fd, real);
    return 0;
}
