/* A heap overflow into a free neighbour: the program writes past the end of a live block into
 * the first word of the block after it, which is free, after naming that free block on stdout as
 * "pointer 0x...". The allocator must notice the corrupted link when it next uses it, and report
 * it; with HAKMEM_INVALID_FREE=warn the program goes on, checks that malloc never hands out an
 * address outside the heap (the static array the forged link names), nor a live block, nor a
 * block twice, and prints "survived".
 *
 * Usage: overflow WHAT WHERE
 *   WHAT   byte     the link's low byte becomes the live block's (a raw link would then lead
 *                   to the live block), or, when it holds that byte already, the byte of the
 *                   block before
 *          ascii    8 bytes of 'A'
 *          address  8 bytes holding the address of a static array
 *   WHERE  small    32-byte blocks; the neighbour sits on the thread's free list
 *          remote   32-byte blocks; the neighbour was freed by another thread (on its slab's
 *                   remote stack) before the overflow
 *          medium   200 KiB blocks (no link inside a medium block: the overflow is harmless)
 */
#include "check.h"
#include <pthread.h>

enum { SMALL = 32, MEDIUM = 200 << 10, CANDIDATES = 64, AFTER = 5000 };

static _Alignas(64) unsigned char target[4096];
static void *got[AFTER];

static void *free_it(void *p) {
    free(p);
    return NULL;
}

/* The overflow: `size` bytes of user data in `a`, then the bytes past its end. The write goes
 * through a volatile pointer, so the compiler keeps it as written. */
static void overflow(unsigned char *a, size_t size, const char *what) {
    volatile unsigned char *past = a + size;
    if (strcmp(what, "byte") == 0) {
        /* The live block's low byte: a raw link to the next block then names the live block.
         * A stored word may hold that byte already (then writing it changes nothing): the
         * overflow then writes the byte of the block before `a`. */
        unsigned char low = (unsigned char)(uintptr_t)a;
        past[0] = past[0] == low ? (unsigned char)(low - size) : low;
    } else if (strcmp(what, "ascii") == 0) {
        for (int i = 0; i < 8; i++) past[i] = 'A';
    } else if (strcmp(what, "address") == 0) {
        uintptr_t t = (uintptr_t)target;
        for (int i = 0; i < 8; i++) past[i] = (unsigned char)(t >> (8 * i));
    } else {
        fprintf(stderr, "unknown overflow %s\n", what);
        exit(2);
    }
}

/* Three consecutive blocks a, b = a + size, c = a + 2 * size, in one 256-byte span (so a raw
 * link's low byte is all that tells a from c), out of CANDIDATES fresh ones, in whatever order
 * they came (HAKMEM_CHECK=1 hands a batch out from its top); the rest are freed. */
static void three_in_a_row(size_t size, unsigned char **abc) {
    static void *p[CANDIDATES];
    for (int i = 0; i < CANDIDATES; i++) CHECK((p[i] = malloc(size)) != NULL);
    int at[3] = {-1, -1, -1};
    for (int i = 0; i < CANDIDATES && at[2] < 0; i++) {
        uintptr_t a = (uintptr_t)p[i];
        if (a >> 8 != (a + 2 * size) >> 8) continue;
        at[0] = i;
        at[1] = at[2] = -1;
        for (int j = 0; j < CANDIDATES; j++) {
            if ((uintptr_t)p[j] == a + size) at[1] = j;
            if ((uintptr_t)p[j] == a + 2 * size) at[2] = j;
        }
        if (at[1] < 0) at[2] = -1;
    }
    CHECK(at[2] >= 0);
    for (int i = 0; i < CANDIDATES; i++)
        if (i != at[0] && i != at[1] && i != at[2]) free(p[i]);
    for (int i = 0; i < 3; i++) abc[i] = p[at[i]];
}

/* After the overflow: `n` blocks of `size`, none in the static array, none the live block `a`,
 * each tagged with its index and checked afterwards (a block handed out twice loses a tag). */
static void take_blocks(size_t n, size_t size, const unsigned char *a) {
    for (size_t i = 0; i < n; i++) {
        unsigned char *q = malloc(size);
        CHECK(q != NULL);
        CHECK(!(q + size > target && q < target + sizeof target));
        CHECK(!(q + size > a && q < a + size));
        memcpy(q, &i, sizeof i);
        got[i] = q;
    }
    for (size_t i = 0; i < n; i++) {
        size_t tag;
        memcpy(&tag, got[i], sizeof tag);
        CHECK(tag == i);
    }
    for (size_t i = 0; i < n; i++) free(got[i]);
}

int main(int argc, char **argv) {
    CHECK(argc == 3);
    const char *what = argv[1], *where = argv[2];
    unsigned char *abc[3];
    size_t size = SMALL, n = 64;
    if (strcmp(where, "small") == 0) {
        three_in_a_row(size, abc);
        /* b on top of the thread's list, linked to c. */
        free(abc[2]);
        free(abc[1]);
    } else if (strcmp(where, "remote") == 0) {
        three_in_a_row(size, abc);
        free(abc[2]);
        pthread_t t;
        CHECK(pthread_create(&t, NULL, free_it, abc[1]) == 0);
        CHECK(pthread_join(t, NULL) == 0);
        /* Enough blocks that the owner runs out of its slab and drains the remote stack. */
        n = AFTER;
    } else if (strcmp(where, "medium") == 0) {
        size = MEDIUM;
        CHECK((abc[0] = malloc(size)) != NULL && (abc[1] = malloc(size)) != NULL);
        CHECK(abc[1] == abc[0] + size);
        free(abc[1]);
        n = 8;
    } else {
        fprintf(stderr, "unknown place %s\n", where);
        return 2;
    }
    memset(abc[0], 0x5a, size);
    announce(abc[1]);
    overflow(abc[0], size, what);
    take_blocks(n, size, abc[0]);
    free(abc[0]);
    check_fresh_blocks_disjoint(512, SMALL, 48);
    say("survived");
    return 0;
}
