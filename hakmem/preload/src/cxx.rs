//! C++'s `operator new` and `operator delete` (x86_64), so a C++ program's `new` and `delete`
//! reach hakmem's fast paths directly instead of through libstdc++'s wrappers around `malloc`
//! and `free` (a call, a size-0 fix-up and a null test per `new`, a jump per `delete`).
//!
//! - `delete` (plain, array, sized, nothrow) is `free`.
//! - `new` (plain and array, throwing and nothrow) is `malloc` (which already serves size 0
//!   with a unique block). Only when hakmem has no memory does C++'s rule apply: call the new
//!   handler and retry, then throw `std::bad_alloc` (or return null for the nothrow forms).
//!   hakmem does not do that itself: the operator jumps to the next definition of the same
//!   symbol (libstdc++'s, found with `dlsym(RTLD_NEXT)`), which runs the handler loop over
//!   `malloc` (hakmem's) and throws. The jump is a tail jump from a small assembly thunk, so
//!   no Rust frame is on the stack when the exception unwinds (the library is built with
//!   `panic = "abort"`, and an unwind through a Rust frame would abort).
//! - The aligned forms (C++17 `std::align_val_t`) stay libstdc++'s; they call
//!   `aligned_alloc` and `free`, which are hakmem's.
//! - With no C++ runtime after this library (a program that defines its own operators wins
//!   anyway, being first in the lookup order), an out-of-memory `new` reports and aborts,
//!   since it may neither return null nor throw.
use core::ffi::{c_char, c_void};
use core::sync::atomic::{AtomicUsize, Ordering};
use hakmem::raw;

/// What [`cxx_alloc`] returns in `rax:rdx`: the block (null when hakmem has none) and the
/// size asked, for the thunk's forward.
#[repr(C)]
struct Got {
    block: *mut c_void,
    size: usize,
}

/// The block for `new`, or null when hakmem has none (the thunk then forwards).
extern "C" fn cxx_alloc(size: usize) -> Got {
    let mut p = raw::malloc_fast(size);
    if p.is_null() {
        p = raw::malloc(size);
    }
    Got {
        block: p.cast(),
        size,
    }
}

/// The next definition of one operator, resolved once.
struct Next {
    name: &'static core::ffi::CStr,
    addr: AtomicUsize,
}

impl Next {
    const fn new(name: &'static core::ffi::CStr) -> Self {
        Self {
            name,
            addr: AtomicUsize::new(0),
        }
    }

    /// The next definition's address; reports and aborts when there is none (or only this
    /// library's own), since `new` may neither return null nor throw without it.
    fn get(&self, ours: usize) -> usize {
        let cached = self.addr.load(Ordering::Relaxed);
        if cached != 0 {
            return cached;
        }
        // SAFETY: a valid, NUL-terminated symbol name; RTLD_NEXT looks in the objects loaded
        // after this library.
        let f = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) } as usize;
        if f == 0 || f == ours {
            no_runtime(self.name);
        }
        self.addr.store(f, Ordering::Relaxed);
        f
    }
}

/// Out of memory in a `new` with no C++ runtime to throw: report and abort.
#[cold]
fn no_runtime(name: &core::ffi::CStr) -> ! {
    let msg: &[&[u8]] = &[
        b"hakmem: out of memory in ",
        name.to_bytes(),
        b", and no C++ runtime after libhakmem.so to throw std::bad_alloc\n",
    ];
    for part in msg {
        // SAFETY: writing a valid buffer to stderr; a failure leaves nothing to do.
        unsafe { libc::write(2, part.as_ptr().cast(), part.len()) };
    }
    // SAFETY: always sound.
    unsafe { libc::abort() }
}

/// The next definition of operator `$sym` (named `$name`), kept in `$next` and looked up by
/// `$resolve`, which a thunk calls on its out-of-memory path.
macro_rules! next_definition {
    ($sym:ident, $resolve:ident, $next:ident, $name:literal) => {
        static $next: Next = Next::new($name);

        extern "C" fn $resolve() -> usize {
            $next.get($sym as *const () as usize)
        }
    };
}

/// Defines one throwing `new`: the thunk calls `cxx_alloc` and returns its block, or
/// tail-jumps to the next definition with the size it was given.
macro_rules! cxx_new {
    ($sym:ident, $resolve:ident, $next:ident, $name:literal) => {
        next_definition!($sym, $resolve, $next, $name);

        /// A C++ throwing `operator new` (see the module docs).
        ///
        /// # Safety
        /// As C++'s.
        #[no_mangle]
        #[unsafe(naked)]
        pub unsafe extern "C" fn $sym() {
            core::arch::naked_asm!(
                // Entry: rsp is 8 mod 16, so one slot aligns the call.
                "sub rsp, 8",
                "call {alloc}",
                "add rsp, 8",
                "test rax, rax",
                "jz 2f",
                "ret",
                "2:",
                // Out of memory: keep the size (rdx) across the lookup, then leave.
                "push rdx",
                "call {resolve}",
                "pop rdi",
                // The frame is gone: the next `new` returns (or throws) to our caller.
                "jmp rax",
                alloc = sym cxx_alloc,
                resolve = sym $resolve,
            )
        }
    };
}

/// Defines one nothrow `new`: as [`cxx_new`], keeping the second argument (the nothrow tag)
/// for the forward.
macro_rules! cxx_new_nothrow {
    ($sym:ident, $resolve:ident, $next:ident, $name:literal) => {
        next_definition!($sym, $resolve, $next, $name);

        /// A C++ nothrow `operator new` (see the module docs).
        ///
        /// # Safety
        /// As C++'s.
        #[no_mangle]
        #[unsafe(naked)]
        pub unsafe extern "C" fn $sym() {
            core::arch::naked_asm!(
                // Entry: rsp is 8 mod 16; the tag and one slot keep it aligned for the calls.
                "push rsi",
                "sub rsp, 16",
                "call {alloc}",
                "test rax, rax",
                "jz 2f",
                "add rsp, 24",
                "ret",
                "2:",
                "mov [rsp], rdx",
                "call {resolve}",
                "mov rdi, [rsp]",
                "add rsp, 16",
                "pop rsi",
                "jmp rax",
                alloc = sym cxx_alloc,
                resolve = sym $resolve,
            )
        }
    };
}

cxx_new!(_Znwm, resolve_znwm, NEXT_ZNWM, c"_Znwm");
cxx_new!(_Znam, resolve_znam, NEXT_ZNAM, c"_Znam");
cxx_new_nothrow!(
    _ZnwmRKSt9nothrow_t,
    resolve_znwm_nothrow,
    NEXT_ZNWM_NOTHROW,
    c"_ZnwmRKSt9nothrow_t"
);
cxx_new_nothrow!(
    _ZnamRKSt9nothrow_t,
    resolve_znam_nothrow,
    NEXT_ZNAM_NOTHROW,
    c"_ZnamRKSt9nothrow_t"
);

/// Defines one `delete`: `free` of its first argument; the others (size, nothrow tag) are
/// not needed.
macro_rules! cxx_delete {
    ($($sym:ident ($($arg:ident: $ty:ty),*);)*) => {$(
        /// A C++ `operator delete`: hakmem's `free`.
        ///
        /// # Safety
        /// As C++'s: null, or a block from a matching `new` not deleted yet.
        #[no_mangle]
        pub unsafe extern "C" fn $sym(p: *mut c_void $(, $arg: $ty)*) {
            $(let _ = $arg;)*
            // SAFETY: the caller's contract is `free`'s.
            unsafe { raw::free(p.cast()) }
        }
    )*};
}

cxx_delete! {
    _ZdlPv();
    _ZdaPv();
    _ZdlPvm(size: usize);
    _ZdaPvm(size: usize);
    _ZdlPvRKSt9nothrow_t(tag: *const c_char);
    _ZdaPvRKSt9nothrow_t(tag: *const c_char);
}
