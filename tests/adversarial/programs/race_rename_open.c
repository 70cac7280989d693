/* A thread renames a file back and forth between two names while the main thread opens one
 * of them (section 2, "a rename of the file during an open"). argv[1]: a scratch directory;
 * argv[2]: opens (default 2000). Prints FILE <ino> <name 1> <name 2>, then OPEN <fd> for each
 * successful open: every record of that inode must name one of the two. */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char one[4096], two[4096];
static volatile int stop;

static void *flip(void *unused)
{
    while (!stop) {
        rename(one, two);
        rename(two, one);
    }
    return unused;
}

int main(int argc, char **argv)
{
    const char *base = argc > 1 ? argv[1] : "/tmp";
    int opens = argc > 2 ? atoi(argv[2]) : 2000;
    snprintf(one, sizeof(one), "%s/rename-one-%d", base, getpid());
    snprintf(two, sizeof(two), "%s/rename-two-%d", base, getpid());
    close(open(one, O_WRONLY | O_CREAT, 0600));
    struct stat st;
    stat(one, &st);
    printf("FILE %lu %s %s\n", (unsigned long)st.st_ino, one, two);
    pthread_t t;
    pthread_create(&t, NULL, flip, NULL);
    for (int i = 0; i < opens; i++) {
        int fd = open(one, O_RDONLY);
        if (fd >= 0) {
            printf("OPEN %d\n", fd);
            close(fd);
        }
    }
    stop = 1;
    pthread_join(t, NULL);
    return 0;
}
