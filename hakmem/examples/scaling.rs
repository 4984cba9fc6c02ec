//! Measures what hakmem's shared structures cost as threads multiply: how often each shared lock
//! is taken per million allocator operations, how often a taker finds it held, how often a
//! remote free's CAS is retried, and how often the registry is written. hakmem is the global
//! allocator, so every allocation below (the workloads' own and std's) goes through it.
//!
//! ```sh
//! cargo run --release -p hakmem --example scaling -- [--threads 2,16,64]
//!     [--workload churn,prodcons,larson,large] [--ops N]
//! ```
//!
//! The workloads (each does about `--ops` allocator operations in all, split among the threads):
//! - `churn`: short-lived threads. Rounds of `threads` threads; each allocates blocks of mixed
//!   sizes, frees most, and hands the rest to a thread of the next round, which frees them
//!   (blocks of a thread that has exited: abandoned superslabs).
//! - `prodcons`: `threads / 2` producer/consumer pairs; producers allocate 64 B blocks in
//!   batches, consumers free them (every free is a remote free).
//! - `larson`: each thread keeps 1000 blocks of 16..1024 B and replaces random ones; after a
//!   while it hands its blocks to a successor thread and exits, server-style (larson).
//! - `large`: each thread allocates blocks of 128 KiB..8 MiB (the large tier), writes a byte per
//!   page, and keeps two live (it does `--ops / 200` operations: page faults dominate).
//!
//! This is a measurement tool, run by hand: the times it prints are for information only (on an
//! oversubscribed machine they mostly measure the scheduler); the counts are what
//! `docs/results/` records (`2026-11-28-scaling.md`).
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use hakmem::Event;

#[global_allocator]
static A: hakmem::HakMem = hakmem::HakMem;

/// A small, fast, deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A block of `size` bytes, its first byte written.
fn block(size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size);
    v.push(1);
    v
}

fn churn(threads: usize, ops: usize) {
    const ROUNDS: usize = 20;
    // Each thread: `per` allocations and as many frees (its own, and its predecessor's).
    let per = (ops / (2 * threads * ROUNDS)).max(16);
    let mut inherited: Vec<Vec<Vec<u8>>> = (0..threads).map(|_| Vec::new()).collect();
    for round in 0..ROUNDS {
        let handles: Vec<_> = inherited
            .drain(..)
            .enumerate()
            .map(|(t, old)| {
                thread::spawn(move || {
                    drop(old); // frees blocks of a thread that has exited
                    let mut rng = Rng::new((round * 1000 + t) as u64);
                    let mut kept = Vec::with_capacity(per / 4 + 1);
                    let mut live = Vec::with_capacity(64);
                    for i in 0..per {
                        live.push(block(16 + rng.below(500)));
                        if live.len() == 64 {
                            live.clear();
                        }
                        if i % 4 == 0 {
                            kept.push(block(16 + rng.below(500)));
                        }
                    }
                    kept
                })
            })
            .collect();
        inherited = handles.into_iter().map(|h| h.join().unwrap()).collect();
    }
}

fn prodcons(threads: usize, ops: usize) {
    const BATCH: usize = 256;
    let pairs = (threads / 2).max(1);
    let batches = (ops / (2 * pairs * BATCH)).max(1);
    let mut handles = Vec::new();
    for _ in 0..pairs {
        let (tx, rx) = mpsc::sync_channel::<Vec<Vec<u8>>>(16);
        handles.push(thread::spawn(move || {
            for _ in 0..batches {
                let batch: Vec<Vec<u8>> = (0..BATCH).map(|_| block(64)).collect();
                tx.send(batch).unwrap();
            }
        }));
        handles.push(thread::spawn(move || {
            for batch in rx {
                drop(batch); // every block is another thread's
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
}

fn larson(threads: usize, ops: usize) {
    const SLOTS: usize = 1000;
    const GENERATIONS: usize = 10;
    // Each generation of each thread replaces `per` blocks (a free and an allocation each).
    let per = (ops / (2 * threads * GENERATIONS)).max(SLOTS);
    /// A thread that has handed its blocks to its successor, and the successor's handle.
    struct Next(Option<thread::JoinHandle<Next>>);
    fn generation(mut slots: Vec<Vec<u8>>, seed: u64, per: usize, left: usize) -> Next {
        let mut rng = Rng::new(seed);
        for _ in 0..per {
            let i = rng.below(SLOTS);
            slots[i] = block(16 + rng.below(1008));
        }
        // The successor inherits every block and frees them as it replaces them; this thread
        // exits meanwhile, so its superslabs are abandoned while their blocks are out.
        Next((left > 0).then(|| thread::spawn(move || generation(slots, seed + 1, per, left - 1))))
    }
    let mut handles: Vec<_> = (0..threads)
        .map(|t| {
            Some(thread::spawn(move || {
                let mut rng = Rng::new(t as u64);
                let slots = (0..SLOTS).map(|_| block(16 + rng.below(1008))).collect();
                generation(slots, t as u64 * 7919, per, GENERATIONS - 1)
            }))
        })
        .collect();
    for h in &mut handles {
        while let Some(j) = h.take() {
            *h = j.join().unwrap().0;
        }
    }
}

fn large(threads: usize, ops: usize) {
    // A large block costs page faults far more than allocator work: 1/200 of the operations.
    let per = (ops / (400 * threads)).max(8);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            thread::spawn(move || {
                let mut rng = Rng::new(t as u64 + 99);
                let mut live: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
                for i in 0..per {
                    let size = (128 << 10) + rng.below(8 << 20);
                    let mut v = Vec::<u8>::with_capacity(size);
                    for page in v.spare_capacity_mut().iter_mut().step_by(4096) {
                        page.write(1);
                    }
                    live[i % 2] = v;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// A workload: `(threads, operations)`.
type Workload = fn(usize, usize);

const WORKLOADS: [(&str, Workload); 4] = [
    ("churn", churn),
    ("prodcons", prodcons),
    ("larson", larson),
    ("large", large),
];

fn list(arg: &str) -> Vec<String> {
    arg.split(',').map(|s| s.trim().to_string()).collect()
}

fn main() {
    let mut threads = vec![2usize, 16, 64];
    let mut workloads: Vec<String> = WORKLOADS.iter().map(|w| w.0.to_string()).collect();
    let mut ops = 4_000_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--threads" => {
                threads = list(&v)
                    .iter()
                    .map(|s| s.parse().expect("--threads takes numbers"))
                    .collect()
            }
            "--workload" => workloads = list(&v),
            "--ops" => ops = v.parse().expect("--ops takes a number"),
            _ => {
                eprintln!(
                    "usage: scaling [--threads 2,16,64] \
                     [--workload churn,prodcons,larson,large] [--ops N]"
                );
                std::process::exit(2);
            }
        }
    }
    println!(
        "per million allocator operations (allocs + frees): lock acquisitions, the share \
         that found the lock held, the mean wait of those (us) and the longest wait so far (us); \
         remote frees; remote-push CAS retries; registry writes (regions published or withdrawn)"
    );
    println!(
        "{:<9} {:>3} {:>7} {:>6} | {:>29} {:>29} {:>29} | {:>8} {:>8} {:>7} | {:>6} {:>6}",
        "workload",
        "thr",
        "Mops",
        "secs",
        "heap list",
        "abandoned",
        "lru",
        "rfree",
        "retries",
        "regwr",
        "aband",
        "adopt"
    );
    for w in &workloads {
        let Some(&(name, run)) = WORKLOADS.iter().find(|x| x.0 == w) else {
            eprintln!("unknown workload {w}");
            std::process::exit(2);
        };
        for &t in &threads {
            // Stats first: taking them locks the heap list, which must not count.
            let s0 = hakmem::stats();
            let c0 = hakmem::internal::contention();
            let start = Instant::now();
            run(t, ops);
            let secs = start.elapsed().as_secs_f64();
            let c1 = hakmem::internal::contention();
            let s1 = hakmem::stats();
            let d = |e: Event| (s1.count(e) - s0.count(e)) as f64;
            let total = ((s1.total_allocs() + s1.total_frees())
                - (s0.total_allocs() + s0.total_frees())) as f64;
            let mops = total / 1e6;
            let per_m = |n: f64| n / mops;
            let mut locks = String::new();
            for i in 0..3 {
                let acq = c1[i].1.acquired - c0[i].1.acquired;
                let cont = c1[i].1.contended - c0[i].1.contended;
                let frac = if acq == 0 {
                    0.0
                } else {
                    100.0 * cont as f64 / acq as f64
                };
                // The mean wait of a contended take, in microseconds.
                let wait = if cont == 0 {
                    0.0
                } else {
                    (c1[i].1.waited_ns - c0[i].1.waited_ns) as f64 / cont as f64 / 1e3
                };
                // The longest wait since the process started (a maximum has no delta).
                let max = c1[i].1.max_wait_ns as f64 / 1e3;
                locks.push_str(&format!(
                    " {:>8.1} {:>5.1}% {:>6.1} {:>6.0}",
                    per_m(acq as f64),
                    frac,
                    wait,
                    max
                ));
            }
            let retries = (c1[3].1.contended - c0[3].1.contended) as f64;
            let regwr = d(Event::SsCreated)
                + d(Event::SsReused)
                + d(Event::SsCached)
                + d(Event::LargeAlloc)
                + d(Event::LargeFree);
            println!(
                "{:<9} {:>3} {:>7.2} {:>6.2} |{} | {:>8.0} {:>8.1} {:>7.1} | {:>6.0} {:>6.0}",
                name,
                t,
                mops,
                secs,
                locks,
                per_m(d(Event::RemoteFree)),
                per_m(retries),
                per_m(regwr),
                d(Event::Abandon),
                d(Event::Adopt)
            );
        }
    }
}
