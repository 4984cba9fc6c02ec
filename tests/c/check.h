/* Shared helpers for the preload test programs: a CHECK that names the failed condition, output
 * that never allocates, an overlap check for blocks, and a small deterministic random generator.
 * Nothing here allocates. */
#ifndef HAKMEM_TESTS_CHECK_H
#define HAKMEM_TESTS_CHECK_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHECK(c)                                                                          \
    do {                                                                                  \
        if (!(c)) {                                                                       \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c);         \
            abort();                                                                      \
        }                                                                                 \
    } while (0)

/* Checks that `expr` fails as glibc's allocation functions do: NULL, with errno ENOMEM. */
#define EXPECT_ENOMEM(expr)                                                                       \
    do {                                                                                          \
        errno = 0;                                                                                \
        void *r_ = (expr);                                                                        \
        if (r_ != NULL || errno != ENOMEM) {                                                      \
            fprintf(stderr, "%s:%d: %s gave %p, errno %d (want NULL, ENOMEM)\n", __FILE__,         \
                    __LINE__, #expr, r_, errno);                                                  \
            abort();                                                                              \
        }                                                                                         \
    } while (0)

/* Writes `text` and a newline to stdout with write(2): no stdio buffer, so no allocation (usable
 * before the allocator's first call, and in a process about to abort). */
static inline void say(const char *text) {
    char buf[256];
    int n = snprintf(buf, sizeof buf, "%s\n", text);
    if (n > (int)sizeof buf - 1) n = (int)sizeof buf - 1;
    for (int done = 0; n > 0 && done < n;) {
        ssize_t w = write(1, buf + done, (size_t)(n - done));
        if (w <= 0) break;
        done += (int)w;
    }
}

/* Writes "<key> 0x<hex>" on stdout (NULL is 0x0), without allocating; the harness parses it. */
static inline void say_ptr(const char *key, const void *p) {
    char buf[128];
    snprintf(buf, sizeof buf, "%s 0x%lx", key, (unsigned long)(uintptr_t)p);
    say(buf);
}

/* Writes "<key> <n>" on stdout, without allocating. */
static inline void say_num(const char *key, size_t n) {
    char buf[128];
    snprintf(buf, sizeof buf, "%s %zu", key, n);
    say(buf);
}

/* Names the pointer the allocator is about to be handed ("pointer 0x..."): the harness looks for
 * exactly this address in the allocator's report. */
static inline void announce(const void *p) { say_ptr("pointer", p); }

/* Aborts unless the n blocks [p[i], p[i] + size[i]) are pairwise disjoint: a block handed out
 * twice, or a block carved from memory another block holds, shows up as an overlap. */
static inline void check_disjoint(void *const *p, const size_t *size, size_t n) {
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++) {
            uintptr_t a = (uintptr_t)p[i], b = (uintptr_t)p[j];
            if (a < b + size[j] && b < a + size[i]) {
                fprintf(stderr, "blocks %p (%zu bytes) and %p (%zu bytes) overlap\n", p[i], size[i],
                        p[j], size[j]);
                abort();
            }
        }
}

/* Mallocs n blocks (n <= 8192) whose sizes alternate between a and b, writes to each, checks
 * that they are pairwise disjoint, and frees them: after a bad call the allocator goes on
 * working and hands out no block twice. */
static inline void check_fresh_blocks_disjoint(size_t n, size_t a, size_t b) {
    static void *got[8192];
    static size_t size[8192];
    CHECK(n <= 8192);
    for (size_t i = 0; i < n; i++) {
        size[i] = i % 2 ? a : b;
        got[i] = malloc(size[i]);
        CHECK(got[i] != NULL);
        memset(got[i], (int)i, size[i] < 4096 ? size[i] : 4096);
    }
    check_disjoint(got, size, n);
    for (size_t i = 0; i < n; i++) free(got[i]);
}

/* A value the compiler cannot reason about (keeps absurd sizes from compile-time warnings). */
static inline size_t opaque(size_t x) {
    volatile size_t v = x;
    return v;
}

/* xorshift64*: good enough to pick sizes and fill patterns. */
static inline uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* The byte a block seeded with `seed` holds at offset `i`. */
static inline unsigned char pattern(uint64_t seed, size_t i) {
    return (unsigned char)((seed >> 3) + i * 31u + (i >> 8));
}

static inline void fill(unsigned char *p, size_t n, uint64_t seed) {
    for (size_t i = 0; i < n; i++) p[i] = pattern(seed, i);
}

static inline int verify(const unsigned char *p, size_t n, uint64_t seed) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != pattern(seed, i)) return 0;
    return 1;
}

/* A size mix: mostly small, some medium, a few large (above any slab size). */
static inline size_t pick_size(uint64_t *s) {
    uint64_t r = rng_next(s);
    if (r % 128 == 0) return (size_t)(r >> 20) % (1u << 20) + 65536; /* 64 KiB .. 1 MiB */
    if (r % 8 == 0) return (size_t)(r >> 20) % 65536;                /* 0 .. 64 KiB */
    return (size_t)(r >> 20) % 1024;                                 /* 0 .. 1 KiB */
}

/* The field'th number in `file` (/proc/self/statm: field 1 is the resident pages), or with
 * `key`, the first number after it (status: "VmHWM:"). Reads with read(2): no allocation. */
static inline long read_proc(const char *file, const char *key, int field) {
    char buf[4096];
    int fd = open(file, O_RDONLY);
    CHECK(fd >= 0);
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    CHECK(n > 0);
    buf[n] = 0;
    const char *p = buf;
    if (key) {
        p = strstr(buf, key);
        CHECK(p != NULL);
        p += strlen(key);
    }
    for (int i = 0;; i++) {
        while (*p == ' ' || *p == '\t') p++;
        long v = strtol(p, (char **)&p, 10);
        if (i == field) return v;
    }
}

#endif
