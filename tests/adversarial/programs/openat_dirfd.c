/* openat(dirfd, "name") with dirfd opened elsewhere (section 3). argv[1] "fd:N" uses an
 * inherited directory fd N instead of opening one (an fd from outside a chroot).
 * Prints OPEN <fd> <path>. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "fd_path.h"

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "/etc";
    const char *name = argc > 2 ? argv[2] : "hostname";
    int dirfd = strncmp(dir, "fd:", 3) ? open(dir, O_RDONLY | O_DIRECTORY) : atoi(dir + 3);
    int fd = openat(dirfd, name, O_RDONLY);
    if (dirfd < 0 || fd < 0) {
        perror("open");
        return 1;
    }
    char real[4096];
    fd_path(fd, real, sizeof(real));
    printf("OPEN %d %s\n", fd, real);
    return 0;
}
