/* The allocator under an address-space limit (RLIMIT_AS, what `ulimit -v` sets).
 *
 * Usage: rlimit MODE [KIB]
 *   With KIB the program sets RLIMIT_AS to KIB KiB and execs itself with MODE alone, so the
 *   limit is in force from the new image's first instruction, as after `ulimit -v KIB`.
 *   one      malloc(100) succeeds (run under 200000 KiB)
 *   many     100 000 x malloc(1000) all succeed, each touched (run under 400000 KiB)
 *   recover  the process's first malloc runs under a limit just above what is mapped already;
 *            once the limit is lifted, malloc must succeed: a failed start-up is not permanent
 * Prints "rlimit ok: MODE". Nothing allocates before the mode's first malloc. */
#include "check.h"
#include <fcntl.h>
#include <sys/resource.h>

/* The process's mapped size in bytes, from /proc/self/statm, without allocating. */
static size_t mapped_bytes(void) {
    char buf[128];
    int fd = open("/proc/self/statm", O_RDONLY);
    CHECK(fd >= 0);
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    CHECK(n > 0);
    buf[n] = 0;
    return (size_t)strtoull(buf, NULL, 10) * (size_t)sysconf(_SC_PAGESIZE);
}

static void set_as_limit(rlim_t soft) {
    struct rlimit r;
    CHECK(getrlimit(RLIMIT_AS, &r) == 0);
    CHECK(r.rlim_max == RLIM_INFINITY || soft <= r.rlim_max);
    r.rlim_cur = soft;
    CHECK(setrlimit(RLIMIT_AS, &r) == 0);
}

int main(int argc, char **argv) {
    CHECK(argc == 2 || argc == 3);
    const char *mode = argv[1];
    if (argc == 3) {
        set_as_limit((rlim_t)strtoull(argv[2], NULL, 10) * 1024);
        char *args[] = {argv[0], argv[1], NULL};
        execv("/proc/self/exe", args);
        perror("execv");
        return 2;
    }
    if (strcmp(mode, "one") == 0) {
        char *p = malloc(100);
        CHECK(p != NULL);
        memset(p, 1, 100);
        free(p);
    } else if (strcmp(mode, "many") == 0) {
        enum { N = 100000 };
        static char *blocks[N];
        for (size_t i = 0; i < N; i++) {
            blocks[i] = malloc(1000);
            if (blocks[i] == NULL) {
                say_num("malloc(1000) failed at", i);
                abort();
            }
            blocks[i][0] = (char)i;
            blocks[i][999] = (char)i;
        }
        for (size_t i = 0; i < N; i++) {
            CHECK(blocks[i][0] == (char)i && blocks[i][999] == (char)i);
            free(blocks[i]);
        }
    } else if (strcmp(mode, "recover") == 0) {
        struct rlimit old;
        CHECK(getrlimit(RLIMIT_AS, &old) == 0);
        /* 1 MiB more than is mapped: too little for a 2 MiB superslab. */
        set_as_limit(mapped_bytes() + (1 << 20));
        errno = 0;
        void *p = malloc(100);
        CHECK(p != NULL || errno == ENOMEM); /* failing is allowed; failing wrongly is not */
        int failed = p == NULL;
        CHECK(setrlimit(RLIMIT_AS, &old) == 0);
        void *q = malloc(100);
        CHECK(q != NULL);
        memset(q, 2, 100);
        free(q);
        free(p);
        say(failed ? "first malloc failed under the limit" : "first malloc served under the limit");
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    char line[64];
    snprintf(line, sizeof line, "rlimit ok: %s", mode);
    say(line);
    return 0;
}
