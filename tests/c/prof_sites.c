// Heap profiling under LD_PRELOAD (the C lane of tests/tests/profile.rs): three call sites hold
// 60%, 30% and 10% of about 256 MiB in blocks of 16 B to 1 MiB, across two threads, while a
// fourth site allocates and frees three times as much. The blocks stay live at exit, so the
// exit profile (HAKMEM_PROF_FILE) is the leak view the test reads.
// With "bad": also frees a pointer that is no block and frees a sampled block twice (run with
// HAKMEM_INVALID_FREE=warn: both are reported, and the program goes on).
#include "check.h"
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LIVE (256u << 20)
#define MAX_BLOCKS 200000

struct half {
    uint64_t seed;
    void **keep;
    size_t n;
};

static uint64_t next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

// Half uniform over 16 B..1 MiB, half log-uniform over 16 B..4 KiB (as the Rust lane's).
static size_t size_of_next(uint64_t *s) {
    uint64_t r = next(s);
    if ((r & 1) == 0)
        return 16 + (size_t)((r >> 1) % ((1u << 20) - 16));
    unsigned e = 4 + (unsigned)((r >> 1) % 8);
    size_t lo = (size_t)1 << e;
    return lo + (size_t)((r >> 8) % lo);
}

__attribute__((noinline)) static void *site_sixty(size_t n) {
    void *p = malloc(n);
    memset(p, 1, n < 64 ? n : 64);
    return p;
}
__attribute__((noinline)) static void *site_thirty(size_t n) {
    void *p = malloc(n);
    memset(p, 2, n < 64 ? n : 64);
    return p;
}
__attribute__((noinline)) static void *site_ten(size_t n) {
    void *p = malloc(n);
    memset(p, 3, n < 64 ? n : 64);
    return p;
}
__attribute__((noinline)) static void site_churn(size_t n) {
    char *p = malloc(n);
    p[0] = 4;
    __asm__ volatile("" : : "r"(p) : "memory");
    free(p);
}

static void *work(void *arg) {
    struct half *h = arg;
    size_t target[3] = {LIVE / 2 * 6 / 10, LIVE / 2 * 3 / 10, LIVE / 2 / 10};
    size_t held[3] = {0, 0, 0};
    size_t churned = 0;
    void *(*site[3])(size_t) = {site_sixty, site_thirty, site_ten};
    while (held[0] < target[0] || held[1] < target[1] || held[2] < target[2]) {
        for (int i = 0; i < 3; i++) {
            if (held[i] < target[i]) {
                size_t n = size_of_next(&h->seed);
                CHECK(h->n < MAX_BLOCKS);
                h->keep[h->n++] = site[i](n);
                held[i] += n;
            }
        }
        while (churned < 3 * (held[0] + held[1] + held[2])) {
            size_t n = size_of_next(&h->seed);
            site_churn(n);
            churned += n;
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    static struct half h[2] = {{0x123456789abcdef1ull, 0, 0}, {0x0fedcba987654321ull, 0, 0}};
    for (int i = 0; i < 2; i++) {
        h[i].keep = calloc(MAX_BLOCKS, sizeof(void *));
        CHECK(h[i].keep != NULL);
    }
    pthread_t t;
    CHECK(pthread_create(&t, NULL, work, &h[1]) == 0);
    work(&h[0]);
    CHECK(pthread_join(t, NULL) == 0);
    if (argc > 1 && strcmp(argv[1], "bad") == 0) {
        int local;
        free(&local);
        void *big = malloc(8u << 20);
        free(big);
        free(big);
    }
    printf("prof_sites ok: %zu blocks held\n", h[0].n + h[1].n);
    return 0;
}
