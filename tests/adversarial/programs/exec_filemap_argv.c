/* execve() with an argument that lives in a file mapping never touched (section 4): the page
 * is in the page cache but not in this process's page tables until the kernel copies it.
 * argv[1]: a scratch directory. Prints EXEC /bin/echo FILEMAP-ARGUMENT. */
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    const char *base = argc > 1 ? argv[1] : "/tmp";
    char path[4096];
    snprintf(path, sizeof(path), "%s/filemap-%d", base, getpid());
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, "FILEMAP-ARGUMENT", 17) != 17)
        return 1;
    char *arg = mmap(0, 4096, PROT_READ, MAP_PRIVATE, fd, 0);   /* no MAP_POPULATE */
    if (arg == MAP_FAILED)
        return 1;
    puts("EXEC /bin/echo FILEMAP-ARGUMENT");
    fflush(stdout);
    char *child_argv[] = {"/bin/echo", arg, NULL};
    execve("/bin/echo", child_argv, (char *[]){NULL});
    perror("execve");
    return 1;
}
