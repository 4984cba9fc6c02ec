/* Allocations from a thread-exit destructor that runs after the allocator's own thread-exit
 * clean-up: the key is created after the allocator's first allocation (so after its key), and
 * glibc runs destructors in key order.
 *
 * Usage: exit_alloc MODE THREADS
 *   work  each thread's destructor makes 200 mallocs (16 B .. 1 KiB), checks them, frees them
 *   none  the same threads and destructor calls, without the mallocs (the baseline the harness
 *         compares the allocator's exit report with: the same blocks live, the same heaps)
 * Threads run in waves of 8, each joined before the next wave starts. Prints
 * "exit_alloc ok: MODE THREADS threads, N destructor mallocs". */
#include "check.h"
#include <pthread.h>
#include <stdatomic.h>

enum { PER_THREAD = 200, WAVE = 8 };

static pthread_key_t key;
static int work;
static atomic_size_t destructor_mallocs;

static void destroy(void *arg) {
    uint64_t s = (uint64_t)(uintptr_t)arg;
    if (!work) return;
    unsigned char *blocks[PER_THREAD];
    size_t sizes[PER_THREAD];
    for (int i = 0; i < PER_THREAD; i++) {
        sizes[i] = 16 + rng_next(&s) % 1009;
        blocks[i] = malloc(sizes[i]);
        CHECK(blocks[i] != NULL);
        fill(blocks[i], sizes[i], (uint64_t)i);
    }
    for (int i = 0; i < PER_THREAD; i++) {
        CHECK(verify(blocks[i], sizes[i], (uint64_t)i));
        free(blocks[i]);
    }
    atomic_fetch_add(&destructor_mallocs, PER_THREAD);
}

static void *worker(void *arg) {
    /* The thread has a heap before its exit: it allocates while it runs. */
    void *p = malloc(64);
    CHECK(p != NULL);
    free(p);
    CHECK(pthread_setspecific(key, arg) == 0);
    return NULL;
}

int main(int argc, char **argv) {
    CHECK(argc == 3);
    work = strcmp(argv[1], "work") == 0;
    CHECK(work || strcmp(argv[1], "none") == 0);
    size_t threads = strtoul(argv[2], NULL, 10);
    CHECK(threads > 0 && threads % WAVE == 0);
    free(malloc(1)); /* the allocator starts (and makes its key) first */
    CHECK(pthread_key_create(&key, destroy) == 0);
    for (size_t w = 0; w < threads / WAVE; w++) {
        pthread_t t[WAVE];
        for (size_t i = 0; i < WAVE; i++)
            CHECK(pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(w * WAVE + i + 1)) == 0);
        for (size_t i = 0; i < WAVE; i++) CHECK(pthread_join(t[i], NULL) == 0);
    }
    CHECK(atomic_load(&destructor_mallocs) == (work ? threads * PER_THREAD : 0));
    char line[128];
    snprintf(line, sizeof line, "exit_alloc ok: %s %zu threads, %zu destructor mallocs", argv[1],
             threads, atomic_load(&destructor_mallocs));
    say(line);
    return 0;
}
