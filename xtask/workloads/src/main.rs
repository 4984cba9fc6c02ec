//! `hakmem-workloads`: the benchmark workloads of `cargo xtask bench`.
//!
//! One binary is built per global allocator (cargo features `alloc-hakmem`,
//! `alloc-system`, `alloc-mimalloc`, `alloc-jemalloc`); `cargo xtask bench` runs each
//! workload in its own process and reads the one JSON line it prints on stdout:
//!
//! ```text
//! hakmem-workloads <workload> [--threads N] [--iters N] [--working-set W] [--arena A] [--quick]
//! hakmem-workloads list
//! ```
mod arena;
mod mem;
mod rng;
mod workloads;

use std::process::ExitCode;
use std::time::Instant;

#[cfg(feature = "alloc-hakmem")]
#[global_allocator]
static A: hakmem::HakMem = hakmem::HakMem;

#[cfg(all(feature = "alloc-mimalloc", not(feature = "alloc-hakmem")))]
#[global_allocator]
static A: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(
    feature = "alloc-jemalloc",
    not(any(feature = "alloc-hakmem", feature = "alloc-mimalloc"))
))]
#[global_allocator]
static A: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The allocator this binary was built with (printed so the caller can check it).
const ALLOCATOR: &str = if cfg!(feature = "alloc-hakmem") {
    "hakmem"
} else if cfg!(feature = "alloc-mimalloc") {
    "mimalloc"
} else if cfg!(feature = "alloc-jemalloc") {
    "jemalloc"
} else {
    "system"
};

/// Workload names, in the order the suite runs them.
const WORKLOADS: &[&str] = &[
    "tiny-hot",
    "tiny-pair",
    "random-mixed",
    "random-medium",
    "larson",
    "producer-consumer",
    "false-sharing",
    "thread-churn",
    "mixed-sizes",
    "realloc-growth",
    "fragmentation",
    "large-blocks",
    "producer-consumer-64b",
    "cross-thread-realloc",
    "churn",
    "tree",
    "map-grow-shrink",
];

/// The default amount of work: (full, quick). Units are per workload (see workloads.rs).
fn default_iters(name: &str) -> (u64, u64) {
    match name {
        "tiny-hot" => (120_000_000, 40_000_000),
        "tiny-pair" => (120_000_000, 40_000_000),
        "random-mixed" => (36_000_000, 12_000_000),
        "random-medium" => (3_000_000, 1_000_000),
        "larson" => (45_000_000, 15_000_000),
        "producer-consumer" => (12_000_000, 4_000_000),
        "false-sharing" => (1_500_000, 500_000),
        "thread-churn" => (4_500, 1_500),
        "mixed-sizes" => (300_000, 100_000),
        "realloc-growth" => (3, 1),
        // Bytes allocated in the first phase.
        "fragmentation" => (1 << 30, 256 << 20),
        "large-blocks" => (200, 60),
        "producer-consumer-64b" => (12_000_000, 4_000_000),
        "cross-thread-realloc" => (12_000_000, 4_000_000),
        // Rounds of threads.
        "churn" => (300, 100),
        // Nodes.
        "tree" => (1_000_000, 300_000),
        // Rounds of growing and shrinking.
        "map-grow-shrink" => (12, 4),
        _ => (0, 0),
    }
}

struct Opts {
    workload: String,
    threads: usize,
    iters: Option<u64>,
    working_set: usize,
    arena: arena::Arena,
    quick: bool,
}

fn parse() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let workload = args.next().ok_or("usage: hakmem-workloads <workload>|list [--threads N] [--iters N] [--working-set W] [--arena global|global-ref|heap|bump] [--quick]")?;
    let mut o = Opts {
        workload,
        threads: 1,
        iters: None,
        working_set: 400,
        arena: arena::Arena::Global,
        quick: false,
    };
    while let Some(a) = args.next() {
        let mut num = |what: &str| -> Result<u64, String> {
            let v = args.next().ok_or(format!("{what} needs a value"))?;
            v.parse::<u64>()
                .map_err(|e| format!("{what} {v}: {e}"))
                .and_then(|n| {
                    if n == 0 {
                        Err(format!("{what} must be at least 1"))
                    } else {
                        Ok(n)
                    }
                })
        };
        match a.as_str() {
            "--threads" => o.threads = num("--threads")? as usize,
            "--iters" => o.iters = Some(num("--iters")?),
            "--working-set" => o.working_set = num("--working-set")? as usize,
            "--arena" => {
                o.arena = arena::Arena::parse(&args.next().ok_or("--arena needs a value")?)?
            }
            "--quick" => o.quick = true,
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("hakmem-workloads: {e}");
            return ExitCode::from(2);
        }
    };
    if o.workload == "list" {
        for w in WORKLOADS {
            println!("{w}");
        }
        return ExitCode::SUCCESS;
    }
    if !WORKLOADS.contains(&o.workload.as_str()) {
        eprintln!(
            "hakmem-workloads: unknown workload {}; one of: {}",
            o.workload,
            WORKLOADS.join(", ")
        );
        return ExitCode::from(2);
    }
    let (full, quick) = default_iters(&o.workload);
    let iters = o.iters.unwrap_or(if o.quick { quick } else { full });
    let t = o.threads;
    let start = Instant::now();
    let out = match o.workload.as_str() {
        "tiny-hot" => workloads::tiny_hot(iters),
        "tiny-pair" => workloads::tiny_pair(iters),
        "random-mixed" => workloads::random_mixed(o.working_set, iters, t),
        "random-medium" => workloads::random_medium(iters),
        "larson" => workloads::larson(iters, t, o.quick),
        "producer-consumer" => workloads::producer_consumer(iters, t.div_ceil(2)),
        "false-sharing" => workloads::false_sharing(iters, t.max(2)),
        "thread-churn" => workloads::thread_churn(iters, t),
        "mixed-sizes" => workloads::mixed_sizes(iters, t),
        "realloc-growth" => workloads::realloc_growth(iters),
        "fragmentation" => workloads::fragmentation(iters as usize),
        "large-blocks" => workloads::large_blocks(iters),
        "producer-consumer-64b" => workloads::producer_consumer_64b(iters),
        "cross-thread-realloc" => workloads::cross_thread_realloc(iters, t),
        "churn" => workloads::churn(iters, t),
        "tree" => arena::tree(iters, o.arena),
        "map-grow-shrink" => arena::map_grow_shrink(iters, o.arena),
        _ => unreachable!("checked above"),
    };
    let secs = start.elapsed().as_secs_f64();
    let peak = mem::peak_rss_kib();
    let opt = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
    println!(
        "{{\"workload\":\"{}\",\"allocator\":\"{}\",\"threads\":{},\"iters\":{},\"ops\":{},\"secs\":{:.6},\"peak_rss_kib\":{},\"rss_after_free_kib\":{}}}",
        o.workload,
        ALLOCATOR,
        t,
        iters,
        out.ops,
        secs,
        opt(peak),
        opt(out.rss_after_free_kib)
    );
    ExitCode::SUCCESS
}
