// The C pair loop for the profiler's off-path test (tests/tests/profile.rs): argv[1] times
// p = malloc(16); p[0] = i; free(p), as the bench's callgrind/c-pair.
#include "check.h"

int main(int argc, char **argv) {
    CHECK(argc == 2);
    long n = atol(argv[1]);
    for (long i = 0; i < n; i++) {
        char *p = malloc(16);
        p[0] = (char)i;
        __asm__ volatile("" : : "r"(p) : "memory");
        free(p);
    }
    printf("prof_pair ok\n");
    return 0;
}
