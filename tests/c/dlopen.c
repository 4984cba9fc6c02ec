/* dlopen a library (argv[1]) that allocates and frees, pass blocks both ways across the
 * boundary, unload and load it again, and make dlerror allocate its message. */
#include "check.h"
#include <dlfcn.h>
#include <pthread.h>
#include <string.h>

typedef unsigned char *(*make_fn)(size_t, uint64_t);
typedef int (*take_fn)(unsigned char *, size_t, uint64_t);
typedef char *(*grow_fn)(char *);
typedef unsigned (*tls_fn)(unsigned char);

static tls_fn tls;

static void *use_tls(void *arg) {
    unsigned char v = (unsigned char)(uintptr_t)arg;
    CHECK(tls(v) == 20000u * v);
    void *p = malloc(100);
    CHECK(p != NULL);
    free(p);
    return NULL;
}

int main(int argc, char **argv) {
    CHECK(argc == 2);
    /* A library that does not exist: dlerror's message is allocated. */
    CHECK(dlopen("/nonexistent/libnothing.so", RTLD_NOW) == NULL);
    const char *err = dlerror();
    CHECK(err != NULL && strstr(err, "libnothing") != NULL);

    for (int round = 0; round < 5; round++) {
        void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
        if (h == NULL) {
            fprintf(stderr, "dlopen: %s\n", dlerror());
            return 1;
        }
        make_fn make = (make_fn)(uintptr_t)dlsym(h, "dlib_make");
        take_fn take = (take_fn)(uintptr_t)dlsym(h, "dlib_take");
        grow_fn grow = (grow_fn)(uintptr_t)dlsym(h, "dlib_grow");
        tls = (tls_fn)(uintptr_t)dlsym(h, "dlib_tls");
        CHECK(make && take && grow && tls);
        pthread_t t[4];
        for (uintptr_t i = 0; i < 4; i++) CHECK(pthread_create(&t[i], NULL, use_tls, (void *)(i + 1)) == 0);
        for (int i = 0; i < 4; i++) CHECK(pthread_join(t[i], NULL) == 0);
        CHECK(tls(9) == 20000u * 9);
        unsigned char *kept[100];
        for (int i = 0; i < 100; i++) {
            size_t n = (size_t)(i * 97 % 5000) + (i == 7 ? (1 << 20) : 0);
            /* Allocated by the library, freed here... */
            unsigned char *p = make(n, (uint64_t)(round * 1000 + i));
            CHECK(verify(p, n, (uint64_t)(round * 1000 + i)));
            if (i % 2) kept[i] = p; else free(p);
            /* ...and allocated here, freed by the library. */
            unsigned char *q = malloc(n);
            CHECK(q != NULL);
            fill(q, n, (uint64_t)i);
            CHECK(take(q, n, (uint64_t)i));
        }
        char *s = strdup("main");
        s = grow(s);
        CHECK(strcmp(s, "main+dlib") == 0);
        free(s);
        CHECK(dlclose(h) == 0);
        /* Blocks made by the library outlive it. */
        for (int i = 1; i < 100; i += 2) {
            size_t n = (size_t)(i * 97 % 5000) + (i == 7 ? (1 << 20) : 0);
            CHECK(verify(kept[i], n, (uint64_t)(round * 1000 + i)));
            free(kept[i]);
        }
    }
    printf("dlopen ok\n");
    return 0;
}
