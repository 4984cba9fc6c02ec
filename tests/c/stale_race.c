/* Frees stale interior pointers while other threads fill and empty regions that go back to the
 * OS at once: the bad frees' lookups race with the regions' unmapping. The allocator must
 * report each bad free as an invalid pointer (HAKMEM_INVALID_FREE=warn: and go on; by default:
 * abort), whatever is unmapped meanwhile; it must never touch the unmapped memory.
 *
 * Usage: stale_race KIND
 *   KIND  small: 60 000-byte blocks (one per 64 KiB slab, about 32 per 2 MiB superslab), run with
 *                HAKMEM_LRU_MB=0 so an emptied superslab is unmapped at once;
 *         large: 3 MB blocks, each a region of its own, HAKMEM_LRU_MB=0 likewise;
 *         decay: 60 000-byte blocks in one churner, 3 MB blocks in the other, with the lru on
 *                and HAKMEM_LRU_DECAY_MS=0, so cached regions are reused or unmapped by decay.
 *
 * CHURN threads each allocate a batch of blocks, publish their addresses, and free them all;
 * FREERS threads keep freeing `published + 4096` (never a block start, always inside a block
 * while it lives), MAX_BAD times each, while a timer interrupts them (see `pause_here`). The
 * program names its first bad pointer on stdout ("pointer 0x..."), then prints "bad frees N" and
 * "survived" at the end (in warn mode). */
#define _GNU_SOURCE
#include "check.h"
#include <link.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>

#define CHURN 2
#define FREERS 2
/* Bad frees per freer: each is a line on stderr in warn mode. */
#define MAX_BAD 200000
/* Published block addresses: few, so that most point into a block that is still live. */
#define SLOTS 8
/* How often a freer's timer interrupts it, and how long it pauses when that is inside the
 * allocator. */
#define TICK_NS 250000
#define PAUSE_NS 100000

/* Each churner's block size and batch; churners count up from 0 and take these in turn. */
static size_t block_size[2];
static int batch[2];
static _Atomic(uintptr_t) published[SLOTS];
static atomic_int stop;
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

/* The preloaded allocator's code: [text_lo, text_hi). */
static uintptr_t text_lo, text_hi;

static int find_allocator(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    (void)data;
    if (!info->dlpi_name || !strstr(info->dlpi_name, "libhakmem")) return 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X)) {
            text_lo = info->dlpi_addr + ph->p_vaddr;
            text_hi = text_lo + ph->p_memsz;
        }
    }
    return 1;
}

/* Each freer has a timer that sends it SIGUSR1 every TICK_NS. When the signal lands inside the
 * allocator (a free under way), the freer pauses there for PAUSE_NS, as if it were preempted in
 * the middle of its free on a busy machine: the regions its lookup found meanwhile go away.
 * Anywhere else it returns at once. */
static void pause_here(int sig, siginfo_t *si, void *ctx) {
    (void)sig;
    (void)si;
    const ucontext_t *uc = ctx;
#if defined(__x86_64__)
    uintptr_t ip = (uintptr_t)uc->uc_mcontext.gregs[REG_RIP];
#elif defined(__aarch64__)
    uintptr_t ip = (uintptr_t)uc->uc_mcontext.pc;
#else
    uintptr_t ip = 0;
    (void)uc;
#endif
    if (ip < text_lo || ip >= text_hi) return;
    struct timespec t = {0, PAUSE_NS};
    nanosleep(&t, NULL);
}

/* Starts this thread's timer. */
static timer_t start_timer(void) {
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_THREAD_ID;
    ev.sigev_signo = SIGUSR1;
    ev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
    timer_t t;
    CHECK(timer_create(CLOCK_MONOTONIC, &ev, &t) == 0);
    struct itimerspec every = {{0, TICK_NS}, {0, TICK_NS}};
    CHECK(timer_settime(t, 0, &every, NULL) == 0);
    return t;
}

static void *freer(void *arg) {
    timer_t timer = start_timer();
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
    CHECK(timer_delete(timer) == 0);
    atomic_fetch_add(&bad_frees, n);
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
    sa.sa_sigaction = pause_here;
    sa.sa_flags = SA_RESTART | SA_SIGINFO;
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0);
    dl_iterate_phdr(find_allocator, NULL);
    pthread_t c[CHURN], f[FREERS];
    for (int i = 0; i < CHURN; i++)
        CHECK(pthread_create(&c[i], NULL, churn, (void *)(uintptr_t)i) == 0);
    for (int i = 0; i < FREERS; i++)
        CHECK(pthread_create(&f[i], NULL, freer, (void *)(uintptr_t)(i + 1)) == 0);
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
