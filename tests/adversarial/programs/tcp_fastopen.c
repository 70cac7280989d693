/* A TCP connection opened by sendto(MSG_FASTOPEN): no connect() call at all. argv[1..2]: a
 * listening address. Prints CONNECT tcp <addr> <port>. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#ifndef MSG_FASTOPEN
#define MSG_FASTOPEN 0x20000000
#endif

int main(int argc, char **argv)
{
    const char *addr = argc > 1 ? argv[1] : "127.0.0.1";
    int port = argc > 2 ? atoi(argv[2]) : 80;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, addr, &sin.sin_addr);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (sendto(s, "hello", 5, MSG_FASTOPEN, (struct sockaddr *)&sin, sizeof(sin)) < 0) {
        perror("sendto MSG_FASTOPEN");
        return 1;
    }
    printf("CONNECT tcp %s %d\n", addr, port);
    return 0;
}
