/* fork() while other threads allocate and free blocks of every tier (small, medium and large). In
 * each child only the forking thread survives: the child checks and frees blocks the vanished
 * threads left behind (their heaps are abandoned), allocates a lot itself, starts threads of its
 * own, and exits normally. One fork is made from a worker thread rather than main. argv[1]: the
 * forks made from main (default 12). */
#include "check.h"
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WORKERS 3
#define SLOTS 256

/* Bytes of a block written and checked: enough to catch a block handed out twice, without
 * spending the run writing megabytes. */
#define FILLED 16384

struct block {
    size_t n; /* the bytes filled */
    uint64_t seed;
    unsigned char data[];
};

static _Atomic(struct block *) slots[WORKERS][SLOTS];
static atomic_int stop;
/* Blocks the workers have put into their slots so far. */
static atomic_long made;

static struct block *make(uint64_t *s) {
    /* Mostly small; now and then medium (pick_size's largest) or a large 3 MiB block. */
    uint64_t r = rng_next(s);
    size_t n = r % 512 == 0 ? (3u << 20) + (size_t)(r >> 40) % 4096
               : r % 64 == 0 ? pick_size(s)
                             : pick_size(s) % 8192;
    struct block *b = malloc(sizeof *b + n);
    CHECK(b != NULL);
    b->n = n < FILLED ? n : FILLED;
    b->seed = rng_next(s);
    fill(b->data, b->n, b->seed);
    return b;
}

static void check_and_free(struct block *b) {
    CHECK(verify(b->data, b->n, b->seed));
    free(b);
}

static void *churn(void *arg) {
    uintptr_t w = (uintptr_t)arg;
    uint64_t s = 0x1234567ULL + w * 0x9E3779B97F4A7C15ULL;
    while (!atomic_load(&stop)) {
        size_t k = rng_next(&s) % SLOTS;
        struct block *old = atomic_exchange(&slots[w][k], make(&s));
        atomic_fetch_add(&made, 1);
        if (old) check_and_free(old);
    }
    return NULL;
}

static void *child_thread(void *arg) {
    uint64_t s = (uintptr_t)arg;
    for (int i = 0; i < 5000; i++) check_and_free(make(&s));
    return NULL;
}

/* The child's work: adopt what the dead threads left, allocate, use threads, exit. */
static void child(int round) {
    size_t taken = 0;
    for (int w = 0; w < WORKERS; w++)
        for (int k = 0; k < SLOTS; k++) {
            struct block *b = atomic_exchange(&slots[w][k], NULL);
            if (b) {
                check_and_free(b);
                taken++;
            }
        }
    uint64_t s = 77 + (uint64_t)round;
    struct block *mine[1000];
    for (int i = 0; i < 1000; i++) mine[i] = make(&s);
    pthread_t t[2];
    for (uintptr_t i = 0; i < 2; i++) CHECK(pthread_create(&t[i], NULL, child_thread, (void *)(i + 1)) == 0);
    for (int i = 0; i < 1000; i++) check_and_free(mine[i]);
    for (int i = 0; i < 2; i++) CHECK(pthread_join(t[i], NULL) == 0);
    CHECK(taken > 0);
    exit(0);
}

static void fork_and_wait(int round) {
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) child(round);
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "fork round %d: child failed (status 0x%x)\n", round, status);
        abort();
    }
}

static void *forking_worker(void *arg) {
    (void)arg;
    fork_and_wait(1000);
    return NULL;
}

int main(int argc, char **argv) {
    int forks = argc > 1 ? atoi(argv[1]) : 12;
    pthread_t t[WORKERS];
    for (uintptr_t i = 0; i < WORKERS; i++) CHECK(pthread_create(&t[i], NULL, churn, (void *)i) == 0);
    struct timespec pause = {0, 3 * 1000 * 1000};
    /* Each child checks that the vanished workers left blocks behind: on a busy machine the
     * workers may not have run yet, so wait until they have filled some slots. */
    while (atomic_load(&made) < WORKERS * 16) nanosleep(&pause, NULL);
    for (int round = 0; round < forks; round++) {
        nanosleep(&pause, NULL);
        fork_and_wait(round);
    }
    pthread_t f;
    CHECK(pthread_create(&f, NULL, forking_worker, NULL) == 0);
    CHECK(pthread_join(f, NULL) == 0);
    atomic_store(&stop, 1);
    for (int i = 0; i < WORKERS; i++) CHECK(pthread_join(t[i], NULL) == 0);
    for (int w = 0; w < WORKERS; w++)
        for (int k = 0; k < SLOTS; k++) {
            struct block *b = atomic_exchange(&slots[w][k], NULL);
            if (b) check_and_free(b);
        }
    printf("fork ok: %d children\n", forks + 1);
    return 0;
}
