//! The workloads. Each does a fixed amount of work (the same for every allocator, from the
//! same seeded PRNG) and returns how many operations it did; `main` times the call.
use crate::mem::{block, current_rss_kib, touch, touch_ends, touch_slice, Block, RawBlock};
use crate::rng::Rng;
use std::hint::black_box;
use std::mem::MaybeUninit;
use std::sync::{mpsc, Mutex};
use std::thread;

const SEED: u64 = 0x6861_6b6d_656d; // "hakmem"

/// What a workload reports besides the time.
#[derive(Default)]
pub struct Outcome {
    /// Operations done (the unit is per workload, see docs/BENCHMARKS.md).
    pub ops: u64,
    /// Resident set right after the big free (fragmentation only), KiB.
    pub rss_after_free_kib: Option<u64>,
}

impl From<u64> for Outcome {
    fn from(ops: u64) -> Self {
        Outcome {
            ops,
            rss_after_free_kib: None,
        }
    }
}

/// 1. tiny-hot: malloc and free of one 32-byte size with 8 blocks kept live in a ring, so
///    each iteration is exactly one malloc + one free, all on the allocator's fast path.
///    The loop is kept lean (a thin `Box<[u8; 32]>` whose first and last bytes are
///    written) so that callgrind's per-iteration count is mostly the allocator's.
///    ops = malloc+free pairs.
pub fn tiny_hot(iters: u64) -> Outcome {
    const LIVE: usize = 8;
    type Tiny = Box<[MaybeUninit<u8>; 32]>;
    let mut ring: [Tiny; LIVE] = std::array::from_fn(|_| Box::new([MaybeUninit::uninit(); 32]));
    for i in 0..iters {
        let mut b: Tiny = black_box(Box::new([MaybeUninit::uninit(); 32]));
        b[0].write(i as u8);
        b[31].write(i as u8);
        // The block that was in this slot is freed here.
        ring[i as usize % LIVE] = b;
    }
    black_box(&mut ring);
    iters.into()
}

/// The bare malloc+free pair, for instruction counts (the suite's callgrind step): each
/// iteration allocates one 32-byte block, passes it through `black_box`, and frees it, so a
/// differenced count is the allocator's pair plus a few loop instructions. ops = pairs.
pub fn tiny_pair(iters: u64) -> Outcome {
    let layout = std::alloc::Layout::from_size_align(32, 8).expect("a valid layout");
    for _ in 0..iters {
        // SAFETY: a non-zero size; the block is freed at once, with its layout.
        unsafe {
            let p = std::alloc::alloc(layout);
            if p.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            std::alloc::dealloc(black_box(p), layout);
        }
    }
    iters.into()
}

fn random_mixed_thread(ws: usize, iters: u64, stream: u64) -> u64 {
    random_replacement(ws, iters, stream, |rng| rng.range(16, 1024))
}

/// Random replacement in `ws` slots, sizes drawn by `size`: allocate the new block, touch it,
/// free the slot's old one. Returns the replacements.
fn random_replacement(ws: usize, iters: u64, stream: u64, size: fn(&mut Rng) -> usize) -> u64 {
    let mut rng = Rng::new(SEED, stream);
    let mut slots: Vec<Block> = (0..ws)
        .map(|_| {
            let mut b = block(size(&mut rng));
            touch(&mut b, 1);
            b
        })
        .collect();
    for i in 0..iters {
        let j = rng.below(ws);
        let mut b = block(size(&mut rng));
        touch(&mut b, i as u8);
        slots[j] = b;
    }
    black_box(&mut slots);
    iters
}

/// 2b. random-medium: random replacement in 400 slots, sizes log-uniform in 1 KiB..=1 MiB
///     (the small classes above 1 KiB, then whole pages), every block touched once per page,
///     on one thread. ops = replacements.
pub fn random_medium(iters: u64) -> Outcome {
    random_replacement(400, iters, 0, |rng| rng.log_range(1 << 10, 1 << 20)).into()
}

/// 2. random-mixed: random replacement in a working set of `ws` slots per thread, sizes
///    uniform in 16..=1024 bytes. `iters` is the total over all threads.
///    ops = replacements (one malloc + one free each).
pub fn random_mixed(ws: usize, iters: u64, threads: usize) -> Outcome {
    let per = iters / threads as u64;
    thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| s.spawn(move || random_mixed_thread(ws, per, t as u64)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("worker"))
            .sum::<u64>()
    })
    .into()
}

/// 3. larson: each of `threads` lanes owns 1000 slots of random sizes 8..=1000 bytes.
///    A round is one new thread doing random replacements in the lane's slots; when it
///    ends, the slots pass to a fresh thread for the next round, so most objects are freed
///    by a thread that did not allocate them (and that outlived its allocating thread).
///    ops = replacements.
pub fn larson(iters: u64, threads: usize, quick: bool) -> Outcome {
    const SLOTS: usize = 1000;
    let rounds: u64 = if quick { 20 } else { 40 };
    let per_round = (iters / threads as u64 / rounds).max(1);
    thread::scope(|s| {
        let lanes: Vec<_> = (0..threads)
            .map(|lane| {
                s.spawn(move || {
                    let mut rng = Rng::new(SEED, lane as u64);
                    let mut slots: Vec<Block> = (0..SLOTS)
                        .map(|_| {
                            let mut b = block(rng.range(8, 1000));
                            touch(&mut b, 1);
                            b
                        })
                        .collect();
                    let mut ops = 0;
                    for round in 0..rounds {
                        let stream = (lane as u64) << 32 | round;
                        let worker = thread::spawn(move || {
                            let mut rng = Rng::new(SEED, stream);
                            for i in 0..per_round {
                                let j = rng.below(SLOTS);
                                let mut b = block(rng.range(8, 1000));
                                touch(&mut b, i as u8);
                                slots[j] = b;
                            }
                            slots
                        });
                        slots = worker.join().expect("larson worker");
                        ops += per_round;
                    }
                    // The lane thread frees what the last worker left: one more handoff.
                    drop(slots);
                    ops
                })
            })
            .collect();
        lanes
            .into_iter()
            .map(|h| h.join().expect("lane"))
            .sum::<u64>()
    })
    .into()
}

/// 4. producer-consumer: `pairs` producer threads allocate blocks of 16..=512 bytes and
///    hand them, in batches of 256 through a channel, to their consumer thread, which
///    writes to each and frees it: every free is a remote free.
///    ops = blocks passed (one malloc + one remote free each).
pub fn producer_consumer(iters: u64, pairs: usize) -> Outcome {
    producer_consumer_sized(iters, pairs, (16, 512))
}

/// 4b. producer-consumer-64b (after xmalloc-test): one producer thread allocates 64-byte
///     blocks and passes them, in batches of 256, to one consumer thread that writes to each
///     and frees it. ops = blocks passed.
pub fn producer_consumer_64b(iters: u64) -> Outcome {
    producer_consumer_sized(iters, 1, (64, 64))
}

fn producer_consumer_sized(iters: u64, pairs: usize, (lo, hi): (usize, usize)) -> Outcome {
    const BATCH: usize = 256;
    const IN_FLIGHT: usize = 8;
    let per = iters / pairs as u64;
    thread::scope(|s| {
        let mut hs = Vec::new();
        for p in 0..pairs {
            let (full_tx, full_rx) = mpsc::sync_channel::<Vec<Block>>(IN_FLIGHT);
            let (empty_tx, empty_rx) = mpsc::sync_channel::<Vec<Block>>(IN_FLIGHT);
            for _ in 0..IN_FLIGHT {
                empty_tx
                    .send(Vec::with_capacity(BATCH))
                    .expect("empty batch");
            }
            hs.push(s.spawn(move || {
                let mut rng = Rng::new(SEED, p as u64);
                let mut done = 0;
                while done < per {
                    let mut batch = empty_rx.recv().expect("consumer alive");
                    let n = (per - done).min(BATCH as u64);
                    for i in 0..n {
                        let mut b = block(rng.range(lo, hi));
                        touch(&mut b, i as u8);
                        batch.push(b);
                    }
                    done += n;
                    full_tx.send(batch).expect("consumer alive");
                }
                done
            }));
            s.spawn(move || {
                for mut batch in full_rx {
                    for mut b in batch.drain(..) {
                        touch_ends(&mut b, 0xAA);
                        drop(black_box(b));
                    }
                    // The producer may already be gone after its last batch.
                    let _ = empty_tx.send(batch);
                }
            });
        }
        hs.into_iter()
            .map(|h| h.join().expect("producer"))
            .sum::<u64>()
    })
    .into()
}

/// 5. false-sharing probe (Hoard's cache-scratch): the main thread allocates one 8-byte
///    object per thread (likely neighbours in one cache line) and hands one to each
///    thread. Each thread frees it, then `iters / threads` times allocates an 8-byte
///    object, writes to it 1000 times and frees it. An allocator that hands the freed
///    neighbour back to the thread makes the threads' writes share cache lines.
///    ops = byte writes.
pub fn false_sharing(iters: u64, threads: usize) -> Outcome {
    const SIZE: usize = 8;
    const WRITES: u64 = 1000;
    let per = (iters / threads as u64).max(1);
    let seeds: Vec<Block> = (0..threads).map(|_| block(SIZE)).collect();
    thread::scope(|s| {
        let hs: Vec<_> = seeds
            .into_iter()
            .map(|first| {
                s.spawn(move || {
                    drop(first);
                    for i in 0..per {
                        let mut b = block(SIZE);
                        let p = b.as_mut_ptr().cast::<u8>();
                        for w in 0..WRITES {
                            // A volatile store through a pointer kept in a register: each write
                            // reaches the block's cache line, and nothing else is stored or
                            // reloaded per write (a `black_box` of the box here spilled it to the
                            // stack, and whether that reload aliased the block's address in its
                            // low 12 bits decided the throughput, by code layout).
                            // SAFETY: `p` points to the 8 bytes of `b`, live and not otherwise
                            // borrowed until the loop ends; `w % SIZE < SIZE`.
                            unsafe { p.add(w as usize % SIZE).write_volatile((i ^ w) as u8) };
                        }
                        black_box(&mut b);
                    }
                    per * WRITES
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("writer"))
            .sum::<u64>()
    })
    .into()
}

/// 6. thread churn: `iters` short-lived threads in total, `threads` at a time; each
///    allocates 500 blocks of 16..=1024 bytes, frees them in random order, and exits.
///    ops = mallocs (each with its free).
pub fn thread_churn(iters: u64, threads: usize) -> Outcome {
    const PER_THREAD: usize = 500;
    let total = iters.max(1);
    let mut started = 0u64;
    let mut ops = 0u64;
    while started < total {
        let wave = (total - started).min(threads as u64);
        ops += thread::scope(|s| {
            let hs: Vec<_> = (0..wave)
                .map(|k| {
                    let stream = started + k;
                    s.spawn(move || {
                        let mut rng = Rng::new(SEED, stream);
                        let mut v: Vec<Block> = (0..PER_THREAD)
                            .map(|i| {
                                let mut b = block(rng.range(16, 1024));
                                touch(&mut b, i as u8);
                                b
                            })
                            .collect();
                        rng.shuffle(&mut v);
                        drop(black_box(v));
                        PER_THREAD as u64
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("churn thread"))
                .sum::<u64>()
        });
        started += wave;
    }
    ops.into()
}

fn mixed_size(rng: &mut Rng) -> usize {
    let r = rng.below(100);
    if r < 80 {
        rng.range(16, 1024)
    } else if r < 97 {
        rng.log_range(1025, 64 << 10)
    } else {
        rng.log_range((64 << 10) + 1, 4 << 20)
    }
}

/// 7. mixed sizes: random replacement in 2000 slots per thread where 80% of the blocks
///    are small (16..=1024 B), 17% medium (1 KiB..64 KiB, log-uniform) and 3% large
///    (64 KiB..4 MiB, log-uniform). ops = replacements.
pub fn mixed_sizes(iters: u64, threads: usize) -> Outcome {
    const SLOTS: usize = 2000;
    let per = iters / threads as u64;
    thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut rng = Rng::new(SEED, t as u64);
                    let mut slots: Vec<Block> = (0..SLOTS)
                        .map(|_| {
                            let mut b = block(mixed_size(&mut rng));
                            touch(&mut b, 1);
                            b
                        })
                        .collect();
                    for i in 0..per {
                        let j = rng.below(SLOTS);
                        let mut b = block(mixed_size(&mut rng));
                        touch(&mut b, i as u8);
                        slots[j] = b;
                    }
                    black_box(&mut slots);
                    per
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("worker"))
            .sum::<u64>()
    })
    .into()
}

/// 8. realloc growth: three byte vectors grow side by side by doubling from 16 B to
///    64 MiB, with a small block allocated between steps so they cannot simply extend in
///    place; the new half is touched (a byte per page). `iters` rounds.
///    ops = reallocs.
pub fn realloc_growth(iters: u64) -> Outcome {
    const VECS: usize = 3;
    const MAX: usize = 64 << 20;
    let mut rng = Rng::new(SEED, 0);
    let mut ops = 0;
    for _ in 0..iters.max(1) {
        let mut vs: Vec<Vec<u8>> = (0..VECS).map(|_| Vec::with_capacity(16)).collect();
        let mut smalls: Vec<Block> = Vec::new();
        let mut cap = 16;
        while cap < MAX {
            for v in &mut vs {
                // len stays 0, so this asks for exactly twice the capacity: one realloc
                // of the whole old block.
                v.reserve_exact(cap * 2);
                touch_slice(&mut v.spare_capacity_mut()[cap..], 7);
                ops += 1;
                let mut b = block(rng.range(16, 256));
                touch(&mut b, 3);
                smalls.push(b);
            }
            cap *= 2;
        }
        black_box(&mut vs);
        black_box(&mut smalls);
    }
    ops.into()
}

/// 9. fragmentation: allocate `total` bytes (about 1 GiB) in log-uniform sizes
///    16 B..16 KiB, free 90% of the blocks in random order, read the resident set, then
///    allocate the freed amount again in sizes 32 B..32 KiB (which fit the old holes
///    less well). Peak RSS and RSS-after-free are the figures; ops = mallocs + frees.
pub fn fragmentation(total: usize) -> Outcome {
    let mut rng = Rng::new(SEED, 0);
    let mut live: Vec<Block> = Vec::new();
    let mut bytes = 0;
    while bytes < total {
        let mut b = block(rng.log_range(16, 16 << 10));
        bytes += b.len();
        touch(&mut b, 5);
        live.push(b);
    }
    let allocated = live.len();
    rng.shuffle(&mut live);
    let keep = allocated / 10;
    let mut freed_bytes = 0;
    for b in live.drain(keep..) {
        freed_bytes += b.len();
        drop(black_box(b));
    }
    let freed = allocated - keep;
    let rss_after_free_kib = current_rss_kib();
    let mut again = 0;
    let mut realloc_bytes = 0;
    while realloc_bytes < freed_bytes {
        let mut b = block(rng.log_range(32, 32 << 10));
        realloc_bytes += b.len();
        touch(&mut b, 9);
        live.push(b);
        again += 1;
    }
    black_box(&mut live);
    Outcome {
        ops: (allocated + freed + again) as u64,
        rss_after_free_kib,
    }
}

/// 10. large-blocks (after mimalloc-bench's malloc-large): 20 live blocks of 5..=25 MiB
///     (uniform), each written in full: each iteration frees a random slot's block, then
///     allocates a new one and fills all of it. ops = replacements.
pub fn large_blocks(iters: u64) -> Outcome {
    const LIVE: usize = 20;
    const LO: usize = 5 << 20;
    const HI: usize = 25 << 20;
    let fill = |b: &mut Block, v: u8| b.fill(MaybeUninit::new(v));
    let mut rng = Rng::new(SEED, 0);
    let mut slots: Vec<Block> = (0..LIVE)
        .map(|_| {
            let mut b = block(rng.range(LO, HI));
            fill(&mut b, 1);
            b
        })
        .collect();
    for i in 0..iters {
        let j = rng.below(LIVE);
        let n = rng.range(LO, HI);
        // Free the old block first (an empty boxed slice does not allocate), so the new one
        // can reuse its memory.
        slots[j] = Block::default();
        let mut b = block(n);
        fill(&mut b, i as u8 | 1);
        slots[j] = b;
    }
    black_box(&mut slots);
    iters.into()
}

/// Log-uniform in lo..=hi by integer steps, as the C lane's `log_range`: a uniform
/// power-of-two band, then uniform within it.
fn log2_range(rng: &mut Rng, lo: usize, hi: usize) -> usize {
    let (blo, bhi) = (lo.ilog2(), hi.ilog2());
    let b = blo + rng.below((bhi - blo + 1) as usize) as u32;
    let a = (1usize << b).max(lo);
    let z = ((2usize << b) - 1).min(hi);
    rng.range(a, z)
}

/// 11. cross-thread-realloc (after rptest): `threads` threads, each with 1000 slots, do
///     random operations: (11 in 16) free a slot's block and allocate a new one of
///     16..=8192 B (log-uniform), (4 in 16) realloc it to 16..=16384 B, and (1 in 16) hand
///     the block to a random other thread, which frees it when it next drains its mailbox
///     (every 64 operations), and allocate a new one. New and grown blocks are touched.
///     ops = operations.
pub fn cross_thread_realloc(iters: u64, threads: usize) -> Outcome {
    const SLOTS: usize = 1000;
    const MAILBOX: usize = 8192;
    let per = iters / threads as u64;
    let boxes: Vec<Mutex<Vec<RawBlock>>> = (0..threads)
        .map(|_| Mutex::new(Vec::with_capacity(MAILBOX)))
        .collect();
    let drain = |mine: &Mutex<Vec<RawBlock>>, local: &mut Vec<RawBlock>| {
        std::mem::swap(&mut *mine.lock().expect("mailbox"), local);
        local.clear();
    };
    thread::scope(|s| {
        let boxes = &boxes;
        for id in 0..threads {
            s.spawn(move || {
                let mut rng = Rng::new(SEED, id as u64);
                let mut local: Vec<RawBlock> = Vec::with_capacity(MAILBOX);
                let fresh = |rng: &mut Rng, v: u8| {
                    let mut b = RawBlock::new(log2_range(rng, 16, 8192));
                    touch_slice(b.bytes(), v);
                    b
                };
                let mut slots: Vec<RawBlock> = (0..SLOTS).map(|_| fresh(&mut rng, 1)).collect();
                for it in 0..per {
                    let j = rng.below(SLOTS);
                    let op = rng.below(16);
                    if op < 4 {
                        slots[j].realloc(log2_range(&mut rng, 16, 16384));
                        touch_slice(slots[j].bytes(), it as u8);
                        continue;
                    }
                    let to = (op == 4 && threads > 1).then(|| {
                        let to = rng.below(threads - 1);
                        if to >= id {
                            to + 1
                        } else {
                            to
                        }
                    });
                    let old = std::mem::replace(&mut slots[j], fresh(&mut rng, it as u8));
                    if let Some(to) = to {
                        let mut mb = boxes[to].lock().expect("mailbox");
                        if mb.len() < MAILBOX {
                            mb.push(old);
                        }
                        // (A full mailbox: `old` is freed here, after the lock.)
                    }
                    if it & 63 == 0 {
                        drain(&boxes[id], &mut local);
                    }
                }
                black_box(&mut slots);
            });
        }
    });
    for b in &boxes {
        b.lock().expect("mailbox").clear();
    }
    (per * threads as u64).into()
}

/// Blocks each churn thread allocates per round.
const CHURN_PER_THREAD: usize = 2000;
/// Slots of the churn's shared buffer.
const CHURN_SLOTS: usize = 4096;

/// A churn block's size: mostly small, some medium, a few large, as in mimalloc-bench's mstress.
fn churn_size(rng: &mut Rng) -> usize {
    let r = rng.below(100);
    if r < 85 {
        rng.range(16, 256)
    } else if r < 98 {
        rng.log_range(257, 16 << 10)
    } else {
        rng.log_range((16 << 10) + 1, 256 << 10)
    }
}

/// 15. churn (after mimalloc-bench's mstress): `iters` rounds; each round starts `threads`
///     threads and joins them, so threads come and go. Each thread allocates 2000 blocks of
///     mixed sizes (85% 16..=256 B, 13% up to 16 KiB, 2% up to 256 KiB), frees a random half,
///     then swaps each of the rest into a random slot of a buffer of 4096 slots shared by all
///     threads and rounds, freeing the block it takes out: objects pass between threads, and
///     what the buffer holds survives into later rounds. ops = mallocs (each freed once).
pub fn churn(iters: u64, threads: usize) -> Outcome {
    let buffer: Vec<Mutex<Option<Block>>> = (0..CHURN_SLOTS).map(|_| Mutex::new(None)).collect();
    let buffer = &buffer;
    for round in 0..iters {
        thread::scope(|s| {
            for t in 0..threads {
                s.spawn(move || {
                    let mut rng = Rng::new(SEED, round * threads as u64 + t as u64);
                    let mut mine: Vec<Block> = (0..CHURN_PER_THREAD)
                        .map(|i| {
                            let mut b = block(churn_size(&mut rng));
                            touch_ends(&mut b, i as u8);
                            b
                        })
                        .collect();
                    rng.shuffle(&mut mine);
                    mine.truncate(CHURN_PER_THREAD / 2);
                    for b in mine {
                        let slot = rng.below(CHURN_SLOTS);
                        let old = buffer[slot].lock().expect("slot").replace(b);
                        drop(black_box(old));
                    }
                });
            }
        });
    }
    black_box(buffer);
    (iters * threads as u64 * CHURN_PER_THREAD as u64).into()
}
