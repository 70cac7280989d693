/* Open through a symlink to a file: the file opened is the target (section 3). argv[1] is a
 * scratch directory. Prints OPEN <fd> <path>. */
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
#include "fd_path.h"

int main(int argc, char **argv)
{
    const char *base = argc > 1 ? argv[1] : "/tmp";
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/symlink-%d", base, getpid());
    if (mkdir(dir, 0700) || chdir(dir))
        return 1;
    close(open("target", O_WRONLY | O_CREAT, 0600));
    if (symlink("target", "innocent-name"))
        return 1;
    int fd = open("innocent-name", O_RDONLY);
    if (fd < 0) {
        perror("open");
        return 1;
    }
    char real[4096];
    fd_path(fd, real, sizeof(real));
    printf("OPEN %d %s\n", fd, real);
    return 0;
}
