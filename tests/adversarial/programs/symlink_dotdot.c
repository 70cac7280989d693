/* "lnk/../x" where lnk is a symlink into a/b: the kernel resolves ".." from a/b, so it opens
 * a/x, while a textual normpath gives ./x (section 3). argv[1] is a scratch directory.
 * Creates both a/x and ./x so that a wrong answer names a real file. Prints OPEN <fd> <path>. */
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
#include "fd_path.h"

int main(int argc, char **argv)
{
    const char *base = argc > 1 ? argv[1] : "/tmp";
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/dotdot-%d", base, getpid());
    if (mkdir(dir, 0700) || chdir(dir) || mkdir("a", 0700) || mkdir("a/b", 0700)
        || symlink("a/b", "lnk"))
        return 1;
    close(open("a/x", O_WRONLY | O_CREAT, 0600));
    close(open("x", O_WRONLY | O_CREAT, 0600));
    int fd = open("lnk/../x", O_RDONLY);
    if (fd < 0) {
        perror("open");
        return 1;
    }
    char real[4096];
    fd_path(fd, real, sizeof(real));
    printf("OPEN %d %s\n", fd, real);
    return 0;
}
