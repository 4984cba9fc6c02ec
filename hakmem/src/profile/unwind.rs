//! Stack capture without allocating: the cached-rule unwinder ([`super::cfi`], PT6) on x86_64,
//! and for the stacks it gives up (and on other targets) libgcc's DWARF unwinder
//! (`_Unwind_Backtrace`), which Rust's std links on every Linux target. Both read the
//! `.eh_frame` unwind tables that every Rust binary and every C program built by a
//! distribution carries, so they need no frame pointers; both find each object's tables
//! through `dl_iterate_phdr` and allocate nothing on that path (were they to, the sampler's
//! re-entry guard serves the allocation unsampled).
use core::ffi::{c_int, c_void};

use super::table::MAX_FRAMES;

/// `_Unwind_Reason_Code` values used here.
const URC_NO_REASON: c_int = 0;
const URC_END_OF_STACK: c_int = 5;

extern "C" {
    fn _Unwind_Backtrace(
        trace: extern "C" fn(*mut c_void, *mut c_void) -> c_int,
        arg: *mut c_void,
    ) -> c_int;
    fn _Unwind_GetIP(ctx: *mut c_void) -> usize;
}

/// Return addresses captured so far.
#[derive(Clone, Copy)]
pub struct Frames {
    pub ips: [usize; MAX_FRAMES],
    pub len: usize,
    skip: usize,
}

extern "C" fn step(ctx: *mut c_void, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Frames` that `capture` passed, alive for the call.
    let f = unsafe { &mut *arg.cast::<Frames>() };
    // SAFETY: `ctx` is the unwinder's context for this frame.
    let ip = unsafe { _Unwind_GetIP(ctx) };
    if ip == 0 {
        return URC_END_OF_STACK;
    }
    if f.skip > 0 {
        f.skip -= 1;
        return URC_NO_REASON;
    }
    f.ips[f.len] = ip;
    f.len += 1;
    if f.len == MAX_FRAMES {
        URC_END_OF_STACK
    } else {
        URC_NO_REASON
    }
}

impl Frames {
    pub(super) fn empty() -> Frames {
        Frames {
            ips: [0; MAX_FRAMES],
            len: 0,
            skip: 0,
        }
    }
}

/// The calling thread's stack, innermost first, without this function's own frame (it is
/// inlined into its caller), written into `f`; at most [`MAX_FRAMES`] frames.
#[inline(always)]
pub fn capture(f: &mut Frames) {
    #[cfg(target_arch = "x86_64")]
    if super::cfi::capture(f) {
        return;
    }
    capture_libgcc(f);
}

/// [`capture`] by libgcc's unwinder alone.
#[inline(never)]
pub fn capture_libgcc(f: &mut Frames) {
    f.len = 0;
    f.skip = 1;
    // SAFETY: `step` only writes into `f`, which outlives the call.
    unsafe { _Unwind_Backtrace(step, (f as *mut Frames).cast()) };
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use std::hint::black_box;

    /// Both unwinders from one function: the first frames are return addresses into it (two
    /// calls, two addresses), the rest the same stack.
    #[inline(never)]
    fn both() -> (Frames, Option<Frames>) {
        super::super::cfi::init();
        let (mut a, mut b) = (Frames::empty(), Frames::empty());
        capture_libgcc(black_box(&mut a));
        let stepped = super::super::cfi::capture(black_box(&mut b));
        (a, stepped.then_some(b))
    }

    fn ips(f: &Frames) -> &[usize] {
        &f.ips[..f.len]
    }

    fn assert_agree(a: &Frames, b: Option<Frames>, at_least: usize) {
        let b = b.expect("the cached-rule unwinder stepped every frame");
        assert!(a.len >= at_least, "libgcc found {} frames", a.len);
        assert_eq!(a.len, b.len, "{:x?}\n{:x?}", ips(a), ips(&b));
        assert_ne!(a.ips[0], b.ips[0], "two calls in `both`");
        assert_eq!(ips(a)[1..], ips(&b)[1..]);
    }

    #[repr(align(64))]
    struct Aligned([u8; 64]);

    /// Frames of three shapes: a large one (`rsp` moved far), a realigned one (the CFA from
    /// `rbp`), and plain recursion; `both` at the bottom, twice (the second walk from the
    /// cached rules).
    #[inline(never)]
    fn deep(n: usize, out: &mut Vec<(Frames, Option<Frames>)>) -> usize {
        let mut big = [0u8; 5000];
        black_box(&mut big);
        if n == 0 {
            out.push(both());
            out.push(both());
            return big[17] as usize;
        }
        let r = if n.is_multiple_of(3) {
            aligned(n - 1, out)
        } else {
            deep(n - 1, out)
        };
        r + black_box(big[n]) as usize + 1
    }

    #[inline(never)]
    fn aligned(n: usize, out: &mut Vec<(Frames, Option<Frames>)>) -> usize {
        let mut a = Aligned([1; 64]);
        black_box(&mut a);
        assert_eq!(&a as *const Aligned as usize % 64, 0);
        deep(n, out) + a.0[n % 64] as usize
    }

    /// Runs `walk` until the cached-rule unwinder stepped each stack it captured: a walk that
    /// meets a rule not yet worked out while another thread works one out (the try-lock, PT6)
    /// gives its stack to libgcc, and the next walk finds more rules cached.
    fn until_stepped(mut walk: impl FnMut() -> Vec<(Frames, Option<Frames>)>, at_least: usize) {
        for _ in 0..1000 {
            let out = walk();
            if out.iter().all(|(_, b)| b.is_some()) {
                for (a, b) in &out {
                    assert_agree(a, *b, at_least);
                }
                return;
            }
        }
        panic!("the cached-rule unwinder gave every walk to libgcc");
    }

    #[test]
    fn the_cached_rules_walk_the_frames_libgcc_walks() {
        until_stepped(
            || {
                let mut out = Vec::new();
                black_box(deep(20, &mut out));
                assert_eq!(out.len(), 2);
                out
            },
            22,
        );
    }

    std::thread_local! {
        static FROM_C: core::cell::RefCell<Vec<(Frames, Option<Frames>)>> =
            const { core::cell::RefCell::new(Vec::new()) };
    }

    extern "C" fn compare(a: *const core::ffi::c_void, b: *const core::ffi::c_void) -> i32 {
        if FROM_C.with_borrow(|v| v.len() < 2) {
            let f = both();
            FROM_C.with_borrow_mut(|v| v.push(f));
        }
        // SAFETY: qsort passes two elements of the `u64` array below.
        let (a, b) = unsafe { (*a.cast::<u64>(), *b.cast::<u64>()) };
        a.cmp(&b) as i32
    }

    /// Through libc's `qsort` (C frames, built by the distribution) into a Rust comparator.
    #[test]
    fn the_cached_rules_walk_c_frames_too() {
        until_stepped(
            || {
                FROM_C.with_borrow_mut(|v| v.clear());
                let mut xs: Vec<u64> = (0..64u64)
                    .map(|i| i.wrapping_mul(0x9e37_79b9) % 1000)
                    .collect();
                // SAFETY: a valid array of `xs.len()` elements of 8 bytes, and a comparator
                // for them.
                unsafe { libc::qsort(xs.as_mut_ptr().cast(), xs.len(), 8, Some(compare)) };
                assert!(xs.windows(2).all(|w| w[0] <= w[1]));
                FROM_C.take()
            },
            4,
        );
    }
}
