/* A library that takes FILL bytes of static TLS (initial-exec), for dlopen_late.c: loading a few
 * of these, of falling sizes, uses up glibc's surplus of static TLS. Built by
 * tests/tests/tls_model.rs with -DFILL=<bytes>. */
#ifndef FILL
#error "build with -DFILL=<bytes>"
#endif

__attribute__((tls_model("initial-exec"))) __thread unsigned char late_fill[FILL];

/* Touches this thread's block, so the TLS access (and its relocation) cannot be dropped. */
unsigned char *late_fill_addr(void) {
    late_fill[FILL - 1] = 1;
    return late_fill;
}
