/* Honest sizes, aligned blocks and huge alignments, checked against glibc's results.
 *
 *   overcommit      with vm.overcommit_memory=0, malloc, calloc, realloc and posix_memalign of 2x
 *                   to 32x RAM + swap (from sysinfo) fail with NULL and ENOMEM (posix_memalign:
 *                   returns ENOMEM), as the kernel's heuristic refuses such a mapping; malloc
 *                   works after. Under another overcommit policy it prints "skip: ..." and exits 0.
 *   aligned ALIGN   100 000 live posix_memalign(&p, ALIGN, 64), each written; then malloc(100)
 *                   and malloc(8 MiB) still work, usable_size and realloc of the aligned blocks
 *                   work; all freed. Prints "peak_rss_kib N" (VmHWM).
 *   twice ALIGN SIZE        posix_memalign(&p, ALIGN, SIZE), named ("pointer 0x..."), freed twice:
 *                   the allocator reports a double free (with HAKMEM_INVALID_FREE=warn it goes on;
 *                   the program then checks that malloc works and prints "survived").
 *   interior ALIGN SIZE     the same block, freed at p + 64: reported as an invalid pointer.
 *   huge            for every alignment 2^21 .. 2^46: posix_memalign(&p, A, 100) either succeeds
 *                   (aligned, written) or returns ENOMEM; after free and malloc_trim(0) the
 *                   resident set (/proc/self/statm) is back within 1 MiB of where it was. Then
 *                   ten blocks at 2^42 held at once, freed, and the same check; alignments of
 *                   2^47 .. 2^62 (more than the address space) return ENOMEM.
 *
 * Reading /proc goes through open/read on a stack buffer: it never allocates. */
#include "check.h"
#include <fcntl.h>
#include <malloc.h>
#include <stdint.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#define MIB (1024UL * 1024UL)
#define COUNT 100000


static long rss_bytes(void) {
    return read_proc("/proc/self/statm", NULL, 1) * sysconf(_SC_PAGESIZE);
}

static void overcommit(void) {
    long policy = read_proc("/proc/sys/vm/overcommit_memory", NULL, 0);
    if (policy != 0) {
        say_num("skip: vm.overcommit_memory is not 0 but", (size_t)policy);
        return;
    }
    struct sysinfo si;
    CHECK(sysinfo(&si) == 0);
    size_t total = ((size_t)si.totalram + (size_t)si.totalswap) * si.mem_unit;
    say_num("ram_and_swap_mib", total / MIB);
    void *small = malloc(100);
    CHECK(small != NULL);
    void *big = malloc(8 * MIB);
    CHECK(big != NULL);
    for (size_t k = 2; k <= 32; k *= 2) {
        size_t n = opaque(k * total);
        EXPECT_ENOMEM(malloc(n));
        EXPECT_ENOMEM(calloc(k, opaque(total)));
        EXPECT_ENOMEM(calloc(opaque(total), k));
        EXPECT_ENOMEM(realloc(small, n));
        EXPECT_ENOMEM(realloc(big, n));
        EXPECT_ENOMEM(aligned_alloc(2 * MIB, n));
        void *p = (void *)1;
        errno = 0;
        CHECK(posix_memalign(&p, 64 * 1024, n) == ENOMEM);
        CHECK(posix_memalign(&p, 4 * MIB, n) == ENOMEM);
        CHECK(p == (void *)1);
    }
    /* The blocks realloc refused are untouched and still usable. */
    memset(small, 1, 100);
    memset(big, 2, 8 * MIB);
    free(small);
    free(big);
    check_fresh_blocks_disjoint(512, 100, 200000);
    say("overcommit ok");
}

static void aligned(size_t align) {
    static void *blocks[COUNT];
    for (size_t i = 0; i < COUNT; i++) {
        void *p = NULL;
        int rc = posix_memalign(&p, align, 64);
        if (rc != 0) {
            fprintf(stderr, "posix_memalign(%zu, 64) number %zu failed: %d\n", align, i, rc);
            abort();
        }
        CHECK(((uintptr_t)p & (align - 1)) == 0);
        memset(p, (int)i, 64);
        blocks[i] = p;
    }
    /* Medium blocks at the same alignment, beside them. */
    static void *medium[256];
    for (int i = 0; i < 256; i++) {
        int rc = posix_memalign(&medium[i], align, 100000 + (size_t)i * 1000);
        CHECK(rc == 0 && ((uintptr_t)medium[i] & (align - 1)) == 0);
        memset(medium[i], i, 100000);
        CHECK(malloc_usable_size(medium[i]) >= 100000 + (size_t)i * 1000);
    }
    for (int i = 0; i < 256; i++) free(medium[i]);
    /* malloc beside them, small and large. */
    for (int i = 0; i < 64; i++) {
        char *s = malloc(100);
        CHECK(s != NULL);
        memset(s, 3, 100);
        char *l = malloc(8 * MIB);
        CHECK(l != NULL);
        memset(l, 4, 8 * MIB);
        free(l);
        free(s);
    }
    for (size_t i = 0; i < COUNT; i += 997) {
        CHECK(malloc_usable_size(blocks[i]) >= 64);
        CHECK(((unsigned char *)blocks[i])[63] == (unsigned char)i);
    }
    /* realloc keeps the contents (the new block need not keep the alignment). */
    for (size_t i = 0; i < COUNT; i += 1009) {
        unsigned char *q = realloc(blocks[i], 300);
        CHECK(q != NULL);
        CHECK(q[0] == (unsigned char)i && q[63] == (unsigned char)i);
        blocks[i] = q;
    }
    say_num("peak_rss_kib", (size_t)read_proc("/proc/self/status", "VmHWM:", 0));
    for (size_t i = 0; i < COUNT; i++) free(blocks[i]);
    check_fresh_blocks_disjoint(512, 100, 200000);
    say("aligned ok");
}

/* posix_memalign(&p, align, 100) times n, held at once, then freed and trimmed: the resident set
 * comes back within 1 MiB. */
static void huge_round(size_t align, int n) {
    void *p[16];
    CHECK(n <= 16);
    long before = rss_bytes();
    int got = 0;
    for (int i = 0; i < n; i++) {
        p[i] = NULL;
        int rc = posix_memalign(&p[i], align, 100);
        if (rc != 0) {
            CHECK(rc == ENOMEM && p[i] == NULL);
            continue;
        }
        CHECK(((uintptr_t)p[i] & (align - 1)) == 0);
        memset(p[i], 5, 100);
        CHECK(malloc_usable_size(p[i]) >= 100);
        got++;
    }
    for (int i = 0; i < n; i++) free(p[i]);
    malloc_trim(0);
    long after = rss_bytes();
    char line[128];
    snprintf(line, sizeof line, "align 2^%d x%d: %d served, resident %+ld KiB", __builtin_ctzl(align),
             n, got, (after - before) / 1024);
    say(line);
    if (after - before > (long)MIB) {
        fprintf(stderr, "%s: more than 1 MiB left resident\n", line);
        abort();
    }
}

/* The second free, kept out of the optimiser's sight. */
#pragma GCC diagnostic ignored "-Wuse-after-free"
__attribute__((noinline)) static void free_it(void *p) {
    void *volatile copy = p;
    free(copy);
}

static void bad_free(size_t align, size_t size, int interior) {
    void *keep = NULL, *p = NULL;
    /* A neighbour that stays live keeps the block's slab (or region) in use. */
    CHECK(posix_memalign(&keep, align, size) == 0);
    CHECK(posix_memalign(&p, align, size) == 0);
    CHECK(((uintptr_t)p & (align - 1)) == 0);
    memset(p, 1, size);
    if (interior) {
        announce((char *)p + 64);
        free_it((char *)p + 64);
        free(p);
    } else {
        announce(p);
        free(p);
        free_it(p);
    }
    check_fresh_blocks_disjoint(512, 100, 200000);
    free(keep);
    say("survived");
}

static void huge(void) {
    /* Warm up: the allocator's own start-up state is not what is measured. */
    free(malloc(100));
    void *w = NULL;
    CHECK(posix_memalign(&w, 2 * MIB, 100) == 0);
    free(w);
    malloc_trim(0);
    long start = rss_bytes();
    for (int s = 21; s <= 46; s++) huge_round((size_t)1 << s, 1);
    huge_round((size_t)1 << 42, 10);
    for (int s = 47; s <= 62; s++) {
        void *p = (void *)1;
        CHECK(posix_memalign(&p, (size_t)1 << s, 100) == ENOMEM && p == (void *)1);
    }
    malloc_trim(0);
    long growth = rss_bytes() - start;
    say_num("resident_growth_kib", (size_t)(growth > 0 ? growth / 1024 : 0));
    check_fresh_blocks_disjoint(512, 100, 200000);
    say("huge ok");
}

int main(int argc, char **argv) {
    CHECK(argc >= 2);
    if (!strcmp(argv[1], "overcommit")) {
        overcommit();
    } else if (!strcmp(argv[1], "aligned") && argc == 3) {
        size_t align = (size_t)strtoul(argv[2], NULL, 0);
        CHECK(align >= sizeof(void *) && (align & (align - 1)) == 0);
        aligned(align);
    } else if ((!strcmp(argv[1], "twice") || !strcmp(argv[1], "interior")) && argc == 4) {
        size_t align = (size_t)strtoul(argv[2], NULL, 0);
        CHECK(align >= sizeof(void *) && (align & (align - 1)) == 0);
        bad_free(align, (size_t)strtoul(argv[3], NULL, 0), !strcmp(argv[1], "interior"));
    } else if (!strcmp(argv[1], "huge")) {
        huge();
    } else {
        fprintf(stderr, "unknown mode %s\n", argv[1]);
        return 2;
    }
    return 0;
}
