/* Frees a block twice, in the way argv[1] names, after printing the pointer on stdout as
 * "pointer 0x...". Under HAKMEM_CHECK=1 the allocator must report it; with
 * HAKMEM_INVALID_FREE=warn the program goes on and checks that the free lists were not corrupted
 * (the block is not handed out twice), then prints "survived". */
#include "check.h"
#include <pthread.h>
#include <string.h>

static void announce(void *p) {
    printf("pointer %p\n", p);
    fflush(stdout);
}

static void *free_it(void *p) {
    free(p);
    return NULL;
}

/* The second free, kept out of the optimiser's sight: the double free is the point. */
#pragma GCC diagnostic ignored "-Wuse-after-free"
__attribute__((noinline)) static void free_again(void *p) {
    void *volatile copy = p;
    free(copy);
}

int main(int argc, char **argv) {
    CHECK(argc == 2);
    const char *mode = argv[1];
    size_t size = 48;
    if (strcmp(mode, "simple") == 0) {
        void *a = malloc(size);
        CHECK(a != NULL);
        announce(a);
        free(a);
        free_again(a);
    } else if (strcmp(mode, "interleaved") == 0) {
        /* The block is no longer the last one freed when it is freed again. */
        void *a = malloc(size), *b = malloc(size);
        CHECK(a != NULL && b != NULL);
        announce(a);
        free(a);
        free(b);
        free_again(a);
    } else if (strcmp(mode, "remote") == 0) {
        /* First free by another thread (a remote free), second by the owner. */
        void *a = malloc(size);
        CHECK(a != NULL);
        announce(a);
        pthread_t t;
        CHECK(pthread_create(&t, NULL, free_it, a) == 0);
        CHECK(pthread_join(t, NULL) == 0);
        free_again(a);
    } else if (strcmp(mode, "large") == 0) {
        size = 4 << 20;
        void *a = malloc(size);
        CHECK(a != NULL);
        announce(a);
        free(a);
        free_again(a);
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    /* Reached only in warn mode: the twice-freed block must not come back twice. */
    enum { N = 64 };
    void *got[N];
    for (int i = 0; i < N; i++) {
        got[i] = malloc(size);
        CHECK(got[i] != NULL);
        memset(got[i], i, size < 4096 ? size : 4096);
    }
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++) CHECK(got[i] != got[j]);
    for (int i = 0; i < N; i++) free(got[i]);
    printf("survived\n");
    return 0;
}
