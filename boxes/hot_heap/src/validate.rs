//! Validation: the invariants of this box's `lib.rs` that a heap can check from its own data, in
//! the style of mimalloc's `_mi_page_is_valid`. Run in debug builds and in check mode (H6) at
//! the heap's slow-path boundaries (a refill, an adoption or claim, thread exit), never on the
//! fast paths; a broken invariant is reported as `Corrupt::Invariant` naming it.
use super::*;

/// `Ok` when `ok`, else the invariant `id` broken at `at`.
fn check(ok: bool, id: &'static str, at: usize) -> Result<(), Corrupt> {
    if ok {
        Ok(())
    } else {
        Err(Corrupt::Invariant { id, at })
    }
}

impl Heap {
    /// True when validation runs: in debug builds and in check mode, until a corruption is
    /// reported (after which, with `HAKMEM_INVALID_FREE=warn`, the structures hold dropped
    /// lists and leaked blocks by design, SS18).
    #[inline]
    pub(crate) fn validating(&self) -> bool {
        (cfg!(debug_assertions) || self.ctx().check)
            && self.ctx().corrupted.load(Ordering::Relaxed) == 0
    }

    /// Validates the heap ([`Heap::validate`]) when validation runs, and reports what is broken:
    /// at thread exit.
    #[cold]
    #[inline(never)]
    pub(crate) fn validate_if_checking(&self) {
        if self.validating() {
            if let Err(e) = self.validate() {
                self.ctx().report(e);
            }
        }
    }

    /// Validates what a refill of `class` touched ([`Heap::validate_class`]) when validation
    /// runs, and reports what is broken.
    #[cold]
    #[inline(never)]
    pub(crate) fn validate_class_if_checking(&self, class: SizeClass) {
        if self.validating() {
            if let Err(e) = self.validate_class(class) {
                self.ctx().report(e);
            }
        }
    }

    /// Validates `ss`, just adopted or claimed by this heap, when validation runs, and reports
    /// what is broken.
    #[cold]
    #[inline(never)]
    pub(crate) fn validate_superslab_if_checking(&self, ss: &Superslab) {
        if self.validating() {
            // SAFETY: adopted or claimed: this heap owns it, on its own thread.
            if let Err(e) = unsafe { ss.validate(self.id) } {
                self.ctx().report(e);
            }
        }
    }

    /// Checks the invariants of this heap that its data shows, and of every superslab it owns
    /// (superslab `Superslab::validate`), and returns the first broken one:
    /// - H12: the tiny table is the route box's.
    /// - H6, H11: in check mode every list bound is 0; otherwise each bound is at least its
    ///   base, and the bytes granted beyond the bases are what the bounds say, within the
    ///   budget; no list or cache holds more than its bound.
    /// - H7: the owned list links both ways, its length is `owned_count`, and no superslab with
    ///   a free slab other than slab 0 follows a full one.
    /// - H4: the kept empty superslab is an owned one.
    /// - H8, H16: every entry of the owned cache and the owned-superslab table names a slab or
    ///   superslab on the owned list, in its own slot.
    /// - H3: every ring holds slabs of its class that this heap owns, in use, linked both ways,
    ///   each with a free or never-carved block unless it is the current slab; and every owned
    ///   slab of the class with one is on the ring.
    /// - H1, H16: every block on a thread list is a block start of the list's class below its
    ///   slab's carve mark, in a slab this heap owns (a link that is not: `Corrupt::FreeList`
    ///   naming the block that holds it, as the checked pop reports it).
    ///
    /// Reads the heap, its superslabs' headers and the links of the lists; changes nothing.
    pub(crate) fn validate(&self) -> Result<(), Corrupt> {
        let at = self as *const Heap as usize;
        self.validate_counts(at)?;
        self.validate_owned(at)?;
        for c in SizeClass::all() {
            self.validate_ring(c, true, at)?;
            self.validate_list(c, at)?;
        }
        Ok(())
    }

    /// What a refill of `class` touched, in time proportional to it: the counts and bounds (as
    /// [`Heap::validate`]), the class's ring (H3) with its current slab's metadata and free list
    /// (superslab `Superslab::validate_slab`), and its thread list (H1, H16).
    pub(crate) fn validate_class(&self, class: SizeClass) -> Result<(), Corrupt> {
        let at = self as *const Heap as usize;
        self.validate_counts(at)?;
        self.validate_ring(class, false, at)?;
        if let Some(slab) = self.current(class) {
            let base = slab as *const SlabMeta as usize & !(SS_SIZE - 1);
            // SAFETY: the ring's slabs are ours (just checked, H3), so their superslab is live
            // and ours; its header holds their metadata (SS1).
            unsafe { Superslab::at(base).validate_slab(slab, self.id) }?;
        }
        self.validate_list(class, at)
    }

    /// The tiny table (H12), the list bounds (H6, H11) and the lists' and cache's lengths.
    fn validate_counts(&self, at: usize) -> Result<(), Corrupt> {
        check(self.tiny == TINY_CLASS_OF, "H12", at)?;
        let mut extra = 0;
        for (c, &base) in LIST_CAPS.iter().enumerate() {
            let cap = self.sll.cap(c);
            if self.ctx().check {
                check(cap == 0, "H6", at)?;
            } else {
                check(cap >= base, "H11", at)?;
                extra += (cap - base) as usize * hakmem_route::block_size_of(c);
            }
            check(self.sll.len(c) <= cap, "H11", at)?;
            check(self.cache.len(c) <= self.cache.cap(c), "H11", at)?;
        }
        check(
            extra == self.adapt_extra_bytes() && extra <= adapt::ADAPT_BUDGET,
            "H11",
            at,
        )?;
        Ok(())
    }

    /// The owned list (H7), the kept superslab (H4), the owned cache (H8), the owned-superslab
    /// table (H16), and every owned superslab's own invariants.
    fn validate_owned(&self, at: usize) -> Result<(), Corrupt> {
        let (mut ss, mut prev) = (self.owned, null::<Superslab>());
        let (mut count, mut full_seen, mut kept_seen) = (0, false, self.kept_empty.is_null());
        let (mut slabs_matched, mut bases_matched) = (0, 0);
        // SAFETY: owned superslabs are live and ours (bounded by the count, against a cycle).
        while let Some(s) = unsafe { ss.as_ref() } {
            check(count < self.owned_count, "H7", at)?;
            // SAFETY: ours.
            unsafe { s.validate(self.id) }?;
            // SAFETY: ours.
            let (next, p) = unsafe { s.heap_links() };
            check(core::ptr::eq(p, prev), "H7", at)?;
            // Free slabs, and whether slab 0 (too short for the largest classes) is one of them.
            // SAFETY: ours.
            let (in_use, slab0_used) = unsafe { s.slabs_in_use() }.fold((0, false), |(n, z), x| {
                (n + 1, z || core::ptr::eq(x, &s.slabs[0]))
            });
            let free = SLABS - in_use;
            let other_free = free - usize::from(!slab0_used);
            check(!(other_free > 0 && full_seen), "H7", at)?;
            full_seen |= free == 0;
            kept_seen |= core::ptr::eq(s, self.kept_empty);
            if self.owned_bases[owned_ss_slot(s.base())] == s.base() {
                bases_matched += 1;
            }
            for i in 0..SLABS {
                let base = s.base() + i * SLAB_SIZE;
                let meta = s.slab_of(base as *const u8);
                if core::ptr::eq(self.owned_slabs[owned_slot(slab_number(base))], meta) {
                    slabs_matched += 1;
                }
            }
            count += 1;
            prev = s;
            ss = next;
        }
        check(
            count == self.owned_count && core::ptr::eq(prev, self.owned_tail),
            "H7",
            at,
        )?;
        check(kept_seen, "H4", at)?;
        let slabs = self
            .owned_slabs
            .iter()
            .filter(|&&e| !core::ptr::eq(e, EMPTY_SLOT))
            .count();
        check(slabs == slabs_matched, "H8", at)?;
        let bases = self.owned_bases.iter().filter(|&&b| b != NO_SS).count();
        check(bases == bases_matched, "H16", at)
    }

    /// True when `slab` is a slab of a superslab on this heap's owned list.
    fn owns_slab(&self, slab: *const SlabMeta) -> bool {
        // A slab's metadata lies in its superslab's header (superslab SS1): the owned-superslab
        // table answers at once when it holds that superslab (H16), the owned list otherwise.
        let base = slab as usize & !(SS_SIZE - 1);
        if base != 0 && self.owned_bases[owned_ss_slot(base)] == base {
            // SAFETY: the table names owned superslabs only (H16): live and ours.
            let ss = unsafe { Superslab::at(base) };
            return ss.slabs.as_ptr_range().contains(&slab);
        }
        let mut ss = self.owned;
        // SAFETY: owned superslabs are live and ours.
        while let Some(s) = unsafe { ss.as_ref() } {
            if s.slabs.as_ptr_range().contains(&slab) {
                return true;
            }
            // SAFETY: ours.
            ss = unsafe { s.heap_links().0 };
        }
        false
    }

    /// Class `class`'s ring (H3); with `whole`, also that every owned slab of the class with a
    /// block to hand out is on it (a look at every owned slab, too slow for each refill).
    fn validate_ring(&self, class: SizeClass, whole: bool, at: usize) -> Result<(), Corrupt> {
        let cur = self.current[class.index()];
        let mut in_ring = 0;
        if !cur.is_null() {
            let mut slab = cur;
            loop {
                check(self.owns_slab(slab), "H3", at)?;
                // SAFETY: a slab of a superslab this heap owns.
                let s = unsafe { &*slab };
                // SAFETY: ours.
                let l = unsafe { s.local() };
                check(
                    l.in_use && s.owner() == self.id && s.class() == class.index(),
                    "H3",
                    slab as usize,
                )?;
                // SAFETY: ours.
                let has_free = unsafe { s.has_free() };
                check(core::ptr::eq(slab, cur) || has_free, "H3", slab as usize)?;
                check(
                    !l.next.is_null() && self.owns_slab(l.next),
                    "H3",
                    slab as usize,
                )?;
                // SAFETY: a slab of a superslab this heap owns (just checked).
                let back = unsafe { (*l.next).local().prev };
                check(core::ptr::eq(back, slab), "H3", slab as usize)?;
                in_ring += 1;
                check(in_ring <= self.owned_count * SLABS, "H3", at)?;
                slab = l.next;
                if core::ptr::eq(slab, cur) {
                    break;
                }
            }
        }
        if !whole {
            return Ok(());
        }
        let mut ss = self.owned;
        // SAFETY: owned superslabs are live and ours.
        while let Some(s) = unsafe { ss.as_ref() } {
            // SAFETY: ours.
            for slab in unsafe { s.slabs_in_use() } {
                // SAFETY: ours.
                let (l, has_free) = unsafe { (slab.local(), slab.has_free()) };
                if slab.class() == class.index() && has_free {
                    check(!l.next.is_null(), "H3", slab as *const SlabMeta as usize)?;
                }
            }
            // SAFETY: ours.
            ss = unsafe { s.heap_links().0 };
        }
        Ok(())
    }

    /// Class `class`'s thread list (H1, H16).
    fn validate_list(&self, class: SizeClass, at: usize) -> Result<(), Corrupt> {
        let len = self.sll.len(class.index());
        if len == 0 {
            return Ok(());
        }
        let key = self.sll.link_key();
        let registry = &self.ctx().registry;
        let mut b = self.sll.head(class.index());
        check(
            far_block_ok(&self.owned_slabs, registry, self.id, class, b),
            "H1",
            at,
        )?;
        for _ in 1..len {
            // SAFETY: `b` is a free block of ours on the list, checked below before it is read.
            let next = unsafe { key.next(b) };
            if !far_block_ok(&self.owned_slabs, registry, self.id, class, next) {
                return Err(Corrupt::FreeList(b as usize));
            }
            b = next;
        }
        Ok(())
    }
}
