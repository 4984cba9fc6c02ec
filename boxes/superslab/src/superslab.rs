//! The superslab header and its lifecycle: init, slabs in and out, pins, abandon, retire.
use crate::abandoned::AbandonedList;
use crate::os::PAGE;
use crate::slab::{Corrupt, Line, SlabMeta};
use crate::sync::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering, UnsafeCell};
use crate::{Env, SLABS, SLAB_SHIFT, SLAB_SIZE, SS_SIZE};
use core::ptr::{addr_of_mut, NonNull};
use hakmem_registry::Kind;
use hakmem_stats::{Event, GlobalStats};

#[path = "validate.rs"]
mod validate;

const MAGIC: usize = 0x4841_4b4d_5353_0001; // "HAKMSS" v1

/// Lifecycle states (the `state` word).
const OWNED: usize = 1;
const ABANDONED: usize = 2;
const RELEASED: usize = 3;

/// Bits per slab in the `HAKMEM_CHECK` bitmap: one per 16-byte block.
#[cfg(not(loom))]
const CHECK_WORDS: usize = SLAB_SIZE / 16 / 64;
#[cfg(loom)]
const CHECK_WORDS: usize = 1;

/// The owner-only part of the header.
struct SsLocal {
    /// Bit `i` set: slab `i` is free.
    free_slabs: u32,
    /// Bit `i` set: slab `i`'s pages are known to read as zero.
    zero_slabs: u32,
    /// Bit `i` set: slab `i` was free and dirty at the purge tick that aged it (SS16).
    aged_slabs: u32,
    /// When that tick ran (the caller's clock, in ns): the age of `aged_slabs`.
    aged_at: u64,
    /// The region is advised for huge pages (SS20).
    huge: bool,
    /// The owning heap's list of superslabs.
    next: *const Superslab,
    prev: *const Superslab,
}

/// Links in the abandoned list, guarded by the lock of the list the superslab is on (the one
/// its `list` word names).
pub(crate) struct SsLink {
    pub(crate) next: *const Superslab,
    pub(crate) prev: *const Superslab,
}

/// The header at the start of every superslab (in slab 0's space).
#[repr(C)]
pub struct Superslab {
    magic: usize,
    state: AtomicUsize,
    refcount: AtomicUsize,
    owner: AtomicUsize,
    /// Set by freers that pushed onto an abandoned superslab; cleared by its collector.
    pending: AtomicBool,
    /// The remote hint (SS15): set by a freer whose push found a slab's remote stack empty,
    /// taken by the owner before it drains. On a line of its own: freers write it, and the
    /// owner's words above are read on every collect.
    hint: Line<AtomicBool>,
    local: UnsafeCell<SsLocal>,
    pub(crate) link: UnsafeCell<SsLink>,
    /// The id of the abandoned list the superslab is on, 0 when on none (SS17): written only
    /// under that list's lock, so a list that holds its lock and reads its own id knows the
    /// superslab is on it, and its links are its own to follow.
    pub(crate) list: AtomicUsize,
    /// The slabs' metadata.
    pub slabs: [SlabMeta; SLABS],
    pub(crate) check: [[AtomicU64; CHECK_WORDS]; SLABS],
}

// SAFETY: shared fields are atomics; `local` is touched only by the owner (SS5) and `link` only
// under the lock of the abandoned list the superslab is on (SS7, SS17).
unsafe impl Sync for Superslab {}

/// The bytes the header takes at the top of slab 0 (SS14): its size rounded up to a page. Slab
/// 0's blocks fill the `SLAB_SIZE - HEADER_SIZE` bytes below it.
pub const HEADER_SIZE: usize = (core::mem::size_of::<Superslab>() + PAGE - 1) & !(PAGE - 1);
/// The header's offset from the superslab's base: the top of slab 0 (SS14).
pub(crate) const HEADER_OFFSET: usize = SLAB_SIZE - HEADER_SIZE;

impl Superslab {
    /// Writes a fresh header into `region` (one superslab of memory, the header at the top of
    /// slab 0, SS14) for the heap `owner`, then
    /// registers it. The caller's reference (the refcount's first unit) is returned as `&Self`.
    /// `zeroed` says the region reads as zero. On a registry refusal the region is handed back.
    ///
    /// # Safety
    /// `region` is `SS_SIZE` bytes, aligned to `SS_SIZE`, owned by the caller and unused.
    pub unsafe fn init<'a>(
        env: &Env<'_>,
        region: NonNull<u8>,
        zeroed: bool,
        owner: usize,
    ) -> Result<&'a Self, NonNull<u8>> {
        // SAFETY: forwarded.
        unsafe { Self::init_advised(env, region, zeroed, owner, false) }
    }

    /// [`Superslab::init`], with the region advised for huge pages ([`crate::Os::advise_huge`])
    /// before the header is written when `huge` (SS20): where the OS grants one, the header's
    /// write faults in a whole 2 MiB page, and the blocks carved later fault nothing.
    ///
    /// # Safety
    /// As for [`Superslab::init`]; the region is a mapping (or part of one) of `env`'s `Os`.
    pub unsafe fn init_advised<'a>(
        env: &Env<'_>,
        region: NonNull<u8>,
        zeroed: bool,
        owner: usize,
        huge: bool,
    ) -> Result<&'a Self, NonNull<u8>> {
        if huge {
            // SAFETY: the caller's region of `env.os`, unused; the advice changes no contents.
            unsafe { env.os.advise_huge(region, SS_SIZE) };
        }
        // SAFETY: within the region (HEADER_OFFSET + HEADER_SIZE = SLAB_SIZE < SS_SIZE).
        let ss = unsafe { region.as_ptr().add(HEADER_OFFSET) }.cast::<Superslab>();
        let base = region.as_ptr() as usize;
        // SAFETY: the region is ours, large enough and aligned for the header (HEADER_OFFSET is
        // a multiple of the page); every field is written before the header is published
        // through the registry.
        unsafe {
            addr_of_mut!((*ss).magic).write(MAGIC);
            addr_of_mut!((*ss).state).write(AtomicUsize::new(OWNED));
            addr_of_mut!((*ss).refcount).write(AtomicUsize::new(1));
            addr_of_mut!((*ss).owner).write(AtomicUsize::new(owner));
            addr_of_mut!((*ss).pending).write(AtomicBool::new(false));
            addr_of_mut!((*ss).hint).write(Line(AtomicBool::new(false)));
            addr_of_mut!((*ss).local).write(UnsafeCell::new(SsLocal {
                free_slabs: u32::MAX >> (32 - SLABS),
                zero_slabs: if zeroed { u32::MAX >> (32 - SLABS) } else { 0 },
                aged_slabs: 0,
                aged_at: 0,
                huge,
                next: core::ptr::null(),
                prev: core::ptr::null(),
            }));
            addr_of_mut!((*ss).link).write(UnsafeCell::new(SsLink {
                next: core::ptr::null(),
                prev: core::ptr::null(),
            }));
            addr_of_mut!((*ss).list).write(AtomicUsize::new(0));
            let slabs = addr_of_mut!((*ss).slabs).cast::<SlabMeta>();
            for i in 0..SLABS {
                slabs.add(i).write(SlabMeta::new(base + i * SLAB_SIZE));
            }
            // Zeroed memory already is a valid all-clear bitmap; loom's atomics must be built.
            if !zeroed || cfg!(loom) {
                let words = addr_of_mut!((*ss).check).cast::<AtomicU64>();
                for i in 0..SLABS * CHECK_WORDS {
                    words.add(i).write(AtomicU64::new(0));
                }
            }
        }
        // SAFETY: the caller owns the region until it is retired (which unregisters it first),
        // and a whole superslab header is written above (SS2).
        let registered = unsafe { env.registry.register(base, SS_SIZE, Kind::Superslab) };
        if registered.is_err() {
            return Err(region);
        }
        // SAFETY: initialised above; lives until retired, which needs this reference back.
        Ok(unsafe { &*ss })
    }

    /// Maps a new superslab from the OS for `owner`. The reference lives no longer than the
    /// environment's `Os` and registry (an `Os` that owns its memory cannot be dropped while a
    /// superslab of it is in use):
    ///
    /// ```compile_fail,E0597
    /// use hakmem_registry::{HeapLeaves, Registry};
    /// use hakmem_stats::GlobalStats;
    /// use hakmem_superslab::{Env, LibcOs, Superslab};
    /// static LEAVES: HeapLeaves = HeapLeaves;
    /// let stats = GlobalStats::new();
    /// let ss = {
    ///     let (os, registry) = (LibcOs, Registry::new(&LEAVES));
    ///     let env = Env { os: &os, registry: &registry, stats: &stats };
    ///     Superslab::create(&env, 1).unwrap()
    /// };
    /// ss.owner(); // error: `registry` and `os` do not live long enough
    /// ```
    pub fn create<'e>(env: &Env<'e>, owner: usize) -> Option<&'e Self> {
        Self::create_advised(env, owner, false)
    }

    /// [`Superslab::create`], with the new region advised for huge pages before its first
    /// touch when `huge` (SS20, [`Superslab::init_advised`]).
    pub fn create_advised<'e>(env: &Env<'e>, owner: usize, huge: bool) -> Option<&'e Self> {
        // The link key exists before any block does (SS18).
        crate::link_key();
        let region = env.os.map(SS_SIZE, SS_SIZE, env.stats)?;
        // SAFETY: a fresh mapping of the right size and alignment, read as zero.
        match unsafe { Self::init_advised(env, region, true, owner, huge) } {
            Ok(ss) => {
                env.stats.event(Event::SsCreated, 0);
                Some(ss)
            }
            Err(region) => {
                // SAFETY: the mapping is ours and was never published.
                unsafe { env.os.unmap(region, SS_SIZE, env.stats) };
                None
            }
        }
    }

    /// The superslab holding `p` (by mask), for a `p` known to lie in a live superslab.
    ///
    /// # Safety
    /// `p` lies inside a live superslab.
    #[inline(always)]
    pub unsafe fn of<'a>(p: *const u8) -> &'a Self {
        // SAFETY: the caller guarantees a live superslab covers `p`; its header is at
        // HEADER_OFFSET from the base (SS14).
        unsafe { &*(((p as usize & !(SS_SIZE - 1)) + HEADER_OFFSET) as *const Self) }
    }

    /// The header at `base`, checking its magic (for addresses from the registry).
    ///
    /// # Safety
    /// `base` is a superslab the registry reported live, pinned or holding a block of the caller.
    pub unsafe fn at<'a>(base: usize) -> &'a Self {
        // SAFETY: forwarded from the caller.
        let ss = unsafe { &*((base + HEADER_OFFSET) as *const Self) };
        debug_assert_eq!(ss.magic, MAGIC);
        ss
    }

    /// The base address.
    #[inline(always)]
    pub fn base(&self) -> usize {
        self as *const Self as usize - HEADER_OFFSET
    }

    /// Where the metadata of the slab holding `p` lies if a superslab covers `p`: arithmetic
    /// only (SS1, SS14), nothing is read. A client that keeps slab metadata pointers of live
    /// superslabs proves "`p` lies in that slab" by comparing one of them with this address.
    #[inline(always)]
    pub fn slab_meta_addr(p: *const u8) -> *const SlabMeta {
        let base = p as usize & !(SS_SIZE - 1);
        let i = (p as usize >> SLAB_SHIFT) & (SLABS - 1);
        (base
            + HEADER_OFFSET
            + core::mem::offset_of!(Superslab, slabs)
            + i * core::mem::size_of::<SlabMeta>()) as *const SlabMeta
    }

    /// The metadata of the slab holding `p` (by shift). `p` must lie in this superslab.
    #[inline(always)]
    pub fn slab_of(&self, p: *const u8) -> &SlabMeta {
        // Masked, so always a slab of this superslab (for `p` outside it, the slab at the same
        // offset): the lookup stays a shift and a mask, with no bound to check.
        let i = ((p as usize).wrapping_sub(self.base()) >> SLAB_SHIFT) & (SLABS - 1);
        // SAFETY: masked below SLABS.
        unsafe { self.slabs.get_unchecked(i) }
    }

    /// The slab holding `p`, found by mask and shift alone (SS1): the fast path's lookup.
    ///
    /// # Safety
    /// `p` lies inside a live superslab.
    #[inline(always)]
    pub unsafe fn slab_of_block<'a>(p: *const u8) -> (&'a Self, &'a SlabMeta) {
        // SAFETY: forwarded from the caller.
        let ss = unsafe { Self::of(p) };
        let i = (p as usize & (SS_SIZE - 1)) >> SLAB_SHIFT;
        // SAFETY: a masked offset below SS_SIZE, shifted, is below SLABS.
        (ss, unsafe { ss.slabs.get_unchecked(i) })
    }

    /// Index of `slab` in this superslab (for a slab of another superslab, or none, some
    /// number, not below `SLABS` unless it lies at a slab's place).
    pub fn slab_index(&self, slab: &SlabMeta) -> usize {
        (slab as *const SlabMeta as usize).wrapping_sub(self.slabs.as_ptr() as usize)
            / core::mem::size_of::<SlabMeta>()
    }

    /// The owning heap's id, 0 while abandoned.
    pub fn owner(&self) -> usize {
        self.owner.load(Ordering::Relaxed)
    }

    /// True while the superslab waits in the abandoned list (or is being collected from it).
    pub fn is_abandoned(&self) -> bool {
        self.state.load(Ordering::Acquire) == ABANDONED
    }

    /// The references now held (owner or abandoned list, plus pins).
    pub fn refcount(&self) -> usize {
        self.refcount.load(Ordering::Acquire)
    }

    fn assert_live(&self) {
        assert!(
            self.magic == MAGIC && self.state.load(Ordering::Relaxed) != RELEASED,
            "hakmem: superslab used after release"
        );
    }

    /// Adds a transient reference. The caller must already hold something that keeps the
    /// superslab alive (a block, or a reference).
    pub fn pin(&self) {
        self.assert_live();
        self.refcount.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops a reference. True when it was the last one: the caller must then [`Self::retire`]
    /// the superslab, and nobody else will.
    ///
    /// # Safety
    /// The caller holds a reference it gives up here: the one [`Self::create`] or
    /// [`Self::init`] returned, one taken with [`Self::pin`], or one an abandoned list handed
    /// over. A call without one would release the superslab while others still use it (SS3).
    ///
    /// ```compile_fail,E0133
    /// fn drop_a_reference(ss: &hakmem_superslab::Superslab) -> bool {
    ///     ss.unpin() // error: an `unsafe fn`
    /// }
    /// ```
    #[must_use]
    pub unsafe fn unpin(&self) -> bool {
        let prev = self.refcount.fetch_sub(1, Ordering::Release);
        assert!(
            prev != 0 && prev < usize::MAX / 2,
            "hakmem: superslab unpinned after release"
        );
        if prev == 1 {
            fence(Ordering::Acquire);
            true
        } else {
            false
        }
    }

    /// Withdraws the superslab from the registry and hands its region back, exactly once, to
    /// the caller, who either caches or unmaps it.
    ///
    /// # Safety
    /// The caller got `true` from [`Self::unpin`]: no reference and no block remain.
    pub unsafe fn retire(&self, env: &Env<'_>) -> NonNull<u8> {
        self.assert_live();
        assert_eq!(
            self.refcount.load(Ordering::Relaxed),
            0,
            "hakmem: retiring a pinned superslab"
        );
        self.state.store(RELEASED, Ordering::Release);
        env.registry.unregister(self.base(), SS_SIZE);
        let region = NonNull::new(self.base() as *mut u8).expect("a superslab is never at 0");
        // SAFETY: no reference is left (the caller's contract), so `local` is ours.
        if self.local.with(|l| unsafe { (*l).huge }) {
            // SAFETY: the region is ours (withdrawn above) and a mapping of `env.os`; the
            // advice changes no contents.
            unsafe { env.os.advise_no_huge(region, SS_SIZE) };
        }
        region
    }

    /// The bytes its in-use slabs are known to have touched: each block carved (handed out at
    /// some time in the slab's current life) had its key word written, so the pages of carved
    /// blocks up to a page each ([`PAGE`]; a larger block's further pages are the user's to
    /// touch or not). A lower bound of the superslab's resident bytes, apart from purges.
    ///
    /// # Safety
    /// The caller owns the superslab.
    pub unsafe fn carved_bytes(&self) -> usize {
        // SAFETY: forwarded: the owner reads its slabs' owner-only words.
        unsafe { self.slabs_in_use() }
            .map(|s| {
                // SAFETY: as above.
                let l = unsafe { s.local() };
                l.carve as usize * (l.block_size as usize).min(PAGE)
            })
            .sum()
    }

    /// True while the region is advised for huge pages (SS20).
    ///
    /// # Safety
    /// The caller owns the superslab.
    pub unsafe fn is_huge(&self) -> bool {
        // SAFETY: forwarded.
        self.local.with(|l| unsafe { (*l).huge })
    }

    /// Takes a free slab for blocks of `block_size` bytes of `class`, for the owner.
    ///
    /// # Safety
    /// The caller owns the superslab; `block_size` is a multiple of 16 from 16 to `SLAB_SIZE`
    /// (a block holds its link and the free key, SS9, and blocks start 16-byte aligned), and
    /// `class` is below 2^24.
    pub unsafe fn alloc_slab(&self, class: u32, block_size: u32) -> Option<&SlabMeta> {
        // SAFETY: the caller owns the superslab, so it alone touches `local`.
        let i = self.local.with_mut(|l| unsafe {
            let mut free = (*l).free_slabs;
            // Slab 0 is shorter (it holds this header); skip it for blocks it cannot hold.
            if HEADER_OFFSET < block_size as usize {
                free &= !1;
            }
            if free == 0 {
                return None;
            }
            let i = free.trailing_zeros() as usize;
            (*l).free_slabs &= !(1 << i);
            (*l).aged_slabs &= !(1 << i);
            Some((i, (*l).zero_slabs & (1 << i) != 0))
        });
        let (i, fresh) = i?;
        // SAFETY: the caller owns the superslab.
        self.local
            .with_mut(|l| unsafe { (*l).zero_slabs &= !(1 << i) });
        // Every slab's blocks start at its base; slab 0's end at the header (SS14).
        let start = i * SLAB_SIZE;
        let bytes = if i == 0 { HEADER_OFFSET } else { SLAB_SIZE };
        let capacity = (bytes / block_size as usize) as u32;
        let slab = &self.slabs[i];
        // SAFETY: the slab was free, so the owner of the superslab owns it.
        unsafe {
            slab.init(
                class,
                block_size,
                (self.base() + start) as *mut u8,
                capacity,
                fresh,
            )
        };
        slab.set_owner(self.owner());
        Some(slab)
    }

    /// Returns an empty slab to the superslab. True when every slab is free afterwards.
    ///
    /// # Safety
    /// The caller owns the superslab, and `slab` is one of its slabs in use, empty (no block
    /// out).
    pub unsafe fn free_slab(&self, slab: &SlabMeta) -> bool {
        let i = self.slab_index(slab);
        // SAFETY: the caller owns the slab.
        unsafe { slab.with_local(|l| l.in_use = false) };
        slab.clear_carved();
        slab.set_owner(0);
        // SAFETY: the caller owns the superslab.
        self.local.with_mut(|l| unsafe {
            (*l).free_slabs |= 1 << i;
            (*l).aged_slabs &= !(1 << i);
            (*l).free_slabs == u32::MAX >> (32 - SLABS)
        })
    }

    /// A purge tick of the free slabs (SS16) at time `now` (ns): when the tick that aged the
    /// slabs ran at least `min_age` before `now`, gives the pages of every free slab that was
    /// already free and dirty at that tick back to the OS, marks them zero (SS8), and ages the
    /// free dirty slabs left, at `now`; a tick that comes sooner purges nothing and keeps their
    /// age (it ages the free dirty slabs only if none is aged yet). Slab 0's header pages stay.
    /// Returns the bytes purged, and whether a slab waits for a next tick.
    ///
    /// # Safety
    /// The caller owns the superslab.
    pub unsafe fn purge_free_slabs(&self, env: &Env<'_>, now: u64, min_age: u64) -> (usize, bool) {
        // SAFETY: the caller owns the superslab.
        let (free, zero, aged, aged_at) = self.local.with(|l| unsafe {
            (
                (*l).free_slabs,
                (*l).zero_slabs,
                (*l).aged_slabs,
                (*l).aged_at,
            )
        });
        let mut todo = free & !zero & aged;
        if todo != 0 && now.saturating_sub(aged_at) < min_age {
            // Too soon: the aged slabs wait for a later tick, keeping their age.
            return (0, true);
        }
        // Slab 0's pages below the header, only when they are whole OS pages.
        let page = env.os.page_size();
        if !HEADER_OFFSET.is_multiple_of(page) {
            todo &= !1;
        }
        let mut purged = 0;
        let mut zeroed = 0u32;
        // A purge of part of a huge page splits it: the superslab is served in base pages from
        // here on (SS20), so that the OS does not gather the purged pages back into one.
        let take_huge = || {
            self.local.with_mut(|l| {
                // SAFETY: the caller owns the superslab.
                unsafe { core::mem::take(&mut (*l).huge) }
            })
        };
        if todo != 0 && take_huge() {
            let base = NonNull::new(self.base() as *mut u8).expect("never at 0");
            // SAFETY: the superslab's own region, a mapping of `env.os`; no contents change.
            unsafe { env.os.advise_no_huge(base, SS_SIZE) };
        }
        while todo != 0 {
            let i = todo.trailing_zeros() as usize;
            // The run of slabs i..i+n; slab 0 is a run of its own (the header ends it).
            let n = if i == 0 {
                1
            } else {
                (todo >> i).trailing_ones() as usize
            };
            let bytes = if i == 0 { HEADER_OFFSET } else { n * SLAB_SIZE };
            let at = NonNull::new((self.base() + i * SLAB_SIZE) as *mut u8).expect("never at 0");
            // SAFETY: free slabs of a superslab the caller owns: no block of them is held
            // anywhere (SS4), and slab 0's run stops below the header; whole pages, as checked.
            if unsafe { env.os.purge(at, bytes, env.stats) } {
                purged += bytes;
                zeroed |= (u32::MAX >> (32 - n)) << i;
            }
            todo &= !((u32::MAX >> (32 - n)) << i);
        }
        // SAFETY: the caller owns the superslab.
        let waiting = self.local.with_mut(|l| unsafe {
            (*l).zero_slabs |= zeroed;
            (*l).aged_slabs = (*l).free_slabs & !(*l).zero_slabs;
            (*l).aged_at = now;
            (*l).aged_slabs != 0
        });
        (purged, waiting)
    }

    /// True when some slab is free.
    ///
    /// # Safety
    /// The caller owns the superslab.
    pub unsafe fn has_free_slab(&self) -> bool {
        // SAFETY: forwarded.
        self.local.with(|l| unsafe { (*l).free_slabs != 0 })
    }

    /// True when every slab is free.
    ///
    /// # Safety
    /// The caller owns the superslab.
    pub unsafe fn is_empty(&self) -> bool {
        // SAFETY: forwarded.
        self.local
            .with(|l| unsafe { (*l).free_slabs == u32::MAX >> (32 - SLABS) })
    }

    /// The slabs in use (owned or abandoned).
    ///
    /// # Safety
    /// The caller owns the superslab.
    pub unsafe fn slabs_in_use(&self) -> impl Iterator<Item = &SlabMeta> {
        // SAFETY: forwarded.
        let free = self.local.with(|l| unsafe { (*l).free_slabs });
        self.slabs
            .iter()
            .enumerate()
            .filter(move |(i, _)| free & (1 << i) == 0)
            .map(|(_, s)| s)
    }

    /// The owning heap's superslab list links.
    ///
    /// # Safety
    /// The caller owns the superslab.
    pub unsafe fn heap_links(&self) -> (*const Superslab, *const Superslab) {
        // SAFETY: forwarded.
        self.local.with(|l| unsafe { ((*l).next, (*l).prev) })
    }

    /// Sets the owning heap's superslab list links.
    ///
    /// # Safety
    /// The caller owns the superslab.
    pub unsafe fn set_heap_links(&self, next: *const Superslab, prev: *const Superslab) {
        // SAFETY: forwarded.
        self.local.with_mut(|l| unsafe {
            (*l).next = next;
            (*l).prev = prev;
        })
    }

    /// Drains every in-use slab's remote stack and frees the empty slabs. True when the whole
    /// superslab is empty afterwards. `on_drained(class, n)` hears of each slab's returns. While
    /// the superslab is abandoned, each stack is left flagged by the same swap that drains it.
    ///
    /// # Safety
    /// The caller owns the superslab (as owner, or holding it exclusively out of the abandoned
    /// list).
    pub unsafe fn collect(&self, on_drained: impl FnMut(usize, u32)) -> Result<bool, Corrupt> {
        // An RMW reads the latest flag, so it also synchronises with the push that set it.
        self.pending.swap(false, Ordering::Acquire);
        let flagged = self.state.load(Ordering::Relaxed) == ABANDONED;
        // SAFETY: forwarded.
        unsafe { self.drain_all(flagged, on_drained) }
    }

    /// The body of [`Self::collect`]: drains (and, with `flagged`, flags) every in-use slab's
    /// remote stack and frees the empty slabs.
    ///
    /// # Safety
    /// As for [`Self::collect`].
    unsafe fn drain_all(
        &self,
        flagged: bool,
        mut on_drained: impl FnMut(usize, u32),
    ) -> Result<bool, Corrupt> {
        let mut all_free = false;
        // SAFETY: the caller holds the superslab, hence its slabs.
        for slab in unsafe { self.slabs_in_use() } {
            // SAFETY: as above.
            unsafe {
                let n = if flagged {
                    slab.drain_remote_flagged()?
                } else {
                    slab.drain_remote()?
                };
                if n != 0 {
                    on_drained(slab.class(), n);
                }
                if slab.is_empty() {
                    all_free = self.free_slab(slab);
                }
            }
        }
        Ok(all_free)
    }

    /// Hands the superslab, with the owner's reference, to the abandoned list: an exiting heap
    /// calls this when blocks are still out. Every in-use slab's remote stack is drained and
    /// flagged abandoned in one swap, so each remote free either lands before it (and is
    /// drained here) or sees the flag (and pins and collects): none is stranded (SS7). True when
    /// the superslab turned out empty and the caller dropped the last reference: the caller
    /// must then retire it. The superslab records which list it went on (SS17): only that list
    /// takes it off again, whichever list later callers hand its frees.
    ///
    /// # Safety
    /// The caller owns the superslab and forgets it afterwards.
    pub unsafe fn abandon(
        &self,
        list: &AbandonedList,
        stats: &GlobalStats,
    ) -> Result<bool, Corrupt> {
        // SAFETY: forwarded; the caller owns every in-use slab.
        for slab in unsafe { self.slabs_in_use() } {
            slab.set_owner(0);
        }
        self.owner.store(0, Ordering::Relaxed);
        self.state.store(ABANDONED, Ordering::Release);
        // Still ours alone: nobody can take it off a list it is not on yet. (`pending` is only
        // set by freers that saw a flag, so it is left alone here: a stale one only costs an
        // extra look below.)
        // SAFETY: as above.
        let empty = unsafe { self.drain_all(true, |class, n| stats.held_sub(class, n as usize))? };
        if empty {
            // SAFETY: the freer's pin, taken above, given up.
            return Ok(unsafe { self.unpin() });
        }
        // A freer that saw the flag before the push found nothing to take off the list; it left
        // `pending` set, and the lock orders its flag before our look, which is made while the
        // lock still keeps the superslab listed (so alive). Only then do we pin it, to look
        // again after the lock is released; otherwise we never touch it after listing it.
        let pinned = list.push_then(self, || {
            let p = self.pending.load(Ordering::Acquire);
            if p {
                self.pin();
            }
            p
        });
        if !pinned {
            return Ok(false);
        }
        let r = self.settle(list, stats);
        // SAFETY: the reference taken above (a pin, or the list's), given up.
        let last = unsafe { self.unpin() };
        r.map(|()| last)
    }

    /// Collects the listed superslab while it can be taken off the list and flagged pushes keep
    /// coming. The caller holds a pin. When it turns out empty, the list's reference is dropped
    /// (never the last: the caller's pin remains).
    fn settle(&self, list: &AbandonedList, stats: &GlobalStats) -> Result<(), Corrupt> {
        // Collect while we can take it off the list. A block pushed while another thread held
        // it out of the list would otherwise strand it there: whoever puts it back looks again,
        // and the lock orders that look after the other pusher's flag.
        while list.try_remove(self) {
            // SAFETY: out of the list, the superslab is ours alone until we put it back.
            match unsafe { self.collect(|class, n| stats.held_sub(class, n as usize)) } {
                Ok(true) => {
                    // Empty: drop the list's reference instead of putting it back.
                    // SAFETY: the reference taken above (a pin, or the list's), given up.
                    let last = unsafe { self.unpin() };
                    debug_assert!(!last, "the caller's pin is still held");
                    return Ok(());
                }
                Ok(false) => {
                    list.push(self);
                    if !self.pending.load(Ordering::Acquire) {
                        return Ok(());
                    }
                }
                Err(e) => {
                    list.push(self);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Makes `owner` the owner of a superslab just taken out of the abandoned list.
    ///
    /// # Safety
    /// The caller took the superslab out of the list (it holds it exclusively).
    pub(crate) unsafe fn take_ownership(&self, owner: usize) {
        self.state.store(OWNED, Ordering::Relaxed);
        self.owner.store(owner, Ordering::Relaxed);
        // SAFETY: the caller holds the superslab exclusively.
        for slab in unsafe { self.slabs_in_use() } {
            slab.set_owner(owner);
        }
    }

    /// [`Superslab::free_remote`]'s common case alone: one CAS onto the slab's remote stack,
    /// true when done; false, having changed nothing, when the stack is flagged abandoned (the
    /// caller then calls [`Superslab::free_remote`], which pins and collects). Inlined into the
    /// non-owner's free, with no reference counting and no result to decode.
    ///
    /// # Safety
    /// As [`Superslab::free_remote`]: `block` is a block of `slab` (in this superslab) that the
    /// caller holds and gives up.
    #[inline(always)]
    pub unsafe fn try_free_remote(&self, slab: &SlabMeta, block: *mut u8) -> bool {
        // SAFETY: forwarded; the key is the process's.
        unsafe { self.try_free_remote_keyed(slab, block, crate::link_key()) }
    }

    /// [`Superslab::try_free_remote`] with the link key given, so that a caller whose hot path
    /// must not draw it ([`crate::link_key_drawn`]) keeps the draw out of line.
    ///
    /// # Safety
    /// As [`Superslab::try_free_remote`], and `key` is the process's link key (from
    /// [`crate::link_key`] or [`crate::link_key_drawn`]).
    #[cfg(not(hakmem_seeded_bug = "check_then_push"))]
    #[inline(always)]
    pub unsafe fn try_free_remote_keyed(
        &self,
        slab: &SlabMeta,
        block: *mut u8,
        key: crate::LinkKey,
    ) -> bool {
        // Seeded bug: the hint before the push; the owner may take it and drain in between.
        #[cfg(hakmem_seeded_bug = "hint_before_push")]
        self.hint_owner();
        // SAFETY: forwarded from the caller.
        match unsafe { slab.remote.try_push_keyed(block, key) } {
            Ok(was_empty) => {
                #[cfg(not(hakmem_seeded_bug = "hint_before_push"))]
                if was_empty {
                    self.hint_owner();
                }
                #[cfg(hakmem_seeded_bug = "hint_before_push")]
                let _ = was_empty;
                true
            }
            Err(_) => false,
        }
    }

    /// Tells the owner that a slab's remote stack has blocks (SS15), after the push that found
    /// it empty. An RMW, not a store: it extends every earlier freer's release sequence, so an
    /// owner whose take reads it synchronises with all the pushes that set it before.
    #[inline]
    fn hint_owner(&self) {
        self.hint.swap(true, Ordering::Release);
    }

    /// Takes the remote hint (SS15): true when some in-use slab's remote stack may have blocks
    /// pushed since the last take, and the caller must then drain every in-use slab. False
    /// means every block pushed before the last take that returned true was drained by the
    /// drain that followed it, and every later push is still to set the hint, so the owner may
    /// skip the superslab.
    ///
    /// # Safety
    /// The caller owns the superslab (SS5), and after a true it drains every in-use slab's
    /// remote stack (a take that is not followed by the drain strands the blocks pushed before
    /// it until the next empty-stack push).
    #[inline]
    pub unsafe fn take_remote_hint(&self) -> bool {
        // A plain look first: most superslabs have nothing waiting, and the line stays shared.
        // A stale false only delays the drain to the next take.
        self.hint.load(Ordering::Relaxed) && self.hint.swap(false, Ordering::Acquire)
    }

    /// Under the seeded bug the fast case is the buggy path's own, so the model sees it.
    ///
    /// # Safety
    /// As the plain build's.
    #[cfg(hakmem_seeded_bug = "check_then_push")]
    #[inline(always)]
    pub unsafe fn try_free_remote_keyed(
        &self,
        _slab: &SlabMeta,
        _block: *mut u8,
        _key: crate::LinkKey,
    ) -> bool {
        false
    }

    /// Frees `block` of `slab` from a thread that does not own the slab: one CAS onto the
    /// slab's remote stack. When the stack is flagged abandoned, the freer pins the superslab,
    /// pushes, and tries to collect it, so an abandoned superslab goes back as soon as its last
    /// block does. True means the caller dropped the last reference and must retire the
    /// superslab.
    ///
    /// `list` is the abandoned list the superslab's owners abandon onto. Given another list, the
    /// freer finds nothing of this superslab's to take off it (SS17): the block stays on the
    /// flagged stack until the superslab's adopter drains it.
    ///
    /// # Safety
    /// `block` is a block of `slab` (in this superslab) that the caller holds and gives up.
    pub unsafe fn free_remote(
        &self,
        slab: &SlabMeta,
        block: *mut u8,
        list: &AbandonedList,
        stats: &GlobalStats,
    ) -> Result<bool, Corrupt> {
        #[cfg(not(hakmem_seeded_bug = "check_then_push"))]
        // SAFETY: forwarded from the caller.
        if let Ok(was_empty) = unsafe { slab.remote.try_push(block) } {
            if was_empty {
                self.hint_owner();
            }
            return Ok(false);
        }
        #[cfg(hakmem_seeded_bug = "check_then_push")]
        if !self.is_abandoned() {
            // Seeded bug: check, then push: the owner may abandon in between (SS7).
            // SAFETY: forwarded from the caller.
            unsafe { slab.remote.push(block) };
            return Ok(false);
        }
        // The block keeps the superslab alive until it is pushed; the pin keeps it alive after.
        #[cfg(not(hakmem_seeded_bug = "missing_pin"))]
        self.pin();
        // SAFETY: forwarded from the caller.
        unsafe { slab.remote.push(block) };
        // An RMW, not a store: it extends every earlier freer's release sequence, so the
        // collector's swap synchronises with all pushes flagged before it.
        self.pending.swap(true, Ordering::Release);
        #[cfg(not(hakmem_seeded_bug = "missing_pin"))]
        {
            let result = self.settle(list, stats);
            // SAFETY: the reference taken above (a pin, or the list's), given up.
            let last = unsafe { self.unpin() };
            result.map(|()| last)
        }
        #[cfg(hakmem_seeded_bug = "missing_pin")]
        {
            while list.try_remove(self) {
                // SAFETY: out of the list, ours alone.
                match unsafe { self.collect(|class, n| stats.held_sub(class, n as usize)) } {
                    // SAFETY: the freer's pin, given up.
                    Ok(true) => return Ok(unsafe { self.unpin() }),
                    Ok(false) => {
                        list.push(self);
                        if !self.pending.load(Ordering::Acquire) {
                            break;
                        }
                    }
                    Err(e) => {
                        list.push(self);
                        return Err(e);
                    }
                }
            }
            self.assert_live();
            Ok(false)
        }
    }

    /// Marks block `index` of slab `slab` as held by a user (`HAKMEM_CHECK`). False when it
    /// already was.
    pub fn check_mark_held(&self, slab: usize, index: usize) -> bool {
        let (w, bit) = (index / 64, 1u64 << (index % 64));
        w < CHECK_WORDS && self.check[slab][w].fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    /// True when the check bitmap says the block at `p` (a block start in this superslab) is
    /// held by a user now (`HAKMEM_CHECK`; without check mode the bitmap is empty).
    pub fn check_held(&self, p: *const u8) -> bool {
        let off = (p as usize).wrapping_sub(self.base());
        let (slab, index) = (off >> SLAB_SHIFT, (off & (SLAB_SIZE - 1)) >> 4);
        let (w, bit) = (index / 64, 1u64 << (index % 64));
        slab < SLABS && w < CHECK_WORDS && self.check[slab][w].load(Ordering::Acquire) & bit != 0
    }

    /// Marks block `index` of slab `slab` as given back by its user (`HAKMEM_CHECK`). False
    /// when it was not held: a double free.
    pub fn check_mark_freed(&self, slab: usize, index: usize) -> bool {
        let (w, bit) = (index / 64, 1u64 << (index % 64));
        w < CHECK_WORDS && self.check[slab][w].fetch_and(!bit, Ordering::AcqRel) & bit != 0
    }
}
