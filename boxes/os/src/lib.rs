//! # hakmem-os: the platform layer
//!
//! One job: be the only code that calls the system. Every other box reaches it through this
//! one: memory through the [`Os`] trait (implemented for Linux by [`LibcOs`]), everything else
//! through plain functions:
//!
//! | need | here |
//! |---|---|
//! | mappings, purges, huge-page hints | [`Os`], [`LibcOs`] |
//! | the page size, read once | [`page_size`] |
//! | one monotonic clock (a precise and a cheap read of it), and the thread's CPU time | [`monotonic_ns`], [`monotonic_coarse_ns`], [`thread_cpu_ns`] |
//! | the random secret source | [`secret`] |
//! | the environment, without allocating | [`getenv`] |
//! | thread identity | [`pid`], [`thread_id`], [`thread_gone`] |
//! | letting another thread run | [`yield_now`] |
//! | output without allocating (stderr, a stats file), and ending at once | [`write_stderr`], [`write_fd`], [`abort`] |
//! | the process's memory use | [`resident_bytes`], [`peak_resident_bytes`] |
//!
//! The Linux side lives in one file (`linux.rs`): a port to another OS writes that file again
//! (an `Os` implementation and the functions above); no other box changes.
//!
//! ```
//! let page = hakmem_os::page_size();
//! assert!(page.is_power_of_two() && page >= hakmem_os::PAGE);
//! let t = hakmem_os::monotonic_ns();
//! hakmem_os::yield_now();
//! assert!(hakmem_os::monotonic_ns() >= t);
//! ```
//!
//! ## Invariants
//! - **OS1 (never allocates).** Nothing here allocates or panics: it runs inside `malloc`
//!   (before the allocator is initialised, in a forked child, in a thread's exit). Values are
//!   returned in caller buffers, as plain words, or as slices the system owns.
//! - **OS2 (honest mappings).** An [`Os`] returns only fresh, zeroed, aligned, exclusive ranges
//!   that stay valid until given back (the trait's `# Safety` section); [`LibcOs`] commits what
//!   it maps, so an absurd size is refused cleanly instead of killing on first touch.
//! - **OS3 (read once).** The page size is read from the system once and then never changes;
//!   every call returns the same power of two, at least [`PAGE`].
//! - **OS4 (one clock).** [`monotonic_ns`] and [`monotonic_coarse_ns`] read the same clock,
//!   which never runs backwards; the coarse read is cheaper and may lag by a scheduler tick.
//! - **OS5 (no false death).** [`thread_gone`] is true only when the system says the thread
//!   does not exist: never for a thread of another process, nor for one that may run again.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

mod linux;

use core::ptr::NonNull;
pub use hakmem_stats::{Event, GlobalStats};

pub use linux::{
    abort, getenv, monotonic_coarse_ns, monotonic_ns, page_size, peak_resident_bytes, pid,
    resident_bytes, secret, thread_cpu_ns, thread_gone, thread_id, write_fd, write_stderr,
    yield_now, LibcOs,
};

/// The smallest page size there is (4 KiB): the granularity of the superslab header's layout.
/// The OS's own page size, which may be larger (16 KiB or 64 KiB on some aarch64 kernels), is
/// [`Os::page_size`] ([`page_size`] for the real OS), read at start-up; every mapping, unmapping
/// and purge is rounded to it.
pub const PAGE: usize = 4096;

/// What [`Os::relocate`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relocation {
    /// The pages moved: the target holds them, the source is unmapped.
    Moved,
    /// The source is unchanged; the target is still mapped (its contents may read as zero).
    Refused,
    /// The source is unchanged, but the target range is no longer the caller's.
    LostTarget,
}

/// Where regions come from.
///
/// Every method reports to `stats` each mapping, unmapping, remapping and purge it makes (the
/// transient address-space reservation an aligned mapping is carved from is not counted).
///
/// Memory that backs a user's block is committed honestly: a mapping the OS's overcommit policy
/// would refuse is refused (`None`), so an absurd size from untrusted input is a clean
/// out-of-memory instead of a kill on first touch.
///
/// # Safety
/// The boxes' `unsafe` code trusts what an `Os` returns, so an implementation must guarantee:
/// - [`Os::map`] returns `Some(p)` only for a fresh range `[p, p + len)` that is readable and
///   writable, reads as zero, is aligned to `align`, overlaps no other live range of this `Os`,
///   and stays valid (is never unmapped, moved or reused) until it is passed to [`Os::unmap`]
///   or moved by [`Os::remap`]; [`Os::map_offset`] the same, with `p + offset` aligned to
///   `align` instead of `p`;
/// - [`Os::purge`] returning true leaves the range mapped and reading as zero;
/// - [`Os::remap`] returning `Some(q)` gives a range `[q, q + new_len)` with the same guarantees
///   as `map`'s, aligned to `align`, holding the old contents first;
/// - [`Os::relocate`] returning [`Relocation::Moved`] leaves `[to, to + len)` readable and
///   writable with `from`'s old contents, valid as part of `to`'s mapping, and `from` unmapped;
///   [`Relocation::Refused`] leaves `from` unchanged and `to` mapped, readable and writable;
/// - the ranges outlive every use the caller makes of them, so an `Os` that owns its memory (such
///   as superslab's test `HeapOs`) must be `'static` wherever regions are handed out as
///   `'static`.
///
/// ```compile_fail
/// use core::ptr::NonNull;
/// use hakmem_os::GlobalStats;
/// // A safe impl that returns an address it does not own is refused: the trait is unsafe.
/// struct Liar;
/// impl hakmem_os::Os for Liar {
///     fn map(&self, _: usize, _: usize, _: &GlobalStats) -> Option<NonNull<u8>> {
///         NonNull::new(0x1000 as *mut u8)
///     }
///     unsafe fn unmap(&self, _: NonNull<u8>, _: usize, _: &GlobalStats) {}
///     unsafe fn purge(&self, _: NonNull<u8>, _: usize, _: &GlobalStats) -> bool { false }
/// }
/// ```
pub unsafe trait Os: Sync {
    /// The granularity of this `Os`'s mappings: a power of two, at least [`PAGE`]. Every address
    /// and length the boxes pass to [`Os::map`], [`Os::unmap`], [`Os::purge`] and
    /// [`Os::remap`] is a multiple of it.
    fn page_size(&self) -> usize {
        PAGE
    }

    /// Maps `len` bytes (a multiple of [`Os::page_size`]) aligned to `align` (a power of two, at
    /// least the page size). Fresh memory reads as zero. `None` when the OS refuses.
    fn map(&self, len: usize, align: usize, stats: &GlobalStats) -> Option<NonNull<u8>>;

    /// Maps `len` bytes (a multiple of [`Os::page_size`]) at an address `p` such that
    /// `p + offset` is aligned to `align` (a power of two, at least the page size; `offset` a
    /// multiple of the page size): a block far more aligned than its length gets a mapping of its
    /// own length, with no alignment gap mapped before it. `None` when the OS refuses, or the
    /// address space cannot hold such a range. The default serves an `offset` that is a multiple
    /// of `align` (then `p` itself is aligned) and refuses any other.
    fn map_offset(
        &self,
        len: usize,
        align: usize,
        offset: usize,
        stats: &GlobalStats,
    ) -> Option<NonNull<u8>> {
        if offset & (align - 1) == 0 {
            self.map(len, align, stats)
        } else {
            stats.event(Event::OsRefused, len);
            None
        }
    }

    /// Gives `[ptr, ptr + len)` back to the OS.
    ///
    /// # Safety
    /// The range was mapped by this `Os` (by one call, or by several whose ranges lie end to
    /// end, as regions the lru merged do), page-aligned, and nothing uses it any more.
    unsafe fn unmap(&self, ptr: NonNull<u8>, len: usize, stats: &GlobalStats);

    /// Gives the pages of `[ptr, ptr + len)` back while keeping the mapping; afterwards the
    /// range reads as zero. False when that is not possible (then the contents are unchanged).
    ///
    /// # Safety
    /// The range was mapped by this `Os` (by one call or several end to end, as for
    /// [`Os::unmap`]), page-aligned, and its contents are no longer needed.
    unsafe fn purge(&self, ptr: NonNull<u8>, len: usize, stats: &GlobalStats) -> bool;

    /// Grows the mapping `[ptr, ptr + len)` to `new_len` bytes, keeping its contents without
    /// copying them, at an address aligned to `align`: in place when the range after it is
    /// free, else moved. Returns the new address; `None` when that is not possible (then the
    /// old mapping is unchanged, and the caller copies instead). The default never can; Linux
    /// refuses when the range spans mappings made by separate calls that the kernel kept apart
    /// (the lru merges such neighbours, and a large block may grow over one).
    ///
    /// # Safety
    /// The range was mapped by this `Os` (one call or several end to end), page-aligned, and
    /// nothing else uses it while this runs; after `Some`, the old range must no longer be
    /// used.
    unsafe fn remap(
        &self,
        ptr: NonNull<u8>,
        len: usize,
        new_len: usize,
        align: usize,
        stats: &GlobalStats,
    ) -> Option<NonNull<u8>> {
        let _ = (ptr, len, new_len, align, stats);
        None
    }

    /// Moves the pages of `[from, from + len)` onto `[to, to + len)`, which they replace,
    /// without copying them (Linux: `mremap` with `MREMAP_FIXED`): after
    /// [`Relocation::Moved`], `to` reads what `from` held and `from` is no longer mapped. After
    /// [`Relocation::Refused`] `from` is as it was and `to` is still mapped (reading as before,
    /// or as zero); after [`Relocation::LostTarget`] `from` is as it was but `[to, to + len)` is
    /// no longer the caller's (the OS unmapped it before refusing, and could not map it again):
    /// the caller must neither use nor unmap it. The default always refuses. A move counts as
    /// an [`Event::Mremap`] of 0 bytes and an [`Event::Munmap`] of `from`'s range.
    ///
    /// # Safety
    /// Both ranges were mapped by this `Os`, are page-aligned, do not overlap and belong to the
    /// caller, and nothing else uses them; `[from, from + len)` lies in one mapping call's range.
    unsafe fn relocate(
        &self,
        from: NonNull<u8>,
        to: NonNull<u8>,
        len: usize,
        stats: &GlobalStats,
    ) -> Relocation {
        let _ = (from, to, len, stats);
        Relocation::Refused
    }

    /// Asks for `[ptr, ptr + len)` to be backed by huge pages where the OS can (Linux's
    /// transparent huge pages, `MADV_HUGEPAGE`, which the `madvise` mode of
    /// `/sys/kernel/mm/transparent_hugepage/enabled` waits for; `never` refuses it): a block
    /// filled in 2 MiB pages takes one page fault per 2 MiB instead of 512. A hint that never
    /// changes the contents; the default does nothing.
    ///
    /// # Safety
    /// The range was mapped by this `Os` (one call or several end to end), page-aligned, and
    /// belongs to the caller.
    unsafe fn advise_huge(&self, ptr: NonNull<u8>, len: usize) {
        let _ = (ptr, len);
    }

    /// Takes [`Os::advise_huge`]'s advice back: later faults in `[ptr, ptr + len)` are served
    /// in base pages, and the OS does not gather the range's pages into huge ones behind the
    /// caller's back (Linux: `MADV_NOHUGEPAGE`; khugepaged would otherwise collapse a range that
    /// was partly purged, making its purged pages resident again). Huge pages already there stay
    /// until they are purged or unmapped. A hint that never changes the contents; the default
    /// does nothing.
    ///
    /// # Safety
    /// As for [`Os::advise_huge`].
    unsafe fn advise_no_huge(&self, ptr: NonNull<u8>, len: usize) {
        let _ = (ptr, len);
    }

    /// How many bytes of `[ptr, ptr + len)` are resident (Linux: `mincore`, in pages of
    /// [`Os::page_size`]): pages touched and not purged since. `None` when the OS does not say
    /// (the default).
    ///
    /// # Safety
    /// As for [`Os::advise_huge`].
    unsafe fn resident(&self, ptr: NonNull<u8>, len: usize) -> Option<usize> {
        let _ = (ptr, len);
        None
    }
}

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod tests;
