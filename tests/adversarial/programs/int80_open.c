/* A 64-bit program that opens a file through the 32-bit entry (int $0x80): no syscall
 * tracepoint fires for it (section 1). The path must be below 4 GiB for the 32-bit ABI, so it
 * lives in a MAP_32BIT page. Prints OPEN <fd> <path>. */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define I386_NR_OPEN 5

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "/etc/hostname";
    char *low = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT,
                     -1, 0);
    if (low == MAP_FAILED)
        return 1;
    strncpy(low, path, 4095);
    long fd;
    __asm__ volatile("int $0x80" : "=a"(fd) : "a"(I386_NR_OPEN), "b"(low), "c"(0), "d"(0)
                     : "memory");
    if (fd < 0) {
        fprintf(stderr, "int 0x80 open: %s\n", strerror(-fd));
        return 1;
    }
    char proc[64], real[4096];
    snprintf(proc, sizeof(proc), "/proc/self/fd/%ld", fd);
    ssize_t n = readlink(proc, real, sizeof(real) - 1);
    real[n > 0 ? n : 0] = 0;
    printf("OPEN %ld %s\n", fd, real);
    return 0;
}
