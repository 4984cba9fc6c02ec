/* malloc_usable_size: 0 for NULL; at least the size asked for every size from 0 to 64 KiB and a
 * spread of larger ones, through malloc, calloc and realloc; and every usable byte really belongs
 * to the block (writing all of them disturbs no neighbour). */
#include "check.h"
#include <malloc.h>
#include <string.h>

#define N 64

int main(void) {
    CHECK(malloc_usable_size(NULL) == 0);
    size_t checked = 0;
    for (size_t size = 0; size <= 65536; size += size < 1024 ? 1 : 251) {
        unsigned char *blocks[N];
        size_t usable[N];
        /* Neighbours of the same size, each filled to its full usable size... */
        for (int i = 0; i < N; i++) {
            blocks[i] = i % 3 == 0 ? calloc(1, size) : malloc(size);
            CHECK(blocks[i] != NULL);
            usable[i] = malloc_usable_size(blocks[i]);
            if (usable[i] < size) {
                fprintf(stderr, "malloc_usable_size(malloc(%zu)) = %zu\n", size, usable[i]);
                abort();
            }
            fill(blocks[i], usable[i], size * N + (size_t)i);
        }
        /* ...still hold their own bytes afterwards. */
        for (int i = 0; i < N; i++) {
            CHECK(verify(blocks[i], usable[i], size * N + (size_t)i));
            free(blocks[i]);
        }
        checked++;
    }
    static const size_t large[] = {100000, 262144, 1 << 20, (1 << 20) + 1, 2 << 20, 3 << 20,
                                   (8 << 20) + 12345};
    for (size_t i = 0; i < sizeof large / sizeof large[0]; i++) {
        unsigned char *p = malloc(large[i]);
        CHECK(p != NULL && malloc_usable_size(p) >= large[i]);
        size_t u = malloc_usable_size(p);
        p[0] = 1;
        p[u - 1] = 2;
        /* Grow and shrink through realloc; the usable size follows the request. */
        unsigned char *q = realloc(p, large[i] * 2);
        CHECK(q != NULL && malloc_usable_size(q) >= large[i] * 2);
        CHECK(q[0] == 1);
        q = realloc(q, 10);
        CHECK(q != NULL && malloc_usable_size(q) >= 10 && q[0] == 1);
        free(q);
        checked++;
    }
    printf("usable ok: %zu sizes\n", checked);
    return 0;
}
