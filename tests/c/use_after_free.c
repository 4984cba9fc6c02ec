/* A write after free into a free block's first word, where the allocator keeps its link: the
 * program frees two blocks (b on top of the free list, linked to a), names b on stdout as
 * "pointer 0x...", then writes WORD into b's first word through the dangling pointer, as a program
 * that clears or self-links a node it has already freed does. The allocator must never take that
 * word for a link to b itself, which would hand b out from every later malloc of its size: it
 * reports the corrupted link when it next uses it; with HAKMEM_INVALID_FREE=warn the program
 * goes on, takes many blocks of the same size and keeps them all, checks that no address comes
 * back while it is held (each block is tagged with its index, so a block handed out twice loses
 * a tag), and prints "survived". glibc aborts here ("malloc(): unaligned tcache chunk detected").
 *
 * Usage: use_after_free WORD
 *   WORD  zero  0 (a "cleared" next pointer)
 *         self  b's own address (a node linked to itself)
 */
#include "check.h"

enum { SIZE = 16, KEEP = 1000 };

static void *got[KEEP];

int main(int argc, char **argv) {
    CHECK(argc == 2);
    void *a = malloc(SIZE), *b = malloc(SIZE);
    CHECK(a != NULL && b != NULL);
    free(a);
    free(b);
    announce(b);
    volatile uintptr_t *word = (volatile uintptr_t *)b;
    if (strcmp(argv[1], "zero") == 0) {
        *word = 0;
    } else if (strcmp(argv[1], "self") == 0) {
        *word = (uintptr_t)b;
    } else {
        fprintf(stderr, "unknown word %s\n", argv[1]);
        return 2;
    }
    for (size_t i = 0; i < KEEP; i++) {
        unsigned char *q = malloc(SIZE);
        CHECK(q != NULL);
        memcpy(q, &i, sizeof i);
        got[i] = q;
    }
    for (size_t i = 0; i < KEEP; i++) {
        size_t tag;
        memcpy(&tag, got[i], sizeof tag);
        CHECK(tag == i);
    }
    size_t sizes[KEEP];
    for (size_t i = 0; i < KEEP; i++) sizes[i] = SIZE;
    check_disjoint(got, sizes, KEEP);
    for (size_t i = 0; i < KEEP; i++) free(got[i]);
    check_fresh_blocks_disjoint(512, SIZE, 48);
    say("survived");
    return 0;
}
