//! Settings before first use (issue 10): every `HAKMEM_*` setting holds from the very first
//! call into hakmem, error paths included. hakmem is not this binary's global allocator, so the
//! child's `raw::free` of a stack address is its first call into hakmem.
mod common;
use common::child;

#[test]
#[ignore = "run by invalid_free_first_warns_when_asked_and_aborts_by_default"]
fn child_frees_a_stack_address_first() {
    let mut on_stack = 7u64;
    // SAFETY: not ours; hakmem reports it (and with HAKMEM_INVALID_FREE=warn goes on).
    unsafe { hakmem::raw::free((&mut on_stack as *mut u64).cast()) };
    println!("went on after {on_stack}");
}

#[test]
fn invalid_free_first_warns_when_asked_and_aborts_by_default() {
    let out = child(
        "child_frees_a_stack_address_first",
        &[("HAKMEM_INVALID_FREE", "warn")],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("went on after 7"), "{stdout}");
    assert!(
        stderr.contains("hakmem: free(): invalid pointer 0x"),
        "{stderr}"
    );

    let out = child("child_frees_a_stack_address_first", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "the default aborts\n{stdout}");
    assert!(!stdout.contains("went on"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("hakmem: free(): invalid pointer 0x"));
}

#[test]
#[ignore = "run by settings_are_read_before_start_up"]
fn child_prints_settings_before_start_up() {
    // Nothing has started hakmem up: the settings are read on demand.
    print!("{}", hakmem::settings());
    assert_eq!(hakmem::stats().total_allocs(), 0, "still not started");
}

#[test]
fn settings_are_read_before_start_up() {
    let out = child(
        "child_prints_settings_before_start_up",
        &[("HAKMEM_LRU_MB", "7"), ("HAKMEM_STATS", "1")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("HAKMEM_LRU_MB=7 (env)\n"), "{stdout}");
    assert!(stdout.contains("HAKMEM_STATS=1 (env)\n"), "{stdout}");
    assert!(stdout.contains("HAKMEM_CHECK=0 (default)\n"), "{stdout}");
    // Never started: nothing to report at exit.
    assert!(!String::from_utf8_lossy(&out.stderr).contains("statistics for"));
}
