/* Build with gcc -m32 -static: a UDP connect through socketcall(SYS_CONNECT), the 32-bit
 * multiplexer (section 1). Prints CONNECT udp <addr> <port>. */
#include <arpa/inet.h>
#include <linux/net.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    const char *addr = argc > 1 ? argv[1] : "127.0.0.1";
    int port = argc > 2 ? atoi(argv[2]) : 5353;
    long s = syscall(SYS_socketcall, SYS_SOCKET,
                     (unsigned long[]){AF_INET, SOCK_DGRAM, 0});
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, addr, &sin.sin_addr);
    long r = syscall(SYS_socketcall, SYS_CONNECT,
                     (unsigned long[]){s, (unsigned long)&sin, sizeof(sin)});
    if (s < 0 || r < 0) {
        perror("socketcall");
        return 1;
    }
    printf("CONNECT udp %s %d\n", addr, port);
    return 0;
}
