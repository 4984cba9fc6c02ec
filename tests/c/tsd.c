/* Thread-exit destructors that allocate and free. hakmem registers its own thread-exit clean-up
 * first (its key has the lowest number, so glibc runs it first); the destructors here then run on
 * a thread whose heap is already torn down: they free blocks of this thread and of others, and
 * allocate again, several destructor rounds deep. */
#include "check.h"
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#define THREADS 16
#define ROUNDS 4

struct value {
    int rounds_left;
    size_t n;
    unsigned char *block;
    unsigned char *foreign; /* allocated by another thread */
};

static pthread_key_t key;
static _Atomic(unsigned char *) handoff[THREADS];
static atomic_int destructor_runs;

static void destroy(void *arg) {
    struct value *v = arg;
    CHECK(verify(v->block, v->n, v->n));
    free(v->block);
    if (v->foreign) {
        CHECK(verify(v->foreign, 300, 300));
        free(v->foreign);
    }
    atomic_fetch_add(&destructor_runs, 1);
    if (v->rounds_left > 0) {
        /* Allocate again at thread exit and ask for another destructor round. */
        struct value *next = malloc(sizeof *next);
        CHECK(next != NULL);
        next->rounds_left = v->rounds_left - 1;
        next->n = v->n * 2 + 1;
        next->block = malloc(next->n);
        CHECK(next->block != NULL);
        fill(next->block, next->n, next->n);
        next->foreign = NULL;
        CHECK(pthread_setspecific(key, next) == 0);
    }
    free(v);
}

static void *worker(void *arg) {
    uintptr_t id = (uintptr_t)arg;
    /* Give a block to the next thread, and take the one the previous thread left. */
    unsigned char *gift = malloc(300);
    CHECK(gift != NULL);
    fill(gift, 300, 300);
    atomic_store(&handoff[(id + 1) % THREADS], gift);
    uint64_t s = id + 1;
    void *scratch[200];
    for (int i = 0; i < 200; i++) {
        scratch[i] = malloc(pick_size(&s));
        CHECK(scratch[i] != NULL);
    }
    for (int i = 0; i < 200; i += 2) free(scratch[i]); /* half stay live: the heap has work */
    struct value *v = malloc(sizeof *v);
    CHECK(v != NULL);
    v->rounds_left = ROUNDS - 1;
    v->n = 1000 + id;
    v->block = malloc(v->n);
    CHECK(v->block != NULL);
    fill(v->block, v->n, v->n);
    v->foreign = NULL;
    CHECK(pthread_setspecific(key, v) == 0);
    for (int i = 1; i < 200; i += 2) free(scratch[i]);
    return NULL;
}

static void *late_taker(void *arg) {
    (void)arg;
    /* Runs after the givers exited: frees blocks whose owners are gone. */
    struct value *v = malloc(sizeof *v);
    CHECK(v != NULL);
    v->rounds_left = 0;
    v->n = 10;
    v->block = malloc(10);
    CHECK(v->block != NULL);
    fill(v->block, 10, 10);
    v->foreign = atomic_exchange(&handoff[0], NULL);
    CHECK(v->foreign != NULL);
    CHECK(pthread_setspecific(key, v) == 0);
    return NULL;
}

int main(void) {
    CHECK(PTHREAD_DESTRUCTOR_ITERATIONS >= ROUNDS);
    free(malloc(1)); /* hakmem is initialised (its key made) before ours */
    CHECK(pthread_key_create(&key, destroy) == 0);
    for (int wave = 0; wave < 3; wave++) {
        pthread_t t[THREADS];
        for (uintptr_t i = 0; i < THREADS; i++) CHECK(pthread_create(&t[i], NULL, worker, (void *)i) == 0);
        for (int i = 0; i < THREADS; i++) CHECK(pthread_join(t[i], NULL) == 0);
        pthread_t late;
        CHECK(pthread_create(&late, NULL, late_taker, NULL) == 0);
        CHECK(pthread_join(late, NULL) == 0);
        for (int i = 1; i < THREADS; i++) {
            unsigned char *g = atomic_exchange(&handoff[i], NULL);
            CHECK(g != NULL && verify(g, 300, 300));
            free(g);
        }
    }
    CHECK(atomic_load(&destructor_runs) == 3 * (THREADS * ROUNDS + 1));
    printf("tsd ok: %d destructor runs\n", atomic_load(&destructor_runs));
    return 0;
}
