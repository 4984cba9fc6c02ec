//! Slab metadata: one 64 KiB slab of equal-size blocks, living in its superslab's header.
use crate::remote::{RemoteStack, Taken};
use crate::sync::{
    read_own_u32, read_own_u64, AtomicU32, AtomicU64, AtomicUsize, Ordering, UnsafeCell,
};
use crate::LinkKey;
use core::ptr::null_mut;

/// What went wrong when a slab got back a block it did not expect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corrupt {
    /// The block was freed twice (it is already free, or the slab has no block out).
    DoubleFree(usize),
    /// The address is not the start of a block this slab handed out.
    NotABlock(usize),
    /// The link in the first word of the free block at this address is not to a block of
    /// its list (SS18): overwritten while the block was free. The list was dropped from
    /// there on; its blocks stay out (leaked), so nothing follows the bad link.
    FreeList(usize),
    /// A validation ([`crate::Superslab::validate`], and the hot heap's) found the invariant
    /// `id` (as the box's `lib.rs` names it, e.g. `"SS4"`) broken at the structure at `at`: a
    /// bug of the allocator, or memory it keeps overwritten.
    Invariant {
        /// The invariant's ID.
        id: &'static str,
        /// The address of the superslab, slab metadata or heap where it is broken.
        at: usize,
    },
}

/// A chain cut off the front of a slab's free list ([`SlabMeta::take_free_chains`]): its head,
/// tail and length, `None` for an empty list, or the corruption a link showed (SS18).
pub type TakenChain = Result<Option<(*mut u8, *mut u8, u32)>, Corrupt>;

/// The owner-only part of a slab's metadata.
#[derive(Clone, Copy, Debug)]
pub struct SlabLocal {
    /// Block size in bytes (a multiple of 16).
    pub block_size: u32,
    /// Blocks that fit in the slab.
    pub capacity: u32,
    /// Blocks `carve..capacity` have never been handed out.
    pub carve: u32,
    /// Blocks out of the slab: held by a user, a thread list, a cache or the remote stack.
    pub used: u32,
    /// Blocks on the local free list.
    pub free_len: u32,
    /// The local free list, linked through first words.
    pub free: *mut u8,
    /// Address of block 0.
    pub start: *mut u8,
    /// The owning heap's ring of slabs of this class.
    pub next: *const SlabMeta,
    /// The owning heap's ring of slabs of this class.
    pub prev: *const SlabMeta,
    /// Blocks never carved read as zero (the slab's pages were fresh or purged when it began).
    pub fresh: bool,
    /// The slab is in use (owned or abandoned), not free in its superslab.
    pub in_use: bool,
}

impl SlabLocal {
    const EMPTY: Self = Self {
        block_size: 0,
        capacity: 0,
        carve: 0,
        used: 0,
        free_len: 0,
        free: null_mut(),
        start: null_mut(),
        next: core::ptr::null(),
        prev: core::ptr::null(),
        fresh: false,
        in_use: false,
    };
}

/// The constants for [`SlabMeta::block_index`]: for `d = 2^rot * odd`, the inverse of `odd`
/// modulo 2^64, and `rot`. Then for any 64-bit `off`, `(off * inv).rotate_right(rot)` is
/// `off / d` when `d` divides `off`; otherwise its top `rot` bits are not all zero (the low bits
/// of `off`, rotated up), or it exceeds `(2^(64 - rot) - 1) / odd` (Granlund and Montgomery's
/// divisibility test): at least 2^32 either way for block sizes below 2^16.
pub(crate) fn exact_division(d: u32) -> (u64, u32) {
    let rot = d.trailing_zeros();
    let odd = u64::from(d >> rot);
    // Newton's iteration doubles the correct low bits: odd * odd = 1 (mod 8) gives 3 to start.
    let mut inv = odd;
    for _ in 0..5 {
        inv = inv.wrapping_mul(2u64.wrapping_sub(odd.wrapping_mul(inv)));
    }
    (inv, rot)
}

/// One slab's metadata.
///
/// `owner`, `class`, `carved` and `remote` are shared with every thread; `local` belongs to the
/// owner alone (the heap whose id is in `owner`, or whoever holds the abandoned superslab
/// exclusively). `class` changes only when the slab is (re)initialised, which needs every block
/// back, so a thread holding a block reads it reliably; so does `carved`, which only grows while
/// the slab is in use (and is written before the blocks it covers are handed out).
#[repr(C, align(64))]
pub struct SlabMeta {
    /// The slab's base address shifted right by `SLAB_SHIFT` (SS13): set before the superslab
    /// is shared, never written after.
    number: usize,
    owner: AtomicUsize,
    class: AtomicU32,
    /// `rot | class << 8`, for the owner (SS11): the free path's one load gives the rotation
    /// (a rotate uses the count's low 6 bits, and `rot < 64`) and the class.
    rot_class: AtomicU32,
    /// Blocks `0..carved` have been handed out at some time (the carve mark, shared): any other
    /// block start is not a block (0 while the slab is free). A full word, so the free path
    /// compares a block index with it straight from memory.
    carved: AtomicU64,
    /// The exact-division constants of the block size `2^rot * odd`: the inverse of `odd`
    /// modulo 2^64, and `rot` (SS11). Written with `class`, when the slab is (re)initialised.
    inv: AtomicU64,
    /// Blocks freed by non-owners, waiting for the owner (only this box's owner-side code takes
    /// them: a non-owner that could take them would steal the owner's blocks). A cache line of
    /// its own: non-owners' pushes do not evict the words every free reads, nor the owner's.
    pub(crate) remote: Line<RemoteStack>,
    /// The owner's words, on their own line: the owner's writes (free list, counts) do not evict
    /// the words non-owners read (owner, class) or push to.
    local: Line<UnsafeCell<SlabLocal>>,
}

/// A value on a cache line of its own.
#[repr(C, align(64))]
pub(crate) struct Line<T>(pub(crate) T);

impl<T> core::ops::Deref for Line<T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        &self.0
    }
}

// SAFETY: `owner` and `remote` are atomics; `local` is touched only by the owner (SS5).
unsafe impl Sync for SlabMeta {}

/// What [`SlabMeta::NONE`] points to: the number no address shifts to (SS13).
static NO_SLAB_NUMBER: usize = usize::MAX;

// `number` is the first word, so `SlabMeta::number_at` reads it from a `SlabMeta` and from
// `NONE` alike.
const _: () = assert!(core::mem::offset_of!(SlabMeta, number) == 0);

impl SlabMeta {
    /// No slab (SS13): a pointer whose [`SlabMeta::number_at`] is `usize::MAX`, which no
    /// address shifts to. A table of slab metadata pointers indexed by address bits points its
    /// empty entries here, and then needs no null test. It points to a number only, never to a
    /// `SlabMeta`: nothing else may be read through it.
    pub const NONE: *const SlabMeta = (&raw const NO_SLAB_NUMBER).cast();

    /// The slab number of the metadata at `p` (its base address shifted right by `SLAB_SHIFT`,
    /// SS13), or `usize::MAX` for
    /// [`SlabMeta::NONE`]: one load, with no null test.
    ///
    /// # Safety
    /// `p` is [`SlabMeta::NONE`] or points to a live `SlabMeta`.
    #[inline(always)]
    pub unsafe fn number_at(p: *const SlabMeta) -> usize {
        // SAFETY: both kinds of pointer the caller may pass start with the number, a usize
        // never written after the superslab is shared (SS13).
        unsafe { p.cast::<usize>().read() }
    }

    /// A free slab's metadata, for the slab at `base`.
    pub(crate) fn new(base: usize) -> Self {
        Self {
            number: base >> crate::SLAB_SHIFT,
            owner: AtomicUsize::new(0),
            class: AtomicU32::new(0),
            rot_class: AtomicU32::new(0),
            carved: AtomicU64::new(0),
            inv: AtomicU64::new(0),
            remote: Line(RemoteStack::new()),
            local: Line(UnsafeCell::new(SlabLocal::EMPTY)),
        }
    }

    /// The owning heap's id; 0 while the slab is free or abandoned.
    #[inline(always)]
    pub fn owner(&self) -> usize {
        self.owner.load(Ordering::Relaxed)
    }

    pub(crate) fn set_owner(&self, id: usize) {
        self.owner.store(id, Ordering::Relaxed);
    }

    /// Reads the owner-only fields.
    ///
    /// # Safety
    /// The caller owns the slab.
    #[inline(always)]
    pub unsafe fn local(&self) -> SlabLocal {
        // SAFETY: the caller owns the slab, so nobody writes `local` concurrently.
        self.local.with(|l| unsafe { *l })
    }

    /// Runs `f` on the owner-only fields.
    ///
    /// # Safety
    /// The caller owns the slab.
    #[inline(always)]
    pub unsafe fn with_local<R>(&self, f: impl FnOnce(&mut SlabLocal) -> R) -> R {
        // SAFETY: the caller owns the slab, so this is the only access to `local`.
        self.local.with_mut(|l| f(unsafe { &mut *l }))
    }

    /// The size class (as the route box numbers them). Reliable for the owner and for any
    /// thread holding one of the slab's blocks.
    #[inline(always)]
    pub fn class(&self) -> usize {
        self.class.load(Ordering::Relaxed) as usize
    }

    /// The shared carve mark: blocks `0..carved()` have been handed out at some time. Reliable
    /// for the owner and for any thread holding one of the slab's blocks; 0 while the slab is
    /// free.
    #[inline(always)]
    pub fn carved(&self) -> u64 {
        self.carved.load(Ordering::Relaxed)
    }

    /// The index of the block that starts at `p` when `p`, an address in this slab, is a block
    /// start, and a number of at least 2^32 (so never below the carve mark) for any other
    /// address of the slab: the offset in the slab is `p`'s low bits (SS14), then one
    /// multiplication and one rotation (SS11). So `block_index(p) < carved()` says "a block the
    /// slab has handed out".
    ///
    /// # Safety
    /// The caller owns the slab (it reads the owner-only division constants), and `p` lies in
    /// the slab (any address of it; only its low bits are used).
    #[inline(always)]
    pub unsafe fn block_index(&self, p: *const u8) -> u64 {
        debug_assert_eq!(p as usize >> crate::SLAB_SHIFT, self.number);
        let off = p as u64 & (crate::SLAB_SIZE as u64 - 1);
        // SAFETY: the caller owns the slab, and only its owner writes these words.
        let (inv, rot_class) = unsafe { (read_own_u64(&self.inv), read_own_u32(&self.rot_class)) };
        // The rotation counts modulo 64: the class above bit 8 drops out.
        off.wrapping_mul(inv).rotate_right(rot_class)
    }

    /// [`SlabMeta::class`] and [`SlabMeta::carved`] as the owner reads them: plain loads (only
    /// the owner writes them), which the free path folds into its compares.
    ///
    /// # Safety
    /// The caller owns the slab.
    #[inline(always)]
    pub unsafe fn class_and_carved_owned(&self) -> (usize, u64) {
        // SAFETY: the caller owns the slab, and only its owner writes these words.
        unsafe {
            (
                (read_own_u32(&self.rot_class) >> 8) as usize,
                read_own_u64(&self.carved),
            )
        }
    }

    /// The owner's words of SS11 as they lie: `(inv, rot | class << 8)`, for validation.
    ///
    /// # Safety
    /// The caller owns the slab.
    pub(crate) unsafe fn division_owned(&self) -> (u64, u32) {
        // SAFETY: the caller owns the slab, and only its owner writes these words.
        unsafe { (read_own_u64(&self.inv), read_own_u32(&self.rot_class)) }
    }

    /// Marks the slab free: no block start of it is valid any more.
    pub(crate) fn clear_carved(&self) {
        self.carved.store(0, Ordering::Relaxed);
    }

    /// (Re)initialises the slab for blocks of `block_size` bytes of `class`, `capacity` of them
    /// from `start`, for its superslab's owner: the shared words (SS11), an emptied remote stack
    /// (SS9) and the owner's local fields. `fresh` says its never-carved blocks read as zero (SS8).
    ///
    /// # Safety
    /// The caller owns the slab's superslab (SS5), the slab is free (no block of it is out
    /// anywhere, SS4), and `start .. start + capacity * block_size` is this slab's memory
    /// (from its base, SS14), with `block_size` at least 16, a multiple of 16, and `class`
    /// below 2^24.
    pub(crate) unsafe fn init(
        &self,
        class: u32,
        block_size: u32,
        start: *mut u8,
        capacity: u32,
        fresh: bool,
    ) {
        self.class.store(class, Ordering::Relaxed);
        self.carved.store(0, Ordering::Relaxed);
        let (inv, rot) = exact_division(block_size);
        self.inv.store(inv, Ordering::Relaxed);
        debug_assert!(rot < 64 && class < 1 << 24);
        self.rot_class.store(rot | class << 8, Ordering::Relaxed);
        // SS9: every block of the slab's last life came back, so whatever waits on the stack was
        // freed twice (into a free slab); it must not survive into this life, in another class.
        self.remote.reset();
        // SAFETY: the caller owns the (free) slab.
        unsafe {
            self.with_local(|l| {
                *l = SlabLocal {
                    block_size,
                    capacity,
                    start,
                    fresh,
                    in_use: true,
                    ..SlabLocal::EMPTY
                }
            })
        }
    }

    /// Hands out up to `max` blocks from the front of the free list as one chain, linked as
    /// they lie (head, tail, count; the tail's link is unspecified): each keeps the free key in
    /// its second word (SS9), so a caller that keeps blocks keyed writes nothing to them. The
    /// walk only reads, to find where to cut, and checks every link it follows (SS18). `None`
    /// when the free list is empty; `Err` when a link failed its check: the whole free list is
    /// then dropped (its blocks count as out for good, SS18).
    ///
    /// # Safety
    /// The caller owns the slab.
    pub unsafe fn take_free_chain(
        &self,
        max: u32,
    ) -> Result<Option<(*mut u8, *mut u8, u32)>, Corrupt> {
        let key = crate::link_key();
        // SAFETY: the caller owns the slab; blocks on the free list are free, and every link
        // followed is checked to be a block of this slab (or the end) first.
        unsafe {
            self.with_local(|l| {
                if l.free.is_null() || max == 0 {
                    return Ok(None);
                }
                let head = l.free;
                let (mut tail, mut n) = (head, 1u32);
                let mut next = self.next_free(key, tail);
                while n < max {
                    match next {
                        Ok(b) if !b.is_null() => {
                            tail = b;
                            n += 1;
                            next = self.next_free(key, tail);
                        }
                        _ => break,
                    }
                }
                Self::cut_free_chain(l, head, tail, n, next)
            })
        }
    }

    /// [`Self::take_free_chain`] on `N` slabs at once, their walks interleaved: the free lists
    /// of slabs whose blocks were freed in a scattered order are chains of cache misses, each
    /// link known only once the block before it is read, and `N` walks in step keep `N` such
    /// reads in flight instead of one. The same result as `N` calls of `take_free_chain`, slab
    /// by slab (each entry as that call's), and the same checks (SS18).
    ///
    /// # Safety
    /// The caller owns every slab, and the slabs are `N` different ones.
    pub unsafe fn take_free_chains<const N: usize>(
        slabs: [&Self; N],
        max: [u32; N],
    ) -> [TakenChain; N] {
        let key = crate::link_key();
        let mut head = [null_mut::<u8>(); N];
        let mut tail = [null_mut::<u8>(); N];
        let mut n = [0u32; N];
        let mut next = [Ok(null_mut::<u8>()); N];
        for i in 0..N {
            // SAFETY: the caller owns the slab.
            let free = unsafe { slabs[i].local().free };
            if !free.is_null() && max[i] != 0 {
                (head[i], tail[i], n[i]) = (free, free, 1);
                // SAFETY: `free` is the head of the slab's free list: a free block of it.
                next[i] = unsafe { slabs[i].next_free(key, free) };
            }
        }
        loop {
            let mut walked = false;
            for i in 0..N {
                if n[i] != 0 && n[i] < max[i] {
                    if let Ok(b) = next[i] {
                        if !b.is_null() {
                            tail[i] = b;
                            n[i] += 1;
                            // SAFETY: `b` was checked to be a block of this slab below its
                            // carve mark, and is on its free list.
                            next[i] = unsafe { slabs[i].next_free(key, b) };
                            walked = true;
                        }
                    }
                }
            }
            if !walked {
                break;
            }
        }
        core::array::from_fn(|i| {
            if n[i] == 0 {
                return Ok(None);
            }
            // SAFETY: the caller owns the slab; the walk above read its list from its head.
            unsafe {
                slabs[i].with_local(|l| Self::cut_free_chain(l, head[i], tail[i], n[i], next[i]))
            }
        })
    }

    /// Ends a walk of `n` blocks down the free list from its head `head` to `tail`, whose
    /// checked link is `next` (SS18): the chain is cut off the list, or, when a link failed its
    /// check or the list ended before its count, the whole free list is dropped.
    #[inline(always)]
    fn cut_free_chain(
        l: &mut SlabLocal,
        head: *mut u8,
        tail: *mut u8,
        n: u32,
        next: Result<*mut u8, Corrupt>,
    ) -> TakenChain {
        match next {
            // The list ends before its count: a link overwritten with its block's own
            // address, which decodes to the end (SS18). As a bad link.
            Ok(b) if b.is_null() && l.free_len != n => {
                Self::drop_free_list(l);
                Err(Corrupt::FreeList(tail as usize))
            }
            Ok(b) => {
                l.free = b;
                l.free_len -= n;
                l.used += n;
                Ok(Some((head, tail, n)))
            }
            Err(e) => {
                Self::drop_free_list(l);
                Err(e)
            }
        }
    }

    /// The link of `b`, a free block of this slab, checked (SS18): the list's end, or a block
    /// start of this slab below its carve mark; anything else is `Corrupt::FreeList(b)`.
    ///
    /// # Safety
    /// The caller owns the slab, and `b` is a free block of it.
    pub(crate) unsafe fn next_free(&self, key: LinkKey, b: *mut u8) -> Result<*mut u8, Corrupt> {
        // SAFETY: `b` is a free block of this slab, at least 16 bytes.
        let next = unsafe { key.next(b) };
        let in_slab = next as usize >> crate::SLAB_SHIFT == self.number
            // SAFETY: the caller owns the slab (so it may read the owner's words), and `next`
            // lies in it (the numbers agree).
            && unsafe { self.block_index(next) < read_own_u64(&self.carved) };
        if next.is_null() || in_slab {
            Ok(next)
        } else {
            Err(Corrupt::FreeList(b as usize))
        }
    }

    /// Drops the free list after a bad link (SS18): its blocks count as out for good, so the
    /// slab is never reused while one of them could still be reached.
    fn drop_free_list(l: &mut SlabLocal) {
        l.used += l.free_len;
        l.free_len = 0;
        l.free = null_mut();
    }

    /// Hands out up to `max` blocks, from the free list first and then never-carved blocks,
    /// passing each to `out`. Returns how many, and the corruption found when a link of the
    /// free list failed its check (SS18): the block holding it is handed out, the rest of the
    /// free list is dropped (its blocks count as out for good), and the batch goes on carving.
    ///
    /// # Safety
    /// The caller owns the slab.
    pub unsafe fn alloc_batch(
        &self,
        max: u32,
        mut out: impl FnMut(*mut u8),
    ) -> (u32, Option<Corrupt>) {
        let key = crate::link_key();
        let mut bad = None;
        // SAFETY: the caller owns the slab; blocks on the free list are free, and every link
        // followed is checked first.
        let n = unsafe {
            self.with_local(|l| {
                let mut n = 0;
                while n < max && !l.free.is_null() {
                    let b = l.free;
                    l.free_len -= 1;
                    match self.next_free(key, b) {
                        // A list that ends before its count is cut as at a bad link (see
                        // [`Self::take_free_chain`]).
                        Ok(next) if !next.is_null() || l.free_len == 0 => l.free = next,
                        r => {
                            l.free = null_mut();
                            Self::drop_free_list(l);
                            bad = Some(r.err().unwrap_or(Corrupt::FreeList(b as usize)));
                        }
                    }
                    out(b);
                    n += 1;
                }
                if n < max && l.carve < l.capacity {
                    let k = (max - n).min(l.capacity - l.carve);
                    // Publish the carve mark before the blocks go out.
                    self.carved.store(u64::from(l.carve + k), Ordering::Relaxed);
                    for _ in 0..k {
                        out(l.start.add((l.carve * l.block_size) as usize));
                        l.carve += 1;
                    }
                    n += k;
                }
                l.used += n;
                n
            })
        };
        (n, bad)
    }

    /// One never-carved block, which reads as zero, if the slab began fresh and has one left.
    ///
    /// # Safety
    /// The caller owns the slab.
    pub unsafe fn carve_zeroed(&self) -> Option<*mut u8> {
        // SAFETY: the caller owns the slab.
        unsafe {
            self.with_local(|l| {
                if !l.fresh || l.carve >= l.capacity {
                    return None;
                }
                let b = l.start.add((l.carve * l.block_size) as usize);
                l.carve += 1;
                self.carved.store(u64::from(l.carve), Ordering::Relaxed);
                l.used += 1;
                Some(b)
            })
        }
    }

    /// True when `p` is the start of a block this slab has handed out at some time.
    ///
    /// # Safety
    /// The caller owns the slab.
    pub unsafe fn is_block(&self, p: *mut u8) -> bool {
        // SAFETY: the caller owns the slab.
        let l = unsafe { self.local() };
        let off = (p as usize).wrapping_sub(l.start as usize);
        l.in_use
            && l.block_size != 0
            && off.is_multiple_of(l.block_size as usize)
            && off / (l.block_size as usize) < l.carve as usize
    }

    /// Takes back one block from the owner, keyed as free. Returns true when the slab is now
    /// empty.
    ///
    /// # Safety
    /// The caller owns the slab and gives `block` up.
    pub unsafe fn free_local(&self, block: *mut u8) -> Result<bool, Corrupt> {
        // SAFETY: the caller owns the slab and hands over `block`.
        unsafe {
            self.with_local(|l| {
                if l.used == 0 || block == l.free {
                    return Err(Corrupt::DoubleFree(block as usize));
                }
                crate::set_key_word(block, crate::free_key());
                crate::link_key().set_next(block, l.free);
                l.free = block;
                l.free_len += 1;
                l.used -= 1;
                Ok(l.used == 0)
            })
        }
    }

    /// [`Self::free_local`] with the keys the caller holds (the per-process free key and link
    /// key, as [`crate::free_key`] and [`crate::link_key`] give them): the same, without
    /// reading them. False in place of the double free's report: the block is the head of
    /// the free list or no block is out, and nothing changed. Otherwise true, and the slab's
    /// blocks out (0 when it is now empty).
    ///
    /// # Safety
    /// As [`Self::free_local`], and `free_key` and `link` are the process's keys.
    #[inline(always)]
    pub unsafe fn free_local_keyed(
        &self,
        block: *mut u8,
        free_key: usize,
        link: LinkKey,
    ) -> Option<u32> {
        // SAFETY: the caller owns the slab and hands over `block`.
        unsafe {
            self.with_local(|l| {
                if l.used == 0 || block == l.free {
                    return None;
                }
                crate::set_key_word(block, free_key);
                link.set_next(block, l.free);
                l.free = block;
                l.free_len += 1;
                l.used -= 1;
                Some(l.used)
            })
        }
    }

    /// Takes back a run of `n` blocks from the owner at once, `head ..= tail` linked through
    /// their first words (the tail's link is overwritten), each already keyed as free (SS9):
    /// one update of the slab's counts for the whole run. Returns true when the slab is now
    /// empty; a run longer than the blocks out is a double free and changes nothing.
    ///
    /// # Safety
    /// The caller owns the slab and gives the blocks up; each is a block of this slab (below
    /// its carve mark), on no list, carrying the free key, and `n >= 1` of them are linked from
    /// `head` to `tail`.
    pub unsafe fn free_local_run(
        &self,
        head: *mut u8,
        tail: *mut u8,
        n: u32,
    ) -> Result<bool, Corrupt> {
        // SAFETY: the caller owns the slab and hands over the linked run.
        unsafe {
            self.with_local(|l| {
                if n > l.used || head == l.free {
                    return Err(Corrupt::DoubleFree(head as usize));
                }
                crate::link_key().set_next(tail, l.free);
                l.free = head;
                l.free_len += n;
                l.used -= n;
                Ok(l.used == 0)
            })
        }
    }

    /// Moves every block on the remote stack to the local free list. Returns how many moved.
    ///
    /// # Safety
    /// The caller owns the slab.
    pub unsafe fn drain_remote(&self) -> Result<u32, Corrupt> {
        // SAFETY: forwarded.
        unsafe { self.splice_remote(self.remote.take_all()) }
    }

    /// As [`Self::drain_remote`], and leaves the stack flagged abandoned (same swap), for a
    /// superslab that is abandoned.
    ///
    /// # Safety
    /// The caller holds the abandoned superslab exclusively (or owns it and is abandoning it).
    pub unsafe fn drain_remote_flagged(&self) -> Result<u32, Corrupt> {
        // SAFETY: forwarded.
        unsafe { self.splice_remote(self.remote.take_all_flagged()) }
    }

    /// True when `p` is on the slab's local free list (a walk that stops, false, at a link
    /// that fails its check: SS18).
    ///
    /// # Safety
    /// The caller owns the slab.
    pub unsafe fn free_list_contains(&self, p: *mut u8) -> bool {
        let key = crate::link_key();
        // SAFETY: the caller owns the slab; the list's blocks are free, and each link is
        // checked before it is followed.
        unsafe {
            let l = self.local();
            let mut b = l.free;
            let mut n = 0;
            while !b.is_null() && n <= l.free_len {
                if b == p {
                    return true;
                }
                match self.next_free(key, b) {
                    Ok(next) => b = next,
                    Err(_) => return false,
                }
                n += 1;
            }
        }
        false
    }

    /// True when `p` sits on the slab's remote stack now (a bounded look, safe for any thread
    /// whose look races the owner's take: see [`RemoteStack::contains`]).
    ///
    /// # Safety
    /// The slab's superslab stays mapped during the call.
    pub unsafe fn remote_contains(&self, p: *mut u8) -> bool {
        let lo = p as usize & !(crate::SLAB_SIZE - 1);
        // SAFETY: the slab's 64 KiB lie in the mapped superslab.
        unsafe {
            self.remote
                .contains(p, lo, lo + crate::SLAB_SIZE, (crate::SLAB_SIZE / 16) as u32)
        }
    }

    /// Puts a chain taken off the remote stack on the local free list, and returns its count.
    /// The count came with the chain (SS6), so only the shorter of the two lists is read, to
    /// link the other after its tail: none when the free list is empty, the free list's blocks
    /// when it is the shorter (the chain's blocks, last written by another core, are then not
    /// read here), and otherwise the chain's, which must then hold exactly `count` blocks.
    ///
    /// # Safety
    /// The caller owns the slab (SS5), and `taken` is what one take of this slab's remote stack
    /// returned, not spliced before: its blocks are this slab's, given up by their freers.
    unsafe fn splice_remote(&self, taken: Taken) -> Result<u32, Corrupt> {
        let Taken { head, count } = taken;
        if head.is_null() {
            return Ok(0);
        }
        // SAFETY: the caller owns the slab; the chain came off our remote stack, linked through
        // first words, and its blocks were given up by their freers; the free list's blocks are
        // free and linked (SS9).
        unsafe {
            self.with_local(|l| {
                if count == 0 || count > l.used {
                    // More blocks came back than were out (or so many that the count wrapped):
                    // a double free.
                    return Err(Corrupt::DoubleFree(head as usize));
                }
                let key = crate::link_key();
                if l.free.is_null() {
                    l.free = head;
                } else if l.free_len < count {
                    match self.tail_of(key, l.free, l.free_len) {
                        Ok(tail) => key.set_next(tail, head),
                        Err(e @ Corrupt::FreeList(_)) => {
                            // A bad link on the free list: the free list is dropped, and the
                            // chain takes its place (SS18).
                            Self::drop_free_list(l);
                            l.free = head;
                            l.free_len = count;
                            l.used -= count;
                            return Err(e);
                        }
                        Err(e) => return Err(e),
                    }
                } else {
                    // A chain longer or shorter than its count has a block on it twice; a bad
                    // link drops the chain, whose blocks stay out (SS18).
                    let tail = self.tail_of(key, head, count)?;
                    key.set_next(tail, l.free);
                    l.free = head;
                }
                l.free_len += count;
                l.used -= count;
                Ok(count)
            })
        }
    }

    /// True when a block can be handed out without asking anyone (free list or carve).
    ///
    /// # Safety
    /// The caller owns the slab.
    #[inline]
    pub unsafe fn has_free(&self) -> bool {
        // SAFETY: forwarded.
        let l = unsafe { self.local() };
        !l.free.is_null() || l.carve < l.capacity
    }

    /// True when no block is out.
    ///
    /// # Safety
    /// The caller owns the slab.
    #[inline]
    pub unsafe fn is_empty(&self) -> bool {
        // SAFETY: forwarded.
        unsafe { self.local().used == 0 }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::exact_division;

    #[test]
    fn block_index_is_exact_for_block_starts_and_huge_otherwise() {
        // Every block size a slab can have (multiples of 16 up to 64 KiB), against every
        // 16-aligned offset in a slab, a few unaligned ones, and offsets before the slab start.
        for d in (16..=65536u32).step_by(16) {
            let (inv, rot) = exact_division(d);
            let index = |off: u64| off.wrapping_mul(inv).rotate_right(rot);
            for off in (0..=65536u64)
                .step_by(16)
                .chain([1, 8, 17, u64::from(d) + 4])
            {
                let q = index(off);
                if off % u64::from(d) == 0 {
                    assert_eq!(q, off / u64::from(d), "d {d} off {off}");
                } else {
                    assert!(q >= 1 << 32, "d {d} off {off}: {q}");
                }
            }
            for back in (16..=(2u64 << 20)).step_by(4096 + 16) {
                assert!(index(back.wrapping_neg()) >= 1 << 32, "d {d} off -{back}");
            }
        }
    }
}

impl SlabMeta {
    /// The last block of a list of this slab's free blocks, `len` of them linked from `head`:
    /// `Corrupt::DoubleFree(head)` when the list ends sooner or goes on longer, and
    /// `Corrupt::FreeList(b)` when the link of a block `b` is not to a block of this slab
    /// (SS18).
    ///
    /// # Safety
    /// The caller owns the slab; `head` is a free block of it, and every block reached through
    /// checked links is free.
    unsafe fn tail_of(&self, key: LinkKey, head: *mut u8, len: u32) -> Result<*mut u8, Corrupt> {
        let mut tail = head;
        for _ in 1..len {
            // SAFETY: a free block of the slab: the head, or reached through a checked link.
            tail = unsafe { self.next_free(key, tail) }?;
            if tail.is_null() {
                return Err(Corrupt::DoubleFree(head as usize));
            }
        }
        // SAFETY: as above.
        if unsafe { self.next_free(key, tail) }?.is_null() {
            Ok(tail)
        } else {
            Err(Corrupt::DoubleFree(head as usize))
        }
    }
}
