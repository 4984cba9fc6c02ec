/* A single-threaded program that forks from a signal handler. A timer's signal lands at any
 * moment, often inside free or malloc of a medium or large block, that is, while this thread holds
 * an allocator lock; the handler forks, and the child exits at once (_exit is async-signal-safe).
 * glibc takes no malloc lock at fork when the process has one thread, so this completes there;
 * an allocator that takes its own locks in its fork handler waits for ever on the lock its own
 * thread holds. argv[1]: the number of forks (default 100). */
#include "check.h"
#include <signal.h>
#include <sys/time.h>
#include <sys/wait.h>

static volatile sig_atomic_t forks, failed;

static void on_signal(int sig) {
    (void)sig;
    int saved = errno;
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status))
        failed = 1;
    forks++;
    errno = saved;
}

int main(int argc, char **argv) {
    int want = argc > 1 ? atoi(argv[1]) : 100;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    CHECK(sigaction(SIGPROF, &sa, NULL) == 0);
    /* CPU time of this process: the signal lands where the program spends it, in the allocator. */
    struct itimerval every = {{0, 500}, {0, 500}};
    CHECK(setitimer(ITIMER_PROF, &every, NULL) == 0);
    static const size_t sizes[] = {48, 3000, 40000, 300000, 900000, 3u << 20};
    void *keep[8] = {0};
    uint64_t s = 99;
    unsigned long long ops = 0;
    while (forks < want) {
        size_t k = rng_next(&s) % 8;
        free(keep[k]);
        keep[k] = malloc(sizes[rng_next(&s) % (sizeof sizes / sizeof sizes[0])]);
        CHECK(keep[k] != NULL);
        ops++;
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    CHECK(setitimer(ITIMER_PROF, &off, NULL) == 0);
    for (int k = 0; k < 8; k++) free(keep[k]);
    CHECK(!failed);
    /* A signal may still land between the loop's test and the timer's end: one fork more. */
    CHECK(forks >= want);
    printf("fork_signal ok: %d forks\n", want);
    return 0;
}
