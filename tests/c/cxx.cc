// C++ new and delete on libhakmem.so: the operators are hakmem's own (found in libhakmem.so),
// blocks round-trip, and out of memory still runs the new handler, throws std::bad_alloc,
// and gives null to the nothrow forms.
#include <dlfcn.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

static int failures = 0;
#define CHECK(c)                                                      \
    do {                                                              \
        if (!(c)) {                                                   \
            std::fprintf(stderr, "cxx: check failed: %s (line %d)\n", \
                         #c, __LINE__);                               \
            failures++;                                               \
        }                                                             \
    } while (0)

static bool from_hakmem(const char *sym) {
    void *f = dlsym(RTLD_DEFAULT, sym);
    Dl_info info;
    return f && dladdr(f, &info) && info.dli_fname && std::strstr(info.dli_fname, "libhakmem");
}

static int handler_calls = 0;
static void handler() {
    handler_calls++;
    std::set_new_handler(nullptr);  // the retry then throws
}

struct Node {
    Node *next;
    std::uint64_t payload[3];
};

int main() {
    for (const char *s : {"_Znwm", "_Znam", "_ZnwmRKSt9nothrow_t", "_ZnamRKSt9nothrow_t",
                          "_ZdlPv", "_ZdaPv", "_ZdlPvm", "_ZdaPvm"})
        CHECK(from_hakmem(s));

    // Round trips: objects, arrays, sized deletes, size 0, containers.
    Node *list = nullptr;
    for (int i = 0; i < 100000; i++) {
        Node *n = new Node{list, {std::uint64_t(i), 0, 0}};
        list = n;
    }
    std::uint64_t sum = 0;
    while (list) {
        Node *n = list->next;
        sum += list->payload[0];
        delete list;
        list = n;
    }
    CHECK(sum == 100000ull * 99999 / 2);
    for (int i = 0; i < 1000; i++) {
        char *a = new char[i + 1];
        std::memset(a, i & 0xff, i + 1);
        CHECK(a[i] == char(i & 0xff));
        delete[] a;
    }
    int *zero = new int[0];
    int *zero2 = new int[0];
    CHECK(zero && zero2 && zero != zero2);
    delete[] zero;
    delete[] zero2;
    std::vector<std::string> v;
    for (int i = 0; i < 10000; i++)
        v.push_back(std::string(40 + i % 100, 'x'));
    CHECK(v.size() == 10000 && v[9999].size() == 40 + 99);
    void *nt = ::operator new(64, std::nothrow);
    CHECK(nt != nullptr);
    ::operator delete(nt, std::nothrow);

    // Out of memory: the handler runs once, then std::bad_alloc.
    const std::size_t huge = SIZE_MAX / 4;
    std::set_new_handler(handler);
    bool threw = false;
    try {
        char *p = new char[huge];
        p[0] = 1;
    } catch (const std::bad_alloc &) {
        threw = true;
    }
    CHECK(threw && handler_calls == 1);
    threw = false;
    try {
        volatile void *p = ::operator new(huge);
        (void)p;
    } catch (const std::bad_alloc &) {
        threw = true;
    }
    CHECK(threw);
    CHECK(new (std::nothrow) char[huge] == nullptr);
    CHECK(::operator new(huge, std::nothrow) == nullptr);

    if (failures)
        return 1;
    std::printf("cxx ok: %llu\n", (unsigned long long)sum);
    return 0;
}
