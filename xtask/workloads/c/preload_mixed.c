/*
 * preload-mixed: the LD_PRELOAD lane of `cargo xtask bench`.
 *
 * A multi-threaded random-mixed malloc/free/realloc loop in plain C, so the allocator
 * is whatever the dynamic linker resolves `malloc` to: glibc, or a library given in
 * LD_PRELOAD (libhakmem.so, Debian's libmimalloc or libjemalloc).
 *
 * Each thread owns SLOTS slots and, ITERS/THREADS times, picks a random slot and either
 * (75%) frees it and mallocs a new block of 16..1024 bytes, or (25%) reallocs it to a new
 * size of 16..4096 bytes. Every new or grown block has its first and last byte written.
 * One in 64 operations hands the slot's block to the next thread's mailbox, which that
 * thread frees (a remote free).
 *
 * Usage: preload-mixed [--threads N] [--iters N]
 * Prints one JSON line: ops, seconds, peak RSS (VmHWM), and which allocator library is
 * mapped into the process (so a preload that silently failed is caught).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SLOTS 1000
#define MAILBOX 4096

struct mailbox {
    pthread_mutex_t lock;
    void *items[MAILBOX];
    size_t n;
};

struct worker {
    int id;
    int nthreads;
    long iters;
    struct mailbox *boxes;
    pthread_t thread;
};

static uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static inline uint64_t next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static inline size_t below(uint64_t *s, size_t n) {
    return (size_t)(((unsigned __int128)next(s) * n) >> 64);
}

static void die(const char *what) {
    fprintf(stderr, "preload-mixed: %s failed\n", what);
    exit(1);
}

static inline void touch(unsigned char *p, size_t n, unsigned char v) {
    p[0] = v;
    p[n - 1] = v;
}

static void drain(struct mailbox *b) {
    void *local[MAILBOX];
    size_t n;
    pthread_mutex_lock(&b->lock);
    n = b->n;
    memcpy(local, b->items, n * sizeof(void *));
    b->n = 0;
    pthread_mutex_unlock(&b->lock);
    for (size_t i = 0; i < n; i++)
        free(local[i]);
}

/* Puts a fresh block of 16..1024 B in slot `j` and touches it with `v`. */
static void refill(void **slot, size_t *size, size_t j, uint64_t *rng, unsigned char v) {
    size[j] = 16 + below(rng, 1009);
    slot[j] = malloc(size[j]);
    if (!slot[j])
        die("malloc");
    touch(slot[j], size[j], v);
}

static void *run(void *arg) {
    struct worker *w = arg;
    uint64_t rng = splitmix64(0x68616b6d656dull ^ splitmix64((uint64_t)w->id + 1));
    void **slot = malloc(SLOTS * sizeof(void *));
    size_t *size = malloc(SLOTS * sizeof(size_t));
    if (!slot || !size)
        die("malloc");
    for (size_t i = 0; i < SLOTS; i++)
        refill(slot, size, i, &rng, 1);
    struct mailbox *mine = &w->boxes[w->id];
    struct mailbox *theirs = &w->boxes[(w->id + 1) % w->nthreads];
    for (long it = 0; it < w->iters; it++) {
        size_t j = below(&rng, SLOTS);
        uint64_t r = below(&rng, 64);
        if (r == 0 && w->nthreads > 1) {
            /* Hand the block to the next thread; it frees it. */
            pthread_mutex_lock(&theirs->lock);
            int full = theirs->n == MAILBOX;
            if (!full)
                theirs->items[theirs->n++] = slot[j];
            pthread_mutex_unlock(&theirs->lock);
            if (full)
                free(slot[j]);
            refill(slot, size, j, &rng, (unsigned char)it);
        } else if (r < 48) {
            free(slot[j]);
            refill(slot, size, j, &rng, (unsigned char)it);
        } else {
            size_t n = 16 + below(&rng, 4081);
            void *p = realloc(slot[j], n);
            if (!p)
                die("realloc");
            slot[j] = p;
            size[j] = n;
            touch(p, n, (unsigned char)it);
        }
        if ((it & 255) == 0)
            drain(mine);
    }
    for (size_t i = 0; i < SLOTS; i++)
        free(slot[i]);
    free(slot);
    free(size);
    return NULL;
}

static long status_kib(const char *field) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(field);
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, n) == 0) {
            v = strtol(line + n, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

/* Which allocator library is mapped: hakmem, mimalloc, jemalloc, or none (glibc). */
static const char *mapped_allocator(void) {
    static const char *names[] = {"libhakmem", "libmimalloc", "libjemalloc"};
    static const char *found = "none";
    FILE *f = fopen("/proc/self/maps", "r");
    char line[4096];
    if (!f)
        return "unknown";
    while (fgets(line, sizeof line, f))
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            if (strstr(line, names[i]))
                found = names[i] + 3;
    fclose(f);
    return found;
}

int main(int argc, char **argv) {
    int nthreads = 2;
    long iters = 4000000;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            nthreads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--iters") == 0 && i + 1 < argc)
            iters = atol(argv[++i]);
        else {
            fprintf(stderr, "usage: preload-mixed [--threads N] [--iters N]\n");
            return 2;
        }
    }
    if (nthreads < 1 || iters < 1) {
        fprintf(stderr, "preload-mixed: --threads and --iters must be at least 1\n");
        return 2;
    }
    struct mailbox *boxes = calloc((size_t)nthreads, sizeof *boxes);
    struct worker *ws = calloc((size_t)nthreads, sizeof *ws);
    if (!boxes || !ws)
        die("calloc");
    for (int t = 0; t < nthreads; t++)
        pthread_mutex_init(&boxes[t].lock, NULL);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int t = 0; t < nthreads; t++) {
        ws[t] = (struct worker){.id = t, .nthreads = nthreads, .iters = iters / nthreads, .boxes = boxes};
        if (pthread_create(&ws[t].thread, NULL, run, &ws[t]) != 0)
            die("pthread_create");
    }
    for (int t = 0; t < nthreads; t++)
        pthread_join(ws[t].thread, NULL);
    for (int t = 0; t < nthreads; t++)
        drain(&boxes[t]);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    long ops = (iters / nthreads) * nthreads;
    printf("{\"workload\":\"preload-mixed\",\"allocator\":\"%s\",\"threads\":%d,\"iters\":%ld,"
           "\"ops\":%ld,\"secs\":%.6f,\"peak_rss_kib\":%ld,\"rss_after_free_kib\":null}\n",
           mapped_allocator(), nthreads, iters, ops, secs, status_kib("VmHWM:"));
    free(ws);
    free(boxes);
    return 0;
}
