/* openat2 with RESOLVE_IN_ROOT: "/etc/shadow" is looked up with the directory ROOT as "/", so
 * the request names a file that was not opened. Also RESOLVE_BENEATH of a name through a
 * symlink inside ROOT. argv: ROOT NAME. Prints OPEN <fd> <path the kernel gives the fd>. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "fd_path.h"

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    int root = open(argv[1], O_PATH | O_DIRECTORY);
    struct open_how how;
    memset(&how, 0, sizeof(how));
    how.flags = O_RDONLY;
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    int fd = syscall(SYS_openat2, root, argv[2], &how, sizeof(how));
    if (root < 0 || fd < 0) {
        perror("openat2");
        return 1;
    }
    char real[4096];
    fd_path(fd, real, sizeof(real));
    printf("OPEN %d %s\n", fd, real);
    return 0;
}
