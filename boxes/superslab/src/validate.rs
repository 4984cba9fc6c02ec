//! Validation: the invariants of this box's `lib.rs` that the owner can check from a superslab's
//! header and its slabs' metadata, in the style of mimalloc's `_mi_page_is_valid`. Slow (it
//! walks every free list): for debug builds and check mode, at slow-path boundaries only.
use super::{Superslab, HEADER_OFFSET, MAGIC, OWNED};
use crate::slab::{exact_division, Corrupt, SlabMeta};
use crate::sync::Ordering;
use crate::{SLABS, SLAB_SHIFT, SLAB_SIZE};

/// A broken invariant `id` at `at`.
fn broken(id: &'static str, at: usize) -> Corrupt {
    Corrupt::Invariant { id, at }
}

/// `Ok` when `ok`, else the invariant `id` broken at `at`.
fn check(ok: bool, id: &'static str, at: usize) -> Result<(), Corrupt> {
    if ok {
        Ok(())
    } else {
        Err(broken(id, at))
    }
}

impl Superslab {
    /// Checks the invariants of this box that hold for a superslab owned by the heap `owner`:
    /// its header (SS2 magic, SS3 a reference held, SS5 state and owner, SS17 on no abandoned
    /// list), its slab masks (SS8 zero and SS16 aged slabs are free ones), and every slab
    /// (as [`Superslab::validate_slab`] checks one). The first broken one comes back as
    /// `Corrupt::Invariant` naming it and the structure, or, for a link that fails its check,
    /// as `Corrupt::FreeList` naming the block that holds it, as the walks report it (SS18).
    /// Reads only the header and the free lists' links; changes nothing.
    ///
    /// # Safety
    /// The caller owns the superslab (SS5): it is `owner`, or holds it exclusively.
    pub unsafe fn validate(&self, owner: usize) -> Result<(), Corrupt> {
        let at = self.base();
        check(self.magic == MAGIC, "SS2", at)?;
        check(self.refcount.load(Ordering::Relaxed) >= 1, "SS3", at)?;
        check(
            self.state.load(Ordering::Relaxed) == OWNED && self.owner() == owner,
            "SS5",
            at,
        )?;
        check(self.list.load(Ordering::Relaxed) == 0, "SS17", at)?;
        // SAFETY: the caller owns the superslab, so nobody writes `local` meanwhile.
        let (free, zero, aged) = self
            .local
            .with(|l| unsafe { ((*l).free_slabs, (*l).zero_slabs, (*l).aged_slabs) });
        check(zero & !free == 0, "SS8", at)?;
        check(aged & !(free & !zero) == 0, "SS16", at)?;
        for (i, slab) in self.slabs.iter().enumerate() {
            // SAFETY: the caller owns the superslab and so its slabs.
            unsafe { self.check_slab(i, slab, free & (1 << i) != 0, owner) }?;
        }
        Ok(())
    }

    /// Checks one slab of this superslab for the heap `owner`, as [`Superslab::validate`] checks
    /// each: the cheaper look a refill takes at the slab it is about to use. A `slab` that is
    /// not one of this superslab's breaks SS1.
    ///
    /// # Safety
    /// The caller owns the superslab (SS5).
    pub unsafe fn validate_slab(&self, slab: &SlabMeta, owner: usize) -> Result<(), Corrupt> {
        let i = self.slab_index(slab);
        if i >= SLABS || !core::ptr::eq(&self.slabs[i], slab) {
            return Err(broken("SS1", slab as *const SlabMeta as usize));
        }
        // SAFETY: the caller owns the superslab.
        let free = self.local.with(|l| unsafe { (*l).free_slabs }) & (1 << i) != 0;
        // SAFETY: the caller owns the superslab and so its slabs.
        unsafe { self.check_slab(i, slab, free, owner) }
    }

    /// Checks slab `i` of this superslab, free in the superslab's mask or not, for the heap
    /// `owner`: its number (SS13); a free slab is out of use, with no block out, no carve mark
    /// and no owner (SS4, SS10); an in-use slab is `owner`'s (SS5), starts at its base and
    /// fits in it (SS14), its counts agree (SS4: blocks out plus blocks on the free list make
    /// the blocks carved, within its capacity), its carve mark is the one it published (SS10),
    /// its division constants are its block size's (SS11), its remote stack is not flagged
    /// abandoned (SS7), and its free list holds exactly `free_len` blocks, each a block start
    /// below the carve mark (SS18).
    ///
    /// # Safety
    /// The caller owns the superslab.
    unsafe fn check_slab(
        &self,
        i: usize,
        slab: &SlabMeta,
        free: bool,
        owner: usize,
    ) -> Result<(), Corrupt> {
        let base = self.base() + i * SLAB_SIZE;
        let at = slab as *const SlabMeta as usize;
        // SAFETY: a live slab's metadata.
        let number = unsafe { SlabMeta::number_at(slab) };
        check(number == base >> SLAB_SHIFT, "SS13", at)?;
        // SAFETY: the caller owns the superslab and so its slabs.
        let l = unsafe { slab.local() };
        if free {
            check(!l.in_use && l.used == 0, "SS4", at)?;
            check(slab.carved() == 0, "SS10", at)?;
            return check(slab.owner() == 0, "SS5", at);
        }
        check(l.in_use, "SS4", at)?;
        check(slab.owner() == owner, "SS5", at)?;
        let room = if i == 0 { HEADER_OFFSET } else { SLAB_SIZE };
        check(
            l.start as usize == base
                && l.block_size >= 16
                && l.block_size.is_multiple_of(16)
                && l.capacity as usize == room / l.block_size as usize,
            "SS14",
            at,
        )?;
        check(
            l.carve <= l.capacity
                && u64::from(l.used) + u64::from(l.free_len) == u64::from(l.carve),
            "SS4",
            at,
        )?;
        check(slab.carved() == u64::from(l.carve), "SS10", at)?;
        // SAFETY: the caller owns the slab.
        let (inv, rot_class) = unsafe { slab.division_owned() };
        let (want_inv, want_rot) = exact_division(l.block_size);
        check(
            inv == want_inv && rot_class == want_rot | (slab.class() as u32) << 8,
            "SS11",
            at,
        )?;
        check(!slab.remote.is_flagged(), "SS7", at)?;
        // SAFETY: the caller owns the slab.
        let head_ok = l.free.is_null() || unsafe { slab.is_block(l.free) };
        check(head_ok, "SS18", at)?;
        let key = crate::link_key();
        let (mut b, mut n) = (l.free, 0u32);
        while !b.is_null() {
            // The list holds no more blocks than it counts (a cycle ends here too).
            check(n < l.free_len, "SS4", at)?;
            // SAFETY: the caller owns the slab, and `b` is on its free list: the list's head,
            // or a link checked by `next_free` to be a block start below the carve mark.
            b = unsafe { slab.next_free(key, b) }?;
            n += 1;
        }
        check(n == l.free_len, "SS4", at)
    }
}
