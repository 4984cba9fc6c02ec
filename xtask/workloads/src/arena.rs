//! Workloads of collections in an arena (issue 24): the same code runs with the global
//! allocator (`--arena global`, or `global-ref` through a `&Global`, whose collections carry an
//! allocator word as an arena's do), in a `hakmem::Heap` dropped whole (`--arena heap`), or in
//! a `bumpalo::Bump` (`--arena bump`). Each prints its phases' times on stderr, as one line
//! `phases: {"build_secs":…,"use_secs":…,"drop_secs":…,"blocks":…}`; `main` times the whole.
use crate::rng::Rng;
use allocator_api2::alloc::{Allocator, Global};
use allocator_api2::boxed::Box;
use allocator_api2::vec::Vec;
use std::hint::black_box;
use std::time::Instant;

const SEED: u64 = 0x0061_7265_6e61; // "arena"

/// Where the collections allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arena {
    /// The global allocator; the collections are dropped node by node.
    Global,
    /// The global allocator through a reference (`&Global`), so that the collections carry
    /// an allocator word as they do with an arena: the same sizes as `Heap`'s and `Bump`'s.
    GlobalRef,
    /// A `hakmem::Heap`; the collections are forgotten and the heap dropped whole.
    Heap,
    /// A `bumpalo::Bump`; the collections are forgotten and the arena dropped whole.
    Bump,
}

impl Arena {
    pub fn parse(s: &str) -> Result<Arena, String> {
        match s {
            "global" => Ok(Arena::Global),
            "global-ref" => Ok(Arena::GlobalRef),
            "heap" => Ok(Arena::Heap),
            "bump" => Ok(Arena::Bump),
            _ => Err(format!(
                "--arena {s}: one of global, global-ref, heap, bump"
            )),
        }
    }
}

fn phases(build: f64, used: f64, drop: f64, blocks: u64) {
    eprintln!(
        "phases: {{\"build_secs\":{build:.6},\"use_secs\":{used:.6},\"drop_secs\":{drop:.6},\"blocks\":{blocks}}}"
    );
}

/// A tree node: a key, a payload vector of 16 to 256 bytes, and its children, boxed, in a
/// vector (its buffer another block when it has any).
struct Node<A: Allocator + Clone> {
    key: u64,
    payload: Vec<u8, A>,
    children: Vec<Box<Node<A>, A>, A>,
}

/// Builds a subtree of exactly `n` nodes; counts its blocks in `blocks`.
fn build<A: Allocator + Clone>(a: &A, rng: &mut Rng, n: usize, blocks: &mut u64) -> Node<A> {
    let len = rng.log_range(16, 256);
    let mut payload = Vec::with_capacity_in(len, a.clone());
    payload.resize(len, rng.next_u64() as u8);
    let mut rest = n - 1;
    let fanout = rest.min(rng.range(2, 6));
    let mut children = Vec::with_capacity_in(fanout, a.clone());
    *blocks += 1 + u64::from(fanout > 0);
    for i in 0..fanout {
        // The last child takes what is left; the others a random share.
        let m = if i + 1 == fanout {
            rest
        } else {
            1 + rng
                .below(rest - (fanout - i - 1))
                .min(2 * rest / (fanout - i))
        };
        rest -= m;
        children.push(Box::new_in(build(a, rng, m, blocks), a.clone()));
        *blocks += 1;
    }
    Node {
        key: rng.next_u64(),
        payload,
        children,
    }
}

/// Walks the tree: sums keys and payload bytes, and replaces a quarter of the payloads with
/// ones of other sizes (single frees and allocations in the arena).
fn walk<A: Allocator + Clone>(node: &mut Node<A>, a: &A, rng: &mut Rng) -> u64 {
    let mut sum = node.key ^ node.payload.iter().map(|&b| u64::from(b)).sum::<u64>();
    if rng.below(4) == 0 {
        let len = rng.log_range(16, 256);
        let mut p = Vec::with_capacity_in(len, a.clone());
        p.resize(len, sum as u8);
        node.payload = p;
    }
    for c in node.children.iter_mut() {
        sum = sum.wrapping_add(walk(c, a, rng));
    }
    sum
}

/// tree: builds a tree of `nodes` nodes (about 2.5 blocks each, 16 to 256 bytes: the nodes
/// themselves, their payload vectors and their children's vectors), walks it twice (a
/// quarter of the payloads replaced each time), then drops it: node by node with the global
/// allocator, whole with an arena. ops = nodes.
pub fn tree(nodes: u64, arena: Arena) -> crate::workloads::Outcome {
    fn run<A: Allocator + Clone>(a: &A, nodes: usize) -> (Node<A>, f64, f64, u64) {
        let mut rng = Rng::new(SEED, 1);
        let mut blocks = 0;
        let t = Instant::now();
        let mut root = build(a, &mut rng, nodes, &mut blocks);
        let built = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..2 {
            black_box(walk(&mut root, a, &mut rng));
        }
        (root, built, t.elapsed().as_secs_f64(), blocks)
    }
    let n = nodes as usize;
    match arena {
        Arena::Global => {
            let (root, b, u, blocks) = run(&Global, n);
            let t = Instant::now();
            drop(black_box(root));
            phases(b, u, t.elapsed().as_secs_f64(), blocks);
        }
        Arena::GlobalRef => {
            let (root, b, u, blocks) = run(&&Global, n);
            let t = Instant::now();
            drop(black_box(root));
            phases(b, u, t.elapsed().as_secs_f64(), blocks);
        }
        Arena::Heap => {
            let heap = hakmem::Heap::new();
            let (root, b, u, blocks) = run(&&heap, n);
            let t = Instant::now();
            core::mem::forget(black_box(root));
            drop(heap);
            phases(b, u, t.elapsed().as_secs_f64(), blocks);
        }
        Arena::Bump => {
            let bump = bumpalo::Bump::new();
            let (root, b, u, blocks) = run(&&bump, n);
            let t = Instant::now();
            core::mem::forget(black_box(root));
            drop(bump);
            phases(b, u, t.elapsed().as_secs_f64(), blocks);
        }
    }
    nodes.into()
}

/// map-grow-shrink: a hash map of 8-byte keys to vectors of 16 to 256 bytes grows to 200,000
/// entries and shrinks to 20,000, `rounds` times (the removed entries' memory is what a
/// reusing allocator takes back for the next growth; an arena that never reuses grows by
/// every round's insertions), then is dropped, and its arena. ops = insertions and removals.
pub fn map_grow_shrink(rounds: u64, arena: Arena) -> crate::workloads::Outcome {
    type Map<A> = hashbrown::HashMap<u64, Vec<u8, A>, hashbrown::DefaultHashBuilder, A>;
    fn run<A: Allocator + Clone>(a: &A, rounds: u64) -> (Map<A>, u64, f64) {
        const HIGH: usize = 200_000;
        const LOW: usize = 20_000;
        let mut rng = Rng::new(SEED, 2);
        let mut map = hashbrown::HashMap::with_hasher_in(Default::default(), a.clone());
        let mut keys: std::vec::Vec<u64> = std::vec::Vec::with_capacity(HIGH);
        let mut ops = 0;
        let t = Instant::now();
        for _ in 0..rounds {
            while map.len() < HIGH {
                let k = rng.next_u64();
                let len = rng.log_range(16, 256);
                let mut v = Vec::with_capacity_in(len, a.clone());
                v.resize(len, k as u8);
                map.insert(k, v);
                keys.push(k);
                ops += 1;
            }
            rng.shuffle(&mut keys);
            while map.len() > LOW {
                let k = keys.pop().expect("a key per entry");
                black_box(map.remove(&k));
                ops += 1;
            }
            map.shrink_to_fit();
        }
        (map, ops, t.elapsed().as_secs_f64())
    }
    // The map is dropped as it is in every case (the peak is what this entry measures), then
    // its arena.
    let ops = match arena {
        Arena::Global => run(&Global, rounds).1,
        Arena::GlobalRef => run(&&Global, rounds).1,
        Arena::Heap => {
            let heap = hakmem::Heap::new();
            let (map, ops, _) = run(&&heap, rounds);
            drop(map);
            drop(heap);
            ops
        }
        Arena::Bump => {
            let bump = bumpalo::Bump::new();
            let (map, ops, _) = run(&&bump, rounds);
            drop(map);
            drop(bump);
            ops
        }
    };
    ops.into()
}
