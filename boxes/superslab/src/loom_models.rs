//! Loom models of this box's lock-free protocols. Each runs the box's real code; `HeapOs` stands
//! in for mmap. Run: `RUSTFLAGS="--cfg loom" cargo test -p hakmem-superslab --release`.
extern crate std;
use super::*;
use loom::sync::Arc;
use std::boxed::Box;
use std::vec::Vec;

struct World {
    os: HeapOs,
    registry: Registry,
    stats: GlobalStats,
    list: AbandonedList,
}

impl World {
    fn new() -> Arc<Self> {
        let os = HeapOs::new(2);
        let registry = os.registry();
        Arc::new(World {
            os,
            registry,
            stats: GlobalStats::new(),
            list: AbandonedList::new(),
        })
    }
    fn env(&self) -> Env<'_> {
        Env {
            os: &self.os,
            registry: &self.registry,
            stats: &self.stats,
        }
    }
    /// Retires and unmaps `ss`, as the allocator does with a superslab whose last reference
    /// it dropped.
    fn release(&self, ss: &Superslab) {
        // SAFETY: the caller got `true` from `unpin` (or `free_remote`).
        unsafe {
            let region = ss.retire(&self.env());
            self.os.unmap(region, SS_SIZE, &self.stats);
        }
    }
}

/// A superslab owned by heap 1 with one slab of 16-byte blocks and `n` blocks handed out.
fn superslab_with_blocks(w: &World, n: u32) -> (&'static Superslab, Vec<usize>) {
    let ss = Superslab::create(&w.env(), 1).expect("arena has room");
    let mut blocks = Vec::new();
    // SAFETY: this thread is heap 1, the owner.
    unsafe {
        let slab = ss.alloc_slab(0, 16).unwrap();
        slab.alloc_batch(n, |b| blocks.push(b as usize));
    }
    // SAFETY: the superslab lives in the World's arena for the whole model iteration.
    (unsafe { &*(ss as *const Superslab) }, blocks)
}

/// Model 1, the remote-free stack (SS6): two threads push blocks while the owner drains
/// concurrently; every block comes back exactly once, none is lost, and each take's count is
/// its chain's length.
#[test]
fn remote_stack() {
    loom::model(|| {
        let stack = Arc::new(RemoteStack::new());
        let blocks: Vec<usize> = (0..3)
            .map(|_| Box::into_raw(Box::new([0usize; 2])) as usize)
            .collect();
        let pushers: Vec<_> = [vec_of(&blocks[..2]), vec_of(&blocks[2..])]
            .into_iter()
            .map(|mine| {
                let stack = stack.clone();
                loom::thread::spawn(move || {
                    for b in mine {
                        // SAFETY: each block is pushed once, by the thread that holds it.
                        unsafe { stack.push(b as *mut u8) };
                    }
                })
            })
            .collect();
        let mut got = Vec::new();
        // The owner lets the pushers start, then takes while they may be mid-push.
        loom::thread::yield_now();
        take_chain(stack.take_all(), &mut got);
        for p in pushers {
            p.join().unwrap();
        }
        take_chain(stack.take_all(), &mut got);
        got.sort_unstable();
        let mut want = blocks.clone();
        want.sort_unstable();
        assert_eq!(got, want, "every block exactly once");
        for b in blocks {
            // SAFETY: allocated above as Box<[usize; 2]>.
            drop(unsafe { Box::from_raw(b as *mut [usize; 2]) });
        }
    });
}

fn vec_of(s: &[usize]) -> Vec<usize> {
    s.to_vec()
}

/// Collects a taken chain's blocks, checking that its count is its length (SS6).
fn take_chain(taken: Taken, out: &mut Vec<usize>) {
    let (mut b, mut n) = (taken.head, 0);
    while !b.is_null() {
        out.push(b as usize);
        n += 1;
        // SAFETY: blocks on a taken chain are linked through their first word.
        b = unsafe { crate::link_key().next(b) };
    }
    assert_eq!(n, taken.count, "the count taken with a chain is its length");
}

/// Model 2, refcount pinning against release (SS3, SS4): the owner abandons a superslab with
/// two blocks out; two threads free one block each, and each freer pins before it pushes, then
/// tries to collect. The superslab is released exactly once, by whoever dropped the last
/// reference, never while pinned and never while a block is out; nobody touches it after.
#[test]
fn refcount() {
    loom::model(|| {
        let w = World::new();
        let (ss, blocks) = superslab_with_blocks(&w, 2);
        // SAFETY: heap 1 owns it and "exits" now; two blocks are out, so it is listed.
        assert_eq!(unsafe { ss.abandon(&w.list, &w.stats) }, Ok(false));
        let freers: Vec<_> = blocks
            .into_iter()
            .map(|b| {
                let w = w.clone();
                loom::thread::spawn(move || {
                    let slab = ss.slab_of(b as *const u8);
                    // SAFETY: this thread holds `b` and gives it up.
                    let last =
                        unsafe { ss.free_remote(slab, b as *mut u8, &w.list, &w.stats) }.unwrap();
                    if last {
                        w.release(ss);
                    }
                    last
                })
            })
            .collect();
        let releases = freers
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|&x| x)
            .count();
        if releases != 1 {
            // SAFETY: every other thread has joined.
            let used = unsafe { ss.slabs[0].local().used };
            let free_len = unsafe { ss.slabs[0].local().free_len };
            panic!("released {releases} times; refcount {} listed {} used {used} free {free_len} remote_empty {}", ss.refcount(), w.list.len(), ss.slabs[0].remote.is_empty());
        }
        assert_eq!(w.os.unmaps(), 1);
        assert_eq!(w.registry.lookup(ss.base()), None);
    });
}

/// Model 3, abandon and adopt (SS7): the owner exits (abandons) while a thread frees its blocks
/// remotely and two threads try to adopt. The superslab is adopted by at most one thread, no
/// block is lost or reclaimed twice, and it is released at most once.
#[test]
fn abandon_adopt() {
    loom::model(|| {
        let w = World::new();
        let (ss, blocks) = superslab_with_blocks(&w, 2);
        let freer = {
            let w = w.clone();
            loom::thread::spawn(move || {
                let mut released = false;
                for b in blocks {
                    let slab = ss.slab_of(b as *const u8);
                    // SAFETY: this thread holds `b` and gives it up.
                    if unsafe { ss.free_remote(slab, b as *mut u8, &w.list, &w.stats) }.unwrap() {
                        w.release(ss);
                        released = true;
                    }
                }
                released
            })
        };
        let adopters: Vec<_> = [2usize, 3]
            .into_iter()
            .map(|id| {
                let w = w.clone();
                loom::thread::spawn(move || {
                    // SAFETY: `id` is this model thread's own.
                    let ss = unsafe { w.list.adopt(id) }?;
                    assert_eq!(ss.owner(), id);
                    // SAFETY: adopted: this thread owns it now.
                    let empty =
                        unsafe { ss.collect(|_, _| ()) }.expect("no block comes back twice");
                    // Empty: drop the owner's reference (a freer's pin may outlive it).
                    // SAFETY: the list's reference, handed over by adopt.
                    let released = empty && unsafe { ss.unpin() };
                    if released {
                        w.release(ss);
                    }
                    Some(empty)
                })
            })
            .collect();
        // SAFETY: this thread is heap 1, the owner, and exits now.
        let owner_released = unsafe { ss.abandon(&w.list, &w.stats) }.unwrap();
        if owner_released {
            w.release(ss);
        }
        freer.join().unwrap();
        let adopted: Vec<bool> = adopters
            .into_iter()
            .filter_map(|t| t.join().unwrap())
            .collect();
        assert!(adopted.len() <= 1, "adopted by exactly one thread");
        if w.os.unmaps() == 0 {
            // Still held: by the list, or by an adopter that collected before the last free.
            // Finish the job as its holder would, and account for every block.
            if adopted.is_empty() {
                assert!(
                    w.list.try_remove(ss),
                    "neither released nor adopted: still listed"
                );
            } else {
                assert!(
                    !adopted[0],
                    "an empty adopted superslab was released by someone"
                );
            }
            // SAFETY: all other threads joined; we hold it.
            let empty = unsafe { ss.collect(|_, _| ()) }.expect("no block comes back twice");
            assert!(empty, "no block lost: both came back");
            // SAFETY: the last reference, the model's own.
            assert!(unsafe { ss.unpin() });
            w.release(ss);
        }
        assert_eq!(w.os.unmaps(), 1, "released exactly once");
    });
}

/// Model 4, abandon against a racing remote free (SS7): the owner abandons its superslab while
/// another thread frees the one block still out. The owner's abandon drains and flags each
/// remote stack in one swap, so the free either lands before (and abandon finds the superslab
/// empty) or sees the flag in its CAS (and pins and collects it). Either way the superslab is
/// released exactly once, by one of the two: the block is never stranded on an abandoned
/// superslab's stack.
#[test]
fn abandon_vs_remote_free() {
    loom::model(|| {
        let w = World::new();
        let (ss, blocks) = superslab_with_blocks(&w, 1);
        let b = blocks[0];
        let freer = {
            let w = w.clone();
            loom::thread::spawn(move || {
                let slab = ss.slab_of(b as *const u8);
                // SAFETY: this thread holds `b` and gives it up.
                unsafe { ss.free_remote(slab, b as *mut u8, &w.list, &w.stats) }.unwrap()
            })
        };
        // SAFETY: this thread is heap 1, the owner, and exits now.
        let owner_released = unsafe { ss.abandon(&w.list, &w.stats) }.unwrap();
        if owner_released {
            w.release(ss);
        }
        let freer_released = freer.join().unwrap();
        if freer_released {
            w.release(ss);
        }
        assert!(
            owner_released ^ freer_released,
            "released by exactly one (owner {owner_released}, freer {freer_released}); \
             listed {}, block stranded on the stack: {}",
            w.list.len(),
            !ss.slabs[0].remote.is_empty()
        );
        assert_eq!(w.os.unmaps(), 1);
    });
}

/// Model 5, adoption by a freer (SS12) against adoption by an allocator and a remote free: heap
/// 1 has abandoned a superslab with two blocks out. Thread 3 holds one of them and frees it by
/// claiming the superslab (falling back to the remote free when the claim loses); thread 2
/// allocates, so it adopts; a third thread frees the other block remotely. At most one of the
/// claimer and the adopter takes the superslab, the winner owns it, no block is lost or comes
/// back twice, and it is released exactly once.
#[test]
fn claim_vs_adopt() {
    loom::model(|| {
        let w = World::new();
        let (ss, blocks) = superslab_with_blocks(&w, 2);
        // SAFETY: heap 1 owns it and "exits" now; two blocks are out, so it is listed.
        assert_eq!(unsafe { ss.abandon(&w.list, &w.stats) }, Ok(false));
        let (mine, theirs) = (blocks[0], blocks[1]);
        let claimer = {
            let w = w.clone();
            loom::thread::spawn(move || {
                let slab = ss.slab_of(mine as *const u8);
                // SAFETY: `3` is this model thread's own; its block keeps `ss` alive.
                if unsafe { w.list.claim(ss, 3) } {
                    assert_eq!((ss.owner(), slab.owner()), (3, 3), "the claimer owns it");
                    // SAFETY: claimed: this thread owns it now. Its block is out, so the
                    // drain cannot find it empty.
                    let empty = unsafe { ss.collect(|_, _| ()) }.expect("no block twice");
                    assert!(!empty, "the claimer's own block is still out");
                    // The owner's free: straight onto the slab's free list.
                    // SAFETY: ours, given up once.
                    unsafe { slab.free_local(mine as *mut u8) }.expect("no block twice");
                    return (true, false);
                }
                // SAFETY: this thread holds `mine` and gives it up.
                let last =
                    unsafe { ss.free_remote(slab, mine as *mut u8, &w.list, &w.stats) }.unwrap();
                if last {
                    w.release(ss);
                }
                (false, last)
            })
        };
        let adopter = {
            let w = w.clone();
            loom::thread::spawn(move || {
                // SAFETY: `2` is this model thread's own.
                let ss = unsafe { w.list.adopt(2) }?;
                assert_eq!(ss.owner(), 2);
                // SAFETY: adopted: this thread owns it now.
                let empty = unsafe { ss.collect(|_, _| ()) }.expect("no block twice");
                // Empty: drop the owner's reference (a freer's pin may outlive it).
                // SAFETY: the list's reference, handed over by adopt.
                let released = empty && unsafe { ss.unpin() };
                if released {
                    w.release(ss);
                }
                Some((empty, released))
            })
        };
        let freer = {
            let w = w.clone();
            loom::thread::spawn(move || {
                let slab = ss.slab_of(theirs as *const u8);
                // SAFETY: this thread holds `theirs` and gives it up.
                let last =
                    unsafe { ss.free_remote(slab, theirs as *mut u8, &w.list, &w.stats) }.unwrap();
                if last {
                    w.release(ss);
                }
                last
            })
        };
        let (claimed, claimer_released) = claimer.join().unwrap();
        let adopted = adopter.join().unwrap();
        let freer_released = freer.join().unwrap();
        assert!(
            !(claimed && adopted.is_some()),
            "taken by both the claimer and the adopter"
        );
        let released = [
            claimer_released,
            freer_released,
            adopted.is_some_and(|(_, r)| r),
        ];
        if w.os.unmaps() == 0 {
            // Still held: by the claimer, the adopter, or the list. Finish the job as its holder
            // would, and account for every block.
            if claimed {
                assert_eq!(ss.owner(), 3);
            } else if adopted.is_some() {
                assert_eq!(
                    adopted.map(|(empty, _)| empty),
                    Some(false),
                    "an empty adopted superslab stayed mapped"
                );
                assert_eq!(ss.owner(), 2);
            } else {
                assert!(w.list.try_remove(ss), "neither released nor taken: listed");
            }
            // SAFETY: all other threads joined; we hold it.
            let empty = unsafe { ss.collect(|_, _| ()) }.expect("no block twice");
            assert!(empty, "no block lost: both came back");
            // SAFETY: the last reference, the holder's.
            assert!(unsafe { ss.unpin() }, "no reference left over");
            w.release(ss);
        } else {
            assert!(!claimed, "a claimed superslab released under its claimer");
            assert_eq!(
                released.iter().filter(|&&r| r).count(),
                1,
                "released by exactly one: {released:?}"
            );
        }
        assert_eq!(w.os.unmaps(), 1, "released exactly once");
    });
}

/// Model 6, the remote hint (SS15): heap 1 owns a superslab with one block out in each of two
/// slabs; two threads free one block each remotely while the owner takes the hint and, when it
/// gets it, drains every in-use slab; once both freers are done, the owner does the same again.
/// A push that the first drain missed left the hint set, so the second take gets it: both
/// blocks come back to their slabs, each exactly once.
#[test]
fn remote_hint() {
    loom::model(|| {
        let w = World::new();
        let ss = Superslab::create(&w.env(), 1).expect("arena has room");
        // SAFETY: the superslab lives in the World's arena for the whole model iteration.
        let ss: &'static Superslab = unsafe { &*(ss as *const Superslab) };
        let mut blocks = Vec::new();
        // SAFETY (both): this thread is heap 1, the owner.
        for _ in 0..2 {
            let slab = unsafe { ss.alloc_slab(0, 16) }.unwrap();
            unsafe { slab.alloc_batch(1, |b| blocks.push(b as usize)) };
        }
        let freers: Vec<_> = blocks
            .iter()
            .map(|&b| {
                loom::thread::spawn(move || {
                    let slab = ss.slab_of(b as *const u8);
                    // SAFETY: this thread holds `b` and gives it up; the stack is not flagged.
                    assert!(unsafe { ss.try_free_remote(slab, b as *mut u8) });
                })
            })
            .collect();
        let drain = || {
            let mut n = 0;
            // SAFETY: this thread is the owner, and it drains every in-use slab after a take.
            unsafe {
                if ss.take_remote_hint() {
                    for slab in ss.slabs_in_use() {
                        n += slab.drain_remote().unwrap();
                    }
                }
            }
            n
        };
        let mut drained = drain();
        for f in freers {
            f.join().unwrap();
        }
        drained += drain();
        // SAFETY: the owner reads its own slabs.
        let back = unsafe { ss.slabs_in_use() }
            .filter(|s| unsafe { s.is_empty() })
            .count();
        assert_eq!(
            (drained, back),
            (2, 2),
            "both blocks drained once and both slabs empty; a block stranded on a stack: {}",
            ss.slabs.iter().any(|s| !s.remote.is_empty())
        );
    });
}
