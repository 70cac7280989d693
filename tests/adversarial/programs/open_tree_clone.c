/* open_tree(OPEN_TREE_CLONE) of a directory, then openat() relative to the detached mount:
 * the path given is only the last name (section 1). Prints OPEN <fd> <path as the kernel
 * names it> (d_path of a file in a detached mount is relative to that mount). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/mount.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "fd_path.h"

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "/etc";
    const char *name = argc > 2 ? argv[2] : "hostname";
    int tree = syscall(SYS_open_tree, AT_FDCWD, dir, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
    if (tree < 0) {
        perror("open_tree");
        return 1;
    }
    int fd = openat(tree, name, O_RDONLY);
    if (fd < 0) {
        perror("openat");
        return 1;
    }
    char real[4096];
    fd_path(fd, real, sizeof(real));
    printf("OPEN %d %s/%s %s\n", fd, dir, name, real);
    return 0;
}
