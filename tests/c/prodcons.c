/* Producers allocate blocks (malloc, calloc, realloc, posix_memalign), fill them with a pattern
 * and hand them to consumers on other threads, which check every byte, sometimes reallocate, and
 * free. Most frees are therefore remote (by a thread that does not own the block). */
#include "check.h"
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <string.h>

#define PRODUCERS 4
#define CONSUMERS 4
#define PER_PRODUCER 30000
#define QCAP 1024

struct item {
    unsigned char *p;
    size_t n;
    uint64_t seed;
};

static struct item queue[QCAP];
static size_t q_head, q_len, done_producers;
static pthread_mutex_t q_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t q_not_empty = PTHREAD_COND_INITIALIZER;
static pthread_cond_t q_not_full = PTHREAD_COND_INITIALIZER;
static size_t consumed;

static void push(struct item it) {
    pthread_mutex_lock(&q_lock);
    while (q_len == QCAP) pthread_cond_wait(&q_not_full, &q_lock);
    queue[(q_head + q_len) % QCAP] = it;
    q_len++;
    pthread_cond_signal(&q_not_empty);
    pthread_mutex_unlock(&q_lock);
}

/* Returns 0 once every producer is done and the queue is empty. */
static int pop(struct item *it) {
    pthread_mutex_lock(&q_lock);
    while (q_len == 0 && done_producers < PRODUCERS) pthread_cond_wait(&q_not_empty, &q_lock);
    if (q_len == 0) {
        pthread_mutex_unlock(&q_lock);
        return 0;
    }
    *it = queue[q_head];
    q_head = (q_head + 1) % QCAP;
    q_len--;
    pthread_cond_signal(&q_not_full);
    pthread_mutex_unlock(&q_lock);
    return 1;
}

static void *producer(void *arg) {
    uint64_t s = 0x9E3779B97F4A7C15ULL * ((uintptr_t)arg + 1);
    /* Blocks this producer keeps for a while, so that slabs are partly full when others free. */
    struct item keep[64] = {0};
    for (size_t i = 0; i < PER_PRODUCER; i++) {
        struct item it = {0};
        it.n = pick_size(&s);
        it.seed = rng_next(&s);
        switch (it.seed % 8) {
        case 0: {
            it.p = calloc(1, it.n);
            CHECK(it.p != NULL);
            for (size_t k = 0; k < it.n; k++) CHECK(it.p[k] == 0);
            break;
        }
        case 1: {
            void *q = NULL;
            size_t align = (size_t)16 << (it.seed >> 8) % 9; /* 16 .. 4096 */
            CHECK(posix_memalign(&q, align, it.n) == 0);
            CHECK(((uintptr_t)q & (align - 1)) == 0);
            it.p = q;
            break;
        }
        case 2: {
            /* Grow a block through realloc from a small start. */
            it.p = malloc(8);
            CHECK(it.p != NULL);
            fill(it.p, 8, it.seed);
            unsigned char *g = realloc(it.p, it.n);
            if (it.n == 0) {
                CHECK(g == NULL); /* realloc(p, 0) frees p */
                it.p = malloc(0);
                CHECK(it.p != NULL);
            } else {
                CHECK(g != NULL);
                CHECK(verify(g, it.n < 8 ? it.n : 8, it.seed));
                it.p = g;
            }
            break;
        }
        default:
            it.p = malloc(it.n);
            CHECK(it.p != NULL);
        }
        CHECK(((uintptr_t)it.p & 15) == 0);
        CHECK(malloc_usable_size(it.p) >= it.n);
        fill(it.p, it.n, it.seed);
        size_t slot = (size_t)(it.seed >> 32) % 64;
        if (it.seed % 3 == 0) {
            /* Swap with a kept block; hand the older one over. */
            struct item old = keep[slot];
            keep[slot] = it;
            if (old.p == NULL) continue;
            it = old;
        }
        push(it);
    }
    for (size_t k = 0; k < 64; k++) {
        if (keep[k].p == NULL) continue;
        CHECK(verify(keep[k].p, keep[k].n, keep[k].seed));
        push(keep[k]);
    }
    pthread_mutex_lock(&q_lock);
    done_producers++;
    pthread_cond_broadcast(&q_not_empty);
    pthread_mutex_unlock(&q_lock);
    return NULL;
}

static void *consumer(void *arg) {
    uint64_t s = 0xD1B54A32D192ED03ULL * ((uintptr_t)arg + 7);
    size_t mine = 0;
    struct item it;
    while (pop(&it)) {
        CHECK(verify(it.p, it.n, it.seed));
        if (rng_next(&s) % 4 == 0) {
            size_t n2 = pick_size(&s) + 1;
            unsigned char *q = realloc(it.p, n2);
            CHECK(q != NULL);
            CHECK(verify(q, it.n < n2 ? it.n : n2, it.seed));
            CHECK(malloc_usable_size(q) >= n2);
            memset(q, 0xA5, n2);
            it.p = q;
        }
        free(it.p);
        mine++;
    }
    pthread_mutex_lock(&q_lock);
    consumed += mine;
    pthread_mutex_unlock(&q_lock);
    return NULL;
}

int main(void) {
    pthread_t p[PRODUCERS], c[CONSUMERS];
    for (uintptr_t i = 0; i < CONSUMERS; i++)
        CHECK(pthread_create(&c[i], NULL, consumer, (void *)i) == 0);
    for (uintptr_t i = 0; i < PRODUCERS; i++)
        CHECK(pthread_create(&p[i], NULL, producer, (void *)i) == 0);
    for (size_t i = 0; i < PRODUCERS; i++) pthread_join(p[i], NULL);
    for (size_t i = 0; i < CONSUMERS; i++) pthread_join(c[i], NULL);
    CHECK(consumed == (size_t)PRODUCERS * PER_PRODUCER);
    printf("prodcons ok: %zu blocks checked\n", consumed);
    return 0;
}
