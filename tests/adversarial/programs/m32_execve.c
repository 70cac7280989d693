/* Build with gcc -m32 -static: a 32-bit program's execve (section 1). Execs
 * /bin/echo M32-EXEC-<pid> and prints, before, EXEC /bin/echo M32-EXEC-<pid>. */
#include <stdio.h>
#include <unistd.h>

int main(void)
{
    char arg[64];
    snprintf(arg, sizeof(arg), "M32-EXEC-%d", getpid());
    printf("EXEC /bin/echo %s\n", arg);
    fflush(stdout);
    char *argv[] = {"/bin/echo", arg, NULL};
    execve("/bin/echo", argv, (char *[]){NULL});
    perror("execve");
    return 1;
}
