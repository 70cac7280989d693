/* A fileless exec: /bin/echo copied into a memfd, then run with fexecve (execveat
 * AT_EMPTY_PATH), execveat(fd, "", AT_EMPTY_PATH) directly, or execve("/proc/self/fd/N")
 * (section 4, "for a fileless exec, record enough to identify the binary"). argv[1]: fexecve
 * | execveat | proc. Prints EXEC memfd:innocent fd=<fd> ino=<ino> size=<size> (the memfd's
 * fstat); echo prints MEMFD-EXEC. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    const char *how = argc > 1 ? argv[1] : "fexecve";
    int src = open("/bin/echo", O_RDONLY);
    int fd = memfd_create("innocent", 0);
    struct stat st;
    if (src < 0 || fd < 0 || fstat(src, &st))
        return 1;
    for (off_t off = 0; off < st.st_size;)
        if (sendfile(fd, src, &off, st.st_size - off) <= 0)
            return 1;
    fstat(fd, &st);
    printf("EXEC memfd:innocent fd=%d ino=%lu size=%ld\n", fd, (unsigned long)st.st_ino,
           (long)st.st_size);
    fflush(stdout);
    char *child_argv[] = {"echo", "MEMFD-EXEC", NULL}, *envp[] = {NULL};
    if (!strcmp(how, "execveat")) {
        syscall(SYS_execveat, fd, "", child_argv, envp, AT_EMPTY_PATH);
    } else if (!strcmp(how, "proc")) {
        char proc[64];
        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
        execve(proc, child_argv, envp);
    } else {
        fexecve(fd, child_argv, envp);
    }
    perror(how);
    return 1;
}
