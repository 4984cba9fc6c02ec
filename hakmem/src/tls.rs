//! The thread's heap pointer: two words of thread-local storage behind [`get`] and [`set`],
//! the allocation slot ([`raw`]) and the free slot ([`raw_free`]).
//!
//! Every `malloc` reads the first word and every `free` the second, so how they are reached
//! is the largest fixed cost of the fast paths. Two implementations, chosen at compile time:
//!
//! - **`thread_local!`** (the default, and every target without the one below). A `const`
//!   initialiser and no destructor, so in an executable it is the local-exec model: one
//!   `%fs`-relative load. In a shared library rustc uses the general-dynamic model instead: a
//!   call to `__tls_get_addr` (11 instructions) in each function that touches it.
//! - **Initial-exec, by hand** (feature `initial-exec-tls`, on x86_64 and aarch64 Linux with
//!   glibc; the preload library turns it on). Only glibc's handling of a late `dlopen` (a clean
//!   refusal when static TLS is short: T4) has been checked, so other C libraries (musl) keep
//!   `thread_local!`. The slot is an 8-byte `.tdata` symbol defined with `global_asm!`, and read
//!   with `asm!` through a `@GOTTPOFF` (aarch64: `:gottprel:`) GOT entry added to the thread
//!   pointer: two instructions (four on aarch64), no call. The linker emits an
//!   `R_X86_64_TPOFF64` (`R_AARCH64_TLS_TPREL64`) relocation and flags the library
//!   `STATIC_TLS`; in an executable it relaxes the GOT load to an immediate (local-exec).
//!
//! The two words are one 16-byte-aligned pair (one cache line), each read as one word is: the
//! same instructions for either.
//!
//! ## Invariants
//! - **T1 (per thread).** Each thread has its own slots, null (as [`get`] reads it) when the
//!   thread starts.
//! - **T2 (never null underneath).** Each slot holds an empty heap's address (hot_heap H9)
//!   where [`get`] says null or [`DEAD`]: its initial value is the address of `NO_HEAP`,
//!   relocated at load time before any thread reads it (the dynamic linker copies a thread's
//!   TLS image only once relocation is done, as mimalloc's initial-exec heap pointer also
//!   relies on). So the fast paths read them with [`raw`] and [`raw_free`] and use them
//!   without a test.
//! - **T3 (private to one copy).** The `.tdata` symbols are hidden (and carry the crate version
//!   in their names), so two copies of hakmem in one process (a preloaded `libhakmem.so` and
//!   another shared object that links the facade) never bind to each other's slots.
//! - **T4 (the price of initial-exec).** A library built with the feature needs a few bytes of
//!   static TLS. Programs started with it (`LD_PRELOAD`, `DT_NEEDED`) always have them; a late
//!   `dlopen` takes them from glibc's surplus, and when that is used up the `dlopen` fails
//!   cleanly with glibc's "cannot allocate memory in static TLS block". Nothing of hakmem runs
//!   in that case (relocation fails before any constructor), so nothing can crash.
//! - **T5 (two slots).** [`set`] writes the heap (or the empty heap standing for null or
//!   [`DEAD`]) to both slots, except that while heap profiling runs (`crate::profile`) the
//!   allocation slot of a thread whose heap's profiler has started (hot_heap H19) holds that
//!   heap's holder (hot_heap H21: a second set of thread lists that only the profiler fills,
//!   under its credit), or, when no holder could be mapped, a third empty heap, `PROF_HEAP`,
//!   so that every allocation reaches the profiler; [`use_holder`] makes the same switch at a
//!   thread's first slow allocation once profiling runs. The free slot always holds the
//!   thread's heap, so the free fast paths do the same with profiling on and off, and
//!   [`get`] reads it.
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, Ordering};
use hakmem_hot_heap::{EmptyHeap, Heap};

/// Marks a thread whose heap was torn down at exit: later calls take the orphan paths.
pub const DEAD: *mut Heap = core::ptr::dangling_mut::<Heap>();

/// What the slots hold for "no heap yet" (T1): an empty heap (hot_heap H9), so the fast paths
/// run into a miss instead of testing for null.
pub(crate) static NO_HEAP: EmptyHeap = EmptyHeap::new();
/// What the slots hold for "heap gone" ([`DEAD`]): another empty heap.
static GONE_HEAP: EmptyHeap = EmptyHeap::new();
/// What the allocation slot holds while heap profiling runs on a thread whose holder could not
/// be mapped (T5): a third empty heap, so that every allocation misses its fast path and
/// reaches the profiler.
static PROF_HEAP: EmptyHeap = EmptyHeap::new();

/// Set once heap profiling runs (T5), by `crate::profile`; never cleared.
static PROFILING: AtomicBool = AtomicBool::new(false);

/// True while heap profiling runs (T5): one relaxed load, for the slow paths.
#[inline(always)]
pub(crate) fn profiling() -> bool {
    // `--cfg hakmem_no_profile` compiles the profiler's hooks out, for the test that the fast
    // paths are the same instructions with them in and off (tests/tests/profile.rs).
    #[cfg(hakmem_no_profile)]
    return false;
    #[cfg(not(hakmem_no_profile))]
    PROFILING.load(Ordering::Relaxed)
}

/// Heap profiling starts (T5): threads switch their allocation slots at their next slow
/// allocation, and heaps set from now on are switched as they are set.
pub(crate) fn start_profiling() {
    PROFILING.store(true, Ordering::Release);
}

/// This thread's heap pointer: null until [`set`] is called on this thread, [`DEAD`] after its
/// heap is gone. Read from the free slot, which holds the heap itself (T5).
#[inline(always)]
pub fn get() -> *mut Heap {
    let h = imp::get_free();
    if NO_HEAP.is(h) {
        null_mut()
    } else if GONE_HEAP.is(h) {
        DEAD
    } else {
        h
    }
}

/// What the allocation slot holds for `h`, a live heap, while heap profiling runs (T5): its
/// holder once its profiler has started, `PROF_HEAP` when it has no holder, else `h`.
#[inline(always)]
fn allocation_slot(h: *mut Heap) -> *mut Heap {
    // SAFETY: a live heap of this thread.
    match unsafe { ((*h).prof_started(), (*h).prof_holder()) } {
        (false, _) => h,
        (true, Some(hold)) => hold,
        (true, None) => PROF_HEAP.as_ptr(),
    }
}

/// Heap profiling (T5): the allocation slot of this thread, whose live heap is `h` and whose
/// profiler has started on it, holds its holder (or `PROF_HEAP`).
pub(crate) fn use_holder(h: *mut Heap) {
    imp::set(allocation_slot(h));
}

/// The allocation slot as it is, for the allocation fast paths ([`Heap::alloc_fast`],
/// [`Heap::alloc_tiny_fast`]): a live heap of this thread, its holder, or one of the empty
/// heaps (T2, T5).
#[inline(always)]
pub fn raw() -> *mut Heap {
    imp::get()
}

/// The free slot as it is, for the free paths ([`Heap::try_free_owned`], the owner test of
/// the full paths): this thread's heap, or an empty heap (T2, T5).
#[inline(always)]
pub fn raw_free() -> *mut Heap {
    imp::get_free()
}

/// Sets this thread's heap pointer (null and [`DEAD`] included), in both slots (T5).
#[inline(always)]
pub fn set(h: *mut Heap) {
    let h = if h.is_null() {
        NO_HEAP.as_ptr()
    } else if h == DEAD {
        GONE_HEAP.as_ptr()
    } else {
        h
    };
    let live = !(NO_HEAP.is(h) || GONE_HEAP.is(h));
    imp::set(if live && profiling() {
        allocation_slot(h)
    } else {
        h
    });
    imp::set_free(h);
}

#[cfg(not(all(
    feature = "initial-exec-tls",
    target_os = "linux",
    target_env = "gnu",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
mod imp {
    use super::NO_HEAP;
    use core::cell::Cell;
    use hakmem_hot_heap::Heap;

    std::thread_local! {
        // No destructor and a const initialiser: every access is a plain TLS load (allocator
        // facts: the fast form of thread_local!). Thread-exit clean-up is a pthread key. The
        // allocation slot, then the free slot (T5), in one 16-byte variable.
        static HEAP: [Cell<*mut Heap>; 2] =
            const { [Cell::new(NO_HEAP.as_ptr()), Cell::new(NO_HEAP.as_ptr())] };
    }

    #[inline(always)]
    pub fn get() -> *mut Heap {
        HEAP.with(|s| s[0].get())
    }

    #[inline(always)]
    pub fn set(h: *mut Heap) {
        HEAP.with(|s| s[0].set(h))
    }

    #[inline(always)]
    pub fn get_free() -> *mut Heap {
        HEAP.with(|s| s[1].get())
    }

    #[inline(always)]
    pub fn set_free(h: *mut Heap) {
        HEAP.with(|s| s[1].set(h))
    }
}

#[cfg(all(
    feature = "initial-exec-tls",
    target_os = "linux",
    target_env = "gnu",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod imp {
    use core::arch::{asm, global_asm};
    use hakmem_hot_heap::Heap;

    /// The slot's symbol: hidden, and versioned so that two versions of the crate in one link
    /// do not collide either.
    macro_rules! slot {
        () => {
            concat!(
                "__hakmem_heap_tls_",
                env!("CARGO_PKG_VERSION_MAJOR"),
                "_",
                env!("CARGO_PKG_VERSION_MINOR"),
                "_",
                env!("CARGO_PKG_VERSION_PATCH")
            )
        };
    }

    /// The free slot's symbol (T5): the 8 bytes after the allocation slot's.
    macro_rules! free_slot {
        () => {
            concat!(slot!(), "_free")
        };
    }

    // Two 8-byte words per thread, the allocation slot then the free slot (T5), both initially
    // `NO_HEAP`'s address (T2), in one 16-byte-aligned pair (one cache line): `.tdata` is the
    // thread-local `.data` ("T": TLS; each thread's block starts as a copy of it, taken after
    // relocation). Global (the access may be in another codegen unit) but hidden: the
    // reference binds inside the linked object, never across shared objects.
    global_asm!(
        concat!(".pushsection .tdata,\"awT\",%progbits"),
        ".p2align 4",
        concat!(".globl ", slot!()),
        concat!(".hidden ", slot!()),
        concat!(".type ", slot!(), ",%object"),
        concat!(".size ", slot!(), ", 8"),
        concat!(slot!(), ":"),
        ".8byte {empty}",
        concat!(".globl ", free_slot!()),
        concat!(".hidden ", free_slot!()),
        concat!(".type ", free_slot!(), ",%object"),
        concat!(".size ", free_slot!(), ", 8"),
        concat!(free_slot!(), ":"),
        ".8byte {empty}",
        ".popsection",
        empty = sym super::NO_HEAP,
    );

    /// A slot's two accessors: `$get` reads this thread's word at symbol `$sym!()`, `$set`
    /// writes it, each with the initial-exec model's one load of the slot's offset from its GOT
    /// entry and one access at the thread pointer plus that offset.
    macro_rules! accessors {
        ($get:ident, $set:ident, $sym:ident) => {
            #[cfg(target_arch = "x86_64")]
            #[inline(always)]
            pub fn $get() -> *mut Heap {
                let h: *mut Heap;
                // SAFETY: reads this thread's slot (defined above, 8 bytes, 8-aligned) at the
                // thread pointer plus the slot's offset, which the GOT entry holds. No stack, no
                // flags; the result depends only on memory (`readonly`), so equal reads may be
                // merged.
                unsafe {
                    asm!(
                        concat!("mov {h}, qword ptr [rip + ", $sym!(), "@GOTTPOFF]"),
                        "mov {h}, qword ptr fs:[{h}]",
                        h = out(reg) h,
                        options(nostack, preserves_flags, readonly, pure),
                    )
                };
                h
            }

            #[cfg(target_arch = "x86_64")]
            #[inline(always)]
            pub fn $set(h: *mut Heap) {
                // SAFETY: writes this thread's slot, as the reader above reads it. `off` is an
                // early output, so it never shares a register with `h`.
                unsafe {
                    asm!(
                        concat!("mov {off}, qword ptr [rip + ", $sym!(), "@GOTTPOFF]"),
                        "mov qword ptr fs:[{off}], {h}",
                        off = out(reg) _,
                        h = in(reg) h,
                        options(nostack, preserves_flags),
                    )
                };
            }

            #[cfg(target_arch = "aarch64")]
            #[inline(always)]
            pub fn $get() -> *mut Heap {
                let h: *mut Heap;
                // SAFETY: as on x86_64: the thread pointer (tpidr_el0) plus the slot's offset,
                // loaded from its GOT entry.
                unsafe {
                    asm!(
                        "mrs {tp}, tpidr_el0",
                        concat!("adrp {h}, :gottprel:", $sym!()),
                        concat!("ldr {h}, [{h}, #:gottprel_lo12:", $sym!(), "]"),
                        "ldr {h}, [{tp}, {h}]",
                        tp = out(reg) _,
                        h = out(reg) h,
                        options(nostack, preserves_flags, readonly, pure),
                    )
                };
                h
            }

            #[cfg(target_arch = "aarch64")]
            #[inline(always)]
            pub fn $set(h: *mut Heap) {
                // SAFETY: writes this thread's slot, as the reader above reads it; `tp` and
                // `off` are early outputs, distinct from `h`.
                unsafe {
                    asm!(
                        "mrs {tp}, tpidr_el0",
                        concat!("adrp {off}, :gottprel:", $sym!()),
                        concat!("ldr {off}, [{off}, #:gottprel_lo12:", $sym!(), "]"),
                        "str {h}, [{tp}, {off}]",
                        tp = out(reg) _,
                        off = out(reg) _,
                        h = in(reg) h,
                        options(nostack, preserves_flags),
                    )
                };
            }
        };
    }

    // The allocation slot and the free slot (T5).
    accessors!(get, set, slot);
    accessors!(get_free, set_free, free_slot);
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::ptr::null_mut;

    fn fake(n: usize) -> *mut Heap {
        core::ptr::without_provenance_mut(n * 64)
    }

    #[test]
    fn a_new_thread_starts_null_and_keeps_its_own_value() {
        // Threads of our own: the harness's threads may have set their slots already.
        let threads: Vec<_> = (1..=8usize)
            .map(|i| {
                std::thread::spawn(move || {
                    assert!(get().is_null(), "a new thread's slot is null");
                    set(fake(i));
                    for _ in 0..1000 {
                        std::thread::yield_now();
                        assert_eq!(get(), fake(i), "the slot is this thread's own");
                    }
                    set(null_mut());
                    get().is_null()
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap());
        }
    }

    #[test]
    fn set_then_get_in_one_function_sees_each_write() {
        std::thread::spawn(|| {
            let mut seen = [null_mut(); 4];
            for (i, s) in seen.iter_mut().enumerate() {
                set(fake(i + 1));
                *s = get();
            }
            assert_eq!(seen, [fake(1), fake(2), fake(3), fake(4)]);
        })
        .join()
        .unwrap();
    }
}
