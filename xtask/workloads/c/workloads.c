/*
 * c-workloads: the C lane of `cargo xtask bench` (see docs/BENCHMARKS.md).
 *
 * Plain C, built with `gcc -O2 -pthread`, so the allocator is whatever the dynamic linker
 * resolves `malloc` to: glibc, or the library given in LD_PRELOAD (libhakmem.so, or the
 * mimalloc and jemalloc libraries the bench builds from the -sys crates' sources).
 *
 * Usage: c-workloads <workload> [--threads N] [--iters N] [--working-set W] [--quick]
 *        c-workloads list
 *
 * Each run does a fixed amount of work (the same for every allocator, from the same seeded
 * PRNG as the Rust lane: SplitMix64 seeding, xorshift64*) and prints one JSON line: ops,
 * seconds (around the workload only), peak RSS (VmHWM), and which allocator library is mapped
 * into the process ("system" when none is, i.e. glibc), so a preload that silently did not
 * take is caught.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <gnu/libc-version.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SEED 0x68616b6d656dull /* "hakmem" */

/* Keeps the compiler from proving a block unused (gcc -O2 removes malloc/free pairs whose
 * block is never read). Costs no instruction. */
#define KEEP(p) __asm__ volatile("" : : "r"(p) : "memory")

static void die(const char *what) {
    fprintf(stderr, "c-workloads: %s failed\n", what);
    exit(1);
}

/* ---------------------------------------------------------------- PRNG (as rng.rs) */

static uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

typedef struct {
    uint64_t s;
} rng_t;

static rng_t rng_new(uint64_t stream) {
    uint64_t s = splitmix64(SEED ^ splitmix64(stream + 1));
    return (rng_t){s ? s : 0x2545F4914F6CDD1Dull};
}

static inline uint64_t next_u64(rng_t *r) {
    uint64_t x = r->s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* Uniform in 0..n. */
static inline size_t below(rng_t *r, size_t n) {
    return (size_t)(((unsigned __int128)next_u64(r) * n) >> 64);
}

/* Uniform in lo..=hi. */
static inline size_t range(rng_t *r, size_t lo, size_t hi) {
    return lo + below(r, hi - lo + 1);
}

/* Log-uniform in lo..=hi, by integer steps: a uniform power-of-two band, then uniform in it. */
static inline size_t log_range(rng_t *r, size_t lo, size_t hi) {
    int blo = 63 - __builtin_clzll(lo), bhi = 63 - __builtin_clzll(hi);
    int b = blo + (int)below(r, (size_t)(bhi - blo + 1));
    size_t a = (size_t)1 << b, z = ((size_t)2 << b) - 1;
    if (a < lo)
        a = lo;
    if (z > hi)
        z = hi;
    return range(r, a, z);
}

/* ---------------------------------------------------------------- memory helpers */

static inline void *xmalloc(size_t n) {
    void *p = malloc(n);
    if (!p)
        die("malloc");
    return p;
}

/* As mem.rs's touch: a byte per cache line over the first 4 KiB, then one per page, then
 * the last byte. */
static inline void touch(unsigned char *p, size_t n, unsigned char v) {
    size_t i = 0;
    for (; i < n && i < 4096; i += 64)
        p[i] = v;
    for (; i < n; i += 4096)
        p[i] = v;
    p[n - 1] = v;
}

static inline void touch_ends(unsigned char *p, size_t n, unsigned char v) {
    p[0] = v;
    p[n - 1] = v;
}

static void spawn(pthread_t *t, void *(*fn)(void *), void *arg) {
    if (pthread_create(t, NULL, fn, arg) != 0)
        die("pthread_create");
}

/* ---------------------------------------------------------------- 1. tiny-hot */

/* malloc(16) and free with 8 blocks live in a ring: each iteration allocates a block, writes
 * its first and last byte, and frees the block allocated 8 iterations earlier. ops = pairs. */
static uint64_t tiny_hot(uint64_t iters) {
    enum { LIVE = 8 };
    unsigned char *ring[LIVE];
    for (int i = 0; i < LIVE; i++)
        ring[i] = xmalloc(16);
    for (uint64_t i = 0; i < iters; i++) {
        unsigned char *p = malloc(16);
        KEEP(p);
        p[0] = (unsigned char)i;
        p[15] = (unsigned char)i;
        free(ring[i % LIVE]);
        ring[i % LIVE] = p;
    }
    for (int i = 0; i < LIVE; i++)
        free(ring[i]);
    return iters;
}

/* ---------------------------------------------------------------- pair (callgrind) */

/* The bare pair, for instruction counts: p = malloc(16); p[0] = i; free(p). ops = pairs. */
static uint64_t pair(uint64_t iters) {
    for (uint64_t i = 0; i < iters; i++) {
        unsigned char *p = malloc(16);
        p[0] = (unsigned char)i;
        KEEP(p);
        free(p);
    }
    return iters;
}

/* ---------------------------------------------------------------- 2. random replacement */

/* Random replacement in `ws` slots, sizes drawn by `size`: allocate the new block, touch it,
 * free the slot's old one. ops = replacements. */
static uint64_t random_replace(size_t ws, uint64_t iters, size_t (*size)(rng_t *)) {
    rng_t r = rng_new(0);
    unsigned char **slot = xmalloc(ws * sizeof *slot);
    for (size_t i = 0; i < ws; i++) {
        size_t n = size(&r);
        slot[i] = xmalloc(n);
        touch(slot[i], n, 1);
    }
    for (uint64_t i = 0; i < iters; i++) {
        size_t j = below(&r, ws);
        size_t n = size(&r);
        unsigned char *p = xmalloc(n);
        touch(p, n, (unsigned char)i);
        free(slot[j]);
        slot[j] = p;
    }
    for (size_t i = 0; i < ws; i++)
        free(slot[i]);
    free(slot);
    return iters;
}

/* 2. random-mixed: sizes uniform in 16..=1024 B. */
static size_t small_size(rng_t *r) {
    return range(r, 16, 1024);
}

/* 2b. random-medium: 400 slots, sizes log-uniform in 1 KiB..1 MiB (the small classes above
 * 1 KiB, then whole pages), by power-of-two bands. */
static size_t medium_size(rng_t *r) {
    return log_range(r, 1 << 10, (1 << 20) - 1);
}

/* 2c. mixed-sizes, as the Rust lane's: 2000 slots, 80% of the blocks 16..=1024 B, 17%
 * 1 KiB..64 KiB and 3% 64 KiB..4 MiB (both log-uniform). */
static size_t mixed_size(rng_t *r) {
    size_t k = below(r, 100);
    if (k < 80)
        return range(r, 16, 1024);
    if (k < 97)
        return log_range(r, 1025, 64 << 10);
    return log_range(r, (64 << 10) + 1, 4 << 20);
}

/* ---------------------------------------------------------------- 3. glibc-simple */

/* After glibc's benchtests/bench-malloc-simple: for each size and each batch of 25, 100, 400
 * and 1600 blocks, rounds of "malloc the batch, then free it in order"; the whole set runs on
 * the main thread, then on a second thread, then on the main thread again. Here over 13 sizes
 * from 16 to 1024 B. The blocks are not written (as in glibc's). ops = malloc+free pairs. */
static const size_t SIMPLE_SIZES[] = {16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024};
static const int SIMPLE_BATCH[] = {25, 100, 400, 1600};
#define N_SIMPLE_SIZES (sizeof SIMPLE_SIZES / sizeof SIMPLE_SIZES[0])
#define N_SIMPLE_BATCH (sizeof SIMPLE_BATCH / sizeof SIMPLE_BATCH[0])

struct simple_args {
    uint64_t per_case;
    uint64_t ops;
    const size_t *sizes;
    size_t n_sizes;
    int write; /* write each block whole, an int at a time, before the frees */
};

static void *simple_pass(void *arg) {
    struct simple_args *a = arg;
    void *arr[1600];
    for (size_t s = 0; s < a->n_sizes; s++)
        for (size_t b = 0; b < N_SIMPLE_BATCH; b++) {
            int n = SIMPLE_BATCH[b];
            size_t size = a->sizes[s];
            uint64_t rounds = a->per_case / (uint64_t)n;
            for (uint64_t k = 0; k < rounds; k++) {
                for (int i = 0; i < n; i++) {
                    arr[i] = malloc(size);
                    if (a->write) {
                        int *q = arr[i];
                        for (size_t g = 0; g < size / sizeof(int); g++)
                            q[g] = (int)g;
                    }
                }
                KEEP(arr);
                for (int i = 0; i < n; i++)
                    free(arr[i]);
            }
            a->ops += rounds * (uint64_t)n;
        }
    return NULL;
}

static uint64_t glibc_simple(uint64_t iters, const size_t *sizes, size_t n_sizes, int write) {
    struct simple_args a = {iters / (3 * n_sizes * N_SIMPLE_BATCH), 0, sizes, n_sizes, write};
    pthread_t t;
    simple_pass(&a);
    spawn(&t, simple_pass, &a);
    pthread_join(t, NULL);
    simple_pass(&a);
    return a.ops;
}

/* 3b. glibc-simple-written: mimalloc-bench's version of the same program: sizes 16, 32 and 64,
 * each block written whole (an int at a time) before the frees. */
static const size_t WRITTEN_SIZES[] = {16, 32, 64};

/* ---------------------------------------------------------------- 4. long-lived-tree */

/* A long-lived binary search tree of small objects with short-lived temporaries around it, as
 * in allocation-heavy programs such as cfrac and espresso: 50 000 random keys out of 100 000
 * are inserted first (a 48-byte node plus a 16..128-byte payload each); then each iteration
 * looks a random key up and deletes it if present (two frees) or inserts it if not (two
 * mallocs), and builds and frees 2..6 temporaries of 16..64 bytes that read the node's
 * payload. ops = mallocs (each with its free). */
struct node {
    uint64_t key;
    struct node *left, *right;
    unsigned char *payload;
    size_t len;
    uint64_t sum;
};

static uint64_t long_lived_tree(uint64_t iters) {
    enum { KEYS = 100000, START = 50000 };
    rng_t r = rng_new(0);
    struct node *root = NULL;
    uint64_t ops = 0, check = 0;
    for (uint64_t it = 0; it < START + iters; it++) {
        uint64_t key = below(&r, KEYS);
        struct node **link = &root;
        while (*link && (*link)->key != key)
            link = key < (*link)->key ? &(*link)->left : &(*link)->right;
        struct node *n = *link;
        if (n && it >= START) {
            /* Delete: unlink n (replacing it by its in-order successor's node if it has two
             * children), then free the node and its payload. */
            if (!n->left)
                *link = n->right;
            else if (!n->right)
                *link = n->left;
            else {
                struct node **sl = &n->right;
                while ((*sl)->left)
                    sl = &(*sl)->left;
                struct node *s = *sl;
                *sl = s->right;
                s->left = n->left;
                s->right = n->right;
                *link = s;
            }
            check += n->payload[0];
            free(n->payload);
            free(n);
        } else if (!n) {
            n = xmalloc(sizeof *n);
            n->key = key;
            n->left = n->right = NULL;
            n->len = range(&r, 16, 128);
            n->payload = xmalloc(n->len);
            memset(n->payload, (int)(key & 0xff), n->len);
            n->sum = key;
            *link = n;
            ops += 2;
        }
        if (it < START)
            continue;
        /* Temporaries: a short chain, each built from the previous one. */
        size_t k = range(&r, 2, 6);
        unsigned char *tmp[6];
        for (size_t i = 0; i < k; i++) {
            size_t len = range(&r, 16, 64);
            tmp[i] = xmalloc(len);
            memset(tmp[i], (int)(i ? tmp[i - 1][0] + 1 : key), len);
        }
        ops += k;
        check += tmp[k - 1][0];
        for (size_t i = k; i-- > 0;)
            free(tmp[i]);
    }
    /* Free the tree (iteratively: rotate left children up). */
    while (root) {
        if (root->left) {
            struct node *l = root->left;
            root->left = l->right;
            l->right = root;
            root = l;
        } else {
            struct node *next = root->right;
            free(root->payload);
            free(root);
            root = next;
        }
    }
    KEEP(check);
    return ops;
}

/* ---------------------------------------------------------------- 5. large-blocks */

/* 20 live blocks of 5..=25 MiB (uniform), each written in full: each iteration frees a random
 * slot's block, allocates a new one and memsets all of it. ops = replacements. */
static uint64_t large_blocks(uint64_t iters) {
    enum { LIVE = 20 };
    const size_t lo = (size_t)5 << 20, hi = (size_t)25 << 20;
    rng_t r = rng_new(0);
    unsigned char *slot[LIVE];
    for (int i = 0; i < LIVE; i++) {
        size_t n = range(&r, lo, hi);
        slot[i] = xmalloc(n);
        memset(slot[i], 1, n);
    }
    for (uint64_t i = 0; i < iters; i++) {
        size_t j = below(&r, LIVE);
        size_t n = range(&r, lo, hi);
        free(slot[j]);
        slot[j] = xmalloc(n);
        memset(slot[j], (int)(i | 1) & 0xff, n);
    }
    for (int i = 0; i < LIVE; i++)
        free(slot[i]);
    return iters;
}

/* ---------------------------------------------------------------- 6. producer-consumer-64b */

/* A blocking queue of batches (arrays of pointers), for the producer/consumer pair. */
#define BATCH 256
#define IN_FLIGHT 8
struct queue {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    void **items[IN_FLIGHT + 1];
    size_t len[IN_FLIGHT + 1];
    size_t head, count;
};

static void q_init(struct queue *q) {
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->cond, NULL);
    q->head = q->count = 0;
}

static void q_push(struct queue *q, void **batch, size_t len) {
    pthread_mutex_lock(&q->lock);
    size_t i = (q->head + q->count) % (IN_FLIGHT + 1);
    q->items[i] = batch;
    q->len[i] = len;
    q->count++;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

static void **q_pop(struct queue *q, size_t *len) {
    pthread_mutex_lock(&q->lock);
    while (q->count == 0)
        pthread_cond_wait(&q->cond, &q->lock);
    void **b = q->items[q->head];
    *len = q->len[q->head];
    q->head = (q->head + 1) % (IN_FLIGHT + 1);
    q->count--;
    pthread_mutex_unlock(&q->lock);
    return b;
}

struct pc {
    struct queue full, empty;
    uint64_t iters;
};

static void *consumer(void *arg) {
    struct pc *pc = arg;
    for (;;) {
        size_t n;
        void **b = q_pop(&pc->full, &n);
        if (!b)
            return NULL;
        for (size_t i = 0; i < n; i++) {
            touch_ends(b[i], 64, 0xAA);
            free(b[i]);
        }
        q_push(&pc->empty, b, 0);
    }
}

/* One thread allocates 64-byte blocks, writes their first and last byte, and passes them in
 * batches of 256 to a second thread, which writes to each and frees it (every free is a remote
 * free). ops = blocks passed. */
static uint64_t producer_consumer_64(uint64_t iters) {
    static void *bufs[IN_FLIGHT][BATCH];
    struct pc pc = {.iters = iters};
    q_init(&pc.full);
    q_init(&pc.empty);
    for (int i = 0; i < IN_FLIGHT; i++)
        q_push(&pc.empty, bufs[i], 0);
    pthread_t t;
    spawn(&t, consumer, &pc);
    uint64_t done = 0;
    while (done < iters) {
        size_t cap;
        void **b = q_pop(&pc.empty, &cap);
        size_t n = iters - done < BATCH ? (size_t)(iters - done) : BATCH;
        for (size_t i = 0; i < n; i++) {
            b[i] = xmalloc(64);
            touch_ends(b[i], 64, (unsigned char)i);
        }
        done += n;
        q_push(&pc.full, b, n);
    }
    q_push(&pc.full, NULL, 0);
    pthread_join(t, NULL);
    return done;
}

/* ---------------------------------------------------------------- 7. larson */

/* After Larson and Krishnan's server benchmark: each of N lanes owns 1000 slots of random
 * sizes 8..=1000 B. A round is a new thread doing random replacements in the lane's slots for
 * a while; then the slots pass to a fresh thread for the next round (20 rounds quick, 40
 * full), and the lane's own thread frees what the last one left. ops = replacements. */
#define LARSON_SLOTS 1000
struct larson_worker {
    unsigned char **slot;
    uint64_t per_round, stream;
};

static void *larson_round(void *arg) {
    struct larson_worker *w = arg;
    rng_t r = rng_new(w->stream);
    for (uint64_t i = 0; i < w->per_round; i++) {
        size_t j = below(&r, LARSON_SLOTS);
        size_t n = range(&r, 8, 1000);
        unsigned char *p = xmalloc(n);
        touch(p, n, (unsigned char)i);
        free(w->slot[j]);
        w->slot[j] = p;
    }
    return NULL;
}

struct larson_lane {
    int lane;
    uint64_t rounds, per_round, ops;
    pthread_t thread;
};

static void *larson_lane(void *arg) {
    struct larson_lane *l = arg;
    rng_t r = rng_new((uint64_t)l->lane);
    unsigned char **slot = xmalloc(LARSON_SLOTS * sizeof *slot);
    for (int i = 0; i < LARSON_SLOTS; i++) {
        size_t n = range(&r, 8, 1000);
        slot[i] = xmalloc(n);
        touch(slot[i], n, 1);
    }
    for (uint64_t round = 0; round < l->rounds; round++) {
        struct larson_worker w = {slot, l->per_round, (uint64_t)l->lane << 32 | round};
        pthread_t t;
        spawn(&t, larson_round, &w);
        pthread_join(t, NULL);
        l->ops += l->per_round;
    }
    for (int i = 0; i < LARSON_SLOTS; i++)
        free(slot[i]);
    free(slot);
    return NULL;
}

static uint64_t larson(uint64_t iters, int threads, int quick) {
    uint64_t rounds = quick ? 20 : 40;
    uint64_t per_round = iters / (uint64_t)threads / rounds;
    if (per_round == 0)
        per_round = 1;
    struct larson_lane *lanes = calloc((size_t)threads, sizeof *lanes);
    if (!lanes)
        die("calloc");
    for (int t = 0; t < threads; t++) {
        lanes[t] = (struct larson_lane){.lane = t, .rounds = rounds, .per_round = per_round};
        spawn(&lanes[t].thread, larson_lane, &lanes[t]);
    }
    uint64_t ops = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(lanes[t].thread, NULL);
        ops += lanes[t].ops;
    }
    free(lanes);
    return ops;
}

/* ---------------------------------------------------------------- 8. cross-thread-realloc */

/* After rptest: N threads, each with 1000 slots, do random operations: (11 in 16) free a
 * slot's block and malloc a new one of 16..=8192 B (log-uniform), (4 in 16) realloc it to
 * 16..=16384 B, and (1 in 16) hand the block to a random other thread, which frees it the
 * next time it drains its mailbox (every 64 operations), and malloc a new one. New and grown
 * blocks are touched. ops = operations. */
#define XT_SLOTS 1000
#define XT_MAILBOX 8192
struct mailbox {
    pthread_mutex_t lock;
    void *items[XT_MAILBOX];
    size_t n;
};

struct xt_worker {
    int id, nthreads;
    uint64_t iters;
    struct mailbox *boxes;
    pthread_t thread;
};

static void drain(struct mailbox *b, void **local) {
    pthread_mutex_lock(&b->lock);
    size_t n = b->n;
    memcpy(local, b->items, n * sizeof(void *));
    b->n = 0;
    pthread_mutex_unlock(&b->lock);
    for (size_t i = 0; i < n; i++)
        free(local[i]);
}

static void *xt_run(void *arg) {
    struct xt_worker *w = arg;
    rng_t r = rng_new((uint64_t)w->id);
    unsigned char **slot = xmalloc(XT_SLOTS * sizeof *slot);
    void **local = xmalloc(XT_MAILBOX * sizeof *local);
    for (int i = 0; i < XT_SLOTS; i++) {
        size_t n = log_range(&r, 16, 8192);
        slot[i] = xmalloc(n);
        touch(slot[i], n, 1);
    }
    for (uint64_t it = 0; it < w->iters; it++) {
        size_t j = below(&r, XT_SLOTS);
        size_t op = below(&r, 16);
        if (op < 4) {
            size_t n = log_range(&r, 16, 16384);
            unsigned char *p = realloc(slot[j], n);
            if (!p)
                die("realloc");
            touch(p, n, (unsigned char)it);
            slot[j] = p;
            continue;
        }
        if (op == 4 && w->nthreads > 1) {
            size_t to = below(&r, (size_t)w->nthreads - 1);
            struct mailbox *b = &w->boxes[to >= (size_t)w->id ? to + 1 : to];
            pthread_mutex_lock(&b->lock);
            int full = b->n == XT_MAILBOX;
            if (!full)
                b->items[b->n++] = slot[j];
            pthread_mutex_unlock(&b->lock);
            if (full)
                free(slot[j]);
        } else {
            free(slot[j]);
        }
        size_t n = log_range(&r, 16, 8192);
        slot[j] = xmalloc(n);
        touch(slot[j], n, (unsigned char)it);
        if ((it & 63) == 0)
            drain(&w->boxes[w->id], local);
    }
    for (int i = 0; i < XT_SLOTS; i++)
        free(slot[i]);
    free(slot);
    free(local);
    return NULL;
}

static uint64_t cross_thread_realloc(uint64_t iters, int threads) {
    struct mailbox *boxes = calloc((size_t)threads, sizeof *boxes);
    struct xt_worker *ws = calloc((size_t)threads, sizeof *ws);
    void **local = malloc(XT_MAILBOX * sizeof *local);
    if (!boxes || !ws || !local)
        die("calloc");
    for (int t = 0; t < threads; t++)
        pthread_mutex_init(&boxes[t].lock, NULL);
    for (int t = 0; t < threads; t++) {
        ws[t] = (struct xt_worker){.id = t, .nthreads = threads, .iters = iters / (uint64_t)threads, .boxes = boxes};
        spawn(&ws[t].thread, xt_run, &ws[t]);
    }
    for (int t = 0; t < threads; t++)
        pthread_join(ws[t].thread, NULL);
    for (int t = 0; t < threads; t++)
        drain(&boxes[t], local);
    free(local);
    free(ws);
    free(boxes);
    return iters / (uint64_t)threads * (uint64_t)threads;
}

/* ---------------------------------------------------------------- 9. churn */

/* After mimalloc-bench's mstress (the Rust lane's `churn`, same shape): `iters` rounds; each
 * round starts `threads` threads and joins them, so threads come and go. Each thread allocates
 * 2000 blocks of mixed sizes (85% 16..=256 B, 13% up to 16 KiB, 2% up to 256 KiB), frees a
 * random half, then swaps each of the rest into a random slot of a buffer of 4096 slots shared
 * by all threads and rounds (an atomic exchange), freeing the block it takes out: objects pass
 * between threads, and what the buffer holds survives into later rounds. ops = mallocs. */
#define CHURN_PER_THREAD 2000
#define CHURN_SLOTS 4096
static _Atomic(unsigned char *) churn_buffer[CHURN_SLOTS];

static size_t churn_size(rng_t *r) {
    size_t k = below(r, 100);
    if (k < 85)
        return range(r, 16, 256);
    if (k < 98)
        return log_range(r, 257, 16 << 10);
    return log_range(r, (16 << 10) + 1, 256 << 10);
}

static void *churn_thread(void *arg) {
    rng_t r = rng_new((uint64_t)(uintptr_t)arg);
    unsigned char *mine[CHURN_PER_THREAD];
    for (size_t i = 0; i < CHURN_PER_THREAD; i++) {
        size_t n = churn_size(&r);
        mine[i] = xmalloc(n);
        touch_ends(mine[i], n, (unsigned char)i);
    }
    for (size_t i = CHURN_PER_THREAD - 1; i > 0; i--) {
        size_t j = below(&r, i + 1);
        unsigned char *t = mine[i];
        mine[i] = mine[j];
        mine[j] = t;
    }
    for (size_t i = 0; i < CHURN_PER_THREAD / 2; i++)
        free(mine[i]);
    for (size_t i = CHURN_PER_THREAD / 2; i < CHURN_PER_THREAD; i++)
        free(atomic_exchange(&churn_buffer[below(&r, CHURN_SLOTS)], mine[i]));
    return NULL;
}

static uint64_t churn(uint64_t iters, int threads) {
    pthread_t *t = calloc((size_t)threads, sizeof *t);
    if (!t)
        die("calloc");
    for (uint64_t round = 0; round < iters; round++) {
        for (int i = 0; i < threads; i++)
            spawn(&t[i], churn_thread, (void *)(uintptr_t)(round * (uint64_t)threads + (uint64_t)i));
        for (int i = 0; i < threads; i++)
            pthread_join(t[i], NULL);
    }
    for (size_t i = 0; i < CHURN_SLOTS; i++)
        free(atomic_exchange(&churn_buffer[i], NULL));
    free(t);
    return iters * (uint64_t)threads * CHURN_PER_THREAD;
}

/* ---------------------------------------------------------------- driver */

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

/* Which allocator library is mapped: hakmem, mimalloc, jemalloc, or system (glibc). */
static const char *mapped_allocator(void) {
    static const char *names[] = {"libhakmem", "libmimalloc", "libjemalloc"};
    const char *found = "system";
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

/* The preloaded allocator's own version, when it exports a way to ask: mimalloc's
 * mi_version() (e.g. 30302 for 3.3.2), jemalloc's mallctl("version"), glibc's
 * gnu_get_libc_version(). Empty otherwise. */
static void allocator_version(const char *alloc, char *out, size_t cap) {
    out[0] = 0;
    if (strcmp(alloc, "mimalloc") == 0) {
        int (*v)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "mi_version");
        if (v) {
            int n = v();
            snprintf(out, cap, "%d.%d.%d", n / 10000, n / 100 % 100, n % 100);
        }
    } else if (strcmp(alloc, "system") == 0) {
        snprintf(out, cap, "glibc %s", gnu_get_libc_version());
    } else if (strcmp(alloc, "jemalloc") == 0) {
        int (*ctl)(const char *, void *, size_t *, void *, size_t) =
            (int (*)(const char *, void *, size_t *, void *, size_t))dlsym(RTLD_DEFAULT, "mallctl");
        const char *ver = NULL;
        size_t len = sizeof ver;
        if (ctl && ctl("version", &ver, &len, NULL, 0) == 0 && ver)
            snprintf(out, cap, "%s", ver);
    }
    for (char *c = out; *c; c++)
        if (*c == '"' || *c == '\\')
            *c = '_';
}

struct workload {
    const char *name;
    uint64_t full, quick; /* default --iters */
};

static const struct workload WORKLOADS[] = {
    {"tiny-hot", 120000000, 40000000},
    {"pair", 120000000, 40000000},
    {"random-mixed", 36000000, 12000000},
    {"random-medium", 3000000, 1000000},
    {"mixed-sizes", 300000, 100000},
    {"glibc-simple", 30000000, 10000000},
    {"glibc-simple-written", 30000000, 10000000},
    {"long-lived-tree", 4000000, 1500000},
    {"large-blocks", 200, 60},
    {"producer-consumer-64b", 12000000, 4000000},
    {"larson", 45000000, 15000000},
    {"cross-thread-realloc", 12000000, 4000000},
    {"churn", 300, 100},
};
#define N_WORKLOADS (sizeof WORKLOADS / sizeof WORKLOADS[0])

static int usage(void) {
    fprintf(stderr, "usage: c-workloads <workload>|list [--threads N] [--iters N] [--working-set W] [--quick]\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 2)
        return usage();
    const char *name = argv[1];
    if (strcmp(name, "list") == 0) {
        for (size_t i = 0; i < N_WORKLOADS; i++)
            printf("%s\n", WORKLOADS[i].name);
        return 0;
    }
    const struct workload *w = NULL;
    for (size_t i = 0; i < N_WORKLOADS; i++)
        if (strcmp(name, WORKLOADS[i].name) == 0)
            w = &WORKLOADS[i];
    if (!w) {
        fprintf(stderr, "c-workloads: unknown workload %s (try `c-workloads list`)\n", name);
        return 2;
    }
    long threads = 1, ws = 400;
    long long iters = -1;
    int quick = 0;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atol(argv[++i]);
        else if (strcmp(argv[i], "--iters") == 0 && i + 1 < argc)
            iters = atoll(argv[++i]);
        else if (strcmp(argv[i], "--working-set") == 0 && i + 1 < argc)
            ws = atol(argv[++i]);
        else if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else
            return usage();
    }
    if (iters < 0)
        iters = (long long)(quick ? w->quick : w->full);
    if (threads < 1 || threads > 4096 || ws < 1 || iters < 1) {
        fprintf(stderr, "c-workloads: --threads (1..4096), --working-set and --iters must be at least 1\n");
        return 2;
    }
    uint64_t n = (uint64_t)iters;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint64_t ops;
    if (strcmp(name, "tiny-hot") == 0)
        ops = tiny_hot(n);
    else if (strcmp(name, "pair") == 0)
        ops = pair(n);
    else if (strcmp(name, "random-mixed") == 0)
        ops = random_replace((size_t)ws, n, small_size);
    else if (strcmp(name, "random-medium") == 0)
        ops = random_replace(400, n, medium_size);
    else if (strcmp(name, "mixed-sizes") == 0)
        ops = random_replace(2000, n, mixed_size);
    else if (strcmp(name, "glibc-simple") == 0)
        ops = glibc_simple(n, SIMPLE_SIZES, N_SIMPLE_SIZES, 0);
    else if (strcmp(name, "glibc-simple-written") == 0)
        ops = glibc_simple(n, WRITTEN_SIZES, sizeof WRITTEN_SIZES / sizeof WRITTEN_SIZES[0], 1);
    else if (strcmp(name, "long-lived-tree") == 0)
        ops = long_lived_tree(n);
    else if (strcmp(name, "large-blocks") == 0)
        ops = large_blocks(n);
    else if (strcmp(name, "producer-consumer-64b") == 0)
        ops = producer_consumer_64(n);
    else if (strcmp(name, "larson") == 0)
        ops = larson(n, (int)threads, quick);
    else if (strcmp(name, "churn") == 0)
        ops = churn(n, (int)threads);
    else
        ops = cross_thread_realloc(n, (int)threads);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    const char *alloc = mapped_allocator();
    char version[128];
    allocator_version(alloc, version, sizeof version);
    printf("{\"workload\":\"%s\",\"allocator\":\"%s\",\"allocator_version\":\"%s\",\"threads\":%ld,"
           "\"iters\":%llu,\"ops\":%llu,\"secs\":%.6f,\"peak_rss_kib\":%ld,\"rss_after_free_kib\":null}\n",
           name, alloc, version, threads, (unsigned long long)n, (unsigned long long)ops, secs,
           status_kib("VmHWM:"));
    return 0;
}
