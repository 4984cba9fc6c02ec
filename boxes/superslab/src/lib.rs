//! # hakmem-superslab: regions from the OS, and the superslabs carved out of them
//!
//! One job: own the layout and lifecycle of memory that comes from the OS. A *superslab* is a
//! 2 MiB-aligned region of 2 MiB split into 32 slabs of 64 KiB; each slab holds blocks of one
//! size. A *large region* holds one user block. The OS itself sits behind the [`Os`] trait.
//!
//! ```text
//! superslab (2 MiB, aligned)             slab i = [base + i*64K, base + (i+1)*64K)
//! +-------------+--------+-------------+--   --+-------------+
//! | slab 0 data | header |   slab 1    |  ...  |   slab 31   |
//! +-------------+--------+-------------+--   --+-------------+
//! header: magic, state, refcount, owner, 32 x SlabMeta, HAKMEM_CHECK bitmaps, in the last
//! HEADER_SIZE bytes of slab 0, so every slab's blocks start at the slab's base (SS14)
//! ```
//!
//! A superslab over the real OS, carving blocks from a slab and taking them back:
//!
//! ```
//! use core::alloc::Layout;
//! use core::ptr::NonNull;
//! use hakmem_superslab::{Env, Event, GlobalStats, LeafSource, LibcOs, Os, Registry, Superslab};
//!
//! /// The registry's leaves, from the std heap (the allocator maps them with mmap).
//! struct Leaves;
//! // SAFETY: `map` returns fresh zeroed memory of the layout, or `None`; `unmap` frees what
//! // `map` returned, with the same layout.
//! unsafe impl LeafSource for Leaves {
//!     fn map(&self, layout: Layout) -> Option<NonNull<u8>> {
//!         // SAFETY: the registry's leaves are never zero-sized.
//!         NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
//!     }
//!     unsafe fn unmap(&self, leaf: NonNull<u8>, layout: Layout) {
//!         // SAFETY: allocated by `map` with this layout (the caller's contract).
//!         unsafe { std::alloc::dealloc(leaf.as_ptr(), layout) }
//!     }
//! }
//!
//! static OS: LibcOs = LibcOs;
//! static LEAVES: Leaves = Leaves;
//! let (registry, stats) = (Registry::new(&LEAVES), GlobalStats::new());
//! let env = Env { os: &OS, registry: &registry, stats: &stats };
//! let ss = Superslab::create(&env, 1).expect("the OS gave 2 MiB");
//! // A pointer finds its superslab through the registry, and its slab by shift (SS1).
//! assert!(registry.lookup(ss.base() + 12345).is_some());
//! // SAFETY (each block below): heap 1 owns the superslab, and this thread is heap 1.
//! let slab = unsafe { ss.alloc_slab(3, 64) }.expect("a free slab");
//! let mut blocks = Vec::new();
//! let (n, _) = unsafe { slab.alloc_batch(10, |b| blocks.push(b)) };
//! assert_eq!((n, blocks.len()), (10, 10));
//! assert!(blocks.iter().all(|&b| core::ptr::eq(ss.slab_of(b), slab)));
//! let mut empty = false;
//! for &b in &blocks {
//!     empty = unsafe { slab.free_local(b) }.expect("each block once");
//! }
//! assert!(empty, "every block came back");
//! // The slab goes back to the superslab, the owner's reference is dropped, and the region is
//! // withdrawn from the registry and unmapped.
//! unsafe {
//!     assert!(ss.free_slab(slab), "every slab free");
//!     assert!(ss.unpin(), "the last reference");
//!     let region = ss.retire(&env);
//!     OS.unmap(region, hakmem_superslab::SS_SIZE, &stats);
//! }
//! assert_eq!(stats.snapshot().count(Event::SsCreated), 1);
//! ```
//!
//! What safe code cannot do: take another slab's remote frees, release a lock it does not
//! hold (`SpinLock` hands out a guard; the fork handlers' release is an `unsafe fn`), share a
//! guard of a value that is not `Sync` between threads (`SpinGuard`'s doctest), or take a
//! superslab off an abandoned list it is not on (SS17; `AbandonedList::try_remove` answers
//! false).
//!
//! ```compile_fail,E0616
//! fn steal(slab: &hakmem_superslab::SlabMeta) -> *mut u8 {
//!     slab.remote.take_all() // error: `remote` is private
//! }
//! ```
//!
//! ```compile_fail,E0133
//! fn release(lock: &hakmem_superslab::SpinLock<u64>) {
//!     lock.force_unlock(); // error: an `unsafe fn`
//! }
//! ```
//!
//! ## Invariants
//! - **SS1 (one address per block).** There are no per-block headers. A block's superslab is
//!   `p & !(2 MiB - 1)` and its slab is `(p - base) >> 16`; the user's address *is* the block.
//!   The header sits at a fixed offset from the base ([`Superslab::of`] adds it to the mask).
//! - **SS14 (blocks start at the slab base).** Block `i` of a slab is at the slab's base plus
//!   `i * block_size`, in every slab: slab 0 ends where the header begins (its capacity is
//!   smaller), rather than starting after it. So a block's offset in its slab is its low 16
//!   address bits, with no per-slab start to subtract ([`SlabMeta::block_index`]).
//! - **SS2 (publication).** A superslab's or large region's header is fully written before it is
//!   registered, and it is unregistered before its region is cached, reused or unmapped.
//! - **SS3 (references).** `refcount` counts the superslab's holder (its owning heap, or the
//!   abandoned list) plus transient pins. Only the thread whose [`Superslab::unpin`] returns true
//!   retires it, so it is retired exactly once, and never while pinned.
//! - **SS4 (no early release).** A slab is freed only when `used == 0`: no block of it is held by
//!   a user, a thread list, a cache or a remote stack (`used` counts all four, since a block
//!   leaves `used` only by coming back to the slab's own free list). A superslab is released
//!   only when every slab is free. A remote freer pushes while its block still counts in `used`,
//!   and pins first when it will touch the header after the push.
//! - **SS5 (ownership).** A slab's `local` fields are touched only by its owner: the heap whose id
//!   is in `owner`, or the one thread that took the superslab off the abandoned list. Others
//!   touch only `owner` (a read) and the remote stack (a push).
//! - **SS6 (remote stack).** Non-owners push with a CAS loop (Release); the owner takes the
//!   whole stack with one swap (Acquire); every pushed block is taken exactly once. The head
//!   word's low bit is the *abandoned flag*: a push's CAS refuses a flagged stack. Its top 16
//!   bits count the blocks on the stack: the CAS that links a block adds one, and the swap
//!   takes the count with the chain, so a take's count is its chain's length (block addresses
//!   lie below 2^48, as the registry admits no region beyond). The owner's drain reads only the
//!   shorter of the chain and the slab's free list, to link the other after its tail.
//! - **SS7 (abandon and adopt).** An abandoned superslab is on the abandoned list, owned by no
//!   heap; taking it off the list (adopt, a freer's claim, or a freer's collect) is the only
//!   way to touch its slabs, and the lock makes that exclusive. Abandoning drains and flags
//!   every in-use slab's remote stack in one swap per slab (collectors drain with the same
//!   swap; an adopter's drain clears the flag), so a remote free either lands before and is
//!   drained, or sees the flag in its one CAS and pins, pushes and collects: none is stranded.
//!   Whoever lists the superslab, or puts it back, looks again at `pending` under the
//!   list's lock order.
//! - **SS9 (free key).** A block on a slab's free list or remote stack carries the per-process
//!   [`free_key`] in its second word (written by [`SlabMeta::free_local`] and by the remote
//!   push; [`SlabMeta::free_local_run`] takes runs whose blocks carry it already);
//!   [`SlabMeta::free_list_contains`] and [`SlabMeta::remote_contains`] confirm a suspected
//!   double free; [`SlabMeta::take_free_chain`] hands the free list's front out as it lies,
//!   linked and keyed. (Re)initialising a slab empties its remote stack.
//! - **SS10 (carve mark).** A slab's shared `carved` word covers exactly the blocks handed out
//!   at some time in its current life, is published before they go out, and is 0 while the slab
//!   is free: a block start at or beyond it is not a block.
//! - **SS11 (block index; the owner's shared words).** A block size is `2^rot * odd`; the slab
//!   keeps `rot` (with the class above it, `rot | class << 8`, so one load gives both) and the
//!   inverse of `odd` modulo 2^64, so [`SlabMeta::block_index`] is the address's low bits
//!   (SS14), one multiplication and one rotation, exact for a block start and at least 2^32 for
//!   any other address of the slab. `class`, `rot | class << 8`, the inverse and `carved` are
//!   written only by the slab's owner (SS5: at (re)initialisation, carving and freeing the
//!   slab); others only read them. So the owner may read them as plain loads
//!   ([`SlabMeta::class_and_carved_owned`], [`SlabMeta::block_index`]).
//! - **SS12 (adoption by a freer).** A thread with a heap that frees into an abandoned
//!   superslab may claim it with [`AbandonedList::claim`]: the same unlink under the list's lock
//!   as [`AbandonedList::adopt`], so of any number of claimers, allocating adopters and
//!   collecting freers exactly one takes a listed superslab, and it is never taken twice. The
//!   claimer becomes the owner with the list's reference, then drains every in-use slab's
//!   remote stack, which clears its flag. Until that drain a racing remote free still sees the
//!   flag, pins, pushes (with [`RemoteStack::push`], which keeps what it finds) and finds
//!   nothing to take off the list; after it the push's CAS succeeds on an owned stack. Either
//!   way the block is on the owner's stack, drained by its next collect (SS7).
//! - **SS13 (slab numbers).** A slab's number is its base address shifted right by
//!   `SLAB_SHIFT`, written when its superslab is initialised and never changed while the
//!   superslab is mapped; [`SlabMeta::NONE`] reads as number `usize::MAX`, which no address
//!   shifts to. So a client that keeps slab metadata pointers in a table indexed by address
//!   bits proves "`p` lies in this slab" by comparing [`SlabMeta::number_at`] with
//!   `p >> SLAB_SHIFT`, and can fill empty entries with [`SlabMeta::NONE`], which matches
//!   nothing.
//! - **SS15 (remote hint).** A remote free whose push finds its slab's remote stack empty then
//!   sets the superslab's hint, with an RMW ([`Superslab::try_free_remote`],
//!   [`Superslab::free_remote`]). The owner that takes the hint ([`Superslab::take_remote_hint`],
//!   an RMW) drains every in-use slab; a push the drain misses found its stack empty after the
//!   drain's swap, so it sets the hint again. So a stack with blocks always has its hint set,
//!   or an owner's drain still to come, and an owner may skip a superslab whose hint is clear:
//!   refills look at one word per superslab instead of every slab's stack.
//! - **SS16 (free slabs give their pages back).** The owner's purge tick
//!   ([`Superslab::purge_free_slabs`]) gives the pages of the slabs that were free and dirty
//!   at the tick that aged them, and are still free, back to the OS, and marks them zero (SS8),
//!   when that tick ran at least the caller's minimum age before (the superslab keeps its
//!   time); a tick that comes sooner purges nothing and keeps the age. A slab taken or freed
//!   since loses its age, so a slab is purged only after it has stayed free from one tick to
//!   the next and for the minimum age: ticks that come close together (the exits of
//!   short-lived threads that adopt and abandon the superslab in turn) do not purge slabs that
//!   the next thread reuses. Slab 0's pages below the header go too; the header's never.
//! - **SS17 (list identity).** Every [`AbandonedList`] has an id of its own for the life of the
//!   process, and a superslab's `list` word holds the id of the list it is on (0: none). The
//!   word is written only under the lock of the list it names (a push writes the list's id, an
//!   unlink 0), and a superslab's list links only under that same lock. So a list that holds
//!   its lock and reads its own id there knows the superslab is on it; any other value means
//!   it is not, and the list touches nothing of it. A superslab handed to the wrong list's
//!   [`AbandonedList::try_remove`], [`AbandonedList::claim`], [`Superslab::free_remote`] or
//!   [`Superslab::abandon`]'s settling is left on its own list.
//! - **SS18 (encoded, checked links).** Every link inside a free block, on a slab's free list,
//!   on a remote stack and (in the hot heap) on a thread list, is stored as `next * K ^ block`
//!   ([`LinkKey`]), `K` the per-process [`link_key`], drawn before the first superslab exists;
//!   so chains move between the three as they lie. A slab's free list and a remote stack end
//!   at null, stored as the block's own address. Every walk of a slab's free list or of a chain
//!   taken off its remote stack ([`SlabMeta::take_free_chain`], [`SlabMeta::take_free_chains`],
//!   [`SlabMeta::alloc_batch`], the drain's join, [`SlabMeta::free_list_contains`]) decodes a
//!   link and follows it only when it
//!   is a block start of the same slab below its carve mark, or the list's end where the list's
//!   count ends it (a word the user set to its block's own address reads as an end too soon, a
//!   bad link; a word set to 0 reads as a scattered address). At a link that fails, the walk
//!   returns `Corrupt::FreeList` naming the block that holds it, and the list is dropped from
//!   there on: its blocks stay counted in `used` (SS4), so the slab is never freed while they
//!   could be reached, and nothing follows the bad link. [`RemoteStack::contains`] decodes
//!   too, and bounds every link it follows.
//! - **SS8 (fresh memory).** A slab's never-carved blocks read as zero when the slab began on
//!   pages fresh from the OS or purged, and only then (`SlabLocal::fresh`).
//! - **SS19 (destruction).** The owner whose every block of a superslab is given up at once (a
//!   private heap's destruction, hot_heap H17) frees its in-use slabs without walking their
//!   blocks ([`Superslab::destroy_slabs`]): each remote stack is taken with one swap (Acquire:
//!   every push it holds happened before) and dropped, its count reported with the slab's
//!   `used`, and the slab is freed. This is SS4 with "no block held anywhere" true by the
//!   owner's word rather than by counting: its caller guarantees that no user, list or cache
//!   holds a block and that every non-owner's free of one has returned.
//! - **SS20 (huge pages).** A superslab made with `huge` ([`Superslab::create_advised`],
//!   [`Superslab::init_advised`]) has its whole region advised for huge pages
//!   ([`Os::advise_huge`]) before its header is written, and remembers it (an owner's word).
//!   The first purge tick that purges any of its free slabs (SS16) takes the advice back
//!   ([`Os::advise_no_huge`]) before it purges: the purge splits the huge page, and the
//!   superslab is served in base pages from then on, so the OS never gathers purged pages
//!   back into a huge one. [`Superslab::retire`] takes the advice back too, so a region
//!   goes to its next user (the lru's next taker) without it. The advice changes no
//!   contents: SS4 and SS8 hold as for any superslab.
#![deny(unsafe_op_in_unsafe_fn)]
#![no_std]

mod abandoned;
mod destroy;
mod large;
mod os;
mod remote;
mod slab;
mod superslab;
mod sync;

pub use abandoned::AbandonedList;
pub use destroy::DestroyedSlab;
pub use large::{LargeHeader, LargeLayout, LARGE_HEADER};
#[cfg(any(test, loom, feature = "heap-os"))]
pub use os::heap::HeapOs;
pub use os::{LibcOs, Os, PAGE};
pub use remote::{Abandoned, RemoteStack, Taken};
pub use slab::{Corrupt, SlabLocal, SlabMeta};
pub use superslab::{Superslab, HEADER_SIZE};
pub use sync::{spin, LockCounts, SpinLock};

/// Re-exported from hakmem-registry: the table [`Env`] publishes regions in, and the source
/// of its leaves, so a user needs no other box to make one.
pub use hakmem_registry::{LeafSource, Registry};
/// Re-exported from hakmem-stats: the counters [`Env`] and every [`Os`] call take, and the
/// events they count.
pub use hakmem_stats::{Event, GlobalStats};
pub use hakmem_tls_sll::LinkKey;

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// log2 of the superslab size.
pub const SS_SHIFT: u32 = 21;
/// The superslab size and alignment: 2 MiB.
pub const SS_SIZE: usize = 1 << SS_SHIFT;
/// log2 of the slab size.
pub const SLAB_SHIFT: u32 = 16;
/// The slab size: 64 KiB.
pub const SLAB_SIZE: usize = 1 << SLAB_SHIFT;
/// Slabs per superslab.
pub const SLABS: usize = SS_SIZE / SLAB_SIZE;

const _: () = assert!(
    SS_SHIFT == hakmem_registry::CHUNK_SHIFT,
    "one registry chunk per superslab"
);
const _: () = assert!(SLABS <= 32, "free-slab masks are u32");
const _: () = assert!(
    HEADER_SIZE < SLAB_SIZE / 2,
    "the header leaves slab 0 room for blocks"
);

/// What superslab operations need from the world around them.
#[derive(Clone, Copy)]
pub struct Env<'a> {
    /// Where memory comes from.
    pub os: &'a dyn Os,
    /// Where regions are published.
    pub registry: &'a Registry,
    /// Where OS calls and lifecycle events are counted.
    pub stats: &'a GlobalStats,
}

/// The free key: a per-process random word, never 0, that a free block carries in its second
/// word while it sits on any free structure (a thread list, a cache, a slab's free list, a remote
/// stack). A free whose block already carries it is probably a double free (FK1..FK3 in the
/// hot heap). 0 until [`init_free_key`] runs.
static FREE_KEY: sync::StaticAtomicUsize = sync::StaticAtomicUsize::new(0);

/// The free key (0 before [`init_free_key`]).
#[inline(always)]
pub fn free_key() -> usize {
    FREE_KEY.load(core::sync::atomic::Ordering::Relaxed)
}

/// Draws the free key once per process, from [`hakmem_os::secret`], and returns it. Never 0;
/// later calls return the same key.
pub fn init_free_key() -> usize {
    use core::sync::atomic::Ordering::Relaxed;
    let k = FREE_KEY.load(Relaxed);
    if k != 0 {
        return k;
    }
    let r = hakmem_os::secret(1) as usize;
    // Mix so a weak source still spreads, and never 0.
    let mut k = r.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (r >> 29);
    if k == 0 {
        k = 0x5A5A_A5A5_0F0F_F0F1;
    }
    match FREE_KEY.compare_exchange(0, k, Relaxed, Relaxed) {
        Ok(_) => k,
        Err(now) => now,
    }
}

/// The link key (SS18): a per-process random odd multiplier, 0 until first drawn, and its
/// inverse, published after it.
static LINK_MUL: sync::StaticAtomicUsize = sync::StaticAtomicUsize::new(0);
static LINK_INV: sync::StaticAtomicUsize = sync::StaticAtomicUsize::new(0);

/// The key every link inside a free block is stored with (SS18): the slabs' free lists, the
/// remote stacks and the heaps' thread lists (which take a copy) alike, so chains move between
/// them as they lie. Drawn once per process, at the first call (at the latest when the first
/// superslab is made, before any block exists); every call returns the same key.
#[inline(always)]
pub fn link_key() -> LinkKey {
    match link_key_drawn() {
        Some(key) => key,
        None => draw_link_key(),
    }
}

/// The link key (SS18) when it has been drawn, without drawing it: a caller that holds a block
/// some list has linked (so the key was drawn before it) gets `Some`, and can keep the rare
/// draw out of its hot path.
#[inline(always)]
pub fn link_key_drawn() -> Option<LinkKey> {
    use core::sync::atomic::Ordering::{Acquire, Relaxed};
    // Both words set (the multiplier first, its inverse published after): a pair that is each
    // other's inverse. Before that, none.
    let inv = LINK_INV.load(Acquire) as u64;
    LinkKey::from_parts(LINK_MUL.load(Relaxed) as u64, inv)
}

#[cold]
#[inline(never)]
fn draw_link_key() -> LinkKey {
    use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
    let r = hakmem_os::secret(0);
    let key = LinkKey::new(r.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ (r >> 31));
    match LINK_MUL.compare_exchange(0, key.mul() as usize, Relaxed, Relaxed) {
        Ok(_) => {
            LINK_INV.store(key.inv() as usize, Release);
            key
        }
        Err(_) => {
            // Another thread drew it: wait for its inverse.
            while LINK_INV.load(Acquire) == 0 {
                core::hint::spin_loop();
            }
            LinkKey::new(LINK_MUL.load(Relaxed) as u64)
        }
    }
}

/// Reads a block's second word (the free key's place).
///
/// # Safety
/// `block` is a block of at least 16 bytes, 16-byte aligned, that the caller may read.
#[inline(always)]
pub unsafe fn key_word(block: *const u8) -> usize {
    // SAFETY: forwarded.
    unsafe { block.cast::<usize>().add(1).read() }
}

/// Writes a block's second word.
///
/// # Safety
/// `block` is a block of at least 16 bytes, 16-byte aligned, that the caller may write.
#[inline(always)]
pub unsafe fn set_key_word(block: *mut u8, k: usize) {
    // SAFETY: forwarded.
    unsafe { block.cast::<usize>().add(1).write(k) }
}

#[cfg(test)]
mod tests;

#[cfg(all(test, loom))]
mod loom_models;
