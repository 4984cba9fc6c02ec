/* The glibc contract, call by call: malloc(0), free(NULL), realloc's special cases, calloc's
 * zeroing (of reused, dirty memory too) and overflow, reallocarray, and contents kept across
 * realloc between every kind of size. */
#include "check.h"
#include <errno.h>
#include <malloc.h>
#include <string.h>

static int cmp_ptr(const void *a, const void *b) {
    uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
    return x < y ? -1 : x > y;
}

int main(void) {
    /* malloc(0): a unique, aligned, freeable pointer every time. */
    enum { Z = 1000 };
    static void *zero[Z];
    for (int i = 0; i < Z; i++) {
        zero[i] = malloc(0);
        CHECK(zero[i] != NULL && ((uintptr_t)zero[i] & 15) == 0);
    }
    qsort(zero, Z, sizeof zero[0], cmp_ptr);
    for (int i = 1; i < Z; i++) CHECK(zero[i] != zero[i - 1]);
    for (int i = 0; i < Z; i++) free(zero[i]);

    /* free(NULL) does nothing. */
    free(NULL);

    /* realloc(NULL, n) is malloc(n); realloc(p, 0) frees p and returns NULL. */
    unsigned char *p = realloc(NULL, 40);
    CHECK(p != NULL && malloc_usable_size(p) >= 40);
    fill(p, 40, 3);
    errno = 0;
    CHECK(realloc(p, 0) == NULL);
    CHECK(errno == 0);
    p = realloc(NULL, 0);
    CHECK(p != NULL);
    free(p);

    /* calloc zeroes, also memory that was dirty before and freed. */
    for (size_t size = 8; size <= ((size_t)4 << 20); size *= 2) {
        for (int round = 0; round < 3; round++) {
            unsigned char *d[8];
            for (int i = 0; i < 8; i++) {
                d[i] = malloc(size);
                CHECK(d[i] != NULL);
                memset(d[i], 0xFF, size);
            }
            for (int i = 0; i < 8; i++) free(d[i]);
            for (int i = 0; i < 8; i++) {
                d[i] = calloc(size / 8, 8);
                CHECK(d[i] != NULL);
                for (size_t k = 0; k < size; k++)
                    if (d[i][k] != 0) {
                        fprintf(stderr, "calloc(%zu): byte %zu is %d\n", size, k, d[i][k]);
                        abort();
                    }
            }
            for (int i = 0; i < 8; i++) free(d[i]);
        }
    }
    unsigned char *c0 = calloc(0, 100);
    CHECK(c0 != NULL);
    free(c0);

    /* Overflow and impossible sizes: NULL with ENOMEM. */
    EXPECT_ENOMEM(calloc(opaque(SIZE_MAX / 2 + 1), 2));
    EXPECT_ENOMEM(calloc(opaque((size_t)1 << 33), (size_t)1 << 33));
    EXPECT_ENOMEM(malloc(opaque(SIZE_MAX)));
    EXPECT_ENOMEM(malloc(opaque(SIZE_MAX - 4096)));
    EXPECT_ENOMEM(malloc(opaque((size_t)1 << 62)));
    EXPECT_ENOMEM(aligned_alloc(16, opaque(SIZE_MAX)));
    p = malloc(64);
    CHECK(p != NULL);
    fill(p, 64, 9);
    EXPECT_ENOMEM(realloc(p, opaque(SIZE_MAX)));
    EXPECT_ENOMEM(reallocarray(p, opaque(SIZE_MAX / 2 + 1), 2));
    CHECK(verify(p, 64, 9));

    /* reallocarray is realloc(p, n * size) when that does not overflow. */
    unsigned char *r = reallocarray(p, 100, 8);
    CHECK(r != NULL && malloc_usable_size(r) >= 800 && verify(r, 64, 9));
    r = reallocarray(r, 4, 4);
    CHECK(r != NULL && verify(r, 16, 9));
    free(r);
    r = reallocarray(NULL, 10, 10);
    CHECK(r != NULL && malloc_usable_size(r) >= 100);
    free(r);

    /* realloc keeps the contents between every kind of size, both ways. */
    static const size_t sizes[] = {1,     16,     17,     100,     1000,      4096,
                                   20000, 65536,  70000,  1 << 20, (3 << 20) + 5};
    const size_t n = sizeof sizes / sizeof sizes[0];
    uint64_t seed = 100;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            unsigned char *a = malloc(sizes[i]);
            CHECK(a != NULL);
            fill(a, sizes[i], ++seed);
            unsigned char *b = realloc(a, sizes[j]);
            CHECK(b != NULL && malloc_usable_size(b) >= sizes[j]);
            CHECK(verify(b, sizes[i] < sizes[j] ? sizes[i] : sizes[j], seed));
            free(b);
        }

    /* Every pointer is 16-byte aligned, whatever the size. */
    for (size_t size = 1; size < 5000; size += 7) {
        void *a = malloc(size);
        CHECK(a != NULL && ((uintptr_t)a & 15) == 0);
        free(a);
    }
    printf("semantics ok\n");
    return 0;
}
