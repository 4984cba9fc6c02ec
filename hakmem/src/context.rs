//! The shared context, once start-up has published it: the one module every other part of the
//! facade reads it through, below start-up (`global.rs`), which builds and publishes it.
use core::ptr::{null_mut, NonNull};
use core::sync::atomic::{AtomicPtr, Ordering};
use hakmem_hot_heap::Ctx;

static CTX: AtomicPtr<Ctx> = AtomicPtr::new(null_mut());

/// The shared context, if initialised.
#[inline(always)]
pub fn ctx() -> Option<&'static Ctx> {
    // SAFETY: once published, the context lives for the rest of the program.
    unsafe { CTX.load(Ordering::Acquire).as_ref() }
}

/// Publishes the context start-up built (Release: whoever sees it sees it written).
///
/// # Safety
/// `ctx` is a fully written context that is never unmapped nor published again.
pub unsafe fn publish(ctx: NonNull<Ctx>) {
    CTX.store(ctx.as_ptr(), Ordering::Release);
}
