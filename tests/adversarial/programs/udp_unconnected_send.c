#define _GNU_SOURCE
/* Unconnected UDP: sendto, sendmsg or sendmmsg with the destination in each call, no connect()
 * (section 1). No connect syscall happens, yet every datagram is delivered. Two sockets each
 * send `count` rounds to every destination, so a record "once per (process, socket,
 * destination)" is exactly two records per destination.
 * argv: <sendto|sendmsg|sendmmsg> <count> <addr> <port> [<addr> <port> ...]; all addresses of
 * one family (IPv6 ones contain ':'). Prints SEND <call> <sockets> <count> <addr> <port> ... */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define SOCKETS 2
#define MAX_DESTINATIONS 8

static socklen_t destination(const char *addr, int port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (strchr(addr, ':')) {
        struct sockaddr_in6 *s6 = (void *)ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        inet_pton(AF_INET6, addr, &s6->sin6_addr);
        return sizeof(*s6);
    }
    struct sockaddr_in *s4 = (void *)ss;
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    inet_pton(AF_INET, addr, &s4->sin_addr);
    return sizeof(*s4);
}

static long send_one(const char *call, int s, struct sockaddr_storage *ss, socklen_t len)
{
    char payload[] = "x";
    struct iovec iov = {payload, 1};
    struct msghdr m = {.msg_name = ss, .msg_namelen = len, .msg_iov = &iov, .msg_iovlen = 1};
    if (!strcmp(call, "sendmsg"))
        return sendmsg(s, &m, 0);
    if (!strcmp(call, "sendmmsg")) {
        struct mmsghdr mm = {.msg_hdr = m};
        return sendmmsg(s, &mm, 1, 0);
    }
    return sendto(s, payload, 1, 0, (struct sockaddr *)ss, len);
}

int main(int argc, char **argv)
{
    if (argc < 5 || (argc - 3) % 2 || (argc - 3) / 2 > MAX_DESTINATIONS)
        return 2;
    const char *call = argv[1];
    int count = atoi(argv[2]), n = (argc - 3) / 2;
    struct sockaddr_storage ss[MAX_DESTINATIONS];
    socklen_t len[MAX_DESTINATIONS];
    for (int d = 0; d < n; d++)
        len[d] = destination(argv[3 + 2 * d], atoi(argv[4 + 2 * d]), &ss[d]);
    for (int k = 0; k < SOCKETS; k++) {
        int s = socket(ss[0].ss_family, SOCK_DGRAM, 0);
        for (int i = 0; i < count; i++)
            for (int d = 0; d < n; d++)
                if (send_one(call, s, &ss[d], len[d]) < 0) {
                    perror(call);
                    return 1;
                }
    }
    printf("SEND %s %d %d", call, SOCKETS, count);
    for (int d = 0; d < n; d++)
        printf(" %s %s", argv[3 + 2 * d], argv[4 + 2 * d]);
    printf("\n");
    return 0;
}
