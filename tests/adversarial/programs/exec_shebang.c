/* execve() of a "#!" script: the program that runs is the interpreter (section 4).
 * argv[1]: a scratch directory. Prints EXEC <script> INTERP /bin/sh; the script prints
 * SCRIPT-RAN. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    const char *base = argc > 1 ? argv[1] : "/tmp";
    char script[4096];
    snprintf(script, sizeof(script), "%s/script-%d", base, getpid());
    int fd = open(script, O_WRONLY | O_CREAT | O_TRUNC, 0700);
    const char text[] = "#!/bin/sh\necho SCRIPT-RAN\n";
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
        return 1;
    close(fd);
    printf("EXEC %s INTERP /bin/sh\n", script);
    fflush(stdout);
    execve(script, (char *[]){script, NULL}, (char *[]){NULL});
    perror("execve");
    return 1;
}
