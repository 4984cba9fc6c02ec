/* Frees a pointer that malloc never returned, chosen by argv[1], after printing it on stdout as
 * "pointer 0x...". The allocator must report it; the harness checks the message and whether the
 * process aborted or (HAKMEM_INVALID_FREE=warn) went on to print "survived". */
#include "check.h"
#include <string.h>
#include <sys/mman.h>

static char global_buf[256];

static void announce(void *p) {
    printf("pointer %p\n", p);
    fflush(stdout);
}

int main(int argc, char **argv) {
    CHECK(argc == 2);
    const char *mode = argv[1];
    char stack_buf[64];
    memset(stack_buf, 1, sizeof stack_buf);
    void *bad = NULL;
    void *keep = NULL;
    if (strcmp(mode, "stack") == 0) {
        bad = stack_buf + 16;
    } else if (strcmp(mode, "global") == 0) {
        bad = global_buf + 32;
    } else if (strcmp(mode, "mmap") == 0) {
        bad = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CHECK(bad != MAP_FAILED);
    } else if (strcmp(mode, "interior") == 0) {
        keep = malloc(64);
        CHECK(keep != NULL);
        bad = (char *)keep + 16;
    } else if (strcmp(mode, "interior-large") == 0) {
        keep = malloc(4 << 20);
        CHECK(keep != NULL);
        bad = (char *)keep + 8192;
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    announce(bad);
    free(bad);
    /* Only reached when the allocator is told to warn and go on. It must still work, and the
     * block the bad pointer pointed into must still be intact and freeable. */
    if (keep) free(keep);
    for (int i = 0; i < 1000; i++) {
        void *p = malloc((size_t)i * 8);
        CHECK(p != NULL);
        free(p);
    }
    printf("survived\n");
    return 0;
}
