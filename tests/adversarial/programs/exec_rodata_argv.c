/* execve() whose filename and argument are string literals in a .rodata page nothing has
 * touched (section 4): at sys_enter_execve that page is not mapped in yet, so a recorder
 * reading user memory there gets nothing; the kernel's own copy faults it in. 64 KiB of
 * padding on each side keeps fault-around (fault_around_bytes, 64 KiB) off it.
 * Prints EXEC /bin/echo RODATA-ARGUMENT. */
#include <stdio.h>
#include <unistd.h>

#define ALONE __attribute__((used, aligned(65536), section(".rodata.alone")))
static const char before[65536] ALONE = {1};
static const char filename[65536] ALONE = "/bin/echo";
static const char argument[65536] ALONE = "RODATA-ARGUMENT";
static const char after[65536] ALONE = {1};

int main(void)
{
    puts("EXEC /bin/echo RODATA-ARGUMENT");
    fflush(stdout);
    char *argv[] = {(char *)filename, (char *)argument, NULL};
    execve(filename, argv, (char *[]){NULL});
    perror("execve");
    return 1;
}
