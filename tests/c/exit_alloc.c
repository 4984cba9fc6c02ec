/* Allocations from a thread-exit destructor that runs after the allocator's own thread-exit
 * clean-up: the key is created after the allocator's first allocation (so after its key), and
 * glibc runs destructors in key order, in up to PTHREAD_DESTRUCTOR_ITERATIONS passes.
 *
 * Usage: exit_alloc MODE THREADS
 *   none        each thread mallocs and frees once while it runs; its destructor runs once and
 *               allocates nothing (the baseline the harness compares the exit report with: the
 *               same blocks live, the same heaps)
 *   first-pass  as none, and the destructor makes 200 mallocs (16 B .. 1 KiB), checks them and
 *               frees them, in glibc's first destructor pass
 *   every-pass  as none, and the destructor re-arms its key to run in every pass, making 50 of
 *               the 200 mallocs in each
 *   last-pass   the thread allocates nothing while it runs; its destructor re-arms its key to
 *               run in every pass and makes all 200 mallocs in the last one: the thread's first
 *               allocation comes after every destructor pass but the last has begun
 * Threads run in waves of 8, each joined before the next wave starts. Prints
 * "exit_alloc ok: MODE THREADS threads, N destructor mallocs". */
#include "check.h"
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>

enum { PER_THREAD = 200, WAVE = 8, PASSES = PTHREAD_DESTRUCTOR_ITERATIONS };
enum mode { NONE, FIRST_PASS, EVERY_PASS, LAST_PASS };

static pthread_key_t key;
static enum mode mode;
static atomic_size_t destructor_mallocs;

/* n mallocs of sizes from the seed, each filled, then checked and freed. */
static void churn(uint64_t seed, int n) {
    unsigned char *blocks[PER_THREAD];
    size_t sizes[PER_THREAD];
    for (int i = 0; i < n; i++) {
        sizes[i] = 16 + rng_next(&seed) % 1009;
        blocks[i] = malloc(sizes[i]);
        CHECK(blocks[i] != NULL);
        fill(blocks[i], sizes[i], (uint64_t)i);
    }
    for (int i = 0; i < n; i++) {
        CHECK(verify(blocks[i], sizes[i], (uint64_t)i));
        free(blocks[i]);
    }
    atomic_fetch_add(&destructor_mallocs, (size_t)n);
}

/* The key's value counts the passes: thread number * 8 + pass (from 1). */
static void destroy(void *arg) {
    uintptr_t v = (uintptr_t)arg, pass = v % 8, seed = v / 8 * PASSES + pass;
    int n = 0;
    switch (mode) {
    case NONE: break;
    case FIRST_PASS: n = PER_THREAD; break;
    case EVERY_PASS: n = PER_THREAD / PASSES; break;
    case LAST_PASS: n = pass == PASSES ? PER_THREAD : 0; break;
    }
    churn(seed, n);
    if ((mode == EVERY_PASS || mode == LAST_PASS) && pass < PASSES)
        CHECK(pthread_setspecific(key, (void *)(v + 1)) == 0);
}

static void *worker(void *arg) {
    if (mode != LAST_PASS) {
        void *p = malloc(64);
        CHECK(p != NULL);
        free(p);
    }
    CHECK(pthread_setspecific(key, (void *)((uintptr_t)arg * 8 + 1)) == 0);
    return NULL;
}

int main(int argc, char **argv) {
    CHECK(argc == 3);
    static const char *const names[] = {"none", "first-pass", "every-pass", "last-pass"};
    mode = (enum mode)4;
    for (int m = 0; m < 4; m++)
        if (strcmp(argv[1], names[m]) == 0) mode = (enum mode)m;
    CHECK(mode <= LAST_PASS);
    CHECK(PER_THREAD % PASSES == 0);
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
    CHECK(atomic_load(&destructor_mallocs) == (mode == NONE ? 0 : threads * PER_THREAD));
    char line[128];
    snprintf(line, sizeof line, "exit_alloc ok: %s %zu threads, %zu destructor mallocs", argv[1],
             threads, atomic_load(&destructor_mallocs));
    say(line);
    return 0;
}
