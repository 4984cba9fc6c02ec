// HAKMEM_PROF_SIGNAL=1 under LD_PRELOAD (tests/tests/profile.rs): SIGUSR2 makes hakmem write the
// profile files (from its helper thread) while the program runs. The program holds a sampled
// block, signals itself, waits for the collapsed file of its own pid in argv[1], and leaves with
// _exit, so the exit handler's files never exist: what it finds, the signal wrote.
#include "check.h"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

__attribute__((noinline)) static void *site_signal(size_t n) {
    char *p = malloc(n);
    p[0] = 1;
    return p;
}

int main(int argc, char **argv) {
    CHECK(argc == 2);
    void *held = site_signal(16u << 20); // far above the mean interval: sampled
    char path[4096];
    snprintf(path, sizeof path, "%s/heap.%d.pb.gz.collapsed", argv[1], (int)getpid());
    CHECK(kill(getpid(), SIGUSR2) == 0);
    for (int i = 0; i < 2000 && access(path, R_OK) != 0; i++) {
        struct timespec t = {0, 10 * 1000 * 1000};
        nanosleep(&t, NULL);
    }
    CHECK(access(path, R_OK) == 0);
    // The helper thread may still be writing: wait for the line of this site.
    for (int i = 0; i < 2000; i++) {
        char buf[65536];
        FILE *f = fopen(path, "r");
        size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
        if (f)
            fclose(f);
        buf[n] = 0;
        if (strstr(buf, "site_signal")) {
            printf("prof_signal ok\n");
            fflush(stdout);
            _exit(held != NULL ? 0 : 1);
        }
        struct timespec t = {0, 10 * 1000 * 1000};
        nanosleep(&t, NULL);
    }
    CHECK(!"the signal's profile names site_signal");
    return 1;
}
