/* A small shared library for dlopen.c: it allocates in its constructor and frees in its
 * destructor, and hands blocks across the library boundary in both directions. */
#include "check.h"
#include <string.h>

static char *from_ctor;

__attribute__((constructor)) static void dlib_init(void) {
    from_ctor = strdup("allocated by the library constructor");
    CHECK(from_ctor != NULL);
}

__attribute__((destructor)) static void dlib_fini(void) {
    CHECK(strcmp(from_ctor, "allocated by the library constructor") == 0);
    free(from_ctor);
    /* Allocating while being unloaded works too. */
    void *p = malloc(1000);
    CHECK(p != NULL);
    free(p);
}

/* A block of n bytes filled with the pattern of `seed`, for the caller to free. */
unsigned char *dlib_make(size_t n, uint64_t seed) {
    unsigned char *p = malloc(n);
    CHECK(p != NULL);
    fill(p, n, seed);
    return p;
}

/* Checks and frees a block the caller allocated; returns 1 if its contents were right. */
int dlib_take(unsigned char *p, size_t n, uint64_t seed) {
    int ok = verify(p, n, seed);
    free(p);
    return ok;
}

/* Thread-local storage of a dlopened library is allocated by glibc with malloc, on each thread's
 * first access, and freed with free when the thread exits. */
static __thread unsigned char tls_buf[20000];

/* Writes `v` through this thread's copy of tls_buf and returns the sum read back. */
unsigned dlib_tls(unsigned char v) {
    unsigned sum = 0;
    for (size_t i = 0; i < sizeof tls_buf; i++) tls_buf[i] = v;
    for (size_t i = 0; i < sizeof tls_buf; i++) sum += tls_buf[i];
    return sum;
}

/* Grows a caller's block by realloc and appends a marker. */
char *dlib_grow(char *s) {
    size_t len = strlen(s);
    char *g = realloc(s, len + 6);
    CHECK(g != NULL);
    memcpy(g + len, "+dlib", 6);
    return g;
}
