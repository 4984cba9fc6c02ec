/* Frees stale interior pointers while other threads fill and empty regions that go back to the
 * OS at once: the bad frees' lookups race with the regions' unmapping. The allocator must
 * report each bad free as an invalid pointer (HAKMEM_INVALID_FREE=warn: and go on; by default:
 * abort), whatever is unmapped meanwhile; it must never touch the unmapped memory.
 *
 * Usage: stale_race KIND
 *   KIND  small: 60 000-byte blocks (one per 64 KiB slab, 32 per 2 MiB superslab), run with
 *                HAKMEM_LRU_MB=0 so an emptied superslab is unmapped at once;
 *         large: 3 MB blocks, each a region of its own, HAKMEM_LRU_MB=0 likewise;
 *         decay: 60 000-byte blocks in one churner, 3 MB blocks in the other, with the lru on
 *                and HAKMEM_LRU_DECAY_MS=0, so cached regions are reused or unmapped by decay.
 *
 * CHURN threads each allocate a batch of blocks, publish their addresses, and free them all;
 * FREERS threads keep freeing `published + 4096` (never a block start, always inside a block
 * while it lives), MAX_BAD times each, while a kicker interrupts them (see `pause_here`). The
 * program names its first bad pointer on stdout ("pointer 0x..."), then prints "bad frees N" and
 * "survived" at the end (in warn mode). */
#include "check.h"
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <time.h>

#define CHURN 2
#define FREERS 2
/* Bad frees per freer: each is a line on stderr in warn mode. */
#define MAX_BAD 50000
/* Published block addresses: few, so that most point into a block that is still live. */
#define SLOTS 8
/* How long a kicked freer pauses, and how often the kicker kicks one. */
#define PAUSE_NS 100000
#define KICK_NS 300000

/* Each churner's block size and batch; churners count up from 0 and take these in turn. */
static size_t block_size[2];
static int batch[2];
static _Atomic(uintptr_t) published[SLOTS];
static atomic_int stop, freers_done;
static atomic_long bad_frees;
static atomic_int announced;

static void *churn(void *arg) {
    unsigned long id = (unsigned long)(uintptr_t)arg;
    size_t size = block_size[id % 2];
    int n = batch[id % 2];
    void *blocks[128];
    while (!atomic_load(&stop)) {
        for (int i = 0; i < n; i++) {
            blocks[i] = malloc(size);
            CHECK(blocks[i] != NULL);
            /* Touch the page the freers point at, so the block is really there. */
            ((volatile char *)blocks[i])[4096] = 1;
            atomic_store_explicit(&published[(id * 31 + (unsigned long)i) % SLOTS],
                                  (uintptr_t)blocks[i], memory_order_relaxed);
        }
        for (int i = 0; i < n; i++) free(blocks[i]);
    }
    return NULL;
}

/* A freer interrupted by SIGUSR1 pauses for PAUSE_NS wherever it is (inside the allocator's
 * free too): the regions its free looked up meanwhile go away, as they would if it were
 * preempted there on a busy machine. The kicker sends the signal to each freer in turn until
 * all are done (a freer that has returned but is not joined yet only makes pthread_kill fail). */
static void pause_here(int sig) {
    (void)sig;
    struct timespec t = {0, PAUSE_NS};
    nanosleep(&t, NULL);
}

static pthread_t freers[FREERS];

static void *kick(void *arg) {
    (void)arg;
    struct timespec t = {0, KICK_NS};
    for (unsigned i = 0; atomic_load(&freers_done) < FREERS; i++) {
        pthread_kill(freers[i % FREERS], SIGUSR1);
        nanosleep(&t, NULL);
    }
    return NULL;
}

static void *freer(void *arg) {
    unsigned long seed = (unsigned long)(uintptr_t)arg * 2654435761u + 1;
    long n = 0;
    while (n < MAX_BAD) {
        seed = seed * 6364136223846793005ul + 1442695040888963407ul;
        uintptr_t b = atomic_load_explicit(&published[(seed >> 33) % SLOTS], memory_order_relaxed);
        if (b == 0) continue;
        char *bad = (char *)b + 4096;
        if (atomic_exchange(&announced, 1) == 0) say_ptr("pointer", bad);
        free(bad);
        n++;
    }
    atomic_fetch_add(&bad_frees, n);
    atomic_fetch_add(&freers_done, 1);
    return NULL;
}

int main(int argc, char **argv) {
    CHECK(argc == 2);
    const char *kind = argv[1];
    const size_t small = 60000, large = 3 << 20;
    if (strcmp(kind, "small") == 0) {
        block_size[0] = block_size[1] = small;
        batch[0] = batch[1] = 96;
    } else if (strcmp(kind, "large") == 0) {
        block_size[0] = block_size[1] = large;
        batch[0] = batch[1] = 4;
    } else if (strcmp(kind, "decay") == 0) {
        block_size[0] = small;
        batch[0] = 96;
        block_size[1] = large;
        batch[1] = 4;
    } else {
        CHECK(!"unknown KIND");
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = pause_here;
    sa.sa_flags = SA_RESTART;
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0);
    pthread_t c[CHURN], *f = freers, k;
    for (int i = 0; i < CHURN; i++)
        CHECK(pthread_create(&c[i], NULL, churn, (void *)(uintptr_t)i) == 0);
    for (int i = 0; i < FREERS; i++)
        CHECK(pthread_create(&f[i], NULL, freer, (void *)(uintptr_t)(i + 1)) == 0);
    CHECK(pthread_create(&k, NULL, kick, NULL) == 0);
    CHECK(pthread_join(k, NULL) == 0);
    for (int i = 0; i < FREERS; i++) CHECK(pthread_join(f[i], NULL) == 0);
    atomic_store(&stop, 1);
    for (int i = 0; i < CHURN; i++) CHECK(pthread_join(c[i], NULL) == 0);
    /* The allocator still works. */
    void *p = malloc(100), *q = malloc(large);
    CHECK(p && q && p != q);
    memset(p, 1, 100);
    memset(q, 2, large);
    free(p);
    free(q);
    char line[64];
    snprintf(line, sizeof line, "bad frees %ld", atomic_load(&bad_frees));
    say(line);
    say("survived");
    return 0;
}
