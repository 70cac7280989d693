/* Execs by the less usual ways, each of /bin/echo (or a copy) with one marker argument:
 *   thread          execv from a second thread (the kernel makes it the process's leader)
 *   vfork           vfork, then execv in the child that shares our memory
 *   opath           an O_PATH fd of /bin/echo, run by execveat(fd, "", AT_EMPTY_PATH)
 *   deleted COPY    COPY (a copy of echo) opened, unlinked, then run with fexecve
 *   memfd-slash     a memfd named "/usr/bin/sudo", run with fexecve
 *   dirfd           execveat(an O_PATH fd of /bin, "echo", 0): a name relative to a dirfd
 * Prints EXEC <mode> <pid that execs> <fd or 0> <inode of the binary>, then echo prints the
 * marker. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static char *marker_argv[] = {"echo", NULL, NULL};
static char *no_env[] = {NULL};

static void *exec_from_thread(void *unused)
{
    (void)unused;
    execve("/bin/echo", marker_argv, no_env);
    perror("execve in a thread");
    return NULL;
}

static void announce(const char *mode, int fd)
{
    struct stat st;
    if (fd >= 0 ? fstat(fd, &st) : stat("/bin/echo", &st))
        st.st_ino = 0;
    printf("EXEC %s %d %d %lu\n", mode, getpid(), fd < 0 ? 0 : fd, (unsigned long)st.st_ino);
    fflush(stdout);
}

static int copy_into(int to, const char *from)
{
    int src = open(from, O_RDONLY);
    struct stat st;
    if (src < 0 || fstat(src, &st))
        return -1;
    for (off_t off = 0; off < st.st_size;)
        if (sendfile(to, src, &off, st.st_size - off) <= 0)
            return -1;
    return close(src);
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "thread";
    static char marker[64];
    snprintf(marker, sizeof(marker), "%s-EXEC", mode);
    marker_argv[1] = marker;
    if (!strcmp(mode, "thread")) {
        pthread_t thread;
        announce(mode, -1);
        pthread_create(&thread, NULL, exec_from_thread, NULL);
        pthread_join(thread, NULL);
        return 1;
    }
    if (!strcmp(mode, "vfork")) {
        pid_t child = vfork();
        if (child == 0) {
            execve("/bin/echo", marker_argv, no_env);
            _exit(127);
        }
        int status = 0;
        waitpid(child, &status, 0);
        printf("EXEC %s %d 0 0\n", mode, child);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
    }
    int fd = -1;
    if (!strcmp(mode, "opath")) {
        fd = open("/bin/echo", O_PATH);
    } else if (!strcmp(mode, "deleted") && argc > 2) {
        fd = open(argv[2], O_RDONLY);
        if (fd >= 0 && unlink(argv[2]) < 0)
            return 1;
    } else if (!strcmp(mode, "memfd-slash")) {
        fd = memfd_create("/usr/bin/sudo", 0);
        if (fd >= 0 && copy_into(fd, "/bin/echo") < 0)
            return 1;
    } else if (!strcmp(mode, "dirfd")) {
        fd = open("/bin", O_PATH | O_DIRECTORY);
        if (fd < 0) {
            perror(mode);
            return 1;
        }
        announce(mode, -1);
        printf("DIRFD %d\n", fd);
        fflush(stdout);
        syscall(SYS_execveat, fd, "echo", marker_argv, no_env, 0);
        perror("execveat");
        return 1;
    }
    if (fd < 0) {
        perror(mode);
        return 1;
    }
    announce(mode, fd);
    syscall(SYS_execveat, fd, "", marker_argv, no_env, AT_EMPTY_PATH);
    perror("execveat");
    return 1;
}
