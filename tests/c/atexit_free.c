/* Frees after main returns: atexit handlers and an ELF destructor free blocks main allocated and
 * allocate new ones, while a detached thread is still allocating. */
#include "check.h"
#include <pthread.h>
#include <string.h>

static unsigned char *for_atexit[100];
static char *for_destructor;
static char *chain;

static void handler_a(void) {
    /* Registered first, so it runs last of the atexit handlers. */
    for (int i = 0; i < 100; i++) {
        CHECK(verify(for_atexit[i], (size_t)i * 50, (uint64_t)i));
        free(for_atexit[i]);
    }
    CHECK(strcmp(chain, "main+b") == 0);
    free(chain);
    printf("atexit_free: handlers done\n");
}

static void handler_b(void) {
    size_t len = strlen(chain);
    chain = realloc(chain, len + 3);
    CHECK(chain != NULL);
    memcpy(chain + len, "+b", 3);
    void *big = malloc(3 << 20);
    CHECK(big != NULL);
    memset(big, 1, 3 << 20);
    free(big);
}

__attribute__((destructor)) static void destructor(void) {
    CHECK(strcmp(for_destructor, "for the destructor") == 0);
    free(for_destructor);
    free(strdup("allocated in a destructor"));
}

static void *background(void *arg) {
    (void)arg;
    for (;;) {
        void *p = malloc(64);
        CHECK(p != NULL);
        free(p);
    }
    return NULL;
}

int main(void) {
    for (int i = 0; i < 100; i++) {
        for_atexit[i] = malloc((size_t)i * 50);
        CHECK(for_atexit[i] != NULL);
        fill(for_atexit[i], (size_t)i * 50, (uint64_t)i);
    }
    for_destructor = strdup("for the destructor");
    chain = strdup("main");
    CHECK(for_destructor && chain);
    CHECK(atexit(handler_a) == 0);
    CHECK(atexit(handler_b) == 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, background, NULL) == 0);
    CHECK(pthread_detach(t) == 0);
    return 0;
}
