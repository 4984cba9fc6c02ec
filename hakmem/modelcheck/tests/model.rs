//! The model check of the whole allocator: proptest generates cases (1 to 3 threads, a few hundred
//! alloc / alloc_zeroed / dealloc / realloc / hand-over / sync operations, sizes 1 B to 4 MiB skewed
//! small, alignments 1 B to 64 KiB) and [`hakmem_modelcheck::Driver`] runs them through
//! `std::alloc` against the reference model, with hakmem as the global allocator.
//!
//! This binary has no libtest harness (`harness = false` in Cargo.toml): the live-count check (MC6)
//! needs the process's heap to itself while a case runs, and libtest's own threads would allocate
//! behind its back. It prints a libtest-style result line so that runners count it.
//!
//! - `HAKMEM_MODEL_CASES=N`: the number of cases (default 256 in release, 32 in a debug build).
//! - `HAKMEM_MODEL_SEED=HEX`: the seed, 64 hex digits (32 bytes) or a decimal `u64`; `random` for a
//!   fresh one. The default is fixed, so every run checks the same cases. The seed is printed first;
//!   rerunning with it (and the same case count) replays the run, failure and shrinking included.
//! - `HAKMEM_MODEL_VERBOSE=1`: prints each case before running it (to find a case that crashes).
use hakmem_modelcheck::{Case, Driver, GlobalHeap, Op, MAX_THREADS};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use std::cell::Cell;
use std::time::Instant;

#[global_allocator]
static A: hakmem::HakMem = hakmem::HakMem;

/// The default seed: fixed, so that CI checks the same cases on every run.
const DEFAULT_SEED: u64 = 0x6861_6b6d_656d_0001;

/// Reruns of the minimal failing case, to tell a deterministic failure from an interleaving one.
const RERUNS: usize = 20;

/// Most operations in one case.
const MAX_OPS: usize = 200;

/// Sizes: most small, some medium, few large (up to 4 MiB).
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        70 => 1usize..=1024,
        20 => 1025usize..=64 << 10,
        8 => (64 << 10) + 1..=1usize << 20,
        2 => (1usize << 20) + 1..=4 << 20,
    ]
}

/// Alignments: powers of two from 1 B to 64 KiB, most at most 16.
fn align() -> impl Strategy<Value = usize> {
    prop_oneof![80 => 0u32..=4, 15 => 5u32..=12, 5 => 13u32..=16].prop_map(|s| 1usize << s)
}

fn op() -> impl Strategy<Value = Op> {
    let t = 0..MAX_THREADS as u8;
    prop_oneof![
        5 => (t.clone(), size(), align(), prop::bool::weighted(0.3))
            .prop_map(|(t, size, align, zeroed)| Op::Alloc { t, size, align, zeroed }),
        3 => (t.clone(), any::<u16>()).prop_map(|(t, pick)| Op::Free { t, pick }),
        2 => (t.clone(), any::<u16>(), size()).prop_map(|(t, pick, size)| Op::Realloc { t, pick, size }),
        1 => (t, any::<u16>(), any::<u8>()).prop_map(|(t, pick, to)| Op::Give { t, pick, to }),
        1 => Just(Op::Sync),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (1..=MAX_THREADS, prop::collection::vec(op(), 1..=MAX_OPS))
        .prop_map(|(threads, ops)| Case { threads, ops })
}

/// Parses `HAKMEM_MODEL_SEED` into 32 bytes.
fn seed() -> Result<[u8; 32], String> {
    let from_u64 = |x: u64| {
        let mut s = [0u8; 32];
        for (i, c) in s.chunks_mut(8).enumerate() {
            c.copy_from_slice(&(x ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes());
        }
        s
    };
    let v = match std::env::var("HAKMEM_MODEL_SEED") {
        Err(_) => return Ok(from_u64(DEFAULT_SEED)),
        Ok(v) => v.trim().to_owned(),
    };
    if v == "random" {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        return Ok(from_u64(h.finish()));
    }
    if v.len() == 64 {
        let mut s = [0u8; 32];
        for (i, b) in s.iter_mut().enumerate() {
            *b = u8::from_str_radix(&v[2 * i..2 * i + 2], 16)
                .map_err(|e| format!("HAKMEM_MODEL_SEED: {e}"))?;
        }
        return Ok(s);
    }
    v.parse::<u64>().map(from_u64).map_err(|_| {
        format!("HAKMEM_MODEL_SEED={v}: want 64 hex digits, a decimal u64 or `random`")
    })
}

fn hex(s: &[u8]) -> String {
    s.iter().map(|b| format!("{b:02x}")).collect()
}

fn main() {
    let started = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Behave enough like a libtest binary for `cargo test` and its filters.
    if args.iter().any(|a| a == "--list") {
        println!("model_check: test");
        return;
    }
    if let Some(filter) = args.iter().find(|a| !a.starts_with('-')) {
        if !"model_check".contains(filter.as_str()) {
            println!("\nrunning 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out; finished in 0.00s\n");
            return;
        }
    }
    let default_cases = if cfg!(debug_assertions) { 32 } else { 256 };
    let cases = match std::env::var("HAKMEM_MODEL_CASES") {
        Ok(v) => v.trim().parse::<u32>().unwrap_or_else(|_| {
            eprintln!("HAKMEM_MODEL_CASES={v}: not a number");
            std::process::exit(2)
        }),
        Err(_) => default_cases,
    };
    let seed = seed().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    println!("\nrunning 1 test");
    println!(
        "model check: {cases} cases, HAKMEM_MODEL_SEED={}",
        hex(&seed)
    );
    println!(
        "  replay: HAKMEM_MODEL_SEED={} HAKMEM_MODEL_CASES={cases} cargo test --release -p hakmem-modelcheck --test model",
        hex(&seed)
    );

    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    let driver = Driver::new(GlobalHeap);
    let verbose = std::env::var_os("HAKMEM_MODEL_VERBOSE").is_some();
    let ran = Cell::new(0u64);
    let ops = Cell::new(0u64);
    let result = runner.run(&case(), |case| {
        ran.set(ran.get() + 1);
        ops.set(ops.get() + case.ops.len() as u64);
        if verbose {
            println!("case {}: {case:?}", ran.get());
        }
        driver.run_case(&case).map_err(|f| TestCaseError::fail(f.0))
    });
    // A failure that depends on the threads' interleaving may not recur on every run of the same
    // case (and then proptest's shrinking stalls early): say how often the minimal case fails.
    let reruns = match &result {
        Err(TestError::Fail(_, case)) => {
            let failed = (0..RERUNS)
                .filter(|_| driver.run_case(case).is_err())
                .count();
            Some(failed)
        }
        _ => None,
    };
    drop(driver);
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(()) => {
            println!(
                "model check: {cases} cases passed ({} ops) with HAKMEM_MODEL_SEED={}",
                ops.get(),
                hex(&seed)
            );
            println!("test model_check ... ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in {secs:.2}s\n");
        }
        Err(e) => {
            match e {
                TestError::Fail(why, case) => {
                    println!("model check FAILED: {why}");
                    println!(
                        "minimal case ({} threads, {} ops):",
                        case.threads,
                        case.ops.len()
                    );
                    for op in &case.ops {
                        println!("  {op:?}");
                    }
                    if let Some(n) = reruns {
                        println!("the minimal case failed again in {n} of {RERUNS} reruns");
                    }
                }
                TestError::Abort(why) => println!("model check aborted: {why}"),
            }
            println!(
                "  seed: HAKMEM_MODEL_SEED={} HAKMEM_MODEL_CASES={cases}",
                hex(&seed)
            );
            println!("test model_check ... FAILED\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in {secs:.2}s\n");
            std::process::exit(101);
        }
    }
}
