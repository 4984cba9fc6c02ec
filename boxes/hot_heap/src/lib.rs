//! # hakmem-hot-heap: the per-thread Hot Box
//!
//! One job: serve a thread's small allocations and frees. A [`Heap`] owns the thread's thread
//! lists (hakmem-tls-sll), its unified cache, its superslabs and, per class, a ring of its slabs
//! that have free blocks. The [`Ctx`] is what all heaps share: the OS layer, the registry, the
//! lru, the abandoned list, the global stats and the list of heaps.
//!
//! ```text
//! alloc: thread list --(empty)--> unified cache --(empty)--> slabs, in this order:
//!        own slabs -> drained remote frees -> adopted abandoned superslabs
//!        -> new slab in an own superslab -> lru -> OS
//! free (owner):     thread list --(full)--> unified cache --(full)--> slab free lists
//! free (non-owner): one CAS onto the slab's remote stack
//! ```
//!
//! ## Invariants
//! - **H1 (own blocks only).** A heap's thread lists and cache hold only blocks of slabs it owns;
//!   a free checks `slab.owner() == heap.id` and sends anything else to the remote stack.
//! - **H2 (fast path).** [`Heap::alloc`] and the owner's [`Heap::free_small`] touch the heap, the
//!   block's first two words, and (for the free) the slab's shared `owner`/`class` words, which
//!   only the owner writes: no atomic read-modify-write, no lock, no division.
//! - **H3 (rings).** A slab is on its class's ring iff it is in use by this heap and has a free
//!   or never-carved block, or it is the ring's current slab. Full slabs leave the ring and
//!   come back when a block returns (local flush or drained remote free).
//! - **H4 (empty memory goes back, with hysteresis).** A slab that becomes empty is returned to
//!   its superslab at once, unless it is its class's current slab. A superslab that becomes
//!   empty stays with its heap (still owned, its pages kept) when the heap keeps no other empty
//!   one; otherwise it is retired to the lru, which purges and unmaps it by its decay rules. So
//!   a heap whose blocks all come back (a producer whose consumer frees remotely) reuses its
//!   superslab instead of retiring and re-creating it each time, and an idle heap holds at most
//!   one empty superslab (2 MiB) beyond the memory its live blocks need; its exit (H5) releases
//!   it.
//! - **H5 (exit).** [`Ctx::retire_heap`] returns every block on the thread lists and in the cache
//!   to its slab, drains remote frees, releases what is empty and abandons what is not, so no
//!   superslab is ever leaked with an owner that no longer runs. A heap whose thread ended
//!   without retiring it (its exit hook never ran) is retired by [`Ctx::reap_one`], which
//!   another thread calls with a test of thread liveness; it looks at the live heaps in turn.
//! - **H6 (check mode).** With `check`, thread lists have no room, so every free and alloc takes
//!   the slow path, where a per-slab bitmap catches every double free.
//! - **H7 (owned order).** In a heap's list of owned superslabs, every one with a free slab
//!   comes before every full one, so finding a free slab looks at the front only.
//! - **H8 (owned cache).** `owned_cache[(base >> SS_SHIFT) % OWNED_CACHE]` holds either
//!   `EMPTY_SLOT` or the base of a superslab on this heap's owned list: a superslab is entered
//!   when it is linked and cleared when it is unlinked, before it can be abandoned or released.
//!   Every in-use slab of an owned superslab has this heap's id as owner, and a free slab has
//!   carve mark 0. So a hit in the cache proves, with one load and one compare, both "ours"
//!   (the registry's answer) and "owned by this heap" (the owner check): the C free's fast path,
//!   [`Heap::try_free_owned`].
//! - **FK1 (keyed while free).** Every block on this heap's thread lists or cache (and, by SS9,
//!   on a slab's free list or remote stack) carries the per-process free key in its second word:
//!   a refill keys the blocks it carves, and every push writes it.
//! - **FK2 (unkeyed when out).** Every block handed to a user has its second word cleared first
//!   (`List::pop`, or the slow path's hand-out), so a user's block carries the key only if the
//!   user wrote it there.
//! - **FK3 (double frees caught).** Every free, the owner's and a non-owner's, compares the
//!   block's second word with the key (one load and one compare on the fast path). On the
//!   owner's path a match goes to a cold confirmation that walks the class's thread list, the
//!   cache, the slab's free list and its remote stack: a confirmed match is reported as
//!   `Corrupt::DoubleFree` and the free is dropped; an unconfirmed one (user data equal to the
//!   key) proceeds. A non-owner cannot read the owner's structures, and pushing a block that
//!   sits on them would corrupt them, so on its path every match is reported (the key is
//!   random per process and cleared at hand-out, so only a user that copied it out of freed
//!   memory can have it). In check mode (H6) the bitmap still catches the rest.
#![deny(unsafe_op_in_unsafe_fn)]
#![no_std]

mod sync;

use core::ptr::{null, null_mut, NonNull};
use hakmem_lru::{now_ns, Lru, LruConfig};
use hakmem_registry::Registry;
use hakmem_route::{block_size_of, CACHE_CAPS, CACHE_SLOTS, CLASSES, LIST_CAPS};
use hakmem_stats::{Event, GlobalStats, Snapshot, ThreadStats};
use hakmem_superslab::{
    free_key, init_free_key, key_word, set_key_word, AbandonedList, Corrupt, Env, Os, SlabMeta,
    SpinLock, Superslab, PAGE, SLAB_SHIFT, SLAB_SIZE, SS_SHIFT, SS_SIZE,
};
use hakmem_tls_sll::List;
use hakmem_unified_cache::UnifiedCache;
use sync::{AtomicUsize, Ordering};

/// Slots of a heap's owned-superslab cache (H8): 64 superslabs, 128 MiB of small blocks.
const OWNED_CACHE: usize = 64;
/// An empty slot of the owned cache: no superslab base (they are 2 MiB-aligned), and not 0, which
/// is what a null pointer masks to.
const EMPTY_SLOT: usize = 1;

/// The owned-cache slot of the superslab at `base`.
#[inline(always)]
fn owned_slot(base: usize) -> usize {
    (base >> SS_SHIFT) & (OWNED_CACHE - 1)
}

/// The unified cache type every heap carries.
type Cache = UnifiedCache<CLASSES, CACHE_SLOTS>;

/// Owned superslabs scanned for remote frees per refill.
const SCAN_PER_REFILL: usize = 4;
/// Owned superslabs scanned for remote frees before a new superslab is taken. Bounded, so a heap
/// with hundreds of superslabs does not walk them all every 2 MiB; the rotating cursor still
/// visits every one in turn.
const SCAN_BEFORE_GROWING: usize = 32;

struct Heaps {
    /// Live heaps, most recently made (or checked by [`Ctx::reap_one`]) first.
    live: *mut Heap,
    /// The last live heap: the one [`Ctx::reap_one`] checks next.
    tail: *mut Heap,
    free: *mut Heap,
    live_count: usize,
}

// SAFETY: heap pointers are only followed under the lock that guards this list.
unsafe impl Send for Heaps {}

/// What every heap shares.
pub struct Ctx {
    os: &'static dyn Os,
    /// Which regions are ours.
    pub registry: Registry,
    /// Global counters.
    pub stats: GlobalStats,
    /// Empty regions kept for reuse.
    pub lru: Lru,
    /// Superslabs whose owner exited while blocks were out.
    pub abandoned: AbandonedList,
    check: bool,
    report: fn(Corrupt),
    heaps: SpinLock<Heaps>,
    next_id: AtomicUsize,
}

impl Ctx {
    /// A context over `os` and `registry`. `check` turns on full double-free checks (H6);
    /// `report` hears of every corruption found (it may abort; if it returns, the offending
    /// block is dropped and the allocator goes on).
    pub fn new(
        os: &'static dyn Os,
        registry: Registry,
        lru: LruConfig,
        check: bool,
        report: fn(Corrupt),
    ) -> Self {
        // Draw the free key at start-up, before any heap exists (FK1).
        init_free_key();
        Self {
            os,
            registry,
            stats: GlobalStats::new(),
            lru: Lru::new(os, lru),
            abandoned: AbandonedList::new(),
            check,
            report,
            heaps: SpinLock::new(Heaps {
                live: null_mut(),
                tail: null_mut(),
                free: null_mut(),
                live_count: 0,
            }),
            next_id: AtomicUsize::new(1),
        }
    }

    /// The environment superslab operations need.
    #[inline(always)]
    pub fn env(&self) -> Env<'_> {
        Env {
            os: self.os,
            registry: &self.registry,
            stats: &self.stats,
        }
    }

    /// True in check mode.
    pub fn check(&self) -> bool {
        self.check
    }

    /// Reports a corruption (see [`Ctx::new`]).
    #[cold]
    pub fn report(&self, c: Corrupt) {
        (self.report)(c)
    }

    /// A heap for a new thread: recycled from an exited thread, or mapped. `None` when the OS
    /// refuses memory.
    pub fn new_heap(&'static self) -> Option<NonNull<Heap>> {
        self.lru.purge_if_due(&self.stats);
        let recycled = self.heaps.with(|h| {
            let f = h.free;
            if !f.is_null() {
                // SAFETY: heaps on the free list are ours and unused.
                h.free = unsafe { (*f).next };
            }
            f
        });
        let heap = match NonNull::new(recycled) {
            Some(h) => h,
            None => {
                let len = (core::mem::size_of::<Heap>() + PAGE - 1) & !(PAGE - 1);
                self.os.map(len, PAGE, &self.stats)?.cast::<Heap>()
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // SAFETY: fresh zeroed memory or a retired heap (left empty by `retire_heap`), both
        // valid `Heap`s (a zeroed Heap is valid: every field is an integer or a pointer).
        unsafe { Heap::init(heap.as_ptr(), self, id) };
        self.heaps.with(|h| {
            // SAFETY: under the lock; `heap` is ours, the list's heaps are live.
            unsafe {
                Self::push_live(h, heap.as_ptr());
            }
            h.live_count += 1;
        });
        Some(heap)
    }

    /// Links `heap` at the front of the live list.
    ///
    /// # Safety
    /// Under the heaps lock; `heap` is ours and on no list.
    unsafe fn push_live(h: &mut Heaps, heap: *mut Heap) {
        // SAFETY: as the caller says; the list's heaps are live.
        unsafe {
            (*heap).next = h.live;
            (*heap).prev = null_mut();
            match h.live.as_mut() {
                Some(l) => l.prev = heap,
                None => h.tail = heap,
            }
        }
        h.live = heap;
    }

    /// Unlinks `heap` from the live list.
    ///
    /// # Safety
    /// Under the heaps lock; `heap` is on the live list.
    unsafe fn unlink_live(h: &mut Heaps, heap: *mut Heap) {
        // SAFETY: as the caller says; its neighbours are live heaps.
        unsafe {
            let (next, prev) = ((*heap).next, (*heap).prev);
            match prev.as_mut() {
                Some(p) => p.next = next,
                None => h.live = next,
            }
            match next.as_mut() {
                Some(n) => n.prev = prev,
                None => h.tail = prev,
            }
        }
    }

    /// Sets the tag of `heap`: an opaque word naming its thread, for [`Ctx::reap_one`] (0: none).
    ///
    /// # Safety
    /// `heap` came from [`Ctx::new_heap`] and is not retired.
    pub unsafe fn set_tag(&self, heap: NonNull<Heap>, tag: u64) {
        // SAFETY: under the lock, as `reap_one` reads it.
        self.heaps.with(|_| unsafe { (*heap.as_ptr()).tag = tag });
    }

    /// Looks at the live heap looked at least recently (one per call, in turn), and retires it
    /// when `gone(tag)` says its thread has ended without retiring it (a heap made during the
    /// thread's last pass over TSD destructors is never handed to the exit destructor: H5 would
    /// fail without this). `gone` must answer true only for a thread that will never run again.
    /// True when a heap was retired.
    pub fn reap_one(&'static self, gone: impl Fn(u64) -> bool) -> bool {
        let (heap, tag) = self.heaps.with(|h| {
            let t = h.tail;
            if t.is_null() || t == h.live {
                return (null_mut(), 0);
            }
            // SAFETY: under the lock; `t` is live. It moves to the front: checked last.
            unsafe {
                Self::unlink_live(h, t);
                Self::push_live(h, t);
                (t, (*t).tag)
            }
        });
        if heap.is_null() || tag == 0 || !gone(tag) {
            return false;
        }
        // Claim it: only one reaper retires it (a heap's memory is never unmapped, so `heap`
        // is readable; the id is 0 once retired).
        let claimed = self.heaps.with(|_| {
            // SAFETY: under the lock.
            unsafe {
                let ok = (*heap).tag == tag && (*heap).id != 0;
                if ok {
                    (*heap).tag = 0;
                }
                ok
            }
        });
        if !claimed {
            return false;
        }
        // SAFETY: its thread has ended, so nobody else uses it, and the claim above made this
        // thread its only reaper.
        unsafe { self.retire_heap(NonNull::new_unchecked(heap)) };
        true
    }

    /// Tears a thread's heap down (H5), merges its counts, and keeps its memory for the next
    /// thread.
    ///
    /// # Safety
    /// `heap` came from [`Ctx::new_heap`], its thread will not use it again, and nobody else does.
    pub unsafe fn retire_heap(&self, heap: NonNull<Heap>) {
        let h = heap.as_ptr();
        // SAFETY: the caller hands the heap over.
        unsafe { (*h).teardown() };
        self.heaps.with(|l| {
            // SAFETY: under the lock; `h` and its neighbours are on the live list.
            unsafe {
                self.stats.merge(&(*h).stats);
                Self::unlink_live(l, h);
                (*h).next = l.free;
                (*h).id = 0;
                (*h).tag = 0;
            }
            l.free = h;
            l.live_count -= 1;
        });
    }

    /// Every counter: the global ones plus each live heap's.
    pub fn snapshot(&self) -> Snapshot {
        self.heaps.with(|l| {
            let mut s = self.stats.snapshot();
            let mut h = l.live;
            // SAFETY: under the lock, live heaps stay on the list; their counters are atomics.
            while let Some(heap) = unsafe { h.as_ref() } {
                s.add_thread(&heap.stats);
                h = heap.next;
            }
            s
        })
    }

    /// Live heaps (threads that have allocated and not exited).
    pub fn live_heaps(&self) -> usize {
        self.heaps.with(|l| l.live_count)
    }

    /// The counts of every lock heaps share, named: the heap list, the abandoned list, the lru
    /// (see `docs/SCALING.md`). Reading them takes no lock.
    #[cfg(not(loom))]
    pub fn lock_counts(&self) -> [(&'static str, hakmem_superslab::LockCounts); 3] {
        [
            ("heap list", self.heaps.contention()),
            ("abandoned list", self.abandoned.contention()),
            ("lru", self.lru.contention()),
        ]
    }

    /// Retires a superslab whose last reference was dropped, into the lru.
    ///
    /// # Safety
    /// The caller got `true` from [`Superslab::unpin`] or [`Superslab::free_remote`].
    pub unsafe fn release_superslab(&self, ss: &Superslab) {
        let env = self.env();
        // SAFETY: forwarded from the caller.
        let region = unsafe { ss.retire(&env) };
        // SAFETY: retired: unregistered, no block or reference left.
        unsafe { self.lru.put(&self.stats, region, SS_SIZE, now_ns()) };
    }

    /// A superslab for heap `owner`: from the lru, else fresh from the OS.
    fn superslab_for(&'static self, owner: usize) -> Option<&'static Superslab> {
        let env = self.env();
        if let Some(r) = self.lru.take(&self.stats, SS_SIZE, true, now_ns()) {
            // SAFETY: a cached region is ours, whole and unused (lru C2).
            match unsafe { Superslab::init(&env, r.base, r.zeroed, owner) } {
                Ok(ss) => return Some(ss),
                // SAFETY: never published.
                Err(region) => unsafe { self.os.unmap(region, SS_SIZE, &self.stats) },
            }
        }
        Superslab::create(&env, owner)
    }

    /// Takes every lock a forking thread must not leave held (fork's `prepare`).
    #[cfg(not(loom))]
    pub fn lock_all(&self) {
        self.heaps.lock_for_fork();
        self.abandoned.lock_for_fork();
        self.lru.lock_for_fork();
    }

    /// Releases what [`Ctx::lock_all`] took (fork's `parent` and `child`).
    ///
    /// # Safety
    /// [`Ctx::lock_all`] was called, by this thread or (in a forked child) by the parent's
    /// forking thread, and not yet matched by a call of this.
    #[cfg(not(loom))]
    pub unsafe fn unlock_all(&self) {
        // SAFETY: forwarded: each lock was taken by lock_all's lock_for_fork.
        unsafe {
            self.lru.force_unlock();
            self.abandoned.force_unlock();
            self.heaps.force_unlock();
        }
    }
}

/// One thread's heap.
#[repr(C)]
pub struct Heap {
    sll: [List; CLASSES],
    id: usize,
    /// The free key (FK1), next to `id`, which the free path reads anyway.
    key: usize,
    /// Owned superslabs by base address, direct-mapped (H8).
    owned_cache: [usize; OWNED_CACHE],
    /// Names the heap's thread for [`Ctx::reap_one`] (0: none).
    tag: u64,
    ctx: *const Ctx,
    current: [*const SlabMeta; CLASSES],
    owned: *const Superslab,
    owned_tail: *const Superslab,
    owned_count: usize,
    cursor: *const Superslab,
    /// The one empty superslab this heap may keep (H4); null, or owned by this heap.
    kept_empty: *const Superslab,
    /// This thread's counters.
    pub stats: ThreadStats,
    next: *mut Heap,
    prev: *mut Heap,
    cache: Cache,
}

/// Where a block's check-bitmap bit lives: `(slab index, 16-byte granule in the slab)`.
fn check_index(ss: &Superslab, p: *mut u8) -> (usize, usize) {
    let off = p as usize - ss.base();
    (off >> SLAB_SHIFT, (off & (SLAB_SIZE - 1)) >> 4)
}

impl Heap {
    /// Initialises a heap in place.
    ///
    /// # Safety
    /// `this` points to a valid, empty `Heap` (zeroed memory is one) that nobody else uses.
    unsafe fn init(this: *mut Heap, ctx: &'static Ctx, id: usize) {
        // SAFETY: the caller hands over a valid, empty heap.
        let h = unsafe { &mut *this };
        h.id = id;
        h.key = init_free_key();
        h.ctx = ctx;
        for (list, &cap) in h.sll.iter_mut().zip(LIST_CAPS.iter()) {
            *list = List::new(if ctx.check { 0 } else { cap });
        }
        h.current = [null(); CLASSES];
        h.owned_cache = [EMPTY_SLOT; OWNED_CACHE];
        h.owned = null();
        h.owned_tail = null();
        h.owned_count = 0;
        h.cursor = null();
        h.kept_empty = null();
        h.cache
            .set_caps(&CACHE_CAPS)
            .expect("route sizes the cache for every class");
    }

    /// This heap's id (what its slabs hold in `owner`).
    #[inline(always)]
    pub fn id(&self) -> usize {
        self.id
    }

    /// The shared context.
    #[inline(always)]
    pub fn ctx(&self) -> &'static Ctx {
        // SAFETY: set at init to a context that lives for the program.
        unsafe { &*self.ctx }
    }

    /// A block of `class`, or null when the OS refuses memory (H2).
    ///
    /// # Safety
    /// Only the heap's thread calls this.
    #[inline(always)]
    pub unsafe fn alloc(&mut self, class: usize) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { self.alloc_fast(class) };
        if !p.is_null() {
            return p;
        }
        // SAFETY: forwarded.
        unsafe { self.alloc_slow(class) }
    }

    /// A block of `class` from its thread list, or null when the list is empty (nothing else is
    /// tried: the caller then takes [`Heap::alloc`]'s way). The C malloc's fast path (H2).
    ///
    /// # Safety
    /// Only the heap's thread calls this, with `class < CLASSES`.
    #[inline(always)]
    pub unsafe fn alloc_fast(&mut self, class: usize) -> *mut u8 {
        debug_assert!(class < CLASSES);
        // SAFETY: `class < CLASSES` by the contract; the list holds free blocks this heap owns
        // (H1).
        let p = unsafe { self.sll.get_unchecked_mut(class).pop() };
        if !p.is_null() {
            // SAFETY: CLASSES < MAX_CLASSES (route box).
            unsafe { self.stats.on_alloc_unchecked(class) };
        }
        p
    }

    /// A zeroed block of `class`: a never-carved block of a fresh slab needs no zeroing.
    ///
    /// # Safety
    /// Only the heap's thread calls this.
    pub unsafe fn alloc_zeroed(&mut self, class: usize) -> *mut u8 {
        if self.sll[class].is_empty() && self.cache.is_empty(class) {
            if let Some(slab) = NonNull::new(self.current[class] as *mut SlabMeta) {
                // SAFETY: current slabs are owned by this heap.
                let slab = unsafe { slab.as_ref() };
                // SAFETY: as above.
                if let Some(p) = unsafe { slab.carve_zeroed() } {
                    self.ctx().stats.held_add(class, 1);
                    self.on_handed_out(class, p);
                    return p;
                }
            }
        }
        // SAFETY: forwarded.
        let p = unsafe { self.alloc(class) };
        if !p.is_null() {
            // SAFETY: a block of at least block_size bytes, ours.
            unsafe { p.write_bytes(0, block_size_of(class)) };
        }
        p
    }

    fn on_handed_out(&mut self, class: usize, p: *mut u8) {
        // SAFETY: a block of at least 16 bytes, ours, going to the user: unkeyed (FK2).
        unsafe { set_key_word(p, 0) };
        self.stats.on_alloc(class);
        if self.ctx().check {
            // SAFETY: `p` is a block of a live superslab of ours.
            let ss = unsafe { Superslab::of(p) };
            let (s, g) = check_index(ss, p);
            if !ss.check_mark_held(s, g) {
                self.ctx().report(Corrupt::DoubleFree(p as usize));
            }
        }
    }

    #[cold]
    #[inline(never)]
    unsafe fn alloc_slow(&mut self, class: usize) -> *mut u8 {
        self.ctx().lru.purge_if_due(&self.ctx().stats);
        if self.cache.is_empty(class) {
            // SAFETY: only the heap's thread gets here.
            unsafe { self.refill_cache(class) };
        }
        let p = self.cache.pop(class);
        if p.is_null() {
            return null_mut();
        }
        let batch = (self.sll[class].cap() / 2).min(self.cache.len(class));
        for _ in 0..batch {
            let b = self.cache.pop(class);
            // SAFETY: a free block this heap owns, on no list.
            unsafe { self.sll[class].push(b, self.key) };
        }
        self.on_handed_out(class, p);
        p
    }

    /// Fills the cache for `class` halfway from slabs, in the refill order.
    unsafe fn refill_cache(&mut self, class: usize) {
        let want = (self.cache.cap(class) / 2).max(1);
        let mut got = 0;
        while got < want {
            // SAFETY: only the heap's thread gets here.
            let Some(slab) = (unsafe { self.slab_with_free(class) }) else {
                break;
            };
            let (cache, key) = (&mut self.cache, self.key);
            // SAFETY: the slab is ours (H3); never-carved blocks get the key here (FK1).
            let n = unsafe {
                slab.alloc_batch(want - got, |b| {
                    set_key_word(b, key);
                    assert!(cache.push(class, b))
                })
            };
            got += n;
            self.ctx().stats.held_add(class, n as usize);
            // SAFETY: as above.
            if unsafe { !slab.has_free() } {
                self.ring_remove(class, slab);
            }
        }
    }

    /// A slab of `class` with a free block, in the refill order (module docs).
    unsafe fn slab_with_free(&mut self, class: usize) -> Option<&'static SlabMeta> {
        // 1. Own slabs with free blocks.
        if let Some(s) = self.current(class) {
            return Some(s);
        }
        // 2. Remote frees, drained from a few own superslabs.
        self.collect_owned(SCAN_PER_REFILL);
        if let Some(s) = self.current(class) {
            return Some(s);
        }
        // 3. Abandoned superslabs, adopted.
        // SAFETY: this heap's id, used by this thread alone.
        while let Some(ss) = unsafe { self.ctx().abandoned.adopt(self.id) } {
            self.ctx().stats.event(Event::Adopt, 0);
            // SAFETY: adopted: ours.
            let has_free = unsafe { ss.has_free_slab() };
            self.link_owned(ss, has_free);
            self.collect_one(ss);
            if let Some(s) = self.current(class) {
                return Some(s);
            }
        }
        // Before asking for a new superslab, drain more own superslabs.
        self.collect_owned(SCAN_BEFORE_GROWING);
        if let Some(s) = self.current(class) {
            return Some(s);
        }
        // 4. A new slab in an own superslab (H7: those with free slabs come first); 5. the lru;
        // 6. the OS.
        let bs = block_size_of(class) as u32;
        for _ in 0..4 {
            // SAFETY: owned superslabs are live and ours.
            let Some(s) = (unsafe { self.owned.as_ref() }) else {
                break;
            };
            // SAFETY: ours.
            if unsafe { !s.has_free_slab() } {
                break; // the first is full, so all are (H7)
            }
            // SAFETY: ours.
            let slab = unsafe { s.alloc_slab(class as u32, bs) };
            // SAFETY: ours.
            if slab.is_none() || unsafe { !s.has_free_slab() } {
                // Full now (or its only free slab, slab 0, is too short for this class).
                self.unlink_owned(s);
                self.link_owned(s, false);
            }
            if let Some(slab) = slab {
                self.ring_insert(class, slab);
                return Some(slab);
            }
        }
        let s = self.ctx().superslab_for(self.id)?;
        self.link_owned(s, true);
        // SAFETY: ours, fresh: every slab is free.
        let slab = unsafe { s.alloc_slab(class as u32, bs) }?;
        self.ring_insert(class, slab);
        Some(slab)
    }

    #[inline]
    fn current(&self, class: usize) -> Option<&'static SlabMeta> {
        // SAFETY: ring slabs are live and ours (H3).
        unsafe { self.current[class].as_ref() }
    }

    fn in_ring(slab: &SlabMeta) -> bool {
        // SAFETY: only called on slabs this heap owns.
        unsafe { !slab.local().next.is_null() }
    }

    fn ring_insert(&mut self, class: usize, slab: &SlabMeta) {
        let cur = self.current[class];
        // SAFETY: ring members are slabs this heap owns; only this thread touches their locals.
        unsafe {
            if cur.is_null() {
                slab.with_local(|l| {
                    l.next = slab;
                    l.prev = slab;
                });
                self.current[class] = slab;
            } else {
                let prev = (*cur).local().prev;
                slab.with_local(|l| {
                    l.next = cur;
                    l.prev = prev;
                });
                (*prev).with_local(|l| l.next = slab);
                (*cur).with_local(|l| l.prev = slab);
            }
        }
    }

    fn ring_remove(&mut self, class: usize, slab: &SlabMeta) {
        // SAFETY: as in ring_insert.
        unsafe {
            let l = slab.local();
            if l.next.is_null() {
                return;
            }
            if core::ptr::eq(l.next, slab) {
                self.current[class] = null();
            } else {
                (*l.prev).with_local(|p| p.next = l.next);
                (*l.next).with_local(|n| n.prev = l.prev);
                if core::ptr::eq(self.current[class], slab) {
                    self.current[class] = l.next;
                }
            }
            slab.with_local(|x| {
                x.next = null();
                x.prev = null();
            });
        }
    }

    /// Links `ss` into the owned list: at the front if it has a free slab, else at the back
    /// (H7).
    fn link_owned(&mut self, ss: &Superslab, front: bool) {
        // SAFETY: `ss` is now owned by this heap; the list's superslabs are too.
        unsafe {
            if front {
                ss.set_heap_links(self.owned, null());
                match self.owned.as_ref() {
                    Some(o) => o.set_heap_links(o.heap_links().0, ss),
                    None => self.owned_tail = ss,
                }
                self.owned = ss;
            } else {
                ss.set_heap_links(null(), self.owned_tail);
                match self.owned_tail.as_ref() {
                    Some(t) => t.set_heap_links(ss, t.heap_links().1),
                    None => self.owned = ss,
                }
                self.owned_tail = ss;
            }
        }
        self.owned_count += 1;
        self.owned_cache[owned_slot(ss.base())] = ss.base();
    }

    fn unlink_owned(&mut self, ss: &Superslab) {
        // SAFETY: `ss` and its neighbours are owned by this heap.
        unsafe {
            let (next, prev) = ss.heap_links();
            match prev.as_ref() {
                Some(p) => p.set_heap_links(next, p.heap_links().1),
                None => self.owned = next,
            }
            match next.as_ref() {
                Some(n) => n.set_heap_links(n.heap_links().0, prev),
                None => self.owned_tail = prev,
            }
            if core::ptr::eq(self.cursor, ss) {
                self.cursor = next;
            }
            ss.set_heap_links(null(), null());
        }
        self.owned_count -= 1;
        let slot = &mut self.owned_cache[owned_slot(ss.base())];
        if *slot == ss.base() {
            *slot = EMPTY_SLOT;
        }
    }

    /// Drains remote frees from up to `n` own superslabs, rotating, so every one is visited.
    /// Bounded by the number owned, since collecting may release the superslab it started at.
    fn collect_owned(&mut self, n: usize) {
        let mut left = n.min(self.owned_count);
        let mut ss = if self.cursor.is_null() {
            self.owned
        } else {
            self.cursor
        };
        while left > 0 {
            // SAFETY: owned superslabs are live and ours.
            let Some(s) = (unsafe { ss.as_ref() }) else {
                break;
            };
            // SAFETY: ours. Read before collecting, which may unlink `s` (never `next`).
            let next = unsafe { s.heap_links().0 };
            self.collect_one(s);
            left -= 1;
            ss = if next.is_null() { self.owned } else { next };
        }
        self.cursor = ss;
    }

    /// Drains the remote stacks of `ss`'s slabs into their free lists; fixes rings; gives back
    /// empty slabs and, when all are empty, the superslab (H3, H4).
    fn collect_one(&mut self, ss: &'static Superslab) {
        // SAFETY: `ss` is owned by this heap.
        for slab in unsafe { ss.slabs_in_use() } {
            // SAFETY: ours.
            let drained = match unsafe { slab.drain_remote() } {
                Ok(n) => n,
                Err(e) => {
                    self.ctx().report(e);
                    continue;
                }
            };
            let class = slab.class();
            if drained != 0 {
                self.ctx().stats.held_sub(class, drained as usize);
            }
            // SAFETY: ours.
            let (empty, has_free) = unsafe { (slab.is_empty(), slab.has_free()) };
            if empty && !core::ptr::eq(self.current[class], slab) {
                if self.free_slab(ss, class, slab) {
                    return;
                }
            } else if has_free && !Self::in_ring(slab) {
                self.ring_insert(class, slab);
            }
        }
    }

    /// Returns an empty slab to its superslab; true when that released the superslab.
    fn free_slab(&mut self, ss: &'static Superslab, class: usize, slab: &SlabMeta) -> bool {
        self.ring_remove(class, slab);
        // SAFETY: ours and empty.
        let all_free = unsafe { ss.free_slab(slab) };
        self.unlink_owned(ss);
        if all_free && self.keep_empty(ss) {
            // Kept (H4): every slab is free, so to the front (H7).
            self.link_owned(ss, true);
            return false;
        }
        if all_free {
            // SAFETY: the owner's reference (H5: a heap holds one per owned superslab), given up
            // with the superslab, which just left the owned list.
            if unsafe { ss.unpin() } {
                // SAFETY: the last reference was ours.
                unsafe { self.ctx().release_superslab(ss) };
            }
            return true;
        }
        // It has a free slab now: to the front (H7).
        self.link_owned(ss, true);
        false
    }

    /// Whether the heap keeps `ss`, which has just become empty (H4): yes unless it already
    /// keeps another superslab that is still empty.
    fn keep_empty(&mut self, ss: &'static Superslab) -> bool {
        // SAFETY: a kept superslab is owned by this heap (it is released only by teardown, which
        // clears this first, or by `free_slab` when it is not the kept one).
        if let Some(k) = unsafe { self.kept_empty.as_ref() } {
            // SAFETY: ours.
            if !core::ptr::eq(k, ss) && unsafe { k.is_empty() } {
                return false;
            }
        }
        self.kept_empty = ss;
        true
    }

    /// Frees `p`, a block in `slab` of `ss` (H1, H2, FK3). The caller found both through the
    /// registry and checked `p` is 16-byte aligned.
    ///
    /// # Safety
    /// `p` is a block the caller holds and gives up; only the heap's thread calls this.
    #[inline(always)]
    pub unsafe fn free_small(&mut self, ss: &'static Superslab, slab: &SlabMeta, p: *mut u8) {
        let class = slab.class();
        debug_assert!(class < CLASSES);
        if slab.owner() == self.id {
            let key = self.key;
            // SAFETY: a slab's class is written by `alloc_slab` from the route box's classes,
            // all below CLASSES, and cannot change while `p`, one of its blocks, is out.
            let l = unsafe { self.sll.get_unchecked_mut(class) };
            // SAFETY: `p` is a block of at least 16 bytes the caller gives up.
            if !l.is_full() && unsafe { key_word(p) } != key {
                // SAFETY: a block of our own slab, given up by the caller.
                unsafe { l.push(p, key) };
                self.stats.on_free(class);
                return;
            }
            // SAFETY: forwarded.
            return unsafe { self.free_local_slow(class, p) };
        }
        // SAFETY: forwarded.
        unsafe { self.free_remote(ss, slab, class, p) }
    }

    /// The C free's fast path (H8): frees `p` when it is a block this heap handed out of a
    /// superslab in its owned cache, its thread list for the class has room, and the block does
    /// not carry the free key. False, having changed nothing, for anything else: a pointer that
    /// is not ours or not a block start, a block of another heap, a full list, a possible double
    /// free, check mode. The caller then takes the full path, which decides.
    ///
    /// # Safety
    /// Only the heap's thread calls this, and if `p` is a live block of this allocator, the
    /// caller gives it up. `p` may be any address: nothing is read through it before the cache
    /// says it lies in a live superslab of ours.
    #[inline(always)]
    pub unsafe fn try_free_owned(&mut self, p: *mut u8) -> bool {
        let base = p as usize & !(SS_SIZE - 1);
        // SAFETY: the index is masked below OWNED_CACHE.
        if unsafe { *self.owned_cache.get_unchecked(owned_slot(base)) } != base {
            return false;
        }
        // SAFETY: the cache holds only superslabs this heap owns, live while owned (H8).
        let ss = unsafe { Superslab::at(base) };
        let slab = ss.slab_of(p);
        let class = slab.class();
        // SAFETY: an in-use slab of an owned superslab is ours (H8); a free one has carve mark 0,
        // which no index is below.
        if unsafe { slab.block_index(p) } >= u64::from(slab.carved()) {
            return false;
        }
        let key = self.key;
        // SAFETY: an in-use slab's class is one of the route box's, below CLASSES.
        let l = unsafe { self.sll.get_unchecked_mut(class) };
        // SAFETY: `p` is a block (at least 16 bytes) of our slab, handed out at some time.
        if l.is_full() || unsafe { key_word(p) } == key {
            return false;
        }
        // SAFETY: a block of our own slab, given up by the caller, and (FK3) not free.
        unsafe { l.push(p, key) };
        // SAFETY: CLASSES < MAX_CLASSES (route box).
        unsafe { self.stats.on_free_unchecked(class) };
        true
    }

    #[cold]
    #[inline(never)]
    unsafe fn free_local_slow(&mut self, class: usize, p: *mut u8) {
        // SAFETY: `p` is a block of at least 16 bytes the caller gives up.
        if unsafe { key_word(p) } == self.key && self.is_free_here(class, p) {
            self.ctx().report(Corrupt::DoubleFree(p as usize));
            return;
        }
        self.ctx().lru.purge_if_due(&self.ctx().stats);
        if self.ctx().check {
            // SAFETY: the caller gives `p` up; it lies in a live superslab of ours.
            unsafe { self.return_checked(class, p) };
            return;
        }
        self.spill(class);
        // SAFETY: the list has room now; `p` is ours and given up.
        unsafe { self.sll[class].push(p, self.key) };
        self.stats.on_free(class);
    }

    /// The cold confirmation of a key match (FK3): true when `p`, a block of our own `slab`, is
    /// on one of the free structures it could be on: the class's thread list, the cache, the
    /// slab's free list or its remote stack. False means the user's data matched the key.
    #[cold]
    #[inline(never)]
    fn is_free_here(&self, class: usize, p: *mut u8) -> bool {
        // SAFETY: `p` lies in a live superslab of ours (the caller found its slab owned by us).
        let (_, slab) = unsafe { Superslab::slab_of_block(p) };
        // SAFETY: the lists and the slab are ours; the remote stack is read within the slab,
        // which is mapped while it is ours.
        unsafe {
            self.sll[class].contains(p)
                || self.cache.contains(class, p)
                || slab.free_list_contains(p)
                || slab.remote_contains(p)
        }
    }

    /// The non-owner's check of a key match (FK3). A non-owner may read only one free structure
    /// of another heap, the slab's remote stack; the block may also sit on the owner's thread
    /// list, cache or free list, where a push would overwrite its link and corrupt them. So a
    /// match counts as a double free whether or not it is on the remote stack: the block carries
    /// the per-process random key only while it is free (FK1, FK2), unless its user copied the
    /// key out of freed memory.
    #[inline(always)]
    fn remote_double_free(p: *mut u8) -> bool {
        // SAFETY: `p` lies in a superslab the registry (or the caller's layout) found live, and
        // is a block of at least 16 bytes.
        unsafe { key_word(p) == free_key() }
    }

    /// Check mode: validates `p` against its slab and the bitmap, then returns it to the slab.
    unsafe fn return_checked(&mut self, class: usize, p: *mut u8) {
        // SAFETY: `p` lies in a live superslab of ours.
        let ss = unsafe { Superslab::of(p) };
        let (s, g) = check_index(ss, p);
        if !ss.check_mark_freed(s, g) {
            self.ctx().report(Corrupt::DoubleFree(p as usize));
            return;
        }
        self.stats.on_free(class);
        self.return_to_slab(class, p);
    }

    /// Moves half a thread list into the cache, flushing the cache's oldest blocks to their
    /// slabs first if it has no room.
    fn spill(&mut self, class: usize) {
        let n = (self.sll[class].cap() / 2).max(1);
        if self.cache.room(class) < n {
            let flush = n.max(self.cache.cap(class) / 2);
            let mut batch = [null_mut(); 256];
            let mut k = 0;
            self.cache.drain_oldest(class, flush, |b| {
                batch[k] = b;
                k += 1;
            });
            for &b in &batch[..k] {
                self.return_to_slab(class, b);
            }
        }
        // SAFETY: the list holds free blocks of ours.
        let chain = unsafe { self.sll[class].take(n) };
        let mut b = chain.head;
        for _ in 0..chain.len {
            // SAFETY: a block of the chain, linked through its first word.
            let next = unsafe { hakmem_tls_sll::next(b) };
            if !self.cache.push(class, b) {
                self.return_to_slab(class, b);
            }
            b = next;
        }
    }

    /// Gives one block back to its slab's free list; validates it first.
    fn return_to_slab(&mut self, class: usize, b: *mut u8) {
        // SAFETY: blocks in our lists and cache lie in live superslabs we own (H1).
        let ss = unsafe { Superslab::of(b) };
        let slab = ss.slab_of(b);
        // SAFETY: ours.
        if !unsafe { slab.is_block(b) } {
            self.ctx().report(Corrupt::NotABlock(b as usize));
            return;
        }
        // SAFETY: ours, and the block is given up.
        match unsafe { slab.free_local(b) } {
            Ok(empty) => {
                self.ctx().stats.held_sub(class, 1);
                if empty && !core::ptr::eq(self.current[class], slab) {
                    self.free_slab(ss, class, slab);
                } else if !Self::in_ring(slab) {
                    self.ring_insert(class, slab);
                }
            }
            Err(e) => self.ctx().report(e),
        }
    }

    #[cold]
    #[inline(never)]
    unsafe fn free_remote(
        &mut self,
        ss: &'static Superslab,
        slab: &SlabMeta,
        class: usize,
        p: *mut u8,
    ) {
        let ctx = self.ctx();
        if Self::remote_double_free(p) {
            ctx.report(Corrupt::DoubleFree(p as usize));
            return;
        }
        if ctx.check {
            let (s, g) = check_index(ss, p);
            if !ss.check_mark_freed(s, g) {
                ctx.report(Corrupt::DoubleFree(p as usize));
                return;
            }
        }
        self.stats.on_free(class);
        self.stats.on_remote_free();
        // SAFETY: the caller gives up `p`, a block of `slab` in `ss`.
        match unsafe { ss.free_remote(slab, p, &ctx.abandoned, &ctx.stats) } {
            // SAFETY: we dropped the last reference.
            Ok(true) => unsafe { ctx.release_superslab(ss) },
            Ok(false) => {}
            Err(e) => ctx.report(e),
        }
    }

    /// Frees `p` from a thread that has no heap (or no longer has one): always the remote path.
    ///
    /// # Safety
    /// As for [`Heap::free_small`]; `ctx` is the context `ss` belongs to.
    pub unsafe fn free_orphan(ctx: &Ctx, ss: &'static Superslab, slab: &SlabMeta, p: *mut u8) {
        if Self::remote_double_free(p) {
            ctx.report(Corrupt::DoubleFree(p as usize));
            return;
        }
        if ctx.check {
            let (s, g) = check_index(ss, p);
            if !ss.check_mark_freed(s, g) {
                ctx.report(Corrupt::DoubleFree(p as usize));
                return;
            }
        }
        ctx.stats.count_free(slab.class());
        ctx.stats.event(Event::RemoteFree, 0);
        // SAFETY: the caller gives up `p`, a block of `slab` in `ss`.
        match unsafe { ss.free_remote(slab, p, &ctx.abandoned, &ctx.stats) } {
            // SAFETY: we dropped the last reference.
            Ok(true) => unsafe { ctx.release_superslab(ss) },
            Ok(false) => {}
            Err(e) => ctx.report(e),
        }
    }

    /// Everything back (H5): lists and cache to slabs, remote frees drained, empty slabs and
    /// superslabs released, the rest abandoned.
    unsafe fn teardown(&mut self) {
        // Everything owned is released or abandoned below, the kept superslab too (H4, H5).
        self.kept_empty = null();
        for class in 0..CLASSES {
            // SAFETY: the list holds free blocks of ours.
            let chain = unsafe { self.sll[class].take_all() };
            let mut b = chain.head;
            for _ in 0..chain.len {
                // SAFETY: a block of the chain.
                let next = unsafe { hakmem_tls_sll::next(b) };
                self.return_to_slab(class, b);
                b = next;
            }
            let mut batch = [null_mut(); 256];
            loop {
                let mut k = 0;
                self.cache.drain_oldest(class, 256, |b| {
                    batch[k] = b;
                    k += 1;
                });
                if k == 0 {
                    break;
                }
                for &b in &batch[..k] {
                    self.return_to_slab(class, b);
                }
            }
        }
        self.current = [null(); CLASSES];
        while let Some(ss) = NonNull::new(self.owned as *mut Superslab) {
            // SAFETY: owned superslabs are live and ours.
            let ss: &'static Superslab = unsafe { &*ss.as_ptr() };
            // SAFETY: ours; the rings are dissolved (current is cleared above).
            for slab in unsafe { ss.slabs_in_use() } {
                // SAFETY: ours.
                unsafe {
                    slab.with_local(|l| {
                        l.next = null();
                        l.prev = null();
                    })
                };
            }
            let ctx = self.ctx();
            // SAFETY: ours.
            let empty = match unsafe { ss.collect(|c, n| ctx.stats.held_sub(c, n as usize)) } {
                Ok(e) => e,
                Err(e) => {
                    ctx.report(e);
                    false
                }
            };
            self.unlink_owned(ss);
            if empty {
                // SAFETY: the owner's reference, given up as the superslab leaves the heap.
                if unsafe { ss.unpin() } {
                    // SAFETY: the last reference was ours.
                    unsafe { ctx.release_superslab(ss) };
                }
            } else {
                ctx.stats.event(Event::Abandon, 0);
                // SAFETY: ours, and forgotten from here on.
                match unsafe { ss.abandon(&ctx.abandoned, &ctx.stats) } {
                    // SAFETY: emptied by abandon's last drain, and the last reference was ours.
                    Ok(true) => unsafe { ctx.release_superslab(ss) },
                    Ok(false) => {}
                    Err(e) => ctx.report(e),
                }
            }
        }
        self.cursor = null();
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
