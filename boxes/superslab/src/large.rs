//! Large regions: one user block per dedicated, 2 MiB-aligned mapping, with a header at the
//! base so that a registry hit finds the block in O(1), even past the region's first 2 MiB. A
//! block aligned above 2 MiB starts 2 MiB past the base, the mapping placed to align it
//! ([`LargeLayout`]): no alignment gap is mapped or registered.
use crate::{Env, SS_SIZE};
use core::ptr::{addr_of_mut, NonNull};
use hakmem_registry::Kind;

const MAGIC: usize = 0x4841_4b4d_4c52_0001; // "HAKMLR" v1

/// Bytes reserved for the header before the first user byte (for alignments up to this).
pub const LARGE_HEADER: usize = 64;

/// The header at the base of a large region.
#[repr(C)]
pub struct LargeHeader {
    magic: usize,
    /// Bytes mapped, from the base.
    pub len: usize,
    /// Offset of the user's block from the base.
    pub user_offset: usize,
}

/// Where a block of `size` bytes aligned to `align` goes in a large region.
///
/// The region's base is always 2 MiB-aligned. Up to that alignment the block follows the header
/// at `max(LARGE_HEADER, align)`; above it, the block starts one 2 MiB step past the base, and the
/// mapping is placed so that the block is aligned (`base + offset` a multiple of `align`,
/// [`Os::map_offset`](crate::Os::map_offset)): the region is the header's chunk and the block,
/// never the alignment gap, however large the alignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LargeLayout {
    /// Bytes to map (whole pages).
    pub len: usize,
    /// Alignment of `base + offset` (at least `SS_SIZE`).
    pub align: usize,
    /// The offset from the base that `align` applies to: 0 (the base itself is aligned) up to
    /// 2 MiB alignment, the user's block above it.
    pub offset: usize,
    /// Offset of the user's block.
    pub user_offset: usize,
}

impl LargeLayout {
    /// The layout for `size` bytes at `align` (a power of two), in whole pages of `page` bytes
    /// (the `Os`'s [`Os::page_size`](crate::Os::page_size)); `None` on overflow.
    pub fn new(size: usize, align: usize, page: usize) -> Option<Self> {
        let user_offset = LARGE_HEADER.max(align.min(SS_SIZE));
        // At least one byte: the user's address must lie inside the region (and its registry
        // chunks), even for a zero-size request.
        let len = user_offset
            .checked_add(size.max(1))?
            .checked_add(page - 1)?
            & !(page - 1);
        (len <= isize::MAX as usize && align <= isize::MAX as usize).then_some(Self {
            len,
            align: align.max(SS_SIZE),
            offset: if align > SS_SIZE { user_offset } else { 0 },
            user_offset,
        })
    }
}

impl LargeHeader {
    /// Writes the header into `region` and registers it; returns the user's block. On a
    /// registry refusal the region is handed back untouched.
    ///
    /// # Safety
    /// `region` is `layout.len` bytes, 2 MiB-aligned, with `region + layout.offset` aligned to
    /// `layout.align`, owned by the caller and unused, and
    /// `LARGE_HEADER <= layout.user_offset < layout.len` (as [`LargeLayout::new`] makes it;
    /// its fields are public), so the header and the user's block lie inside.
    pub unsafe fn init(
        env: &Env<'_>,
        region: NonNull<u8>,
        layout: LargeLayout,
    ) -> Result<NonNull<u8>, NonNull<u8>> {
        let h = region.as_ptr().cast::<LargeHeader>();
        // SAFETY: the region is ours and at least one page long; published only after writing.
        unsafe {
            addr_of_mut!((*h).magic).write(MAGIC);
            addr_of_mut!((*h).len).write(layout.len);
            addr_of_mut!((*h).user_offset).write(layout.user_offset);
        }
        // SAFETY: the caller owns the region until it is retired (which unregisters it first),
        // and its header is written above (SS2).
        let registered = unsafe {
            env.registry
                .register(region.as_ptr() as usize, layout.len, Kind::Large)
        };
        if registered.is_err() {
            return Err(region);
        }
        // SAFETY: user_offset < len, inside the region.
        Ok(unsafe { NonNull::new_unchecked(region.as_ptr().add(layout.user_offset)) })
    }

    /// The header at `base`, a base the registry reported as a live large region.
    ///
    /// # Safety
    /// `base` is a live large region (its user block is held by the caller, or it is pinned).
    pub unsafe fn at<'a>(base: usize) -> &'a Self {
        // SAFETY: forwarded from the caller.
        let h = unsafe { &*(base as *const Self) };
        debug_assert_eq!(h.magic, MAGIC);
        h
    }

    /// The user's block.
    pub fn user(&self) -> usize {
        self as *const Self as usize + self.user_offset
    }

    /// Bytes usable from the user's block to the end of the mapping.
    pub fn usable(&self) -> usize {
        self.len - self.user_offset
    }

    /// Grows the region in place over `extra` bytes that lie right after it (a cached region the
    /// caller took out of the lru): no system call, and the pages keep whatever they hold (they
    /// may still be resident, so the grown block costs no page fault). False, with nothing
    /// changed, when the region does not end on a 2 MiB boundary or the registry cannot cover
    /// the grown range.
    ///
    /// # Safety
    /// `base` is a live large region whose user block the caller holds, with no reference to
    /// its header live across this call; the caller owns `[end, end + extra)` where `end` is the
    /// region's end: mapped by `env.os`, whole pages, unused and published nowhere.
    pub unsafe fn absorb(base: usize, env: &Env<'_>, extra: usize) -> bool {
        // Through a pointer made from the address, not a reference: the header is written.
        let h = base as *mut Self;
        // SAFETY: a live large region's header (the caller holds its block).
        let len = unsafe { (*h).len };
        let Some(new_len) = len.checked_add(extra) else {
            return false;
        };
        if !(base + len).is_multiple_of(SS_SIZE) || env.registry.prepare(base, new_len).is_err() {
            return false;
        }
        env.registry.unregister(base, len);
        // SAFETY: the caller holds the only reference to the region; the header is rewritten
        // before the grown region is published again (SS2).
        unsafe { addr_of_mut!((*h).len).write(new_len) };
        // SAFETY: the region and the range after it are the caller's alone, their leaves are
        // prepared above, so the registration cannot be refused.
        let registered = unsafe { env.registry.register(base, new_len, Kind::Large) };
        debug_assert!(registered.is_ok());
        true
    }

    /// Grows the region so its block holds `size` bytes, moving its pages instead of copying
    /// them (`Os::remap`). Returns the header at its new place, or `None` when the OS cannot
    /// (then nothing changed and the caller copies). The region stays registered throughout,
    /// except while its pages move: unregistered before (R2), registered again after. Moved
    /// pages land 2 MiB-aligned: the block keeps an alignment up to 2 MiB, not a larger one.
    ///
    /// # Safety
    /// The caller holds the region's user block; nothing else refers to the region.
    pub unsafe fn grow<'a>(&self, env: &Env<'_>, size: usize) -> Option<&'a LargeHeader> {
        let base = self as *const Self as usize;
        let (len, user_offset) = (self.len, self.user_offset);
        let page = env.os.page_size();
        let new_len = user_offset.checked_add(size)?.checked_add(page - 1)? & !(page - 1);
        if user_offset > SS_SIZE || new_len <= len {
            return None;
        }
        // Map the registry's leaves for the grown range first: if the pages grow in place,
        // registering them again then needs no memory.
        env.registry.prepare(base, new_len).ok()?;
        env.registry.unregister(base, len);
        let old = NonNull::new(base as *mut u8)?;
        // SAFETY: the caller holds the only reference to the whole region.
        let Some(moved) = (unsafe { env.os.remap(old, len, new_len, SS_SIZE, env.stats) }) else {
            // Unchanged: publish it again as it was (its chunks are still ours alone).
            // SAFETY: the same region and header as before, still ours.
            let again = unsafe { env.registry.register(base, len, Kind::Large) };
            debug_assert!(again.is_ok());
            return None;
        };
        let h = moved.as_ptr().cast::<LargeHeader>();
        // SAFETY: the header moved with the pages; we own the region.
        unsafe { addr_of_mut!((*h).len).write(new_len) };
        // A fresh range of ours (or ours extended into free address space): no chunk of it can
        // belong to another live region. Its leaves were prepared above when it grew in place;
        // a move into a 128 GiB window that has no leaf yet, while the OS refuses the 512 KiB
        // for one, is the one way this can fail (not handled: the block would read as foreign).
        // SAFETY: the region (and the header that moved with it) is ours until retired.
        let registered = unsafe {
            env.registry
                .register(moved.as_ptr() as usize, new_len, Kind::Large)
        };
        debug_assert!(registered.is_ok());
        // SAFETY: written above; live while the caller holds its block.
        Some(unsafe { &*h })
    }

    /// Withdraws the region from the registry and returns `(base, len)` for caching or unmap.
    ///
    /// # Safety
    /// The caller holds the region's user block and gives it up; nothing else refers to it.
    pub unsafe fn retire(&self, env: &Env<'_>) -> (NonNull<u8>, usize) {
        let base = self as *const Self as usize;
        let len = self.len;
        env.registry.unregister(base, len);
        (NonNull::new(base as *mut u8).expect("never at 0"), len)
    }
}
