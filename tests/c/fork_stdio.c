/* fork() while other threads use stdio: glibc's bug 19431 scenario, run against the allocator.
 * One thread forks in a loop. A second reads long lines with getline from a FILE: getline holds
 * that FILE's lock and calls realloc inside it (the lines are long, so the buffer grows through
 * the small, medium and large sizes). A third calls fflush(NULL), which holds stdio's list of
 * all FILEs while it waits for each FILE's lock. A fourth allocates and frees blocks of every
 * tier. An allocator lock held by the forking thread while fork waits for stdio's list lock
 * closes a cycle: the fork waits for the list, the list's holder for the FILE, and the FILE's
 * holder (inside realloc) for the allocator lock. Each child checks that it can allocate and
 * use stdio, then exits. argv[1]: the number of forks (default 100). */
#include "check.h"
#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>

static atomic_int stop;
static FILE *lines;

static void *reader(void *arg) {
    (void)arg;
    unsigned long long got = 0;
    while (!atomic_load(&stop)) {
        rewind(lines);
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        /* A fresh buffer for every other line, so realloc keeps growing through the tiers. */
        for (int i = 0; (n = getline(&line, &cap, lines)) > 0; i++) {
            got += (unsigned long long)n;
            if (i % 2) {
                free(line);
                line = NULL;
                cap = 0;
            }
        }
        free(line);
    }
    CHECK(got > 0);
    return NULL;
}

static void *flusher(void *arg) {
    (void)arg;
    while (!atomic_load(&stop)) fflush(NULL);
    return NULL;
}

static void *churn(void *arg) {
    uint64_t s = (uintptr_t)arg;
    static const size_t sizes[] = {24, 700, 5000, 40000, 200000, 900000, 3u << 20};
    void *keep[16] = {0};
    while (!atomic_load(&stop)) {
        size_t k = rng_next(&s) % 16;
        free(keep[k]);
        size_t n = sizes[rng_next(&s) % (sizeof sizes / sizeof sizes[0])];
        keep[k] = malloc(n);
        CHECK(keep[k] != NULL);
        memset(keep[k], (int)k, n < 4096 ? n : 4096);
    }
    for (int k = 0; k < 16; k++) free(keep[k]);
    return NULL;
}

int main(int argc, char **argv) {
    int forks = argc > 1 ? atoi(argv[1]) : 100;
    lines = tmpfile();
    CHECK(lines != NULL);
    /* Lines of 1 KiB to 1 MiB. */
    for (size_t len = 1024; len <= (1u << 20); len *= 2) {
        for (size_t i = 0; i < len; i++) fputc('a' + (int)(i % 26), lines);
        fputc('\n', lines);
    }
    CHECK(fflush(lines) == 0);

    pthread_t t[3];
    CHECK(pthread_create(&t[0], NULL, reader, NULL) == 0);
    CHECK(pthread_create(&t[1], NULL, flusher, NULL) == 0);
    CHECK(pthread_create(&t[2], NULL, churn, (void *)(uintptr_t)12345) == 0);
    for (int i = 0; i < forks; i++) {
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            void *p = malloc(100000);
            if (p == NULL) _exit(3);
            memset(p, 1, 100000);
            free(p);
            char buf[64];
            snprintf(buf, sizeof buf, "%d", i);
            fflush(NULL);
            _exit(0);
        }
        int status = 0;
        CHECK(waitpid(pid, &status, 0) == pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 3; i++) CHECK(pthread_join(t[i], NULL) == 0);
    printf("fork_stdio ok: %d forks\n", forks);
    return 0;
}
