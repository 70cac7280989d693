/* Build with gcc -m32 -static: a 32-bit program's open (section 1). Prints OPEN <fd> <path>. */
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
#include "fd_path.h"

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "/etc/hostname";
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        perror("open");
        return 1;
    }
    char real[4096];
    fd_path(fd, real, sizeof(real));
    printf("OPEN %d %s\n", fd, real);
    return 0;
}
