/* dlopen libhakmem.so (argv[1]) after start-up, not preloaded, and use its malloc family
 * through dlsym: from the main thread, from a thread that was running before the dlopen, and
 * from threads started after it, with blocks crossing threads.
 *
 * Any further arguments are libraries to dlopen first (each may load or be refused): with them
 * the test fills the static TLS surplus, and then libhakmem.so (initial-exec TLS) must be
 * refused cleanly: dlopen returns NULL, the message is printed, and the program goes on. Exit
 * status: 0 loaded and worked, 3 refused cleanly; anything else (or a signal) is a failure.
 *
 * stdout says whether the loaded library is flagged STATIC_TLS (initial-exec TLS model). */
#define _GNU_SOURCE
#include "check.h"
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <string.h>

typedef void *(*malloc_fn)(size_t);
typedef void (*free_fn)(void *);
typedef void *(*calloc_fn)(size_t, size_t);
typedef void *(*realloc_fn)(void *, size_t);

static malloc_fn h_malloc;
static free_fn h_free;
static calloc_fn h_calloc;
static realloc_fn h_realloc;

#define THREADS 4
#define BLOCKS 2000

/* Allocates, fills, checks and frees blocks of mixed sizes through the library's functions;
 * returns the blocks of every other round unfreed in `keep` (for another thread to free). */
static void work(uint64_t seed, unsigned char **keep, size_t *keep_n) {
    static __thread unsigned char *live[BLOCKS];
    static __thread size_t size[BLOCKS];
    uint64_t s = seed;
    for (int i = 0; i < BLOCKS; i++) {
        size[i] = pick_size(&s);
        live[i] = h_malloc(size[i]);
        CHECK(live[i] != NULL);
        fill(live[i], size[i], seed + (uint64_t)i);
    }
    for (int i = 0; i < BLOCKS; i++) {
        CHECK(verify(live[i], size[i], seed + (uint64_t)i));
        if (keep != NULL && i < 100) {
            keep[i] = live[i];
            keep_n[i] = size[i];
        } else {
            h_free(live[i]);
        }
    }
    /* calloc and realloc go through the same heap pointer. */
    unsigned char *z = h_calloc(100, 10);
    CHECK(z != NULL);
    for (int i = 0; i < 1000; i++) CHECK(z[i] == 0);
    fill(z, 1000, seed);
    z = h_realloc(z, 5000);
    CHECK(z != NULL && verify(z, 1000, seed));
    h_free(z);
}

/* Blocks one thread allocated for another to check and free (the remote path). */
static unsigned char *handed[THREADS + 1][100];
static size_t handed_n[THREADS + 1][100];

struct arg {
    int id;
    pthread_barrier_t *go; /* NULL: start at once */
};

static void *thread_main(void *p) {
    struct arg *a = p;
    if (a->go != NULL) {
        pthread_barrier_wait(a->go);
        if (h_malloc == NULL) return NULL; /* the library was refused */
    }
    work(1000u * (uint64_t)(a->id + 1), handed[a->id], handed_n[a->id]);
    return NULL;
}

/* 1 if the loaded object `h` has DF_STATIC_TLS in its DT_FLAGS (initial-exec TLS). */
static int static_tls(void *h) {
    struct link_map *lm = NULL;
    CHECK(dlinfo(h, RTLD_DI_LINKMAP, &lm) == 0 && lm != NULL);
    for (const ElfW(Dyn) *d = lm->l_ld; d->d_tag != DT_NULL; d++)
        if (d->d_tag == DT_FLAGS) return (d->d_un.d_val & DF_STATIC_TLS) != 0;
    return 0;
}

int main(int argc, char **argv) {
    CHECK(argc >= 2);
    /* A thread that exists before the library does: its static TLS block is set up by dlopen. */
    pthread_barrier_t go;
    CHECK(pthread_barrier_init(&go, NULL, 2) == 0);
    struct arg early = {THREADS, &go};
    pthread_t early_t;
    CHECK(pthread_create(&early_t, NULL, thread_main, &early) == 0);

    for (int i = 2; i < argc; i++) {
        void *f = dlopen(argv[i], RTLD_NOW | RTLD_LOCAL);
        printf("filler %s: %s\n", strrchr(argv[i], '/') ? strrchr(argv[i], '/') + 1 : argv[i],
               f != NULL ? "loaded" : "refused");
    }

    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        const char *err = dlerror();
        fprintf(stderr, "dlopen_late: cannot load %s: %s\n", argv[1], err ? err : "(no message)");
        /* The process is intact: glibc's malloc still works, the early thread still runs. */
        pthread_barrier_wait(&go);
        CHECK(pthread_join(early_t, NULL) == 0);
        void *p = malloc(100);
        CHECK(p != NULL);
        free(p);
        printf("dlopen_late refused cleanly\n");
        return 3;
    }
    printf("static_tls %s\n", static_tls(h) ? "yes" : "no");
    h_malloc = (malloc_fn)(uintptr_t)dlsym(h, "malloc");
    h_free = (free_fn)(uintptr_t)dlsym(h, "free");
    h_calloc = (calloc_fn)(uintptr_t)dlsym(h, "calloc");
    h_realloc = (realloc_fn)(uintptr_t)dlsym(h, "realloc");
    CHECK(h_malloc && h_free && h_calloc && h_realloc);
    /* dlsym on a handle looks in that object first: these are the library's, not glibc's. */
    CHECK((void *)h_malloc != (void *)(uintptr_t)malloc);

    /* The loop of the measurement, then the mixed work, on the main thread. */
    for (int i = 0; i < 100000; i++) {
        unsigned char *p = h_malloc(16);
        CHECK(p != NULL);
        p[0] = (unsigned char)i;
        h_free(p);
    }
    pthread_barrier_wait(&go);
    pthread_t t[THREADS];
    struct arg args[THREADS];
    for (int i = 0; i < THREADS; i++) {
        args[i] = (struct arg){i, NULL};
        CHECK(pthread_create(&t[i], NULL, thread_main, &args[i]) == 0);
    }
    work(7, NULL, NULL);
    for (int i = 0; i < THREADS; i++) CHECK(pthread_join(t[i], NULL) == 0);
    CHECK(pthread_join(early_t, NULL) == 0);
    /* Every other thread's blocks, checked and freed here. */
    for (int id = 0; id <= THREADS; id++)
        for (int i = 0; i < 100; i++) {
            CHECK(verify(handed[id][i], handed_n[id][i], 1000u * (uint64_t)(id + 1) + (uint64_t)i));
            h_free(handed[id][i]);
        }
    printf("dlopen_late ok\n");
    return 0;
}
