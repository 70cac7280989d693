/* open() of a FIFO blocks until a writer comes; meanwhile a thread rewrites the path buffer
 * to name a decoy file, then opens the FIFO for writing (section 2). A recorder that reads
 * the path from user memory when the open returns logs the decoy, which was never opened: the
 * decoy is made with mknod(), not open(), so no open of it exists at all. argv[1]: a scratch
 * directory. Prints OPEN <fd> <path really opened> and DECOY <decoy path>. */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "fd_path.h"

static char path[4096], fifo[4096], decoy[4096];

static void *writer(void *unused)
{
    usleep(200000);   /* the reader's open is blocked by now */
    strcpy(path, decoy);
    close(open(fifo, O_WRONLY));
    return unused;
}

int main(int argc, char **argv)
{
    const char *base = argc > 1 ? argv[1] : "/tmp";
    snprintf(fifo, sizeof(fifo), "%s/fifo-%d", base, getpid());
    snprintf(decoy, sizeof(decoy), "%s/deco-%d", base, getpid());
    if (mkfifo(fifo, 0600))
        return 1;
    if (mknod(decoy, S_IFREG | 0600, 0))
        return 1;
    strcpy(path, fifo);
    pthread_t t;
    pthread_create(&t, NULL, writer, NULL);
    int fd = open(path, O_RDONLY);
    pthread_join(t, NULL);
    if (fd < 0)
        return 1;
    char real[4096];
    fd_path(fd, real, sizeof(real));
    printf("OPEN %d %s\nDECOY %s\n", fd, real, decoy);
    return 0;
}
