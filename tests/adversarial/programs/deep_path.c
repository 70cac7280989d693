/* A file below N nested directories (built with mkdirat/openat, so no path is ever longer
 * than one name): where a bounded kernel walk gives out. argv[1]: scratch directory; argv[2]:
 * depth (default 100); argv[3]: length of each directory name (default 1, at most 255).
 * Prints OPEN <fd> DEPTH <n> NAMELEN <len> (the kernel's d_path of it is longer than PATH_MAX
 * when depth * (len + 1) > 4095, so none is printed). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    const char *base = argc > 1 ? argv[1] : "/tmp";
    int depth = argc > 2 ? atoi(argv[2]) : 100;
    int len = argc > 3 ? atoi(argv[3]) : 1;
    if (len < 1 || len > 255)
        return 2;
    char name[256];
    memset(name, 'd', len);
    name[len] = 0;
    char top[4096];
    snprintf(top, sizeof(top), "%s/deep-%d", base, getpid());
    if (mkdir(top, 0700))
        return 1;
    int dir = open(top, O_RDONLY | O_DIRECTORY);
    for (int i = 0; i < depth; i++) {
        if (mkdirat(dir, name, 0700))
            return 1;
        int next = openat(dir, name, O_RDONLY | O_DIRECTORY);
        close(dir);
        dir = next;
    }
    int fd = openat(dir, "leaf", O_WRONLY | O_CREAT, 0600);
    if (fd < 0)
        return 1;
    printf("OPEN %d DEPTH %d NAMELEN %d TOP %s\n", fd, depth, len, top);
    return 0;
}
