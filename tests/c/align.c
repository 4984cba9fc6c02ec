/* Every aligned entry point against a matrix of alignments and sizes: the pointer is aligned, the
 * usable size covers the request, the whole block can be written and read back, and the block
 * frees. Then the argument errors: EINVAL rules of posix_memalign (errno untouched), of
 * aligned_alloc and memalign, and the page rules of valloc and pvalloc. */
#include "check.h"
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

enum entry { POSIX_MEMALIGN, ALIGNED_ALLOC, MEMALIGN, VALLOC, PVALLOC, ENTRIES };
static const char *const names[ENTRIES] = {"posix_memalign", "aligned_alloc", "memalign", "valloc",
                                           "pvalloc"};

static size_t page;

/* The case being checked, named on stderr if the allocator aborts in the middle of it. */
static char current[128];

static void name_the_case(int sig) {
    (void)sig;
    static const char pre[] = "align: aborted while checking ";
    if (write(2, pre, sizeof pre - 1) < 0 || write(2, current, strlen(current)) < 0) _exit(3);
    signal(SIGABRT, SIG_DFL);
}

static void *get(enum entry e, size_t align, size_t size) {
    void *p = NULL;
    switch (e) {
    case POSIX_MEMALIGN: {
        errno = 0;
        int rc = posix_memalign(&p, align, size);
        CHECK(errno == 0);
        if (rc != 0) {
            fprintf(stderr, "posix_memalign(%zu, %zu) = %d\n", align, size, rc);
            abort();
        }
        return p;
    }
    case ALIGNED_ALLOC: return aligned_alloc(align, size);
    case MEMALIGN: return memalign(align, size);
    case VALLOC: return valloc(size);
    case PVALLOC: return pvalloc(size);
    default: abort();
    }
}

/* Writes the whole block when small; the first and last 4 KiB and a byte per page when large. */
static void write_and_check(unsigned char *p, size_t n, uint64_t seed) {
    if (n <= 65536) {
        fill(p, n, seed);
        CHECK(verify(p, n, seed));
        return;
    }
    fill(p, 4096, seed);
    fill(p + n - 4096, 4096, seed + 1);
    for (size_t off = 4096; off < n - 4096; off += 4096) p[off] = (unsigned char)(off >> 12);
    CHECK(verify(p, 4096, seed));
    CHECK(verify(p + n - 4096, 4096, seed + 1));
    for (size_t off = 4096; off < n - 4096; off += 4096) CHECK(p[off] == (unsigned char)(off >> 12));
}

static void check_one(enum entry e, size_t align, size_t size, uint64_t seed) {
    snprintf(current, sizeof current, "%s(align %zu, size %zu)\n", names[e], align, size);
    unsigned char *p = get(e, align, size);
    if (p == NULL) {
        fprintf(stderr, "%s(align %zu, size %zu) = NULL\n", names[e], align, size);
        abort();
    }
    size_t want_align = (e == VALLOC || e == PVALLOC) ? page : align;
    size_t want_size = e == PVALLOC ? (size + page - 1) / page * page : size;
    if (((uintptr_t)p & (want_align - 1)) != 0 || ((uintptr_t)p & 15) != 0) {
        fprintf(stderr, "%s(align %zu, size %zu) = %p: misaligned\n", names[e], align, size,
                (void *)p);
        abort();
    }
    size_t usable = malloc_usable_size(p);
    if (usable < want_size) {
        fprintf(stderr, "%s(align %zu, size %zu): usable %zu < %zu\n", names[e], align, size,
                usable, want_size);
        abort();
    }
    write_and_check(p, usable, seed);
    free(p);
}

int main(void) {
    page = (size_t)sysconf(_SC_PAGESIZE);
    signal(SIGABRT, name_the_case);
    static const size_t sizes[] = {0,    1,     7,     8,     15,      16,       17,     24,
                                   100,  1000,  4095,  4096,  4097,    10000,    65535,  65536,
                                   65537, 300000, 1 << 20, (1 << 20) + 1, (2 << 20) + 123, 5 << 20};
    size_t cases = 0;
    uint64_t seed = 1;
    for (enum entry e = 0; e < ENTRIES; e++) {
        for (size_t align = 1; align <= ((size_t)16 << 20); align <<= 1) {
            if (e == POSIX_MEMALIGN && align < sizeof(void *)) continue;
            if ((e == VALLOC || e == PVALLOC) && align > 1) break;
            for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
                /* Huge alignments with huge sizes only cost time: sample them. */
                if (align >= ((size_t)4 << 20) && sizes[i] > 4096 && sizes[i] != (2 << 20) + 123)
                    continue;
                check_one(e, align, sizes[i], ++seed);
                cases++;
            }
        }
    }

    /* Many live blocks at once with a big alignment: all distinct and aligned. */
    enum { LIVE = 200 };
    void *live[LIVE];
    for (int i = 0; i < LIVE; i++) {
        live[i] = aligned_alloc(8192, 100);
        CHECK(live[i] != NULL && ((uintptr_t)live[i] & 8191) == 0);
        memset(live[i], i, 100);
    }
    for (int i = 0; i < LIVE; i++) {
        unsigned char *b = live[i];
        for (int k = 0; k < 100; k++) CHECK(b[k] == (unsigned char)i);
        free(live[i]);
    }

    /* posix_memalign: EINVAL unless a power of two multiple of sizeof(void *); errno untouched,
     * *memptr untouched on failure. */
    static const size_t bad[] = {0, 1, 2, 4, 3, 12, 24, 48, 100, 4097, ((size_t)1 << 20) + 8};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        void *p = (void *)&page;
        errno = EDOM;
        int rc = posix_memalign(&p, bad[i], 16);
        if (rc != EINVAL || errno != EDOM || p != (void *)&page) {
            fprintf(stderr, "posix_memalign(%zu): rc %d errno %d\n", bad[i], rc, errno);
            abort();
        }
    }
    /* Huge but valid alignments: ENOMEM, not a crash. */
    void *p = NULL;
    errno = EDOM;
    CHECK(posix_memalign(&p, (size_t)1 << 62, 1) == ENOMEM && errno == EDOM && p == NULL);
    errno = 0;
    CHECK(aligned_alloc((size_t)1 << 62, 1) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(memalign((size_t)1 << 62, 1) == NULL && errno == ENOMEM);

    /* aligned_alloc: an alignment that is not a power of two is EINVAL (as glibc 2.38+). */
    static const size_t not_pow2[] = {0, 3, 24, 48, 1000};
    for (size_t i = 0; i < sizeof not_pow2 / sizeof not_pow2[0]; i++) {
        errno = 0;
        void *q = aligned_alloc(not_pow2[i], 64);
        if (q != NULL || errno != EINVAL) {
            fprintf(stderr, "aligned_alloc(%zu) = %p errno %d\n", not_pow2[i], q, errno);
            abort();
        }
    }
    /* memalign: glibc rounds an alignment that is not a power of two up to the next one. */
    unsigned char *m = memalign(24, 100);
    CHECK(m != NULL && ((uintptr_t)m & 31) == 0 && malloc_usable_size(m) >= 100);
    free(m);
    m = memalign(0, 100);
    CHECK(m != NULL && ((uintptr_t)m & 15) == 0);
    free(m);
    /* pvalloc rounds the size up to a page; pvalloc(0) still returns a block. */
    m = pvalloc(1);
    CHECK(m != NULL && ((uintptr_t)m & (page - 1)) == 0 && malloc_usable_size(m) >= page);
    memset(m, 7, page);
    free(m);
    m = pvalloc(0);
    CHECK(m != NULL && ((uintptr_t)m & (page - 1)) == 0);
    free(m);
    errno = 0;
    CHECK(pvalloc(opaque(SIZE_MAX - page / 2)) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(valloc(opaque(SIZE_MAX - page / 2)) == NULL && errno == ENOMEM);

    printf("align ok: %zu cases\n", cases);
    return 0;
}
