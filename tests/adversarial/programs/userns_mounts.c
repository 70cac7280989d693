/* An ordinary user rearranges the mounts of a mount namespace of its own (unshare -Urm), so
 * that a path names another file than the one read:
 *   bind SRC DST          bind-mount SRC over DST, open DST
 *   pivot NEWROOT PATH    make NEWROOT the root (pivot_root), open PATH in it
 *   chroot NEWROOT PATH   chroot(NEWROOT), open PATH in it
 *   tmpfs DIR NAME        mount a tmpfs over DIR, create DIR/NAME in it
 *   exec SRC DST ARG      bind-mount the binary SRC over DST, exec DST with ARG
 * Prints OPEN <fd> <path the process itself sees> <inode>, or execs. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static int write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY);
    if (fd < 0 || write(fd, text, strlen(text)) < 0) {
        perror(path);
        return -1;
    }
    return close(fd);
}

/* A user namespace in which we are root, and a mount namespace it owns. */
static int own_namespaces(void)
{
    char map[64];
    uid_t uid = getuid();
    gid_t gid = getgid();
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS) < 0) {
        perror("unshare");
        return -1;
    }
    snprintf(map, sizeof(map), "0 %u 1", uid);
    if (write_file("/proc/self/setgroups", "deny") < 0 || write_file("/proc/self/uid_map", map) < 0)
        return -1;
    snprintf(map, sizeof(map), "0 %u 1", gid);
    if (write_file("/proc/self/gid_map", map) < 0)
        return -1;
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) {
        perror("mount private");
        return -1;
    }
    return 0;
}

static int report(int fd)
{
    char proc[64], seen[4096];
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        perror("open");
        return 1;
    }
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(proc, seen, sizeof(seen) - 1);
    seen[n > 0 ? n : 0] = 0;
    printf("OPEN %d %s %lu\n", fd, seen, (unsigned long)st.st_ino);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 4 || own_namespaces() < 0)
        return 2;
    const char *mode = argv[1], *a = argv[2], *b = argv[3];
    if (!strcmp(mode, "bind") || !strcmp(mode, "exec")) {
        if (mount(a, b, NULL, MS_BIND, NULL) < 0) {
            perror("mount --bind");
            return 1;
        }
        if (!strcmp(mode, "bind"))
            return report(open(b, O_RDONLY));
        char *args[] = {(char *)b, argc > 4 ? argv[4] : "", NULL};
        fflush(stdout);
        execv(b, args);
        perror("execv");
        return 1;
    }
    if (!strcmp(mode, "pivot")) {
        char old[4096];
        snprintf(old, sizeof(old), "%s/old", a);
        if (mount(a, a, NULL, MS_BIND | MS_REC, NULL) < 0 || chdir(a) < 0
            || syscall(SYS_pivot_root, ".", "old") < 0 || chdir("/") < 0
            || umount2("/old", MNT_DETACH) < 0) {
            perror("pivot_root");
            return 1;
        }
        return report(open(b, O_RDONLY));
    }
    if (!strcmp(mode, "chroot")) {
        if (chroot(a) < 0 || chdir("/") < 0) {
            perror("chroot");
            return 1;
        }
        return report(open(b, O_RDONLY));
    }
    if (!strcmp(mode, "tmpfs")) {
        char path[4096];
        if (mount("none", a, "tmpfs", 0, NULL) < 0) {
            perror("mount tmpfs");
            return 1;
        }
        snprintf(path, sizeof(path), "%s/%s", a, b);
        return report(open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644));
    }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
