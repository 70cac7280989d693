/* A thread rewrites connect()'s sockaddr while a blocking TCP connect waits (section 2): the
 * kernel copied the address at entry, so the connection goes where the first address said.
 * A listener on 127.0.0.1 with a full accept queue drops the first SYN, so the connect waits
 * for the retransmit (1 s) while the buffer says 10.9.8.7:4444. Prints
 * CONNECT tcp <peer addr> <peer port> (getpeername) and DECOY 10.9.8.7 4444. */
#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static struct sockaddr_in target;
static int listener;

static void *rewrite(void *unused)
{
    usleep(300000);   /* the connect is waiting by now */
    target.sin_port = htons(4444);
    inet_pton(AF_INET, "10.9.8.7", &target.sin_addr);
    usleep(300000);
    close(accept(listener, NULL, NULL));   /* room for the retransmitted SYN */
    return unused;
}

int main(void)
{
    struct sockaddr_in any = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &any.sin_addr);
    listener = socket(AF_INET, SOCK_STREAM, 0);
    socklen_t len = sizeof(any);
    if (bind(listener, (void *)&any, sizeof(any)) || listen(listener, 0)
        || getsockname(listener, (void *)&any, &len))
        return 1;
    int filler = socket(AF_INET, SOCK_STREAM, 0);   /* fills the accept queue (backlog 0) */
    if (connect(filler, (void *)&any, sizeof(any)))
        return 1;
    target = any;
    pthread_t t;
    pthread_create(&t, NULL, rewrite, NULL);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(s, (void *)&target, sizeof(target))) {
        perror("connect");
        return 1;
    }
    pthread_join(t, NULL);
    struct sockaddr_in peer;
    len = sizeof(peer);
    getpeername(s, (void *)&peer, &len);
    char text[32];
    inet_ntop(AF_INET, &peer.sin_addr, text, sizeof(text));
    printf("CONNECT tcp %s %d\nDECOY 10.9.8.7 4444\n", text, ntohs(peer.sin_port));
    return 0;
}
