/* Failed execs (not an issue-9 technique: the record a refused exec must still make).
 * Tries a missing file and a file that is no executable format, each with arguments.
 * argv[1]: a scratch directory. Prints FAIL <errno> <path> for each. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

static void try(const char *path)
{
    char *argv[] = {(char *)path, "FAILED-ARG-1", "FAILED-ARG-2", NULL};
    execve(path, argv, (char *[]){NULL});
    printf("FAIL %d %s\n", errno, path);
}

int main(int argc, char **argv)
{
    const char *base = argc > 1 ? argv[1] : "/tmp";
    char missing[4096], junk[4096];
    snprintf(missing, sizeof(missing), "%s/missing-%d", base, getpid());
    snprintf(junk, sizeof(junk), "%s/junk-%d", base, getpid());
    int fd = open(junk, O_WRONLY | O_CREAT | O_TRUNC, 0700);
    if (fd < 0 || write(fd, "\x7f" "ELFjunk", 8) != 8)
        return 1;
    close(fd);
    try(missing);
    try(junk);
    return 0;
}
