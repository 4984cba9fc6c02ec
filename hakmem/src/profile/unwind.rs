//! Stack capture without allocating: libgcc's DWARF unwinder (`_Unwind_Backtrace`), which
//! Rust's std links on every Linux target. It reads the `.eh_frame` unwind tables that every
//! Rust binary and every C program built by a distribution carries, so it needs no frame
//! pointers; it finds each object's tables through `dl_iterate_phdr` and allocates nothing on
//! that path (were it to, the sampler's re-entry guard serves the allocation unsampled).
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

/// The calling thread's stack, innermost first, without this function's own frame; at most
/// [`MAX_FRAMES`] frames.
#[inline(never)]
pub fn capture() -> Frames {
    let mut f = Frames {
        ips: [0; MAX_FRAMES],
        len: 0,
        skip: 1,
    };
    // SAFETY: `step` only writes into `f`, which outlives the call.
    unsafe { _Unwind_Backtrace(step, (&raw mut f).cast()) };
    f
}
