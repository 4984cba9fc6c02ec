//! The OS layer: the only code that maps, unmaps and purges memory. Everything above it goes
//! through the narrow [`Os`] trait, so loom models can give it heap-backed regions.
use crate::sync::{Ordering, StaticAtomicUsize};
use core::ptr::NonNull;
use hakmem_stats::{Event, GlobalStats};

/// The smallest page size there is (4 KiB): the granularity of the superslab header's layout.
/// The OS's own page size, which may be larger (16 KiB or 64 KiB on some aarch64 kernels), is
/// [`Os::page_size`], read at start-up; every mapping, unmapping and purge is rounded to it.
pub const PAGE: usize = 4096;

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
/// - the ranges outlive every use the caller makes of them, so an `Os` that owns its memory (such
///   as the test `HeapOs`) must be `'static` wherever regions are handed out as
///   `'static`.
///
/// ```compile_fail
/// use core::ptr::NonNull;
/// use hakmem_stats::GlobalStats;
/// // A safe impl that returns an address it does not own is refused: the trait is unsafe.
/// struct Liar;
/// impl hakmem_superslab::Os for Liar {
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
}

/// The real OS: anonymous private mappings through libc.
#[derive(Clone, Copy, Debug, Default)]
pub struct LibcOs;

/// The lowest aligned mapping made so far: the next one is asked for just below it. The kernel
/// places mappings top-down, so that address is usually free, and the mapping comes back aligned
/// at the first system call instead of the three an over-map and trim takes.
static HINT: StaticAtomicUsize = StaticAtomicUsize::new(0);

impl LibcOs {
    /// Maps `len` bytes, at `hint` if that range is free (a hint, never MAP_FIXED). The mapping
    /// is committed (no `MAP_NORESERVE`): under the kernel's overcommit policy, a length it
    /// would refuse is refused here, not met by the OOM killer on first touch.
    fn mmap_at(hint: usize, len: usize, stats: &GlobalStats) -> Option<usize> {
        // SAFETY: an anonymous private mapping, without MAP_FIXED, never replaces existing
        // memory: at `hint` only if that range is free, else where the kernel chooses.
        let p = unsafe {
            libc::mmap(
                hint as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            stats.event(Event::OsRefused, len);
            return None;
        }
        stats.event(Event::Mmap, len);
        Some(p as usize)
    }

    /// Maps `len` bytes of metadata (such as a registry leaf): address space that only the
    /// pages touched under live regions ever use, so `MAP_NORESERVE` (never refused by the
    /// overcommit policy, and not counted against it). Page-aligned. Counted by the caller.
    pub fn map_reserved(&self, len: usize) -> Option<NonNull<u8>> {
        // SAFETY: as in `mmap_at`: a fresh anonymous private mapping replaces nothing.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        NonNull::new(p.cast())
    }

    /// Reserves address space for `[start, start + len)` with `start + offset` aligned to
    /// `align`: an inaccessible range (`PROT_NONE`: no memory, and nothing committed, since only
    /// writable private mappings are), over-mapped by the alignment and trimmed. `None`, at once,
    /// when the address space cannot hold it.
    fn reserve_shifted(len: usize, align: usize, offset: usize, page: usize) -> Option<usize> {
        let over = len.checked_add(align)?;
        // SAFETY: a fresh anonymous mapping without MAP_FIXED replaces nothing.
        let q = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                over,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if q == libc::MAP_FAILED {
            return None;
        }
        let q = q as usize;
        // The first `start >= q` with `start + offset` aligned (`offset` taken modulo `align`):
        // `start - q < align`, so the range lies inside the reservation; page-aligned, as `q`,
        // `align` and `offset` are.
        let shift = offset & (align - 1);
        let Some(start) = (q + shift).checked_next_multiple_of(align) else {
            Self::trim(q, over);
            return None;
        };
        let start = start - shift;
        debug_assert!(start.is_multiple_of(page) && start >= q);
        Self::trim(q, start - q);
        Self::trim(start + len, q + over - (start + len));
        Some(start)
    }

    /// Unmaps part of a reservation (or a refused one): never counted, it held no memory.
    fn trim(addr: usize, len: usize) {
        if len == 0 {
            return;
        }
        // SAFETY: whole pages of a reservation this layer made and no one uses.
        let rc = unsafe { libc::munmap(addr as *mut libc::c_void, len) };
        debug_assert_eq!(rc, 0, "munmap of our own reservation cannot fail");
    }

    /// Makes the reservation `[start, start + len)` readable and writable: the kernel commits
    /// it then, under its overcommit policy. On a refusal the reservation (unchanged: a refused
    /// `mprotect` changes nothing) is given back.
    fn commit(start: usize, len: usize, stats: &GlobalStats) -> Option<usize> {
        // SAFETY: `[start, start + len)` is our own reservation, used by nothing; it reads as
        // zero once accessible (fresh anonymous memory).
        let rc = unsafe {
            libc::mprotect(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if rc != 0 {
            Self::trim(start, len);
            stats.event(Event::OsRefused, len);
            return None;
        }
        stats.event(Event::Mmap, len);
        Some(start)
    }

    fn munmap(addr: usize, len: usize, stats: &GlobalStats) {
        if len == 0 {
            return;
        }
        // SAFETY: callers pass whole pages of a mapping this layer made and no longer uses.
        let rc = unsafe { libc::munmap(addr as *mut libc::c_void, len) };
        debug_assert_eq!(rc, 0, "munmap of our own mapping cannot fail");
        stats.event(Event::Munmap, len);
    }
}

// SAFETY: `map` and `map_offset` return fresh anonymous private mappings (zeroed, exclusive),
// placed at the alignment (a trimmed reservation made accessible when the first guess misses); `purge` is MADV_DONTNEED on private anonymous memory (reads zero after); `remap`
// is mremap, which keeps the contents; nothing is unmapped except through `unmap`.
unsafe impl Os for LibcOs {
    /// `sysconf(_SC_PAGESIZE)`, read once (it does not allocate); 4 KiB if that fails.
    fn page_size(&self) -> usize {
        static SIZE: StaticAtomicUsize = StaticAtomicUsize::new(0);
        let cached = SIZE.load(Ordering::Relaxed);
        if cached != 0 {
            return cached;
        }
        // SAFETY: sysconf only reads a value the kernel gave the process at start.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = usize::try_from(page)
            .ok()
            .filter(|p| p.is_power_of_two() && *p >= PAGE)
            .unwrap_or(PAGE);
        SIZE.store(page, Ordering::Relaxed);
        page
    }

    fn map(&self, len: usize, align: usize, stats: &GlobalStats) -> Option<NonNull<u8>> {
        let page = self.page_size();
        debug_assert!(len.is_multiple_of(page) && align.is_power_of_two() && align >= page);
        if align <= page {
            return NonNull::new(Self::mmap_at(0, len, stats)? as *mut u8);
        }
        // First ask for the aligned range just below the lowest one we made (see HINT).
        let low = HINT.load(Ordering::Relaxed);
        let want = low.checked_sub(len).map_or(0, |a| a & !(align - 1));
        let p = Self::mmap_at(want, len, stats)?;
        if p & (align - 1) != 0 {
            // Missed: commit the length over an aligned reservation.
            Self::munmap(p, len, stats);
            let start = self.map_offset(len, align, 0, stats)?.as_ptr() as usize;
            HINT.store(start, Ordering::Relaxed);
            return NonNull::new(start as *mut u8);
        }
        if low == 0 || p < low {
            HINT.store(p, Ordering::Relaxed);
        }
        NonNull::new(p as *mut u8)
    }

    fn map_offset(
        &self,
        len: usize,
        align: usize,
        offset: usize,
        stats: &GlobalStats,
    ) -> Option<NonNull<u8>> {
        let page = self.page_size();
        debug_assert!(len.is_multiple_of(page) && align.is_power_of_two() && align >= page);
        debug_assert!(offset.is_multiple_of(page));
        let Some(start) = Self::reserve_shifted(len, align, offset, page) else {
            stats.event(Event::OsRefused, len);
            return None;
        };
        NonNull::new(Self::commit(start, len, stats)? as *mut u8)
    }

    unsafe fn unmap(&self, ptr: NonNull<u8>, len: usize, stats: &GlobalStats) {
        Self::munmap(ptr.as_ptr() as usize, len, stats);
    }

    unsafe fn remap(
        &self,
        ptr: NonNull<u8>,
        len: usize,
        new_len: usize,
        align: usize,
        stats: &GlobalStats,
    ) -> Option<NonNull<u8>> {
        let old = ptr.as_ptr().cast::<libc::c_void>();
        // In place, if the range after the mapping is free.
        // SAFETY: the caller owns the whole mapping; without MREMAP_MAYMOVE the kernel either
        // extends it where it is or fails and leaves it unchanged.
        let p = unsafe { libc::mremap(old, len, new_len, 0) };
        if p == old {
            stats.event(Event::Mremap, new_len - len);
            return Some(ptr);
        }
        // Else reserve an aligned range (address space only), and move the pages onto it: the
        // grown mapping is committed by mremap, which the overcommit policy may refuse.
        let target = Self::reserve_shifted(new_len, align, 0, self.page_size())?;
        // SAFETY: `target` is our fresh reservation of `new_len` bytes; MREMAP_FIXED replaces it
        // with the old pages (and removes the old mapping) or fails and changes nothing.
        let p = unsafe {
            libc::mremap(
                old,
                len,
                new_len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                target as *mut libc::c_void,
            )
        };
        if p as usize == target {
            stats.event(Event::Mremap, new_len - len);
            return NonNull::new(target as *mut u8);
        }
        // Refused (the overcommit policy, or an old range that spans mappings the kernel kept
        // apart). The reservation is not unmapped here: Linux unmaps an MREMAP_FIXED destination
        // before every check that can fail after the arguments' own (the charge, the old range's
        // checks), so it is gone already, and another thread may have been given that range
        // since. (Only the map-count pre-check, near vm.max_map_count, fails before: then the
        // inaccessible reservation stays, address space without memory.)
        stats.event(Event::OsRefused, new_len);
        None
    }

    unsafe fn advise_huge(&self, ptr: NonNull<u8>, len: usize) {
        // SAFETY: the caller's own mapping; MADV_HUGEPAGE changes how later faults are served,
        // never the contents. A refusal (THP off or unsupported) leaves it as it was.
        unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
    }

    unsafe fn purge(&self, ptr: NonNull<u8>, len: usize, stats: &GlobalStats) -> bool {
        // SAFETY: the caller guarantees the range is ours and its contents are dead. On private
        // anonymous memory MADV_DONTNEED frees the pages at once and later reads see zeros.
        let rc = unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_DONTNEED) };
        stats.event(Event::Madvise, len);
        rc == 0
    }
}

/// Heap-backed regions for tests and loom models: no system call, one arena carved in order,
/// and a record of what was handed out and given back, so a model can assert "released exactly
/// once" and size a registry window over the arena.
#[cfg(any(test, loom, feature = "heap-os"))]
pub mod heap {
    extern crate std;
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Mutex;
    use std::vec::Vec;

    /// An [`Os`] over one zeroed arena (an owned anonymous `memmap2` mapping, so pages are
    /// touched only when used), recording mapped and unmapped ranges. It is test scaffolding,
    /// not a protocol under test, so it uses std's lock and atomics: loom does not see (nor
    /// explore) them.
    pub struct HeapOs {
        /// The arena's first 2 MiB boundary, and its length.
        arena: usize,
        len: usize,
        /// The page size it pretends to have, and checks every range against.
        page: usize,
        /// The mapping the arena lies in; unmapped when the `HeapOs` is dropped, which the
        /// lifetimes of the superslabs made over it prevent while they are in use.
        _map: memmap2::MmapMut,
        next: Mutex<usize>,
        live: Mutex<Vec<(usize, usize)>>,
        unmaps: AtomicUsize,
    }

    impl HeapOs {
        /// An OS whose arena holds `chunks` chunks of 2 MiB; `map` fails once it is used up.
        pub fn new(chunks: usize) -> Self {
            Self::with_page_size(chunks, PAGE)
        }

        /// The same with pages of `page` bytes (a power of two from [`PAGE`] to 2 MiB): every
        /// range it is asked to map, unmap, purge or remap must be a multiple of it, or it
        /// panics. So tests run the boxes as on a 16 KiB- or 64 KiB-page kernel.
        pub fn with_page_size(chunks: usize, page: usize) -> Self {
            assert!(page.is_power_of_two() && (PAGE..=crate::SS_SIZE).contains(&page));
            let len = chunks * crate::SS_SIZE;
            // One chunk more, so that the arena can start on a 2 MiB boundary.
            let map = memmap2::MmapMut::map_anon(len + crate::SS_SIZE).expect("arena mapping");
            let arena = (map.as_ptr() as usize + crate::SS_SIZE - 1) & !(crate::SS_SIZE - 1);
            Self {
                arena,
                len,
                page,
                _map: map,
                next: Mutex::new(arena),
                live: Mutex::new(Vec::new()),
                unmaps: AtomicUsize::new(0),
            }
        }

        /// The arena as `(first chunk index, chunks)`.
        pub fn window(&self) -> (usize, usize) {
            (self.arena >> crate::SS_SHIFT, self.len >> crate::SS_SHIFT)
        }

        /// A registry for this arena's regions, its leaves from the std heap (under loom, in
        /// the model geometry counted from the arena's first chunk).
        pub fn registry(&self) -> hakmem_registry::Registry {
            hakmem_registry::Registry::with_origin(&hakmem_registry::HeapLeaves, self.window().0)
        }

        /// How many ranges were unmapped so far.
        pub fn unmaps(&self) -> usize {
            self.unmaps.load(SeqCst)
        }

        /// True while `[ptr, ptr + len)` lies in mapped ranges (one, or several end to end).
        pub fn is_mapped(&self, ptr: usize, len: usize) -> bool {
            Self::cover(&self.live.lock().unwrap(), ptr, len).is_some()
        }

        /// The indices of the live ranges that together cover `[ptr, ptr + len)` without a gap,
        /// or `None` when some of it is not mapped.
        fn cover(live: &[(usize, usize)], ptr: usize, len: usize) -> Option<Vec<usize>> {
            let mut at = ptr;
            let mut used = Vec::new();
            while at < ptr + len {
                let i = live.iter().position(|&(p, n)| p <= at && at < p + n)?;
                used.push(i);
                at = live[i].0 + live[i].1;
            }
            Some(used)
        }
    }

    impl HeapOs {
        /// Panics unless `[ptr, ptr + len)` is whole pages.
        fn check_pages(&self, what: &str, ptr: usize, len: usize) {
            assert!(
                ptr.is_multiple_of(self.page) && len.is_multiple_of(self.page),
                "{what} of {len:#x} bytes at {ptr:#x}: not whole {:#x}-byte pages",
                self.page
            );
        }
    }

    // SAFETY: regions are carved from the arena, which the HeapOs owns and unmaps only on drop;
    // each is zeroed when handed out and never handed out twice while live.
    unsafe impl Os for HeapOs {
        fn page_size(&self) -> usize {
            self.page
        }

        fn map(&self, len: usize, align: usize, stats: &GlobalStats) -> Option<NonNull<u8>> {
            self.check_pages("map", align, len);
            let end = self.arena + self.len;
            let p = {
                let mut next = self.next.lock().unwrap();
                let p = (*next + align - 1) & !(align - 1);
                let stop = p.checked_add(len).filter(|&s| s <= end)?;
                *next = stop;
                p
            };
            self.live.lock().unwrap().push((p, len));
            stats.event(Event::Mmap, len);
            NonNull::new(p as *mut u8)
        }

        fn map_offset(
            &self,
            len: usize,
            align: usize,
            offset: usize,
            stats: &GlobalStats,
        ) -> Option<NonNull<u8>> {
            self.check_pages("map", align, len);
            self.check_pages("map", offset, 0);
            let end = self.arena + self.len;
            let shift = offset & (align - 1);
            let p = {
                let mut next = self.next.lock().unwrap();
                let p = (*next + shift).checked_next_multiple_of(align)? - shift;
                let stop = p.checked_add(len).filter(|&s| s <= end)?;
                *next = stop;
                p
            };
            self.live.lock().unwrap().push((p, len));
            stats.event(Event::Mmap, len);
            NonNull::new(p as *mut u8)
        }

        unsafe fn unmap(&self, ptr: NonNull<u8>, len: usize, stats: &GlobalStats) {
            let a = ptr.as_ptr() as usize;
            self.check_pages("unmap", a, len);
            {
                let mut l = self.live.lock().unwrap();
                // Like munmap on Linux, one call may span mappings that lie end to end.
                let mut used = Self::cover(&l, a, len)
                    .expect("unmap of a range that is not mapped (released twice?)");
                used.sort_unstable_by(|x, y| y.cmp(x));
                for i in used {
                    let (p, n) = l.remove(i);
                    // Keep the parts outside the unmapped range (a trim).
                    if p < a {
                        l.push((p, a - p));
                    }
                    if a + len < p + n {
                        l.push((a + len, p + n - a - len));
                    }
                }
            }
            self.unmaps.fetch_add(1, SeqCst);
            stats.event(Event::Munmap, len);
        }

        unsafe fn purge(&self, ptr: NonNull<u8>, len: usize, stats: &GlobalStats) -> bool {
            self.check_pages("purge", ptr.as_ptr() as usize, len);
            // SAFETY: the caller guarantees the range is ours and dead.
            unsafe { core::ptr::write_bytes(ptr.as_ptr(), 0, len) };
            stats.event(Event::Madvise, len);
            true
        }
    }
}
