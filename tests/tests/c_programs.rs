//! The C test programs of `c/`, each run on libhakmem.so: each must succeed and must have been
//! served by hakmem.
use hakmem_tests::{run, Harness};

fn h() -> &'static Harness {
    Harness::get(env!("CARGO_TARGET_TMPDIR"))
}

/// Runs `c/<name>.c` preloaded and checks it succeeded, said `ok_text` and was served.
fn run_c(name: &str, ok_text: &str, min_allocs: u64) {
    let h = h();
    let prog = h.c_program(name);
    run(&mut h.preloaded(&prog))
        .assert_success()
        .assert_stdout_has(ok_text)
        .assert_served(min_allocs);
}

#[test]
fn producer_consumer_threads_verify_every_byte() {
    run_c("prodcons", "prodcons ok: 120000 blocks checked", 120_000);
}

#[test]
fn fork_from_a_threaded_program_child_allocates() {
    let h = h();
    let out = run(&mut h.preloaded(h.c_program("fork")));
    out.assert_success()
        .assert_stdout_has("fork ok: 13 children");
    // The parent and each of the 13 children write a report.
    let reports = hakmem_tests::report_alloc_counts(&out.stderr);
    assert_eq!(reports.len(), 14, "one report per process\n{out:?}");
    out.assert_served(1000);
}

#[test]
fn cxx_new_and_delete_are_hakmems_and_out_of_memory_still_throws() {
    // 100 000 list nodes, arrays, strings: the operators are libhakmem.so's own; a failed new
    // runs the new handler, then throws std::bad_alloc, and the nothrow forms give null.
    run_c("cxx", "cxx ok: 4999950000", 100_000);
}

#[test]
fn out_of_memory_is_null_and_enomem_and_the_program_goes_on() {
    run_c("oom", "oom ok", 1000);
}

#[test]
fn alignment_matrix_of_every_aligned_entry_point() {
    run_c("align", "align ok", 1000);
}

#[test]
fn usable_size_is_at_least_the_size_asked() {
    run_c("usable", "usable ok", 10_000);
}

#[test]
fn glibc_semantics_call_by_call() {
    run_c("semantics", "semantics ok", 1000);
}

#[test]
fn dlopen_a_library_that_allocates_and_frees() {
    let h = h();
    let lib = h.c_library("dlib");
    let prog = h.c_program("dlopen");
    run(h.preloaded(&prog).arg(&lib))
        .assert_success()
        .assert_stdout_has("dlopen ok")
        .assert_served(1000);
}

#[test]
fn thread_exit_destructors_free_and_allocate() {
    run_c("tsd", "tsd ok: 195 destructor runs", 1000);
}

#[test]
fn exit_from_a_worker_thread_while_others_allocate() {
    let h = h();
    let prog = h.c_program("exit_thread");
    // Where the other threads are when exit() comes is luck: try several times.
    for _ in 0..5 {
        run(&mut h.preloaded(&prog))
            .assert_exit_code(3)
            .assert_stdout_has("exit_thread: handlers ran")
            .assert_served(20_000);
    }
}

#[test]
fn frees_after_main_returns() {
    run_c("atexit_free", "atexit_free: handlers done", 100);
}
