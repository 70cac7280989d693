/* A thread flips an argument while vfork()ed children execve() it (section 2): the child
 * shares the parent's memory, so the flip goes on during the kernel's copy. The exec'd
 * /bin/echo prints the argument it really got (the ground truth, one line per exec, in
 * order). argv[1]: execs (default 148). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char arg[64] = "ARGV-AAAAAAAA";
static volatile int stop;

static void *flip(void *unused)
{
    for (unsigned i = 0; !stop; i++) {
        memcpy(arg + 5, i & 1 ? "BBBBBBBB" : "AAAAAAAA", 8);
        __asm__ volatile("" ::: "memory");   /* every store happens, none is sunk */
    }
    return unused;
}

int main(int argc, char **argv)
{
    int execs = argc > 1 ? atoi(argv[1]) : 148;
    pthread_t t;
    pthread_create(&t, NULL, flip, NULL);
    for (int i = 0; i < execs; i++) {
        char *child_argv[] = {"/bin/echo", arg, NULL};
        pid_t pid = vfork();
        if (pid == 0) {
            execve("/bin/echo", child_argv, (char *[]){NULL});
            _exit(127);
        }
        waitpid(pid, NULL, 0);
    }
    stop = 1;
    pthread_join(t, NULL);
    return 0;
}
