/* A thread flips the path buffer between two names of the same length while the main thread
 * opens it (section 2): user memory read by a recorder at any time is a guess. argv[1] and
 * argv[2]: the two files (same length); argv[3]: opens (default 2000). For every successful
 * open prints OPEN <fd> <path really opened> (fstat against both files), in order. */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char path[4096];
static const char *names[2];
static volatile int stop;

static void *flip(void *unused)
{
    size_t len = strlen(names[0]);
    for (unsigned i = 0; !stop; i++) {
        memcpy(path, names[i & 1], len);
        __asm__ volatile("" ::: "memory");   /* every store happens, none is sunk */
    }
    return unused;
}

int main(int argc, char **argv)
{
    if (argc < 3 || strlen(argv[1]) != strlen(argv[2]))
        return 2;
    names[0] = argv[1];
    names[1] = argv[2];
    int opens = argc > 3 ? atoi(argv[3]) : 2000;
    struct stat st[2];
    if (stat(names[0], &st[0]) || stat(names[1], &st[1]))
        return 1;
    strcpy(path, names[0]);
    pthread_t t;
    pthread_create(&t, NULL, flip, NULL);
    for (int i = 0; i < opens; i++) {
        int fd = open(path, O_RDONLY);
        if (fd < 0)
            continue;
        struct stat now;
        fstat(fd, &now);
        printf("OPEN %d %s\n", fd, now.st_ino == st[0].st_ino ? names[0] : names[1]);
        close(fd);
    }
    stop = 1;
    pthread_join(t, NULL);
    return 0;
}
