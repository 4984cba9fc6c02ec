//! The OS layer: the platform box `hakmem-os` maps, unmaps and purges memory; this box reaches
//! it through the narrow [`Os`] trait (re-exported here), so loom models can give it
//! heap-backed regions ([`heap::HeapOs`]).
pub use hakmem_os::{LibcOs, Os, PAGE};

/// Heap-backed regions for tests and loom models: no system call, one arena carved in order,
/// and a record of what was handed out and given back, so a model can assert "released exactly
/// once" and size a registry window over the arena.
#[cfg(any(test, loom, feature = "heap-os"))]
pub mod heap {
    extern crate std;
    use super::*;
    use core::ptr::NonNull;
    use hakmem_stats::{Event, GlobalStats};
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
        /// The ranges advised for huge pages and not taken back since.
        huge: Mutex<Vec<(usize, usize)>>,
        /// Advice given to a superslab-aligned chunk whose header word was already written:
        /// advice that came too late for the chunk's first touch.
        late_advice: AtomicUsize,
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
                huge: Mutex::new(Vec::new()),
                late_advice: AtomicUsize::new(0),
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

        /// True while the byte at `addr` is advised for huge pages ([`Os::advise_huge`], not
        /// taken back by [`Os::advise_no_huge`] or an unmap since).
        pub fn is_huge(&self, addr: usize) -> bool {
            let huge = self.huge.lock().unwrap();
            huge.iter().any(|&(p, n)| p <= addr && addr < p + n)
        }

        /// How many times a 2 MiB-aligned chunk was advised for huge pages after its superslab
        /// header's first word had been written (too late to serve its first touch).
        pub fn late_advice(&self) -> usize {
            self.late_advice.load(SeqCst)
        }

        /// Takes `[ptr, ptr + len)` out of the advised ranges, keeping the parts of each outside.
        fn unadvise(&self, ptr: usize, len: usize) {
            let mut huge = self.huge.lock().unwrap();
            let old = core::mem::take(&mut *huge);
            for (p, n) in old {
                if p + n <= ptr || ptr + len <= p {
                    huge.push((p, n));
                    continue;
                }
                if p < ptr {
                    huge.push((p, ptr - p));
                }
                if ptr + len < p + n {
                    huge.push((ptr + len, p + n - ptr - len));
                }
            }
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

        /// Drops `[ptr, ptr + len)` from the live ranges, keeping the parts of each range
        /// outside it (a trim); like munmap on Linux, the range may span mappings that lie end
        /// to end. Panics with `missing` when some of it is not mapped.
        fn forget(&self, ptr: usize, len: usize, missing: &str) {
            let mut l = self.live.lock().unwrap();
            let mut used = Self::cover(&l, ptr, len).expect(missing);
            used.sort_unstable_by(|x, y| y.cmp(x));
            for i in used {
                let (p, n) = l.remove(i);
                if p < ptr {
                    l.push((p, ptr - p));
                }
                if ptr + len < p + n {
                    l.push((ptr + len, p + n - ptr - len));
                }
            }
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
            self.forget(
                a,
                len,
                "unmap of a range that is not mapped (released twice?)",
            );
            self.unmaps.fetch_add(1, SeqCst);
            self.unadvise(a, len);
            stats.event(Event::Munmap, len);
        }

        unsafe fn advise_huge(&self, ptr: NonNull<u8>, len: usize) {
            let a = ptr.as_ptr() as usize;
            self.check_pages("advise_huge", a, len);
            assert!(
                self.is_mapped(a, len),
                "advice for a range that is not mapped"
            );
            let first = a.next_multiple_of(crate::SS_SIZE);
            for chunk in
                (first..(a + len).saturating_sub(crate::SS_SIZE - 1)).step_by(crate::SS_SIZE)
            {
                // SAFETY: a whole chunk inside the mapped range (checked above): the word where
                // a superslab at `chunk` keeps its magic.
                let magic = unsafe { *((chunk + crate::superslab::HEADER_OFFSET) as *const usize) };
                if magic != 0 {
                    self.late_advice.fetch_add(1, SeqCst);
                }
            }
            self.unadvise(a, len);
            self.huge.lock().unwrap().push((a, len));
        }

        unsafe fn advise_no_huge(&self, ptr: NonNull<u8>, len: usize) {
            let a = ptr.as_ptr() as usize;
            self.check_pages("advise_no_huge", a, len);
            assert!(
                self.is_mapped(a, len),
                "advice for a range that is not mapped"
            );
            self.unadvise(a, len);
        }

        unsafe fn relocate(
            &self,
            from: NonNull<u8>,
            to: NonNull<u8>,
            len: usize,
            stats: &GlobalStats,
        ) -> hakmem_os::Relocation {
            let (a, b) = (from.as_ptr() as usize, to.as_ptr() as usize);
            self.check_pages("relocate", a, len);
            self.check_pages("relocate", b, len);
            assert!(
                a + len <= b || b + len <= a,
                "relocate onto an overlapping range"
            );
            assert!(
                self.is_mapped(b, len),
                "relocate onto a range that is not mapped"
            );
            // SAFETY: both ranges are the caller's and apart (checked above); the copy stands
            // in for moving the pages.
            unsafe { core::ptr::copy_nonoverlapping(from.as_ptr(), to.as_ptr(), len) };
            // The source is unmapped, as mremap leaves it (in the stats; not in `unmaps`).
            self.forget(a, len, "relocate of a range that is not mapped");
            stats.event(Event::Mremap, 0);
            stats.event(Event::Munmap, len);
            hakmem_os::Relocation::Moved
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
