/* Frees a block twice, in the way argv[1] names, after naming it on stdout as "pointer 0x...".
 * The allocator must report it; with HAKMEM_INVALID_FREE=warn the program goes on, checks that
 * the free lists were not corrupted (no block is handed out twice, no block overlaps another),
 * and prints "survived".
 *
 * Usage: double_free MODE [J]
 *   simple        malloc a; free a; free a
 *   interleaved   free a; free b; free a
 *   remote        a freed by another thread (a remote free), then by its owner
 *   remote-twice  thread B frees a, b, then a again, all remote: main, a's owner, waits alive
 *   abandoned     a and b allocated by a thread that has exited (its superslab abandoned by
 *                 malloc_trim, b keeping it in use); main frees a twice
 *   parked        as abandoned without malloc_trim: the exited thread's heap is parked
 *                 whole, and main's frees are remote frees into it
 *   large         a 4 MiB block (its region is gone after the first free)
 *   medium        a 200 KiB block (a medium block, in a region shared with another one that
 *                 stays live)
 *   spill J       3000 blocks freed in order, then block J again: wherever it sits by then (the
 *                 thread list, the cache, or its slab's free list)
 *   slab-gone     48 blocks of 4 KiB (three slabs) freed in order, then the first again: its
 *                 slab has gone back empty by then
 * Small blocks are 16 bytes. */
#include "check.h"
#include <malloc.h>
#include <pthread.h>

/* The second free, kept out of the optimiser's sight: the double free is the point. */
#pragma GCC diagnostic ignored "-Wuse-after-free"
__attribute__((noinline)) static void free_again(void *p) {
    void *volatile copy = p;
    free(copy);
}

static void *free_it(void *p) {
    free(p);
    return NULL;
}

static void *free_a_b_a(void *arg) {
    void **ab = arg;
    free(ab[0]);
    free(ab[1]);
    free_again(ab[0]);
    return NULL;
}

static void *alloc_two(void *arg) {
    void **ab = arg;
    ab[0] = malloc(16);
    ab[1] = malloc(16);
    return NULL;
}

enum { SPILL = 3000, GONE = 48 };
static void *blocks[SPILL];

int main(int argc, char **argv) {
    CHECK(argc == 2 || argc == 3);
    const char *mode = argv[1];
    size_t size = 16, other = 16; /* the sizes malloc'd afterwards, in turn */
    size_t n_after = 8192;
    if (strcmp(mode, "simple") == 0) {
        void *a = malloc(size);
        CHECK(a != NULL);
        announce(a);
        free(a);
        free_again(a);
    } else if (strcmp(mode, "interleaved") == 0) {
        void *a = malloc(size), *b = malloc(size);
        CHECK(a != NULL && b != NULL);
        announce(a);
        free(a);
        free(b);
        free_again(a);
    } else if (strcmp(mode, "remote") == 0) {
        void *a = malloc(size);
        CHECK(a != NULL);
        announce(a);
        pthread_t t;
        CHECK(pthread_create(&t, NULL, free_it, a) == 0);
        CHECK(pthread_join(t, NULL) == 0);
        free_again(a);
    } else if (strcmp(mode, "remote-twice") == 0) {
        void *ab[2] = {malloc(size), malloc(size)};
        CHECK(ab[0] != NULL && ab[1] != NULL);
        announce(ab[0]);
        pthread_t t;
        CHECK(pthread_create(&t, NULL, free_a_b_a, ab) == 0);
        CHECK(pthread_join(t, NULL) == 0);
    } else if (strcmp(mode, "abandoned") == 0) {
        void *ab[2] = {NULL, NULL};
        pthread_t t;
        CHECK(pthread_create(&t, NULL, alloc_two, ab) == 0);
        CHECK(pthread_join(t, NULL) == 0);
        /* The exited thread's heap waits, parked, for the next thread; malloc_trim retires it,
         * abandoning its superslab. */
        malloc_trim(0);
        CHECK(ab[0] != NULL && ab[1] != NULL);
        announce(ab[0]);
        free(ab[0]);
        free_again(ab[0]);
        free(ab[1]);
    } else if (strcmp(mode, "parked") == 0) {
        void *ab[2] = {NULL, NULL};
        pthread_t t;
        CHECK(pthread_create(&t, NULL, alloc_two, ab) == 0);
        CHECK(pthread_join(t, NULL) == 0);
        CHECK(ab[0] != NULL && ab[1] != NULL);
        announce(ab[0]);
        free(ab[0]);
        free_again(ab[0]);
        free(ab[1]);
    } else if (strcmp(mode, "large") == 0) {
        size = other = 4 << 20;
        n_after = 64;
        void *a = malloc(size);
        CHECK(a != NULL);
        announce(a);
        free(a);
        free_again(a);
    } else if (strcmp(mode, "medium") == 0) {
        size = other = 200 << 10;
        n_after = 64;
        void *a = malloc(size), *keep = malloc(size);
        CHECK(a != NULL && keep != NULL);
        announce(a);
        free(a);
        free_again(a);
        free(keep);
    } else if (strcmp(mode, "spill") == 0) {
        CHECK(argc == 3);
        size_t j = strtoul(argv[2], NULL, 10);
        CHECK(j < SPILL);
        for (size_t i = 0; i < SPILL; i++) CHECK((blocks[i] = malloc(size)) != NULL);
        announce(blocks[j]);
        for (size_t i = 0; i < SPILL; i++) free(blocks[i]);
        free_again(blocks[j]);
    } else if (strcmp(mode, "slab-gone") == 0) {
        size = 4096; /* 16 to a slab */
        for (size_t i = 0; i < GONE; i++) CHECK((blocks[i] = malloc(size)) != NULL);
        announce(blocks[0]);
        for (size_t i = 0; i < GONE; i++) free(blocks[i]);
        free_again(blocks[0]);
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    if (argc == 3) CHECK(strcmp(mode, "spill") == 0);
    /* Reached only in warn mode: the twice-freed block must not come back twice, nor overlap a
     * block of another size carved where it lies. */
    check_fresh_blocks_disjoint(n_after, size, other);
    say("survived");
    return 0;
}
