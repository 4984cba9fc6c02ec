/* Hands free, realloc or malloc_usable_size a pointer that is not a live block, after naming it
 * on stdout as "pointer 0x...". The harness checks the allocator's report and whether the
 * process aborted or (HAKMEM_INVALID_FREE=warn) went on to print "survived".
 *
 * Usage: bad_pointer OP KIND [warm]
 *   OP    free | realloc | usable
 *   KIND  pointers malloc never returned:
 *           stack, global, mmap, mmap-aligned (2 MiB-aligned, as a superslab is),
 *           glibc-data (stdin's FILE, inside libc's data);
 *         pointers into blocks:
 *           interior (+16), misaligned (+1), misaligned8 (+8), interior-large (+8192),
 *           large-header (16 bytes before a large block), interior-medium (+8192: a page
 *           boundary inside a 200 KiB block), misaligned-medium (+16 into it), never-carved
 *           (the last block start of a fresh 48-byte block's slab, never handed out);
 *         pointers into the allocator's own regions that no block covers:
 *           superslab-header (64 bytes below the end of the first 64 KiB slab of the 2 MiB
 *           region a 16-byte block lies in: the header sits at the top of slab 0),
 *           unused-slab (the start of slab 16 of the 32 in that region: a process this small
 *           uses a few slabs, from either end);
 *         freed blocks (the block is not the last one freed; its slab stays in use):
 *           freed (realloc to the same size), freed-move (realloc to 1000 bytes)
 *   warm  make one malloc/free first. Without it a foreign KIND's bad call is the process's very
 *         first allocator call (nothing before it allocates: output goes through write(2)).
 *
 * What the program checks itself, once the call returns: realloc gave NULL with ENOMEM (for a
 * freed block it prints what it gave, "realloc returned 0x...", for the harness to judge);
 * malloc_usable_size gave 0 (for a freed block it prints "usable N"); the memory behind a
 * foreign pointer is unchanged; the allocator still works and hands out no block twice (unless
 * realloc handed a freed block back as live, which the harness checks for instead). */
#include "check.h"
#include <malloc.h>
#include <sys/mman.h>

static unsigned char global_buf[256];

int main(int argc, char **argv) {
    CHECK(argc == 3 || (argc == 4 && strcmp(argv[3], "warm") == 0));
    const char *op = argv[1], *kind = argv[2];
    if (argc == 4) free(malloc(1));
    unsigned char stack_buf[64];
    memset(stack_buf, 0xA5, sizeof stack_buf);
    memset(global_buf, 0x5A, sizeof global_buf);
    void *bad = NULL;     /* the pointer handed over */
    void *keep = NULL;    /* a live block the pointer points into, freed at the end */
    void *foreign = NULL; /* memory not ours, whose bytes must survive */
    size_t foreign_len = 0, realloc_to = 100;
    int freed = 0;
    if (strcmp(kind, "stack") == 0) {
        bad = foreign = stack_buf + 16;
        foreign_len = 32;
    } else if (strcmp(kind, "global") == 0) {
        bad = foreign = global_buf + 32;
        foreign_len = 64;
    } else if (strcmp(kind, "mmap") == 0) {
        bad = foreign = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CHECK(bad != MAP_FAILED);
        memset(bad, 0x3C, 1 << 16);
        foreign_len = 1 << 16;
    } else if (strcmp(kind, "mmap-aligned") == 0) {
        /* A foreign region at a 2 MiB boundary: the mask a superslab lookup uses lands on it. */
        size_t two = 2u << 20;
        unsigned char *m = mmap(NULL, 2 * two, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CHECK(m != MAP_FAILED);
        unsigned char *aligned = (unsigned char *)(((uintptr_t)m + two - 1) & ~(uintptr_t)(two - 1));
        memset(aligned, 0x77, 1 << 16);
        bad = foreign = aligned + 4096;
        foreign_len = 4096;
    } else if (strcmp(kind, "glibc-data") == 0) {
        bad = stdin; /* glibc's _IO_2_1_stdin_: static data inside libc */
    } else if (strcmp(kind, "interior") == 0 || strcmp(kind, "misaligned") == 0 ||
               strcmp(kind, "misaligned8") == 0) {
        keep = malloc(64);
        CHECK(keep != NULL);
        size_t off = kind[0] == 'i' ? 16 : kind[10] == '8' ? 8 : 1;
        bad = (char *)keep + off;
    } else if (strcmp(kind, "interior-large") == 0) {
        keep = malloc(4 << 20);
        CHECK(keep != NULL);
        bad = (char *)keep + 8192;
    } else if (strcmp(kind, "interior-medium") == 0 || strcmp(kind, "misaligned-medium") == 0) {
        keep = malloc(200 << 10);
        CHECK(keep != NULL);
        bad = (char *)keep + (kind[0] == 'i' ? 8192 : 16);
    } else if (strcmp(kind, "large-header") == 0) {
        keep = malloc(4 << 20);
        CHECK(keep != NULL);
        bad = (char *)keep - 16;
    } else if (strcmp(kind, "never-carved") == 0) {
        /* The last whole 48-byte block of p's 64 KiB slab: a block start, never handed out. */
        keep = malloc(48);
        CHECK(keep != NULL);
        uintptr_t p = (uintptr_t)keep, slab_end = (p & ~(uintptr_t)0xFFFF) + 0x10000;
        bad = (void *)(p + 48 * ((slab_end - p) / 48 - 1));
    } else if (strcmp(kind, "superslab-header") == 0 || strcmp(kind, "unused-slab") == 0) {
        keep = malloc(16);
        CHECK(keep != NULL);
        uintptr_t region = (uintptr_t)keep & ~(uintptr_t)((2u << 20) - 1);
        bad = (void *)(region + (kind[0] == 's' ? (64u << 10) - 64 : 16 * (64u << 10)));
    } else if (strcmp(kind, "freed") == 0 || strcmp(kind, "freed-move") == 0) {
        void *a = malloc(16), *b = malloc(16);
        keep = malloc(16); /* keeps the slab in use */
        CHECK(a != NULL && b != NULL && keep != NULL);
        free(a);
        free(b); /* a is no longer the last block freed */
        bad = a;
        freed = 1;
        realloc_to = strcmp(kind, "freed") == 0 ? 16 : 1000;
    } else {
        fprintf(stderr, "unknown kind %s\n", kind);
        return 2;
    }
    unsigned char before[32];
    if (foreign_len > sizeof before) foreign_len = sizeof before;
    if (foreign_len) memcpy(before, foreign, foreign_len);
    announce(bad);
    if (strcmp(op, "free") == 0) {
        free(bad);
    } else if (strcmp(op, "realloc") == 0) {
        errno = 0;
        void *r = realloc(bad, realloc_to);
        if (freed) {
            say_ptr("realloc returned", r);
            if (r == bad) {
                /* A freed block handed back as live (HAKMEM_CHECK=0, in place): it is also on a
                 * free list, so the disjointness check below would be about that, not about the
                 * allocator's response to the bad pointer. The harness checks this line. */
                free(keep);
                say("survived");
                return 0;
            }
            if (r != NULL) free(r);
        } else {
            CHECK(r == NULL && errno == ENOMEM);
        }
    } else if (strcmp(op, "usable") == 0) {
        size_t n = malloc_usable_size(bad);
        say_num("usable", n);
        if (!freed) CHECK(n == 0);
    } else {
        fprintf(stderr, "unknown op %s\n", op);
        return 2;
    }
    /* Only reached when the allocator went on. */
    if (foreign_len) CHECK(memcmp(before, foreign, foreign_len) == 0);
    if (keep) free(keep);
    check_fresh_blocks_disjoint(3000, freed ? 16 : 64, 48);
    say("survived");
    return 0;
}
