/* Out of memory is an error code, never a crash: with RLIMIT_AS set a little above what the
 * process uses, every entry point returns NULL (or ENOMEM from posix_memalign) with errno ENOMEM,
 * the old block survives a failed realloc, and after freeing the program allocates again. */
#include "check.h"
#include <errno.h>
#include <malloc.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define MiB ((size_t)1 << 20)
#define GiB ((size_t)1 << 30)

struct node {
    struct node *next;
};

static size_t vm_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    CHECK(f != NULL);
    unsigned long pages = 0;
    CHECK(fscanf(f, "%lu", &pages) == 1);
    fclose(f);
    return pages * (size_t)sysconf(_SC_PAGESIZE);
}

/* Allocates blocks of `size` until one fails; returns how many succeeded and frees them all. */
static size_t exhaust(size_t size) {
    struct node *head = NULL;
    size_t count = 0;
    for (;;) {
        errno = 0;
        struct node *n = malloc(size);
        if (n == NULL) {
            CHECK(errno == ENOMEM);
            break;
        }
        /* Touch a byte per page so the memory is really in use. */
        for (size_t off = 0; off < size; off += 4096) ((char *)n)[off] = 1;
        n->next = head;
        head = n;
        count++;
        CHECK(count < (size_t)1 << 32);
    }
    while (head) {
        struct node *next = head->next;
        free(head);
        head = next;
    }
    return count;
}

int main(void) {
    /* stdout's buffer is allocated now, not under the limit. */
    printf("oom: start\n");
    fflush(stdout);
    void *warm = malloc(100);
    CHECK(warm != NULL);
    free(warm);

    struct rlimit lim = {vm_bytes() + 96 * MiB, RLIM_INFINITY};
    CHECK(setrlimit(RLIMIT_AS, &lim) == 0);

    EXPECT_ENOMEM(malloc(GiB));
    EXPECT_ENOMEM(calloc(GiB / 4, 4));
    EXPECT_ENOMEM(aligned_alloc(4096, GiB));
    EXPECT_ENOMEM(memalign(64, GiB));
    EXPECT_ENOMEM(valloc(GiB));
    EXPECT_ENOMEM(pvalloc(GiB));

    /* A failed realloc leaves the old block as it was. */
    unsigned char *p = malloc(100);
    CHECK(p != NULL);
    fill(p, 100, 42);
    EXPECT_ENOMEM(realloc(p, GiB));
    EXPECT_ENOMEM(reallocarray(p, GiB / 8, 8));
    CHECK(verify(p, 100, 42));
    free(p);

    /* posix_memalign reports through its return value and leaves errno alone. */
    void *q = (void *)&lim;
    errno = EDOM;
    CHECK(posix_memalign(&q, 64, GiB) == ENOMEM);
    CHECK(errno == EDOM);
    CHECK(q == (void *)&lim);

    /* Run out for real, in several size ranges, and recover each time. */
    size_t sizes[] = {64 * 1024, 4096, 48, 512 * 1024};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t got = exhaust(sizes[i]);
        CHECK(got * sizes[i] >= 16 * MiB);
        void *again = malloc(sizes[i]);
        CHECK(again != NULL);
        free(again);
        printf("oom: %zu blocks of %zu bytes before ENOMEM\n", got, sizes[i]);
    }

    /* Everything was given back: a large block fits again. */
    void *big = malloc(32 * MiB);
    CHECK(big != NULL);
    memset(big, 1, 32 * MiB);
    free(big);
    printf("oom ok\n");
    return 0;
}
