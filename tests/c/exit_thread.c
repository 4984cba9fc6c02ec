/* exit() called from a worker thread while the other threads are in the middle of allocating and
 * freeing. The exit handlers (atexit, then the allocator's own report) run on the worker while
 * the others keep going, until the process ends with the worker's status. */
#include "check.h"
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#define WORKERS 4

static unsigned char *globals[64];
static atomic_long ops;

static void free_globals(void) {
    for (int i = 0; i < 64; i++) {
        CHECK(verify(globals[i], 100 + (size_t)i, (uint64_t)i));
        free(globals[i]);
    }
    /* Allocating inside an exit handler works too. */
    char *s = strdup("exit handler");
    CHECK(s != NULL);
    free(s);
    printf("exit_thread: handlers ran after %ld operations\n", atomic_load(&ops));
}

static void *churn(void *arg) {
    uint64_t s = (uintptr_t)arg * 1000 + 1;
    unsigned char *live[32] = {0};
    size_t sizes[32] = {0};
    for (;;) {
        size_t k = rng_next(&s) % 32;
        if (live[k]) {
            CHECK(verify(live[k], sizes[k], sizes[k]));
            free(live[k]);
        }
        sizes[k] = pick_size(&s) % 20000;
        live[k] = malloc(sizes[k]);
        CHECK(live[k] != NULL);
        fill(live[k], sizes[k], sizes[k]);
        atomic_fetch_add(&ops, 1);
    }
    return NULL;
}

static void *exiter(void *arg) {
    (void)arg;
    while (atomic_load(&ops) < 20000) {
        struct timespec t = {0, 1000 * 1000};
        nanosleep(&t, NULL);
    }
    exit(3);
}

int main(void) {
    for (int i = 0; i < 64; i++) {
        globals[i] = malloc(100 + (size_t)i);
        CHECK(globals[i] != NULL);
        fill(globals[i], 100 + (size_t)i, (uint64_t)i);
    }
    CHECK(atexit(free_globals) == 0);
    pthread_t t;
    for (uintptr_t i = 0; i < WORKERS; i++) CHECK(pthread_create(&t, NULL, churn, (void *)i) == 0);
    CHECK(pthread_create(&t, NULL, exiter, NULL) == 0);
    for (;;) pthread_join(t, NULL); /* the exiter never returns: exit() ends the process */
}
