//! The model check of `hakmem::Heap`: proptest generates cases of up to 150 operations on one
//! private heap (allocations of 1 B to 256 KiB skewed small, alignments 1 B to 64 KiB, frees,
//! resizes, frees by another thread through the global free, collects, resets and renewals)
//! and [`hakmem_modelcheck::run_heap_case`] runs each against the reference model (MC1 to MC4,
//! MC7 to MC9). The heap's own counts are checked, which no other thread changes, so this runs
//! under libtest's harness. `HAKMEM_MODEL_CASES=N` sets the number of cases (default 128 in
//! release, 16 in a debug build); the seed is fixed, so every run checks the same cases.
use hakmem_modelcheck::{run_heap_case, HeapOp};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

#[global_allocator]
static A: hakmem::HakMem = hakmem::HakMem;

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        75 => 1usize..=512,
        20 => 513usize..=64 << 10,
        5 => (64usize << 10) + 1..=256 << 10,
    ]
}

fn align() -> impl Strategy<Value = usize> {
    prop_oneof![85 => 0u32..=4, 12 => 5u32..=12, 3 => 13u32..=16].prop_map(|s| 1usize << s)
}

fn op() -> impl Strategy<Value = HeapOp> {
    prop_oneof![
        40 => (size(), align(), prop::bool::weighted(0.2))
            .prop_map(|(size, align, zeroed)| HeapOp::Alloc { size, align, zeroed }),
        20 => any::<u16>().prop_map(|pick| HeapOp::Free { pick }),
        10 => (any::<u16>(), size()).prop_map(|(pick, size)| HeapOp::Resize { pick, size }),
        6 => any::<u16>().prop_map(|pick| HeapOp::FreeElsewhere { pick }),
        2 => Just(HeapOp::Collect),
        1 => Just(HeapOp::Reset),
        1 => Just(HeapOp::Renew),
    ]
}

#[test]
fn heap_model_check() {
    let default_cases = if cfg!(debug_assertions) { 16 } else { 128 };
    let cases = std::env::var("HAKMEM_MODEL_CASES")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map_or(default_cases, |n| n.clamp(1, 4 * default_cases));
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 1024,
        ..Config::default()
    };
    let seed = [0x24u8; 32];
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    let result = runner.run(&prop::collection::vec(op(), 1..=150), |ops| {
        run_heap_case(&ops).map_err(|f| TestCaseError::fail(f.0))
    });
    if let Err(e) = result {
        panic!("heap model check failed: {e}");
    }
}
