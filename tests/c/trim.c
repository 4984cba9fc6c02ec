/* Memory given back: malloc_trim and the background purge (HAKMEM_BACKGROUND_PURGE_MS).
 *
 *   trim          after 200 x 1 MiB written and freed, malloc_trim(0) returns 1 and brings the
 *                 resident set back within 8 MiB of what it was before; a second call returns 0.
 *   idle          the same burst, then no allocator call at all: polls the resident set (for up
 *                 to 20 s) until it is back within 24 MiB, and says how long that took.
 *   threads       prints how many threads the process has at the start of main.
 *   dlopen LIB    dlopens LIB (libhakmem.so), then prints how many threads the process has.
 *
 * Reading /proc goes through open/read on a stack buffer: the polling itself never allocates. */
#include "check.h"
#include <dlfcn.h>
#include <fcntl.h>
#include <malloc.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024L * 1024L)
#define BURST 200


static long rss(void) { return read_proc("/proc/self/statm", NULL, 1) * sysconf(_SC_PAGESIZE); }

static long threads(void) { return read_proc("/proc/self/status", "Threads:", 0); }

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* 200 x 1 MiB, each written in full, then all freed. */
static void burst(void) {
    static char *blocks[BURST];
    for (int i = 0; i < BURST; i++) {
        blocks[i] = malloc(MIB);
        CHECK(blocks[i] != NULL);
        memset(blocks[i], i + 1, MIB);
    }
    for (int i = 0; i < BURST; i++) free(blocks[i]);
}

int main(int argc, char **argv) {
    CHECK(argc >= 2);
    const char *mode = argv[1];
    if (!strcmp(mode, "threads")) {
        printf("threads %ld\n", threads());
        return 0;
    }
    if (!strcmp(mode, "dlopen")) {
        CHECK(argc == 3);
        void *lib = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
        CHECK(lib != NULL);
        printf("threads %ld\n", threads());
        return 0;
    }
    printf("start\n");
    fflush(stdout);
    long base = rss();
    burst();
    long freed = rss();
    if (!strcmp(mode, "trim")) {
        CHECK(malloc_trim(0) == 1);
        long after = rss();
        printf("base %ld MiB, after the frees %ld MiB, after malloc_trim %ld MiB\n", base / MIB,
               freed / MIB, after / MIB);
        CHECK(after <= base + 8 * MIB);
        CHECK(malloc_trim(0) == 0);
        printf("trim ok\n");
        return 0;
    }
    CHECK(!strcmp(mode, "idle"));
    long start = now_ms();
    long now = rss();
    while (now > base + 24 * MIB && now_ms() - start < 20000) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
        now = rss();
    }
    printf("base %ld MiB, after the frees %ld MiB, back to %ld MiB after %ld ms\n", base / MIB,
           freed / MIB, now / MIB, now_ms() - start);
    CHECK(now <= base + 24 * MIB);
    printf("idle ok\n");
    return 0;
}
