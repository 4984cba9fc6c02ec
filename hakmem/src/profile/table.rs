//! The profiler's tables: the live samples keyed by address, the lock-free filter a free reads
//! first, and the deduplicated stacks with their counters. All of it is mapped from the OS
//! (`MAP_NORESERVE`, pages touched on use), never from the heap being profiled.
//!
//! Invariants:
//! - **PT1 (one lock).** Every table but the filter is read and written under [`LOCK`] only;
//!   nothing allocates, frees or captures a stack while holding it.
//! - **PT2 (filter).** Two levels of counters, read without the lock: `SLAB_FILTER[s(a)]`
//!   counts the live samples whose address lies in a 64 KiB granule (a small block's slab)
//!   numbered `s(a)` modulo the table's length, and `filter[h(a)]` those whose address's
//!   16-byte granule is numbered `h(a)` modulo the filter's length (4 MiB of addresses before
//!   two share a counter; neighbouring blocks never do, and the counters a program's samples
//!   touch lie on the pages its heap's addresses map to, not on one page per sample as a hash
//!   would spread them). Both are raised under the lock before the sampled block reaches its
//!   user, and lowered under the lock when the sample goes, so a free of a sampled block (which happens
//!   after the user got it) always reads non-zero counts: a zero at either level means "not
//!   sampled" without the lock. The first level costs a shift, a mask and a load (the granule
//!   is the slab number the free paths compute anyway), and is zero for every slab but the
//!   few that hold a live sample, so most frees skip the second level.
//! - **PT3 (stacks).** A stack, once stored, keeps its id and frames for the process's life
//!   (a fork's child keeps them and zeroes their counters); its live counters are the sums of
//!   the weights of its live samples.
//! - **PT4 (fork).** A fork may copy the tables in the middle of another thread's update. The
//!   child clears the samples, the filter and every counter; a stack insert cut short leaves at
//!   most a record past `n_stacks` (overwritten by the next insert) or an index slot naming
//!   it, whose hash or frames then differ from the new record's, so lookups skip it.
//! - **PT5 (a table that grows).** The address table starts at `SLOTS_FIRST` slots and
//!   doubles, up to `SLOTS`, when an insert would fill more than 7/8 of it: the live samples
//!   are moved, under the lock, into the other of two reservations, and the pages of the one
//!   left are given back. Samples land at hashed slots, so a table sized for the most samples
//!   ever live touches a page per sample; one sized to what is live touches about that.
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering::*};
use hakmem_os::LibcOs;

/// Frames kept per stack.
pub const MAX_FRAMES: usize = 64;
/// Live samples the address table holds at most (at 7/8 of its slots; more are dropped and
/// counted).
const SLOTS: usize = 1 << 20;
/// The address table's first size (PT5): 128 KiB, 3584 live samples (1.75 GiB live at the
/// default rate).
const SLOTS_FIRST: usize = 1 << 12;
/// The filter's counters (PT2).
const FILTER: usize = 1 << 18;
/// The filter's first level (PT2): counters per 64 KiB granule of the address space, modulo
/// this (2 GiB before two granules share one).
const SLAB_FILTER_LEN: usize = 1 << 15;
/// The granule of the filter's first level: a small block's slab (superslab `SLAB_SHIFT`).
const GRANULE_SHIFT: u32 = 16;
const _: () = assert!(GRANULE_SHIFT == hakmem_superslab::SLAB_SHIFT);
/// Distinct stacks at most; stack 0 takes the samples of stacks that find the table full.
const STACKS: usize = 1 << 16;
/// The stack index's slots (ids by hash).
const INDEX: usize = 1 << 17;
/// Frames of all stacks together.
const FRAMES: usize = 1 << 22;

/// A live sample: its block's address (0: an empty slot), its stack and its weights.
#[derive(Clone, Copy)]
#[repr(C)]
struct Sample {
    addr: usize,
    stack: u32,
    objects: f64,
    bytes: f64,
}

/// A stored stack and its counters (PT3).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct StackRec {
    hash: u64,
    start: u32,
    len: u32,
    /// Estimated live objects and bytes (the weights of its live samples).
    pub live_objects: f64,
    pub live_bytes: f64,
    /// Estimated objects and bytes allocated since the start (or the fork).
    pub alloc_objects: f64,
    pub alloc_bytes: f64,
}

struct Tables {
    /// The address table: `mask + 1` slots in one of the two reservations (PT5).
    samples: *mut Sample,
    /// The other reservation, where the table moves when it grows.
    spare: *mut Sample,
    mask: usize,
    stacks: *mut StackRec,
    index: *mut u32,
    frames: *mut usize,
    live: usize,
    n_stacks: u32,
    n_frames: usize,
}

struct Shared(UnsafeCell<Tables>);
// SAFETY: the cell is only reached under LOCK (PT1).
unsafe impl Sync for Shared {}

static T: Shared = Shared(UnsafeCell::new(Tables {
    samples: core::ptr::null_mut(),
    spare: core::ptr::null_mut(),
    mask: SLOTS_FIRST - 1,
    stacks: core::ptr::null_mut(),
    index: core::ptr::null_mut(),
    frames: core::ptr::null_mut(),
    live: 0,
    n_stacks: 0,
    n_frames: 0,
}));
static LOCK: AtomicBool = AtomicBool::new(false);
/// The filter (PT2): published before profiling starts.
static FILTER_P: AtomicPtr<AtomicU32> = AtomicPtr::new(core::ptr::null_mut());
/// The filter's first level (PT2): zero-initialised data of the program (128 KiB of address
/// space, pages touched only where a sample lands).
static SLAB_FILTER: [AtomicU32; SLAB_FILTER_LEN] = [const { AtomicU32::new(0) }; SLAB_FILTER_LEN];
/// Bytes the tables reserve from the OS.
static MAPPED: AtomicU64 = AtomicU64::new(0);
/// Samples dropped because the address table was full.
static DROPPED: AtomicU64 = AtomicU64::new(0);

const fn sizes() -> [usize; 6] {
    [
        SLOTS * core::mem::size_of::<Sample>(),
        FILTER * 4,
        STACKS * core::mem::size_of::<StackRec>(),
        INDEX * 4,
        FRAMES * 8,
        SLOTS * core::mem::size_of::<Sample>(),
    ]
}

/// Maps the tables; false when the OS refuses. Called once, before profiling starts.
pub fn map() -> bool {
    let os = LibcOs;
    let s = sizes();
    let mut ptrs = [core::ptr::null_mut::<u8>(); 6];
    for (i, len) in s.iter().enumerate() {
        match os.map_reserved(*len) {
            Some(p) => ptrs[i] = p.as_ptr(),
            None => return false,
        }
    }
    lock();
    // SAFETY: under the lock (PT1); the mappings are fresh, zeroed and large enough.
    unsafe {
        let t = &mut *T.0.get();
        t.samples = ptrs[0].cast();
        t.spare = ptrs[5].cast();
        t.mask = SLOTS_FIRST - 1;
        t.stacks = ptrs[2].cast();
        t.index = ptrs[3].cast();
        t.frames = ptrs[4].cast();
        // Stack 0: the overflow bucket, with no frames.
        t.n_stacks = 1;
    }
    unlock();
    FILTER_P.store(ptrs[1].cast(), Release);
    let total = s.iter().sum::<usize>();
    MAPPED.store(total as u64, Relaxed);
    // The stats count it with the other address space reserved `MAP_NORESERVE`
    // (`Stats::reserved_bytes`).
    if let Some(c) = crate::context::ctx() {
        c.stats.event(hakmem_stats::Event::Reserve, total);
    }
    true
}

/// Bytes of address space the tables reserve (pages are committed as they are touched).
pub fn mapped_bytes() -> u64 {
    MAPPED.load(Relaxed)
}

/// Samples dropped because the address table was full.
pub fn dropped() -> u64 {
    DROPPED.load(Relaxed)
}

pub fn lock() {
    while LOCK
        .compare_exchange_weak(false, true, Acquire, Relaxed)
        .is_err()
    {
        while LOCK.load(Relaxed) {
            core::hint::spin_loop();
            hakmem_os::yield_now();
        }
    }
}

pub fn unlock() {
    LOCK.store(false, Release);
}

/// For a fork's child: the lock as if nobody held it (only the forking thread exists; PT4).
pub fn force_unlock() {
    LOCK.store(false, Release);
}

#[inline(always)]
fn mix(a: u64) -> u64 {
    let x = a.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 29)
}

/// `h(a)` (PT2): by address, so that the pages touched follow the heap's.
#[inline(always)]
fn filter_slot(addr: usize) -> usize {
    (addr >> 4) & (FILTER - 1)
}

/// The home slot of `addr` in an address table of `mask + 1` slots.
#[inline(always)]
fn slot_of(addr: usize, mask: usize) -> usize {
    mix(addr as u64 >> 4) as usize & mask
}

/// Doubles the address table (PT5): its samples move into the spare reservation, whose pages
/// are zero (fresh, or given back when it was left), and the old one's pages go back.
///
/// # Safety
/// The caller holds the lock, `map` succeeded, and the table has fewer than `SLOTS` slots.
unsafe fn grow(t: &mut Tables) {
    let (old, old_mask) = (t.samples, t.mask);
    let mask = 2 * old_mask + 1;
    for k in 0..=old_mask {
        // SAFETY: `k` is a slot of the old table.
        let s = unsafe { *old.add(k) };
        if s.addr == 0 {
            continue;
        }
        let mut i = slot_of(s.addr, mask);
        // SAFETY: slots below `mask + 1 <= SLOTS` of the spare reservation; the new table has
        // room (it is at most half full).
        unsafe {
            while (*t.spare.add(i)).addr != 0 {
                i = (i + 1) & mask;
            }
            *t.spare.add(i) = s;
        }
    }
    // SAFETY: the old table's own reservation; its samples moved above, and zero pages are
    // what the next growth into it expects.
    unsafe {
        libc::madvise(
            old.cast(),
            (old_mask + 1) * core::mem::size_of::<Sample>(),
            libc::MADV_DONTNEED,
        )
    };
    t.samples = t.spare;
    t.spare = old;
    t.mask = mask;
}

#[inline(always)]
fn granule(addr: usize) -> &'static AtomicU32 {
    &SLAB_FILTER[(addr >> GRANULE_SHIFT) & (SLAB_FILTER_LEN - 1)]
}

/// True when the 64 KiB granule of `addr` (a small block's slab) may hold a sampled block:
/// the filter's first level alone (PT2), for the profiled free's hot path; false means `addr`
/// is not sampled.
#[inline(always)]
pub fn granule_may_hold_sample(addr: usize) -> bool {
    granule(addr).load(Relaxed) != 0
}

/// True when `addr` may be a sampled block (PT2): false means it is not, without the lock.
#[inline(always)]
pub fn maybe_sampled(addr: usize) -> bool {
    if !granule_may_hold_sample(addr) {
        return false;
    }
    let f = FILTER_P.load(Acquire);
    if f.is_null() {
        return false;
    }
    // SAFETY: the filter has FILTER counters, mapped for the process's life.
    unsafe { (*f.add(filter_slot(addr))).load(Relaxed) != 0 }
}

fn filter(addr: usize) -> &'static AtomicU32 {
    let f = FILTER_P.load(Acquire);
    // SAFETY: called under the lock after `map` published the filter (FILTER counters).
    unsafe { &*f.add(filter_slot(addr)) }
}

/// The id of the stack `frames`, stored if new (stack 0 when the tables are full).
///
/// # Safety
/// The caller holds the lock, and `map` succeeded.
unsafe fn stack_id(t: &mut Tables, frames: &[usize]) -> u32 {
    let mut h: u64 = frames.len() as u64;
    for &f in frames {
        h = mix(h ^ f as u64);
    }
    let h = h | 1;
    let mut i = (h as usize) & (INDEX - 1);
    loop {
        // SAFETY: `i < INDEX`.
        let id = unsafe { *t.index.add(i) };
        if id == 0 {
            break;
        }
        // SAFETY: ids in the index are below n_stacks.
        let r = unsafe { &*t.stacks.add(id as usize) };
        if r.hash == h && r.len as usize == frames.len() {
            // SAFETY: the record's frames lie within the pool.
            let stored = unsafe {
                core::slice::from_raw_parts(t.frames.add(r.start as usize), r.len as usize)
            };
            if stored == frames {
                return id;
            }
        }
        i = (i + 1) & (INDEX - 1);
    }
    // New: room for it, its frames, and an index at most half full.
    if t.n_stacks as usize >= STACKS.min(INDEX / 2) || t.n_frames + frames.len() > FRAMES {
        return 0;
    }
    let id = t.n_stacks;
    // SAFETY: within the pool (checked above); the record is below STACKS.
    unsafe {
        core::ptr::copy_nonoverlapping(frames.as_ptr(), t.frames.add(t.n_frames), frames.len());
        *t.stacks.add(id as usize) = StackRec {
            hash: h,
            start: t.n_frames as u32,
            len: frames.len() as u32,
            ..StackRec::default()
        };
        *t.index.add(i) = id;
    }
    t.n_frames += frames.len();
    t.n_stacks += 1;
    id
}

/// Records a sample of the block at `addr` with stack `frames` and weights `objects`, `bytes`.
pub fn insert(addr: usize, frames: &[usize], objects: f64, bytes: f64) {
    lock();
    // SAFETY: under the lock (PT1); `map` succeeded (profiling runs only then).
    unsafe {
        let t = &mut *T.0.get();
        let id = stack_id(t, frames);
        let r = &mut *t.stacks.add(id as usize);
        r.alloc_objects += objects;
        r.alloc_bytes += bytes;
        if t.live >= (t.mask + 1) / 8 * 7 && t.mask + 1 < SLOTS {
            grow(t);
        }
        if t.live >= (t.mask + 1) / 8 * 7 {
            DROPPED.fetch_add(1, Relaxed);
        } else {
            let mut i = slot_of(addr, t.mask);
            loop {
                let s = &mut *t.samples.add(i);
                if s.addr == 0 || s.addr == addr {
                    if s.addr == 0 {
                        t.live += 1;
                        filter(addr).fetch_add(1, Relaxed);
                        granule(addr).fetch_add(1, Relaxed);
                    } else {
                        // A block freed without our seeing it (cannot happen through the
                        // allocator's paths): its old sample goes.
                        let old = &mut *t.stacks.add(s.stack as usize);
                        old.live_objects -= s.objects;
                        old.live_bytes -= s.bytes;
                    }
                    *s = Sample {
                        addr,
                        stack: id,
                        objects,
                        bytes,
                    };
                    r.live_objects += objects;
                    r.live_bytes += bytes;
                    break;
                }
                i = (i + 1) & t.mask;
            }
        }
    }
    unlock();
}

/// Drops the sample of the block at `addr`, if it has one: the filter's look inline (PT2),
/// the rest out of line.
#[inline(always)]
pub fn remove(addr: usize) {
    if maybe_sampled(addr) {
        remove_locked(addr);
    }
}

/// [`remove`] for an address the filter says may be sampled.
#[cold]
#[inline(never)]
fn remove_locked(addr: usize) {
    lock();
    // SAFETY: under the lock (PT1); the filter is published, so `map` succeeded.
    unsafe {
        let t = &mut *T.0.get();
        let mask = t.mask;
        let mut i = slot_of(addr, mask);
        loop {
            let s = *t.samples.add(i);
            if s.addr == 0 {
                break;
            }
            if s.addr == addr {
                let r = &mut *t.stacks.add(s.stack as usize);
                r.live_objects -= s.objects;
                r.live_bytes -= s.bytes;
                filter(addr).fetch_sub(1, Relaxed);
                granule(addr).fetch_sub(1, Relaxed);
                t.live -= 1;
                // Backward-shift deletion: no tombstones, probes stay short.
                let mut hole = i;
                let mut j = (i + 1) & mask;
                loop {
                    let n = *t.samples.add(j);
                    if n.addr == 0 {
                        break;
                    }
                    let home = slot_of(n.addr, mask);
                    // `n` may move to the hole when its home is not within (hole, j].
                    let dist_hole = hole.wrapping_sub(home) & mask;
                    let dist_j = j.wrapping_sub(home) & mask;
                    if dist_hole <= dist_j {
                        *t.samples.add(hole) = n;
                        hole = j;
                    }
                    j = (j + 1) & mask;
                }
                (*t.samples.add(hole)).addr = 0;
                break;
            }
            i = (i + 1) & mask;
        }
    }
    unlock();
}

/// For a fork's child: no live sample, every counter zero (the stacks stay, PT3). The caller
/// holds the lock.
pub fn clear_locked() {
    // SAFETY: the caller holds the lock (PT1).
    unsafe {
        let t = &mut *T.0.get();
        if t.samples.is_null() {
            return;
        }
        let s = sizes();
        libc::madvise(t.samples.cast(), s[0], libc::MADV_DONTNEED);
        libc::madvise(t.spare.cast(), s[5], libc::MADV_DONTNEED);
        let f = FILTER_P.load(Acquire);
        libc::madvise(f.cast(), s[1], libc::MADV_DONTNEED);
        // Written only where non-zero: the pages no sample touched stay untouched.
        for g in &SLAB_FILTER {
            if g.load(Relaxed) != 0 {
                g.store(0, Relaxed);
            }
        }
        for id in 0..t.n_stacks as usize {
            let r = &mut *t.stacks.add(id);
            r.live_objects = 0.0;
            r.live_bytes = 0.0;
            r.alloc_objects = 0.0;
            r.alloc_bytes = 0.0;
        }
        t.live = 0;
    }
}

/// The counts a snapshot needs room for: (stacks, frames, live samples).
pub fn counts() -> (usize, usize, usize) {
    lock();
    // SAFETY: under the lock.
    let c = unsafe {
        let t = &*T.0.get();
        (t.n_stacks as usize, t.n_frames, t.live)
    };
    unlock();
    c
}

/// Copies every stack (records and frames) into `recs` and `frames`, when their capacity holds
/// them; false (nothing copied) otherwise. Pushes within capacity: nothing allocates under the
/// lock (PT1).
pub fn copy_into(recs: &mut Vec<StackRec>, frames: &mut Vec<usize>) -> bool {
    lock();
    // SAFETY: under the lock.
    let ok = unsafe {
        let t = &*T.0.get();
        let fits = recs.capacity() - recs.len() >= t.n_stacks as usize
            && frames.capacity() - frames.len() >= t.n_frames;
        if fits {
            for id in 0..t.n_stacks as usize {
                recs.push(*t.stacks.add(id));
            }
            for k in 0..t.n_frames {
                frames.push(*t.frames.add(k));
            }
        }
        fits
    };
    unlock();
    ok
}

impl StackRec {
    /// This stack's frames within the pool copied by [`copy_into`].
    pub fn frames<'a>(&self, pool: &'a [usize]) -> &'a [usize] {
        &pool[self.start as usize..(self.start + self.len) as usize]
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn live_and_slots() -> (usize, usize) {
        lock();
        // SAFETY: under the lock.
        let c = unsafe {
            let t = &*T.0.get();
            (t.live, t.mask + 1)
        };
        unlock();
        c
    }

    fn stack_live() -> f64 {
        let (n, f, _) = counts();
        let (mut recs, mut frames) = (Vec::with_capacity(n), Vec::with_capacity(f));
        assert!(copy_into(&mut recs, &mut frames));
        recs.iter().map(|r| r.live_objects).sum()
    }

    /// PT5: the address table starts small, doubles as samples come (keeping every one: each
    /// is found and removed again), and holds them at most 7/8 full.
    #[test]
    fn the_address_table_grows_and_keeps_every_sample() {
        assert!(map());
        assert_eq!(live_and_slots(), (0, SLOTS_FIRST));
        // Addresses spread like blocks' (48 bytes apart, over several slabs).
        let addr = |k: usize| 0x7000_0000_0000usize + k * 48;
        let n = 20_000;
        for k in 0..n {
            insert(addr(k), &[1, 2, 3], 1.0, 48.0);
        }
        let (live, slots) = live_and_slots();
        assert_eq!(live, n);
        assert_eq!(slots, 32_768, "grown three times, at most 7/8 full");
        assert_eq!(stack_live(), n as f64);
        assert_eq!(dropped(), 0);
        for k in (0..n).step_by(2) {
            assert!(maybe_sampled(addr(k)));
            remove(addr(k));
        }
        remove(addr(n) + 16);
        assert_eq!(live_and_slots(), (n / 2, 32_768));
        for k in (1..n).step_by(2) {
            remove(addr(k));
        }
        assert_eq!(live_and_slots().0, 0);
        assert_eq!(stack_live(), 0.0);
        assert!(
            (0..n).all(|k| !maybe_sampled(addr(k))),
            "the filter is back to zero"
        );
    }
}
