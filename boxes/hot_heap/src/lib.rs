//! # hakmem-hot-heap: the per-thread Hot Box
//!
//! One job: serve a thread's small allocations and frees. A [`Heap`] owns the thread's thread
//! lists (hakmem-tls-sll), its unified cache, its superslabs and, per class, a ring of its slabs
//! that have free blocks. The [`Ctx`] is what all heaps share: the OS layer, the registry, the
//! lru, the abandoned list, the global stats and the list of heaps.
//!
//! ```text
//! alloc: thread list --(empty)--> unified cache --(empty)--> slabs (half a list), in this order:
//!        own slabs -> drained remote frees (of superslabs whose remote hint is set, SS15)
//!        -> adopted abandoned superslabs -> new slab in an own superslab -> lru
//!        -> a parked heap no thread came for, retired (H18), then adoption again -> OS
//! free (owner):     thread list --(full: grows, H11)--> unified cache --(full)--> slab free lists
//!                   (runs of one slab spliced at once; with list and cache full, a run of
//!                   frees goes straight to the slabs, H20)
//! free (non-owner): one CAS onto the slab's remote stack; into an abandoned superslab:
//!                   claim it (H10), then the owner's free
//! ```
//!
//! A context over the real OS, one heap, and a block allocated and freed on its fast paths:
//!
//! ```
//! use core::alloc::Layout;
//! use core::ptr::NonNull;
//! use hakmem_hot_heap::{class_of, Ctx, Heap, LeafSource, LibcOs, LruConfig, Registry};
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
//! let ctx: &'static Ctx = Box::leak(Box::new(Ctx::new(
//!     &OS,
//!     Registry::new(&LEAVES),
//!     LruConfig::default(),
//!     false,
//!     |c| panic!("corruption: {c:?}"),
//! )));
//! let heap = ctx.new_heap().expect("memory for the heap");
//! let class = class_of(100).unwrap();
//! // SAFETY: this thread is the heap's only user; the block is freed once, by the owner, and
//! // the heap is retired after its last use.
//! unsafe {
//!     let h = heap.as_ptr();
//!     let p = (*h).alloc(class);
//!     assert!(!p.is_null());
//!     p.write_bytes(7, 100);
//!     assert!(Heap::try_free_owned(h, p), "the owner's fast free");
//!     assert_eq!(Heap::alloc_fast(h, class), p, "LIFO: the same block comes back");
//!     assert!(Heap::try_free_owned(h, p));
//!     assert!(!Heap::try_free_owned(h, p), "a double free is not taken by the fast path");
//!     ctx.retire_heap(heap);
//! }
//! assert_eq!(ctx.live_heaps(), 0);
//! ```
//!
//! ## Files, by concern
//! `lib.rs` (the types and these invariants), `ctx.rs` (the shared context: heap list, reaping,
//! releasing superslabs, fork locks), `alloc.rs` (allocation fast paths and hand-out),
//! `free.rs` (the owner's frees and the free key's confirmation), `private.rs` (private heaps,
//! H17), `refill.rs` (refill order and drains), `ring.rs` (the per-class rings), `owned.rs` (the owned list and its caches),
//! `purge.rs` (giving empty memory back, the purge tick), `remote.rs` (non-owners' frees),
//! `exit.rs` (thread exit), `check.rs` (check mode).
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
//!   superslab is ever leaked with an owner that no longer runs. A thread's exit parks its heap
//!   instead (H18), and a parked heap that no thread takes is retired so. A heap whose thread ended
//!   without retiring it (its exit hook never ran) is retired by [`Ctx::reap_one`], which
//!   another thread calls with a test of thread liveness; it looks at the live heaps in turn.
//! - **H6 (check mode).** With `check`, thread lists have no room, so every free and alloc takes
//!   the slow path, where a per-slab bitmap catches every double free. Their bounds never grow
//!   (H11).
//! - **H7 (owned order).** In a heap's list of owned superslabs, every one with a free slab
//!   comes before every full one, so finding a free slab looks at the front only. Slab 0 is
//!   the exception: it is too short for the largest classes (its top holds the superslab's
//!   header, superslab SS14), so a superslab whose only free slab is slab 0 goes to the back
//!   when such a class finds it there, and may sit anywhere.
//! - **H8 (owned cache).** `owned_slabs[(p >> SLAB_SHIFT) % OWNED_CACHE]` is either
//!   `SlabMeta::NONE` or points to the metadata of a slab of a superslab on this heap's owned
//!   list: a superslab's slabs are entered when it is linked and reset to `NONE` when it is
//!   unlinked, before it can be abandoned or released, and a slab in use by this heap is
//!   entered again when a free of one of its blocks missed the cache
//!   ([`Heap::free_own_recached`]). Every in-use slab of an owned superslab has this heap's
//!   id as owner, and a free slab has carve mark 0. So when the entry's slab number is
//!   `p >> SLAB_SHIFT` (superslab SS13; `NONE` matches no address), one load and one compare
//!   prove both "ours" (the registry's answer) and "owned by this heap" (the owner check),
//!   and the slab's metadata is already at hand: the C free's fast path,
//!   [`Heap::try_free_owned`]. The index is the slab number's low byte, one instruction: 256
//!   entries, 16 MiB of slabs whose numbers differ in their low byte. Two owned slabs whose
//!   numbers agree in it take turns in the entry (the last linked, or the last a missed free
//!   went to, wins), and the other's frees take the full path, which decides the same through
//!   the registry.
//! - **H9 (empty heaps).** An [`EmptyHeap`] owns nothing and is never written: its lists are
//!   empty with no room and its owned cache holds only `EMPTY_SLOT`, so [`Heap::alloc_fast`]
//!   finds no block and [`Heap::try_free_owned`] no owned superslab, and both return without a
//!   store. Its id is [`EMPTY_ID`], which no slab has as owner. A thread's heap pointer can
//!   therefore start out, and end, pointing at one instead of null, and the two fast paths
//!   need no test for "no heap yet" or "heap gone": the miss sends the call to the slow path, which tells the empty heap from a real one. Every other
//!   heap method is for real heaps only.
//! - **H10 (adoption by a freer).** A heap that frees a block into an abandoned superslab (the
//!   block's slab is in use and has no owner) claims it at once, on the first such free, when
//!   it owns fewer than `CLAIM_BELOW` (4) superslabs:
//!   [`AbandonedList::claim`] takes it off the abandoned list under the list's lock, so exactly
//!   one of the claiming freers, allocating adopters (refill step 3) and collecting orphan
//!   freers takes it (superslab SS7, SS12). The claimer links it into its owned list and owned
//!   cache (H7, H8), drains its remote stacks (clearing their abandoned flags, so later remote
//!   frees are one CAS again), and frees the block as its owner; every later free of its blocks
//!   by the claimer is owner-local, and its free slabs serve the claimer's allocations. A lost
//!   claim (another thread holds the superslab out of the list) frees by the non-owner's path,
//!   as does a block carrying the free key (FK3), every free by a heap that owns
//!   `CLAIM_BELOW` superslabs or more, and every free by a thread without a heap.
//!   Why at once: each orphan free into a listed superslab takes the list's lock and drains all
//!   its slabs, which costs as much as a claim, while after a claim the next frees cost nothing
//!   extra and the free space is reused. Why bounded: a heap that claims every superslab it
//!   frees into spreads its allocations over many partly used superslabs, none of which
//!   empties (larson's peak RSS grew by a fifth, at 2 to 8 threads); below the bound the RSS is
//!   as with adoption by allocators alone, and the list's lock is still taken about ten times
//!   less in churn (docs/results/2026-11-28-scaling.md). A heap past the bound frees by the orphan path, which
//!   drains those superslabs towards release.
//! - **H11 (adaptive bounds, bounded idle footprint).** A class's thread-list bound starts at the
//!   route box's `list_cap` (its base) and is never below it. Every 4th overflow of the list in a
//!   row (the owner's free finds it full, each time within 8 slow-path events of the last) doubles
//!   the bound, up to 2048 blocks and 256 KiB of blocks; the bytes of bound granted beyond the
//!   bases, over every class, never exceed 256 KiB per heap (`adapt::ADAPT_BUDGET`): a class that
//!   wants more takes it from the grown class that has been quiet longest, halving that one's
//!   bound, but only from a quiet one (below), so classes in use never take budget from each other
//!   back and forth. The clock is the heap's slow-path events (refills and overflows); every 64 of
//!   them, each class with none for 256 (quiet) decays one step: a grown bound is halved (the
//!   blocks beyond it spilled), and a class at its base bound, once it has had none for 2048,
//!   gives every block on its list and in the cache back to its slabs, and its current slab
//!   back to its superslab once empty (H4). So a
//!   heap holds at most its base bounds plus 256 KiB of free blocks on its lists, and a class the
//!   program has moved away from gives its memory back to the heap's other classes. Spills and
//!   refills move whole runs: blocks going back to slabs are spliced one run per slab
//!   (`SlabMeta::free_local_run`), and a refill carves or pops half a list's worth straight onto
//!   the list, one run per slab.
//! - **H12 (class table).** A real heap's `tiny` table is a copy of the route box's
//!   `TINY_CLASS_OF`, written once by `Heap::init` and never again; an empty heap's is all zero
//!   (class 0, whose list it keeps empty, H9). So [`Heap::alloc_tiny_fast`] finds a tiny size's
//!   class with one load from the heap it holds, and serves the route box's class or nothing.
//! - **H13 (counted by the lists).** An allocation served by a pop from the thread lists and
//!   a free that pushes onto them are counted by the lists themselves (tls_sll L6: the push or
//!   pop's one update of its class's word also counts it), and every other allocation and free
//!   by the heap's `ThreadStats`; blocks moved between the lists and the cache or slabs count as
//!   neither. So the fast paths make one counter update each, and a snapshot adds a live heap's
//!   list counts (read under their sequence lock, tls_sll L7) to its thread counters; at exit
//!   they are folded into those counters before the merge.
//! - **H14 (free slabs purged in time).** When a slab of a superslab the heap keeps goes back
//!   to it, or the heap adopts or claims a superslab, the heap schedules a purge tick one purge
//!   delay on (the lru's, when purging is on); its slow paths run the tick once it is due, and
//!   each tick purges the owned superslabs' slabs that stayed free since the one before, and
//!   for at least one delay (SS16), scheduling another while any wait. So the pages of a slab
//!   freed while its superslab still holds blocks go back within one to two delays of the
//!   heap's next slow path, and a slab taken again before that keeps them. An exiting heap
//!   runs a tick on each superslab it abandons: it purges the slabs aged at least one delay
//!   before (at its own tick or an earlier owner's), and ages the rest for an adopter's tick.
//!   So superslabs that pass from one short-lived thread to the next within a delay keep the
//!   pages of their free slabs for the next thread, instead of purging them at every exit.
//! - **H15 (reaping).** A heap's `id` and `tag` are written only under the heap list's lock
//!   ([`Ctx::new_heap`] writes the id, [`Ctx::set_tag`] the tag, [`Ctx::retire_heap`] clears
//!   both), and every heap made gets a new id. [`Ctx::reap_one`] reads a heap's tag and id under
//!   the lock, asks its caller's test whether the tag's thread has ended (with no lock held),
//!   then retires the heap only if, under the lock again, it has the same tag and the same
//!   nonzero id: a heap retired by its own thread's exit meanwhile (id 0), reaped by another
//!   reaper (tag 0), or handed to a new thread (a new id, even under the same tag, as a reused
//!   thread id gives) is left alone. So a heap is retired once, and only when the test, made
//!   after its tag was read, found its thread ended. A parked heap (H18) keeps its id (its
//!   slabs' owner) but has tag 0 and is off the live list, and a reaper's claim also fails
//!   when any parked heap was taken between its look and its claim (the heap list's count of
//!   takes), so a heap parked and taken by a new thread of the same tag is left alone too.
//! - **H16 (checked links).** The thread lists store their links with the superslab box's
//!   link key (superslab SS18, tls_sll L8), set when the heap is made. The malloc fast path
//!   (both lanes) follows a link that stays in the head's superslab or leads into a superslab
//!   the heap's owned-superslab table holds (`owned_bases`: the base of each owned superslab
//!   by its number's low byte, entered when the superslab is linked into the owned list and
//!   cleared when it is unlinked, so an entry always names a superslab this heap owns): the
//!   two tests are joined into one branch, one load and one compare for the table, so links
//!   that cross superslabs in random order cost no misprediction. A take of a chain off a
//!   list (spill, decay, exit) follows such links at once too. Any other link (the list's
//!   end, a block of a superslab the table does not hold, a corrupted word) goes to the
//!   checked pop, on the slow path. The checked pop, a take, and a double free's confirmation
//!   follow a link that leaves its block's superslab only when it is a block start of the
//!   list's class below its slab's carve mark, in a slab this heap owns (found through the
//!   owned cache, H8, or the registry and the slab's owner word; nothing is read through the
//!   link first). A bad link is reported as `Corrupt::FreeList` naming the block that holds
//!   it; that block, itself checked, is handed out (or kept on the chain) and the rest of the
//!   list is dropped: its blocks leak, out of their slabs for good (SS4). So a link the user
//!   overwrote never makes malloc return an address outside this heap's superslabs.
//! - **H17 (private heaps).** [`Ctx::new_private_heap`] makes a heap that a user holds as a
//!   value (the facade's `hakmem::Heap`) rather than a thread: the same heap, with its tag 0
//!   (never reaped, H15), that adopts no abandoned superslab (refill step 3 is skipped), so
//!   every block of its superslabs is one it handed out. It is used by one thread at a time.
//!   [`Ctx::destroy_heap`] ends it once its user has given up every block (no user holds one;
//!   every free of one by another thread has returned): its lists and cache are forgotten,
//!   and each owned superslab is unlinked, its slabs freed without a walk of their blocks
//!   (superslab SS19: one swap takes each remote stack and its count) and released to the
//!   lru. The blocks users held are counted as freed by the heap (used minus those on the
//!   lists, in the cache and on the remote stacks, whose freers counted them), so the stats
//!   stay exact. What can still be in flight at that moment is only what no block keeps: a
//!   stale lookup of another thread (the registry's sections: the release unregisters the
//!   superslab, which waits for them, registry R6) and the lru's later purge or unmap; a
//!   non-owner's free that has not returned is a use of a block the user gave up.
//! - **H18 (parked heaps).** A thread's exit ([`Ctx::park_heap`]) hands its heap whole (lists,
//!   cache, owned superslabs, its id as their slabs' owner) to a set of at most `PARK_MAX` (4)
//!   parked heaps, off the live list, with its counters merged (as a retirement merges them)
//!   and tag 0; when the set is full the heap is retired instead (H5). A new thread's
//!   [`Ctx::take_or_new_heap`] takes the most recently parked heap, if any, and goes on with
//!   it as its owner: remote frees into its superslabs went onto their remote stacks
//!   meanwhile, as for any owner that is busy, and its refills drain them. Only a thread's
//!   own heap is ever taken: [`Ctx::new_heap`] never hands out a parked heap (a private heap
//!   releases its superslabs whole when dropped, and a parked heap's superslabs hold other
//!   threads' blocks). A heap parked one purge delay ago (the lru's; never, with purging off)
//!   is retired (H5) by the next park, take or [`Ctx::expire_parked`] (the slow paths' and the
//!   background purge's check, one atomic load while none is due), and every parked heap by
//!   [`Ctx::retire_parked`] (`collect`). A thread's heap that would map a superslab (the lru
//!   empty) first retires the oldest parked heap if no parked heap was taken since it was
//!   parked (no thread started since: the bet on one is weaker than a running thread's need),
//!   and adopts what it abandoned; while threads keep starting, the parked heaps stay. The set is changed only under the heap list's lock,
//!   and a heap leaves it (taken or to be retired) in the same critical section that finds it,
//!   so it goes to exactly one thread: nothing of a parked heap is released while it can
//!   still be taken, and nothing is released while a block of it is held (a retirement
//!   abandons what holds blocks, H5). Its held blocks (lists, cache) count as held (stats S3),
//!   as a live idle thread's do. In a forked child the parked heaps stay parked and can be
//!   taken: they are whole, as nothing but the lock's holder changes them.
//! - **H19 (the profiler's credit).** Once the facade's heap profiler (`hakmem/src/profile`)
//!   starts on a heap ([`Heap::prof_start`]), the heap keeps its credit (`prof_credit`): the
//!   countdown to the next sample less the bytes on its holder's lists (H21). A pop from the
//!   holder lowers the countdown and those bytes together, and a free never touches either (it
//!   goes to the heap's own lists), so neither fast path changes the credit. It changes only
//!   on the profiler's slow paths: a fill ([`Heap::prof_fill`]) lowers it by the bytes the
//!   holder gains, and moves only what it covers, so a fill leaves it at least 0; a give-back
//!   (H22) raises it by the bytes taken back; the profiler lowers it by each allocation it
//!   counts itself and raises it by each sample's next interval ([`Heap::prof_add`]), and
//!   gives the holder's lists back while it is negative. So between slow paths the credit is
//!   at least 0: the holder's lists never hold more bytes than the countdown, and no pop can
//!   pass the sample point. Every class that a fill put blocks on is marked (`prof_listed`)
//!   until a give-back empties it, so [`Heap::prof_held_bytes`] (the marked classes' bytes)
//!   is every byte on the holder's lists, and the countdown is the credit plus it.
//! - **H20 (straight frees).** When the owner's free finds its class's list full, still full
//!   after the overflow is counted (H11), the cache without room for a spill's half list (so a
//!   spill would send the cache's oldest blocks to their slabs), and the list's head (the block
//!   freed before) in another slab than the block (frees in no order, whose spill would move
//!   single-block runs; frees in address order are spilled in long runs), the block goes straight
//!   to its slab's free list instead, and so do the class's next `n - 1` frees that find the
//!   list full (`n` a spill's length: half the list's bound), without a slow-path event: the
//!   overflow is counted once per `n` frees, as a spill counts it, so the clock of decay and
//!   the growth of bounds (H11) see the same events. The C free's fast path
//!   ([`Heap::try_free_owned`]) frees straight too when its push finds the list full during a
//!   run, so such a free takes the full path only once per run. Each such free writes the block once
//!   (its link and the free key, FK1) while its line is warm from the free's key check, and
//!   updates its slab's counts, its ring place (H3) or, if the slab emptied, returns it (H4),
//!   and the held count (stats S3); the thread's counters count it (H13). Blocks freed in
//!   random order land in random slabs, so the spill's runs are single blocks: a straight
//!   free does that work once instead of pushing, taking, caching and flushing each block. A
//!   free whose block carries the free key takes the full slow path, to its confirmation
//!   (FK3), and a block freed straight and freed again is found on its slab's free list.
//! - **H21 (the profiler's holder: a second set of lists).** While the profiler runs on a
//!   heap `h`, its thread's allocation slot holds `h`'s holder (`prof_holder`, mapped at the
//!   first [`Heap::prof_start`] on `h` and kept for its later lives), and its free slot `h`
//!   (the facade's tls T5). The holder is heap-shaped, so the allocation fast paths read it as
//!   they read a heap, and only [`Heap::prof_fill`] puts blocks on its lists: blocks of `h`,
//!   from `h`'s list (one [`Lists::exchange`] of the whole list, nothing walked, or a chain
//!   when the credit is short of it), which it first refills from `h`'s cache or slabs. Its
//!   lists use `h`'s link key, and its owned-superslab table is a copy of `h`'s, which
//!   `link_owned` and `unlink_owned` keep equal (H16: a link the fast pop follows on the
//!   holder names a superslab `h` owns); its checked pop and the takes off its lists check far
//!   links against `h`'s owned cache and id (`prof_owner`). Its id is [`EMPTY_ID`] and its
//!   owned cache empty, so no free takes it for an owner. Its pops are `h`'s allocations,
//!   counted by its lists (H13), which [`Ctx::snapshot`] and the fold at exit add to `h`'s
//!   (the snapshot reads `prof_holder` under the heap list's lock, under which it is written).
//! - **H22 (the holder's blocks go back).** Blocks on the holder's lists are held by `h`'s
//!   thread, out of their slabs as blocks on `h`'s own lists are (no superslab holding one is
//!   released or abandoned). [`Heap::prof_give_back`] returns them to `h` (by one exchange
//!   onto `h`'s empty list, else as a chain onto it when it has room, else to the cache and
//!   the slabs), raising the credit by their bytes (H19), and runs when `h` is parked (H18),
//!   when it is torn down (H5: a thread's retirement, a reaper's, a parked heap's expiry, and
//!   so a forked child's heaps of threads that did not survive the fork) and at each
//!   [`Heap::prof_start`]. So a parked or retired heap holds nothing on its holder, and a
//!   parked heap taken by a new thread goes on with its credit and an empty holder. In check
//!   mode (H6) the lists have no room and a fill moves nothing, so the holder stays empty and
//!   every allocation is counted by the profiler one by one.
//! - **H23 (free lists walked in step).** A refill of the thread list that wants at least
//!   `SPREAD_MIN` (16) blocks, whose first slab in the refill order and the next `WALKS - 1` (3)
//!   on its ring each hold an equal share of them on their free lists, takes the shares from
//!   those slabs at once ([`SlabMeta::take_free_chains`]), their walks interleaved, and links the
//!   chains in ring order. A free list whose blocks came back in no order (H20's straight
//!   frees) is a chain of cache misses, each link known only once the block before it is read;
//!   four walks in step keep four misses in flight instead of one. Each walk checks every link
//!   it follows as a single walk does (superslab SS18), a slab left without a free block leaves
//!   the ring (H3), and the held count grows by the blocks taken (stats S3). Otherwise a refill
//!   takes its slabs one after another.
//! - **H24 (the profiler's tally).** A heap keeps the profiler's tally of its current sample
//!   interval ([`ProfTally`], reset by [`Heap::prof_start`]): the blocks its holder gained
//!   less those it gave back ([`Heap::prof_fill`], H22), to which the facade adds the
//!   allocations it counts itself and its slow events, and whether the profiler counts
//!   every allocation one by one (`counting`: the facade gives the holder back first, so
//!   each allocation misses its fast path and the credit is the countdown, H19), and how many
//!   intervals ended. The heap only keeps the numbers; what they decide is the facade's
//!   (`hakmem/src/profile`). They touch no block: a tally set wrongly costs time (fills or
//!   counts that were not needed), never a block, and every fill still stays within the
//!   credit (H19), so no pop passes the sample point whatever the tally says.
//! - **HG1 (huge pages for heaps that fill their memory).** A heap about to take a superslab
//!   from the lru or the OS (every superslab it owns is full then, H7) asks for it to be
//!   advised for huge pages (superslab SS20: before its first touch, so that one fault serves
//!   2 MiB instead of 512 faults) when it owns at least `HUGE_AFTER` (4) superslabs (a private
//!   heap: `HUGE_AFTER_PRIVATE` (1)) and the most recently filled of them (at most
//!   `HUGE_SAMPLE` (16)) that are served in base pages have at least 7/8 of their bytes touched:
//!   resident, as the OS says ([`Os::resident`]), or where it does not say, what their carved
//!   blocks are known to have touched (superslab `carved_bytes`: a block's key word, so up to a
//!   page per block). An advised superslab is resident whole and says nothing, so after
//!   `HUGE_RUN` (7) advised in a row the next one goes without: the test keeps reading fresh
//!   evidence, and a heap that stops touching what it maps loses the advice within a few
//!   superslabs. A heap that fills what it maps grows on, and a huge page then holds about as
//!   much untouched memory as base pages would.
//!   A heap whose superslabs are sparse (larson's and churn's threads, hand-offs whose blocks
//!   come back late) maps base pages as before. The advice is taken back when a purge tick
//!   purges any of a superslab's free slabs (H14: the purge splits the huge page, and the
//!   superslab is served in base pages after it) and when the superslab is retired (SS20),
//!   so a region the lru hands on carries no advice its next owner did not ask for. The first
//!   touch of an advised superslab is timed: one slower than `HUGE_SLOW_NS` (1 ms: longer than
//!   512 base-page faults take; a VM whose host must supply the huge page's memory, as with
//!   free page reporting, takes 4 to 10 ms) makes the next `HUGE_BACKOFF` (64) superslabs that
//!   any heap of the context would advise go without, and then the advice is tried again. The
//!   touch is timed in the thread's CPU time, which a wait for a core does not advance. The
//!   timing and the back-off are [`Ctx::first_touch`]'s, which the medium tier's regions go
//!   through too (medium M7): their slow touches and skipped advice count alike.
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

mod adapt;
mod alloc;
mod check;
mod ctx;
mod exit;
mod free;
mod owned;
mod private;
mod prof;
mod purge;
mod refill;
mod remote;
mod ring;
mod sync;
mod validate;

use core::ptr::{null, null_mut, NonNull};
use hakmem_lru::{now_ns, Lru};
use hakmem_registry::Kind;
use hakmem_route::{CACHE_CAPS, CACHE_SLOTS, CLASSES, LIST_CAPS, MAX_TINY, TINY_CLASS_OF};
use hakmem_stats::{GlobalStats, ThreadStats};
use hakmem_superslab::{
    free_key, init_free_key, key_word, link_key, set_key_word, AbandonedList, SpinLock, SLABS,
    SLAB_SHIFT, SLAB_SIZE, SS_SIZE,
};
use hakmem_tls_sll::Lists;
use hakmem_unified_cache::UnifiedCache;
use sync::{AtomicU64, AtomicUsize, Ordering};

/// Re-exported from hakmem-lru: how the context's cache of empty regions behaves.
pub use hakmem_lru::LruConfig;
/// Re-exported from hakmem-registry: the table a [`Ctx`] is made with, and its leaves' source.
pub use hakmem_registry::{LeafSource, Registry};
/// Re-exported from hakmem-route: a size's class (what [`Heap::alloc`] takes), and what a
/// pointer is (the slab and superslab a free of a block by [`Heap::free_small`] takes).
pub use hakmem_route::{class_of, classify, PtrRoute, SizeClass};
/// Re-exported from hakmem-stats: what [`Ctx::snapshot`] returns, and the events it counts.
pub use hakmem_stats::{Event, Snapshot};
/// Re-exported from hakmem-superslab: the OS layer a [`Ctx`] is made with (and the real one),
/// what its reports name, and the types its slow paths take.
pub use hakmem_superslab::{Corrupt, Env, LibcOs, Os, SlabMeta, Superslab};
/// What a private heap holds (H17).
pub use private::Usage;
pub use prof::ProfTally;

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// Slots of a heap's owned-slab cache (H8): one per slab, so 8 superslabs' worth, 16 MiB of
/// small blocks (2 KiB per heap), indexed by a slab number's low byte.
const OWNED_CACHE: usize = 256;
const _: () = assert!(OWNED_CACHE == 1 << u8::BITS);
/// An empty slot (H8): no slab, whose number no address has (superslab SS13).
const EMPTY_SLOT: *const SlabMeta = SlabMeta::NONE;

/// The number of the slab holding address `p`: the owned cache's key (H8). One shift, whose
/// low bits are also the slot, so the free path derives key and slot from one value.
#[inline(always)]
fn slab_number(p: usize) -> usize {
    p >> SLAB_SHIFT
}

/// The owned-cache slot of slab number `n`.
#[inline(always)]
fn owned_slot(n: usize) -> usize {
    // The low byte: one `movzx` on x86_64 (OWNED_CACHE is 256).
    n as u8 as usize
}

/// True when `p`, a link on a thread list of `class` that leaves its block's superslab, is a
/// block start of that class below its slab's carve mark, in a slab this heap owns (H16): a
/// slab of a superslab in the owned cache (H8: one load and one compare prove it, with no read
/// through `p`), or else one the registry finds in a live superslab and whose owner is `id`.
/// That second look reads the slab's metadata in a superslab that may be another heap's: a
/// link of ours never names one, and a corrupted link lands in one only by a chance of the
/// order of 2^-40 (tls_sll L8), so only such a link, naming a superslab that is unmapped at
/// that very moment, could make the read fault.
fn far_block_ok(
    owned_slabs: &[*const SlabMeta; OWNED_CACHE],
    registry: &Registry,
    id: usize,
    class: SizeClass,
    p: *mut u8,
) -> bool {
    if p as usize & 15 != 0 {
        return false;
    }
    let entry = owned_slabs[owned_slot(slab_number(p as usize))];
    let slab = if core::ptr::eq(entry, Superslab::slab_meta_addr(p)) {
        // SAFETY: the entry is the metadata of a slab of a superslab this heap owns, live while
        // owned (H8), and it is `p`'s slab.
        unsafe { &*entry }
    } else {
        let Some((base, Kind::Superslab)) = registry.lookup(p as usize) else {
            return false;
        };
        // SAFETY: the registry found a live superslab at `base` (registry R1, superslab SS2);
        // see above for the one race.
        let slab = unsafe { Superslab::at(base) }.slab_of(p);
        if slab.owner() != id {
            return false;
        }
        slab
    };
    // SAFETY: a slab of a superslab this heap owns: ours to read as owner (in use, it is ours;
    // free, its carve mark is 0, which no index is below), and `p` lies in it.
    let (c, carved) = unsafe { slab.class_and_carved_owned() };
    // SAFETY: as above.
    let index = unsafe { slab.block_index(p) };
    c == class.index() && index < carved
}

/// Slots of a heap's owned-superslab table (H16): indexed by a superslab number's low byte.
const OWNED_SS: usize = 256;

/// The owned-superslab table's slot of the superslab holding address `p`.
#[inline(always)]
fn owned_ss_slot(p: usize) -> usize {
    (p >> SS_SIZE.trailing_zeros()) as u8 as usize
}

/// An empty slot of the owned-superslab table (H16): no value [`in_owned_superslab`] compares
/// with has bits 4 to 20 set.
const NO_SS: usize = usize::MAX;

/// True when `p` is 16-byte aligned and lies in a superslab this heap owns, by its
/// owned-superslab table (H16): one load and one compare, nothing read through `p`. Null, the
/// end block and any address whose superslab is not in the table are refused. The malloc fast
/// path's check of every link (tls_sll L8).
#[inline(always)]
fn in_owned_superslab(bases: &[usize; OWNED_SS], p: *mut u8) -> bool {
    // The superslab's base with `p`'s low four bits: an entry (a superslab's base, never 0, or
    // NO_SS) equals it only when those bits are 0 and `p` lies in that superslab.
    bases[owned_ss_slot(p as usize)] == p as usize & (!(SS_SIZE - 1) | 15)
}

/// The id of every [`EmptyHeap`]: no heap's (ids count up from 1) and no slab's owner (0 for a
/// free or abandoned slab).
pub const EMPTY_ID: usize = usize::MAX;

/// A heap that owns nothing and never changes (H9): what a thread's heap pointer holds before
/// its heap exists and after it is gone, so the fast paths need no null test.
///
/// ```
/// use hakmem_hot_heap::{EmptyHeap, Heap, SizeClass};
/// static NONE: EmptyHeap = EmptyHeap::new();
/// let h = NONE.as_ptr();
/// let mut x = [0u64; 4];
/// // SAFETY: any heap pointer, empty ones included, on any thread; any address.
/// unsafe {
///     assert!(Heap::alloc_fast(h, SizeClass::new(0).unwrap()).is_null());
///     assert!(!Heap::try_free_owned(h, x.as_mut_ptr().cast()));
/// }
/// assert!(NONE.is(h));
/// ```
pub struct EmptyHeap(core::cell::UnsafeCell<Heap>);

// SAFETY: nothing ever writes an empty heap (H9): the only code that reads it through the
// pointer, the two fast paths, writes only after a hit, which an empty heap never gives.
unsafe impl Sync for EmptyHeap {}

impl EmptyHeap {
    /// An empty heap: no blocks, no room, no owned superslab (H9).
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        // SAFETY: every field of a heap is an integer, a raw pointer, a size class, or an array
        // or struct of them, for which zero is a value (a zero size class is class 0, below
        // CLASSES: route RT5; `Heap::init` relies on the same); zero lists have no room, and
        // `make_empty` points their heads at the end block (tls_sll L8).
        let mut h: Heap = unsafe { core::mem::zeroed() };
        h.sll.make_empty();
        h.owned_slabs = [EMPTY_SLOT; OWNED_CACHE];
        h.owned_bases = [NO_SS; OWNED_SS];
        h.id = EMPTY_ID;
        // Its tiny table stays zero (H12): every size maps to class 0, whose list is empty.
        Self(core::cell::UnsafeCell::new(h))
    }

    /// The pointer a thread's heap slot holds for this empty heap. Only [`Heap::alloc_fast`]
    /// and [`Heap::try_free_owned`] may be given it.
    #[inline(always)]
    pub const fn as_ptr(&'static self) -> *mut Heap {
        self.0.get()
    }

    /// True when `h` is this empty heap.
    #[inline(always)]
    pub fn is(&'static self, h: *mut Heap) -> bool {
        core::ptr::eq(h, self.as_ptr())
    }
}

/// The unified cache type every heap carries.
type Cache = UnifiedCache<CLASSES, CACHE_SLOTS>;

/// Blocks returned to slabs per batch: the runs of [`Heap::return_blocks`] are cut at this
/// length (a stack array).
const RUN_BATCH: usize = 256;

/// Owned superslabs scanned for remote frees per refill.
const SCAN_PER_REFILL: usize = 4;
/// A refill of the thread list of at least this many blocks walks several slabs' free lists in
/// step (H23), so that each gives at least 4.
const SPREAD_MIN: u32 = 16;
/// The free lists such a refill walks in step (H23): the cache misses of 4 walks are in flight at
/// once.
const WALKS: usize = 4;
/// Owned superslabs scanned for remote frees before a new superslab is taken. Bounded, so a heap
/// with hundreds of superslabs does not walk them all every 2 MiB; the rotating cursor still
/// visits every one in turn.
const SCAN_BEFORE_GROWING: usize = 32;

/// A heap claims an abandoned superslab it frees into only while it owns fewer superslabs than
/// this (H10): 8 MiB. Beyond it, claiming more spreads the heap's allocations over more partly
/// used superslabs (larson's peak RSS grew by a fifth without the bound), while the orphan path
/// drains them towards release.
const CLAIM_BELOW: usize = 4;

/// Heaps parked at most, waiting for a thread to take them (H18).
const PARK_MAX: usize = 4;

/// A thread's heap that grows past this many filled superslabs (8 MiB) has its next ones
/// advised for huge pages (HG1). Below it, a thread's superslabs are the few, partly used ones
/// that larson and churn keep per thread (with 1, larson's peak RSS nearly doubled).
const HUGE_AFTER: usize = 4;
/// The same for a private heap (H17): an arena that filled one superslab grows on.
const HUGE_AFTER_PRIVATE: usize = 1;
/// The most recently filled superslabs that HG1's density test reads (a `mincore` of 2 MiB
/// each, about 1.4 µs): a bound on its cost, once per 2 MiB a heap grows by (whose 512 base
/// page faults take about 1.3 ms).
const HUGE_SAMPLE: usize = 16;
/// An advised superslab whose first touch (its header's write, which faults its huge page in)
/// takes more than this much of its thread's CPU time (1 ms) says that the OS serves huge pages
/// slowly now (HG1): 512 base page faults took about 1.3 ms on the development machine, a huge
/// page 0.2 to 0.4 ms when its memory was recently used, 4 to 10 ms when the VM's host had to
/// supply it.
const HUGE_SLOW_NS: u64 = 1_000_000;
/// The superslabs that go without advice after a slow first touch (HG1): 128 MiB.
const HUGE_BACKOFF: usize = 64;
/// A heap's superslabs advised in a row at most (HG1); the next one goes without, so that the
/// density test keeps reading what the heap touches (an advised superslab is resident whole).
const HUGE_RUN: usize = 7;

struct Heaps {
    /// Live heaps, most recently made (or checked by [`Ctx::reap_one`]) first.
    live: *mut Heap,
    /// The last live heap: the one [`Ctx::reap_one`] checks next.
    tail: *mut Heap,
    free: *mut Heap,
    live_count: usize,
    /// Parked heaps (H18), oldest first: `parked[..parked_count]`, each parked at
    /// `parked_at[i]` (as [`hakmem_lru::now_ns`]).
    parked: [*mut Heap; PARK_MAX],
    parked_at: [u64; PARK_MAX],
    /// `takes` when `parked[i]` was parked: equal to `takes` while no thread has taken a
    /// parked heap since (H18: such a heap is retired before a running heap maps memory).
    parked_takes: [usize; PARK_MAX],
    parked_count: usize,
    /// Parked heaps taken so far (H15, H18): a reaper's claim fails when a take came between
    /// its look at a heap and its claim.
    takes: usize,
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
    /// Nonzero once a corruption has been reported: with `HAKMEM_INVALID_FREE=warn` the
    /// allocator goes on, with lists dropped and blocks leaked (SS18), so validation stops.
    corrupted: AtomicUsize,
    heaps: SpinLock<Heaps>,
    next_id: AtomicUsize,
    /// When the oldest parked heap is due for retirement (H18), `u64::MAX` when none is parked.
    parked_due: AtomicU64,
    /// How long a free slab keeps its pages before its heap's purge tick gives them back
    /// (H14): the lru's purge delay, or `u64::MAX` when purging is off.
    slab_purge_delay: u64,
    /// Superslabs still to go without huge-page advice after a slow first touch (HG1).
    huge_skip: AtomicUsize,
    /// A first touch of an advised superslab slower than this many ns is slow (HG1):
    /// [`HUGE_SLOW_NS`]; tests set it to make the outcome independent of the clock.
    pub(crate) huge_slow_ns: u64,
}

/// One thread's heap.
#[repr(C)]
pub struct Heap {
    sll: Lists<CLASSES>,
    id: usize,
    /// The free key (FK1), next to `id`, which the free path reads anyway.
    key: usize,
    /// The route box's class of every tiny size (H12), here so that malloc's fast path
    /// indexes it from the heap pointer it holds anyway.
    tiny: [SizeClass; MAX_TINY + 1],
    /// The slabs of owned superslabs by slab number, direct-mapped (H8).
    owned_slabs: [*const SlabMeta; OWNED_CACHE],
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
    /// A private heap (H17): it adopts no abandoned superslab.
    private: bool,
    /// Superslabs advised for huge pages in a row since the last one that was not (HG1).
    huge_run: usize,
    /// When the next purge tick of the owned superslabs' free slabs is due (H14, as
    /// [`hakmem_lru::now_ns`]); `u64::MAX` when none waits.
    purge_due: u64,
    /// This thread's counters.
    pub stats: ThreadStats,
    next: *mut Heap,
    prev: *mut Heap,
    /// The adaptive list bounds (H11).
    adapt: adapt::Adapt,
    /// The bases of owned superslabs by their number's low byte, direct-mapped, `NO_SS` for none
    /// (H16): entered when a superslab is linked, cleared when it is unlinked.
    owned_bases: [usize; OWNED_SS],
    cache: Cache,
    /// The heap profiler's holder (H21): a heap-shaped second set of thread lists, mapped at
    /// the profiler's first start on this heap and kept for the heap's later lives (written
    /// under the heap list's lock, which the snapshot reads it under); null before, and on a
    /// holder.
    prof_holder: *mut Heap,
    /// On a holder: the heap whose blocks it holds (H21); null on every other heap.
    prof_owner: *mut Heap,
    /// The profiler's credit (H19): the countdown to the next sample less the bytes on the
    /// holder's lists, once `prof_started`.
    prof_credit: i64,
    prof_started: bool,
    /// The classes whose holder lists may hold blocks (H19, H22).
    prof_listed: [u64; 2],
    /// What the profiler tallies of this heap's current sample interval (H24).
    prof_tally: prof::ProfTally,
}

impl Heap {
    /// Moves the counts the thread lists keep of their own traffic (H13) into the thread's
    /// counters, for the merge at exit (stats S2). Under the heap list's lock, so a snapshot
    /// sees each allocation and free once.
    pub(crate) fn fold_list_counts(&mut self) {
        for c in 0..CLASSES {
            let (pushes, pops) = self.sll.take_counts(c);
            if pushes != 0 || pops != 0 {
                self.stats.add_counts(c, pops, pushes);
            }
            // SAFETY: the holder (H21), mapped for good once made, this heap's alone.
            if let Some(hold) = unsafe { self.prof_holder.as_mut() } {
                let (pushes, pops) = hold.sll.take_counts(c);
                if pushes != 0 || pops != 0 {
                    self.stats.add_counts(c, pops, pushes);
                }
            }
        }
    }

    /// Pops class `c`'s head with its link checked (H16): a link that leaves the head's
    /// superslab must be a block of `c` in a superslab this heap owns ([`far_block_ok`]). A bad
    /// link is reported (`Corrupt::FreeList`, naming the block that holds it) and the rest of
    /// the list dropped (tls_sll L8); the head itself is a checked block and is handed out.
    pub(crate) fn pop_list(&mut self, class: SizeClass) -> *mut u8 {
        let registry = &self.ctx().registry;
        // A holder's far links are checked against the heap whose blocks it holds (H21).
        let owner: *const Heap = if self.prof_owner.is_null() {
            self
        } else {
            self.prof_owner
        };
        // SAFETY: this heap, or the live heap whose holder it is (H21), of the same thread;
        // only its owned cache and id are read, which nothing changes meanwhile.
        let (slabs, id) = unsafe { (&(*owner).owned_slabs, (*owner).id) };
        // SAFETY: the list holds free blocks of ours (H1); every link followed is checked.
        let (p, bad) = unsafe {
            self.sll.pop_checked(class.index(), |n| {
                far_block_ok(slabs, registry, id, class, n)
            })
        };
        if bad {
            self.ctx().report(Corrupt::FreeList(p as usize));
        }
        p
    }

    /// Takes up to `n` blocks off class `c`'s list as a chain, every link checked (H16: a link
    /// into a superslab of the owned-superslab table, or else a block of the class in a slab
    /// this heap owns); a bad link ends the chain at the block that holds it, is reported, and
    /// the rest of the list is dropped.
    pub(crate) fn take_list(&mut self, class: SizeClass, n: u32) -> hakmem_tls_sll::Chain {
        let registry = &self.ctx().registry;
        // SAFETY: the list holds free blocks of ours (H1); every link followed is checked: one
        // into a superslab of the owned-superslab table at once, as the malloc path does, and
        // any other as the checked pop does.
        let (chain, bad) = unsafe {
            self.sll.take(class.index(), n, |b| {
                in_owned_superslab(&self.owned_bases, b)
                    || far_block_ok(&self.owned_slabs, registry, self.id, class, b)
            })
        };
        if let Some(b) = bad {
            self.ctx().report(Corrupt::FreeList(b as usize));
        }
        chain
    }

    /// Initialises a heap in place, all but its id and tag, which a reaper may read under the
    /// heap list's lock (H15): [`Ctx::new_heap`] writes the id under that lock.
    ///
    /// # Safety
    /// `this` points to a valid, empty `Heap` (zeroed memory is one, as is a retired heap) that
    /// nobody else uses.
    unsafe fn init(this: *mut Heap, ctx: &'static Ctx) {
        // SAFETY: the caller hands over a valid, empty heap.
        let h = unsafe { &mut *this };
        h.key = init_free_key();
        h.ctx = ctx;
        h.tiny = TINY_CLASS_OF;
        h.sll = Lists::new(if ctx.check { [0; CLASSES] } else { LIST_CAPS });
        // Zeroed memory is valid counters, but loom's atomics must be built (a retired heap's
        // are zero already: the merge took them).
        #[cfg(loom)]
        {
            h.stats = ThreadStats::new();
        }
        let linked = h.sll.set_link_key(link_key());
        debug_assert!(linked, "new lists are empty");
        h.current = [null(); CLASSES];
        h.owned_slabs = [EMPTY_SLOT; OWNED_CACHE];
        h.owned_bases = [NO_SS; OWNED_SS];
        h.owned = null();
        h.owned_tail = null();
        h.owned_count = 0;
        h.cursor = null();
        h.kept_empty = null();
        h.private = false;
        h.huge_run = 0;
        h.purge_due = u64::MAX;
        h.prof_started = false;
        h.prof_tally = prof::ProfTally::NEW;
        h.adapt = adapt::Adapt::new();
        h.cache
            .set_caps(&CACHE_CAPS)
            .expect("route sizes the cache for every class");
    }

    /// This heap's id (what its slabs hold in `owner`).
    #[inline(always)]
    pub fn id(&self) -> usize {
        self.id
    }

    /// The id of the heap at `this`, which may be an empty heap: [`EMPTY_ID`], no slab's owner
    /// (H9).
    ///
    /// # Safety
    /// `this` points to a live heap or an empty heap.
    #[inline(always)]
    pub unsafe fn id_of(this: *const Heap) -> usize {
        // SAFETY: a read through the raw pointer: an empty heap is shared and never written.
        unsafe { (*this).id }
    }

    /// The shared context. Crate-private: an [`EmptyHeap`] has none (H9), and only real heaps
    /// reach the code that calls this.
    #[inline(always)]
    pub(crate) fn ctx(&self) -> &'static Ctx {
        // SAFETY: set at init to a context that lives for the program; callers in this crate
        // hold real heaps only (H9).
        unsafe { &*self.ctx }
    }
}

#[cfg(all(test, not(loom)))]
mod tests;

/// A context over a heap-backed arena of `chunks` chunks (`HeapOs` stands in for mmap), with
/// `check` and `report` as [`Ctx::new`] takes them; leaked, as the facade's context lives for the
/// program. The box's unit tests and loom models build theirs with it.
#[cfg(test)]
fn test_ctx(chunks: usize, check: bool, report: fn(Corrupt)) -> &'static Ctx {
    extern crate std;
    use hakmem_superslab::HeapOs;
    use std::boxed::Box;
    let os: &'static HeapOs = Box::leak(Box::new(HeapOs::new(chunks)));
    let registry = os.registry();
    Box::leak(Box::new(Ctx::new(
        os,
        registry,
        LruConfig::default(),
        check,
        report,
    )))
}

#[cfg(all(test, loom))]
mod loom_models;
