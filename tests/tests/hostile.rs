//! The hostile-input suite: bad pointers, double frees, address-space limits and allocations at
//! thread exit, each run on libhakmem.so in both modes (the default, which aborts, and
//! `HAKMEM_INVALID_FREE=warn`, which reports and goes on). For a bad call the suite checks the
//! exact message (hakmem's own, which names the pointer: glibc's messages differ), that it comes
//! exactly once, and how the process ended: `SIGABRT` by default; with `warn`, exit 0 after the
//! program checked that the allocator still works and hands out no block twice.
//!
//! The behaviour required here is the one `docs/PRELOAD.md` ("Bad input") documents.
//! Each test runs a family of cases and reports every failing case at once.
use hakmem_tests::{report_alloc_counts, run, Harness, OnBad, Outcome};
use std::os::unix::process::ExitStatusExt;

fn h() -> &'static Harness {
    Harness::get(env!("CARGO_TARGET_TMPDIR"))
}

const SIGABRT: i32 = 6;
const DOUBLE: &str = "hakmem: free(): double free detected ";

/// The report for a pointer `op` cannot accept.
fn invalid(op: &str) -> String {
    format!("hakmem: {op}(): invalid pointer ")
}

/// A run of one C program: its arguments and `HAKMEM_CHECK`.
struct Case {
    prog: &'static str,
    args: Vec<String>,
    check: bool,
}

impl Case {
    fn new(prog: &'static str, args: &[&str], check: bool) -> Self {
        Case {
            prog,
            args: args.iter().map(|a| a.to_string()).collect(),
            check,
        }
    }

    fn label(&self, mode: OnBad) -> String {
        format!(
            "{} {} (HAKMEM_CHECK={}, {mode:?})",
            self.prog,
            self.args.join(" "),
            u8::from(self.check)
        )
    }

    fn run(&self, mode: OnBad) -> Outcome {
        let h = h();
        let mut cmd = h.preloaded(h.c_program(self.prog));
        cmd.args(&self.args)
            .env("HAKMEM_CHECK", if self.check { "1" } else { "0" });
        run(mode.apply(&mut cmd))
    }
}

/// What hakmem must do with the pointer the program announced ("pointer 0x...").
enum Expect {
    /// Exactly one message, `<one of these prefixes><the pointer>`; then `SIGABRT` by default,
    /// and with `warn` the program goes on to its end.
    Report(Vec<String>),
    /// No message; the program runs to its end in both modes.
    Silent,
}

/// The address the program announced.
fn announced(out: &Outcome) -> Result<usize, String> {
    out.stdout_address("pointer ")
        .ok_or_else(|| "the program announced no pointer".to_string())
}

/// Checks one outcome against `expect` in `mode`.
fn judge(out: &Outcome, mode: OnBad, expect: &Expect) -> Result<(), String> {
    let ptr = announced(out)?;
    let said = out.hakmem_messages();
    match expect {
        Expect::Report(prefixes) => {
            let wanted: Vec<String> = prefixes.iter().map(|p| format!("{p}{ptr:#x}")).collect();
            if said.len() != 1 || !wanted.iter().any(|w| w == said[0]) {
                return Err(format!(
                    "wanted one of {wanted:?} once, hakmem said {said:?}"
                ));
            }
        }
        Expect::Silent => {
            if !said.is_empty() {
                return Err(format!("wanted no message, hakmem said {said:?}"));
            }
        }
    }
    let goes_on = mode == OnBad::Warn || matches!(expect, Expect::Silent);
    if goes_on {
        if out.status.code() != Some(0) || !out.stdout.contains("survived") {
            return Err(format!(
                "wanted the program to go on and exit 0, it ended with {}",
                out.status
            ));
        }
        if report_alloc_counts(&out.stderr).is_empty() {
            return Err("no HAKMEM_STATS report: hakmem did not serve the program".into());
        }
    } else if out.status.signal() != Some(SIGABRT) || out.stdout.contains("survived") {
        return Err(format!(
            "wanted SIGABRT, the program ended with {}",
            out.status
        ));
    }
    Ok(())
}

/// The last lines of a text, for a failure summary.
fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n    ")
}

/// Runs every case in both modes (and `more` on each outcome), then fails listing every case
/// that went wrong.
fn check_all(cases: Vec<(Case, Expect)>, more: impl Fn(&Case, &Outcome) -> Result<(), String>) {
    let mut failures = Vec::new();
    let mut runs = 0;
    for (case, expect) in &cases {
        for mode in OnBad::BOTH {
            let out = case.run(mode);
            runs += 1;
            if let Err(why) = judge(&out, mode, expect).and_then(|()| more(case, &out)) {
                failures.push(format!(
                    "{}: {why}\n    ended with {}\n    stdout: {}\n    stderr: {}",
                    case.label(mode),
                    out.status,
                    last_lines(&out.stdout, 3),
                    last_lines(&out.stderr, 4)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {runs} runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn nothing_more(_: &Case, _: &Outcome) -> Result<(), String> {
    Ok(())
}

/// `bad_pointer`'s operations, with the name hakmem's message gives each.
const OPS: [(&str, &str); 3] = [
    ("free", "free"),
    ("realloc", "realloc"),
    ("usable", "malloc_usable_size"),
];

/// Memory that was never a block of ours.
const FOREIGN: [&str; 5] = ["stack", "global", "mmap", "mmap-aligned", "glibc-data"];

/// Every operation on every kind, under both `HAKMEM_CHECK` values, as an invalid pointer.
fn invalid_cases(kinds: &[&str], extra: &[&str]) -> Vec<(Case, Expect)> {
    let mut cases = Vec::new();
    for check in [false, true] {
        for (op, name) in OPS {
            for kind in kinds {
                let mut args = vec![op, *kind];
                args.extend_from_slice(extra);
                cases.push((
                    Case::new("bad_pointer", &args, check),
                    Expect::Report(vec![invalid(name)]),
                ));
            }
        }
    }
    cases
}

#[test]
fn foreign_pointer_as_the_very_first_allocator_call() {
    // The setting must hold from the first call: `warn` goes on, the default aborts.
    check_all(invalid_cases(&FOREIGN, &[]), nothing_more);
}

#[test]
fn foreign_pointer_after_start_up() {
    check_all(invalid_cases(&FOREIGN, &["warm"]), nothing_more);
}

#[test]
fn pointer_into_a_block() {
    let kinds = [
        "interior",
        "misaligned",
        "misaligned8",
        "interior-large",
        "large-header",
        "interior-medium",
        "misaligned-medium",
    ];
    check_all(invalid_cases(&kinds, &[]), nothing_more);
}

#[test]
fn pointer_into_the_allocators_own_region_outside_any_block() {
    // Inside a live superslab: its header, and a slab no class has used (whose metadata is
    // still the zeroed one of a free slab).
    check_all(
        invalid_cases(&["superslab-header", "unused-slab"], &[]),
        nothing_more,
    );
}

#[test]
fn never_carved_block_start_is_an_invalid_pointer() {
    // A block start in a slab, past everything the slab has handed out.
    check_all(invalid_cases(&["never-carved"], &[]), nothing_more);
}

#[test]
fn realloc_and_usable_size_of_a_freed_block_under_hakmem_check() {
    // With the exact bitmap a freed block is not a live block: reported, and not touched; with
    // `warn`, realloc gives NULL and malloc_usable_size 0, as for a foreign pointer.
    let mut cases = Vec::new();
    for (op, name) in &OPS[1..] {
        for kind in ["freed", "freed-move"] {
            cases.push((
                Case::new("bad_pointer", &[op, kind], true),
                Expect::Report(vec![invalid(name)]),
            ));
        }
    }
    check_all(cases, |_, out| {
        let realloc = out.stdout_address("realloc returned ");
        let usable = hakmem_tests::numbers_after(&out.stdout, "usable ");
        match (realloc, usable.first()) {
            (Some(0) | None, Some(0) | None) => Ok(()),
            (r, u) => Err(format!(
                "wanted realloc NULL and malloc_usable_size 0, got {r:x?} and {u:?}"
            )),
        }
    });
}

#[test]
fn realloc_and_usable_size_of_a_freed_block_without_hakmem_check() {
    // Without the bitmap nothing checks a pointer before realloc or malloc_usable_size use it
    // (as in glibc). malloc_usable_size answers for the block; realloc that fits in place hands
    // the block back; realloc that moves frees the block, and that free is caught as a double free.
    let cases = vec![
        (
            Case::new("bad_pointer", &["usable", "freed"], false),
            Expect::Silent,
        ),
        (
            Case::new("bad_pointer", &["realloc", "freed"], false),
            Expect::Silent,
        ),
        (
            Case::new("bad_pointer", &["realloc", "freed-move"], false),
            Expect::Report(vec![DOUBLE.to_string()]),
        ),
    ];
    check_all(cases, |case, out| {
        let ptr = announced(out)?;
        match case.args[0].as_str() {
            "usable" => match hakmem_tests::numbers_after(&out.stdout, "usable ").first() {
                Some(&n) if n >= 16 => Ok(()),
                n => Err(format!(
                    "malloc_usable_size of a freed 16-byte block gave {n:?}"
                )),
            },
            _ if case.args[1] == "freed" => {
                let got = out.stdout_address("realloc returned ");
                if got == Some(ptr) {
                    Ok(())
                } else {
                    Err(format!("realloc in place gave {got:x?}, wanted {ptr:#x}"))
                }
            }
            _ => Ok(()),
        }
    });
}

/// `double_free MODE` under both `HAKMEM_CHECK` values.
fn double_cases(modes: &[&[&str]], prefixes: &[&str]) -> Vec<(Case, Expect)> {
    let mut cases = Vec::new();
    for check in [false, true] {
        for args in modes {
            cases.push((
                Case::new("double_free", args, check),
                Expect::Report(prefixes.iter().map(|p| p.to_string()).collect()),
            ));
        }
    }
    cases
}

#[test]
fn double_free_while_the_block_is_on_the_thread_list() {
    // `free(a); free(a)` and glibc's tcache case, `free(a); free(b); free(a)`.
    check_all(
        double_cases(&[&["simple"], &["interleaved"]], &[DOUBLE]),
        nothing_more,
    );
}

#[test]
fn double_free_through_remote_frees() {
    // Freed by another thread, then by the owner; freed twice by another thread while the
    // owner is alive (both frees on the slab's remote stack); freed twice after the owner
    // exited (its heap parked, or retired by malloc_trim and its superslab abandoned).
    check_all(
        double_cases(
            &[&["remote"], &["remote-twice"], &["parked"], &["abandoned"]],
            &[DOUBLE],
        ),
        nothing_more,
    );
}

#[test]
fn double_free_after_the_block_spilled_to_the_cache_or_its_slab() {
    // 3000 blocks freed in order, then one again: the early ones sit on the thread list's far
    // end, the later ones in the cache or back on their slab's free list.
    let js: Vec<String> = [0, 100, 200, 300, 700, 1500, 2200, 2700, 2900, 2999]
        .iter()
        .map(|j| j.to_string())
        .collect();
    let modes: Vec<[&str; 2]> = js.iter().map(|j| ["spill", j.as_str()]).collect();
    let modes: Vec<&[&str]> = modes.iter().map(|m| &m[..]).collect();
    // With HAKMEM_CHECK=1 nothing lingers in a list or cache: every free goes to the slab, so
    // an early slab of the 3000 blocks empties and goes back before the second free, which may
    // then find no block there (as in `double_free_after_the_blocks_slab_went_back`).
    let free = invalid("free");
    let mut cases = double_cases(&modes, &[DOUBLE]);
    for (case, expect) in &mut cases {
        if case.check {
            *expect = Expect::Report(vec![DOUBLE.to_string(), free.clone()]);
        }
    }
    check_all(cases, nothing_more);
}

#[test]
fn double_free_of_a_large_block() {
    // Its region is unmapped by the first free, so the second may find nothing there: either
    // report is right.
    let free = invalid("free");
    check_all(
        double_cases(&[&["large"]], &[DOUBLE, free.as_str()]),
        nothing_more,
    );
}

#[test]
fn double_free_of_a_medium_block() {
    // Its region stays (another block of it is live): the freed block start is known as such.
    check_all(double_cases(&[&["medium"]], &[DOUBLE]), nothing_more);
}

#[test]
fn double_free_after_the_blocks_slab_went_back() {
    // The slab was emptied and returned (maybe the superslab too): either report is right, and
    // in warn mode no block of any size may be carved twice from it.
    let free = invalid("free");
    check_all(
        double_cases(&[&["slab-gone"]], &[DOUBLE, free.as_str()]),
        nothing_more,
    );
}

/// The report of a free block whose link (its first word) was overwritten.
const CORRUPT: &str = "hakmem: malloc(): corrupted free list ";

/// What `overflow` writes past the end of a live block into its free neighbour's first word.
const OVERFLOWS: [&str; 3] = ["byte", "ascii", "address"];

#[test]
fn overflow_into_a_free_neighbours_link_is_caught() {
    // The neighbour on the thread's free list, and on its slab's remote stack (freed by another
    // thread), under both HAKMEM_CHECK values: the link is checked where it is used, the
    // neighbour named, and with `warn` no address outside the heap is ever handed out.
    let mut cases = Vec::new();
    for check in [false, true] {
        for what in OVERFLOWS {
            for place in ["small", "remote"] {
                cases.push((
                    Case::new("overflow", &[what, place], check),
                    Expect::Report(vec![CORRUPT.to_string()]),
                ));
            }
        }
    }
    check_all(cases, nothing_more);
}

#[test]
fn overflow_into_a_free_medium_neighbour_is_harmless() {
    // A medium block holds no link (its region's header maps the granules): the overflow only
    // changes free memory, and nothing is reported.
    let cases = OVERFLOWS
        .iter()
        .map(|what| {
            (
                Case::new("overflow", &[what, "medium"], false),
                Expect::Silent,
            )
        })
        .collect();
    check_all(cases, nothing_more);
}

#[test]
fn a_freed_blocks_link_set_to_zero_or_its_own_address_is_caught() {
    // A write after free into the first word of a block on the thread's free list (with
    // HAKMEM_CHECK=1, on its slab's free list): 0, or the block's own address. Neither may read
    // as a link to the block itself (which would hand it out from every later malloc): the
    // link is reported where it is used, and with `warn` no block is handed out twice.
    let mut cases = Vec::new();
    for check in [false, true] {
        for word in ["zero", "self"] {
            cases.push((
                Case::new("use_after_free", &[word], check),
                Expect::Report(vec![CORRUPT.to_string()]),
            ));
        }
    }
    check_all(cases, nothing_more);
}

/// Runs `rlimit MODE [KIB]` in both modes: it must succeed, and hakmem must have served it.
fn rlimit_case(args: &[&str], min_allocs: u64) {
    let mode = args[0];
    for on_bad in OnBad::BOTH {
        let h = h();
        let mut cmd = h.preloaded(h.c_program("rlimit"));
        let out = run(on_bad.apply(cmd.args(args)));
        out.assert_success()
            .assert_stdout_has(&format!("rlimit ok: {mode}"));
        out.assert_served(min_allocs);
        assert!(
            out.hakmem_messages().is_empty(),
            "{on_bad:?}: unexpected messages\n{out:?}"
        );
    }
}

#[test]
fn malloc_under_ulimit_v_200000() {
    rlimit_case(&["one", "200000"], 1);
}

#[test]
fn hundred_thousand_mallocs_under_ulimit_v_400000() {
    rlimit_case(&["many", "400000"], 100_000);
}

#[test]
fn start_up_that_failed_under_a_limit_is_retried() {
    rlimit_case(&["recover"], 1);
}

/// The numbers of one `HAKMEM_STATS` report that a leak would change.
#[derive(Debug, PartialEq, Eq)]
struct ExitState {
    live: i64,
    threads_with_a_heap: i64,
}

fn one(out: &Outcome, label: &str) -> i64 {
    match out.report_numbers(label)[..] {
        [n] => n,
        ref v => panic!("wanted one {label:?} in the report, found {v:?}\n{out:?}"),
    }
}

#[test]
fn allocations_in_thread_exit_destructors_after_hakmems_own() {
    // 2000 threads whose destructor (its key made after hakmem's) makes 200 mallocs and frees
    // each: in glibc's first destructor pass, spread over every pass, or all in the last pass
    // by a thread that allocated nothing before. All succeed, and at exit the same blocks are
    // live and the same heaps exist as when the destructor allocates nothing: no heap made at
    // thread exit outlives its thread. The superslabs abandoned and adopted stay in proportion
    // to the threads, not to the mallocs (it was about one of each per malloc: a heap built and
    // torn down for each).
    const THREADS: i64 = 2000;
    let h = h();
    let prog = h.c_program("exit_alloc");
    let mut failures = Vec::new();
    for on_bad in OnBad::BOTH {
        let state = |what: &str| {
            let mut cmd = h.preloaded(&prog);
            let out = run(on_bad.apply(cmd.args([what, &THREADS.to_string()])));
            out.assert_success().assert_stdout_has(&format!(
                "exit_alloc ok: {what} {THREADS} threads, {} destructor mallocs",
                if what == "none" { 0 } else { THREADS * 200 }
            ));
            assert!(out.hakmem_messages().is_empty(), "{out:?}");
            let state = ExitState {
                live: one(&out, ", live "),
                threads_with_a_heap: one(&out, "threads with a heap "),
            };
            (state, out)
        };
        let (base, _) = state("none");
        for what in ["first-pass", "every-pass", "last-pass"] {
            let (work, out) = state(what);
            let churn = one(&out, "abandons ") + one(&out, "adopts ");
            if work != base {
                failures.push(format!(
                    "{what} ({on_bad:?}): at exit {work:?}, without destructor mallocs {base:?}"
                ));
            }
            if churn > 8 * THREADS {
                failures.push(format!(
                    "{what} ({on_bad:?}): {churn} abandons and adopts for {THREADS} threads"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
