//! Bad input and thread exit, each case in a child process of its own (the test binary run
//! again on one test), so that an abort can be checked and process-wide counters are this
//! case's alone. hakmem is driven through its C-style API here, not as the global allocator.
use std::process::Output;
mod common;
use common::in_child;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_aborted_with(o: &Output, msg: &str) {
    use std::os::unix::process::ExitStatusExt;
    let e = stderr(o);
    assert_eq!(
        o.status.signal(),
        Some(libc::SIGABRT),
        "aborts; stderr: {e}"
    );
    assert!(e.contains(msg), "says {msg:?}; stderr: {e}");
}

/// `free(a); free(b); free(a)`: not at the head of the thread list, yet caught by default.
fn double_free_case() {
    // SAFETY: the C-style API; the last free is the bug under test.
    unsafe {
        let a = hakmem::raw::malloc(40);
        let b = hakmem::raw::malloc(40);
        hakmem::raw::free(a);
        hakmem::raw::free(b);
        hakmem::raw::free(a);
        // With `warn` the second free of `a` was dropped: no block is handed out twice.
        let x = hakmem::raw::malloc(40);
        let y = hakmem::raw::malloc(40);
        let z = hakmem::raw::malloc(40);
        assert!(x != y && y != z && x != z, "a block handed out twice");
    }
}

/// A child in `warn` mode: it went on, and reported `message` exactly once.
fn assert_warned_once(o: &Output, message: &str) {
    assert!(o.status.success(), "goes on; stderr: {}", stderr(o));
    assert_eq!(stderr(o).matches(message).count(), 1, "{}", stderr(o));
}

#[test]
fn free_a_free_b_free_a_aborts_as_a_double_free() {
    let name = "free_a_free_b_free_a_aborts_as_a_double_free";
    match in_child(name, &[]) {
        Some(o) => assert_aborted_with(&o, "hakmem: free(): double free detected 0x"),
        None => double_free_case(),
    }
}

#[test]
fn free_a_free_b_free_a_warns_and_hands_out_no_duplicate() {
    let name = "free_a_free_b_free_a_warns_and_hands_out_no_duplicate";
    match in_child(name, &[("HAKMEM_INVALID_FREE", "warn")]) {
        Some(o) => assert_warned_once(&o, "hakmem: free(): double free detected 0x"),
        None => double_free_case(),
    }
}

/// `free(p + 48*500)`: a block start in p's slab that was never handed out.
fn never_carved_case() {
    // SAFETY: the C-style API; the free of `q` is the bug under test.
    unsafe {
        let p = hakmem::raw::malloc(40);
        let q = p.add(48 * 500);
        assert_eq!(
            p as usize >> 16,
            q as usize >> 16,
            "the case needs q in p's slab"
        );
        hakmem::raw::free(q);
        // With `warn`, q was dropped; it is never handed out beside itself.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let r = hakmem::raw::malloc(40);
            assert!(seen.insert(r as usize), "a block handed out twice");
        }
    }
}

#[test]
fn a_never_carved_block_start_is_an_invalid_pointer() {
    let name = "a_never_carved_block_start_is_an_invalid_pointer";
    match in_child(name, &[]) {
        Some(o) => assert_aborted_with(&o, "hakmem: free(): invalid pointer 0x"),
        None => never_carved_case(),
    }
}

#[test]
fn a_never_carved_block_start_warns_and_hands_out_no_duplicate() {
    let name = "a_never_carved_block_start_warns_and_hands_out_no_duplicate";
    match in_child(name, &[("HAKMEM_INVALID_FREE", "warn")]) {
        Some(o) => assert_warned_once(&o, "hakmem: free(): invalid pointer 0x"),
        None => never_carved_case(),
    }
}

/// A second free that happens on another thread, while the block waits on its slab's remote
/// stack, is caught too.
#[test]
fn a_remote_double_free_aborts() {
    let name = "a_remote_double_free_aborts";
    match in_child(name, &[]) {
        Some(o) => assert_aborted_with(&o, "hakmem: free(): double free detected 0x"),
        None => {
            let a = hakmem::raw::malloc(64) as usize;
            std::thread::spawn(move || {
                hakmem::raw::malloc(64);
                // SAFETY: as above.
                unsafe { hakmem::raw::free(a as *mut u8) };
                // SAFETY: as above.
                unsafe { hakmem::raw::free(a as *mut u8) };
            })
            .join()
            .unwrap();
        }
    }
}

static mut LATE_KEY: libc::pthread_key_t = 0;

/// A TSD destructor of a key made after hakmem's: 200 allocations at thread exit.
extern "C" fn late_destructor(_: *mut libc::c_void) {
    let mut v = [core::ptr::null_mut::<u8>(); 200];
    for (i, p) in v.iter_mut().enumerate() {
        *p = hakmem::raw::malloc(16 + i % 200);
        assert!(!p.is_null());
    }
    for p in v {
        // SAFETY: ours, freed once.
        unsafe { hakmem::raw::free(p) };
    }
}

/// F5 and the cost of allocations during thread exit: destructors that run after hakmem's
/// allocate and free on the thread's real heap (kept through glibc's destructor passes), so no
/// heap is built, adopted and abandoned per call; and at the end every heap is retired and every
/// block is back.
#[test]
fn allocations_in_late_tsd_destructors_use_the_real_heap_and_leak_nothing() {
    let name = "allocations_in_late_tsd_destructors_use_the_real_heap_and_leak_nothing";
    let Some(o) = in_child(name, &[]) else {
        // SAFETY: start hakmem first, so its key is older than ours (its destructor runs first).
        unsafe { hakmem::raw::free(hakmem::raw::malloc(8)) };
        // SAFETY: a key with a plain C destructor.
        let made = unsafe { libc::pthread_key_create(&raw mut LATE_KEY, Some(late_destructor)) };
        assert_eq!(made, 0);
        let before = hakmem::stats();
        const THREADS: usize = 200;
        for _ in 0..THREADS {
            std::thread::spawn(|| {
                // SAFETY: the C-style API; the key was made above.
                unsafe {
                    let p = hakmem::raw::malloc(32);
                    hakmem::raw::free(p);
                    libc::pthread_setspecific(LATE_KEY, std::ptr::dangling::<libc::c_void>());
                }
            })
            .join()
            .unwrap();
        }
        let after = hakmem::stats();
        let d = |e| after.count(e) - before.count(e);
        let (abandons, adopts) = (d(hakmem::Event::Abandon), d(hakmem::Event::Adopt));
        assert!(
            abandons + adopts <= 2 * THREADS as u64,
            "a heap per late call: {abandons} abandons, {adopts} adopts for {THREADS} threads"
        );
        assert_eq!(after.threads(), before.threads(), "every heap retired");
        assert_eq!(
            after.live_blocks(),
            before.live_blocks(),
            "every block back"
        );
        return;
    };
    assert!(o.status.success(), "stderr: {}", stderr(&o));
}

static mut LAST_PASS_KEY: libc::pthread_key_t = 0;

std::thread_local! {
    static PASSES: core::cell::Cell<u32> = const { core::cell::Cell::new(0) };
}

/// Sets its key again until glibc's last destructor pass, and only then makes the thread's
/// first allocation: hakmem's heap is made in the last pass, so hakmem's exit destructor never
/// sees it (F5).
extern "C" fn last_pass_destructor(_: *mut libc::c_void) {
    let n = PASSES.with(|p| {
        p.set(p.get() + 1);
        p.get()
    });
    if n < 4 {
        // SAFETY: our key; glibc runs another pass.
        unsafe { libc::pthread_setspecific(LAST_PASS_KEY, std::ptr::dangling()) };
        return;
    }
    // SAFETY: the C-style API.
    unsafe { hakmem::raw::free(hakmem::raw::malloc(24)) };
}

#[test]
fn a_heap_made_in_the_last_destructor_pass_is_reclaimed() {
    let name = "a_heap_made_in_the_last_destructor_pass_is_reclaimed";
    let Some(o) = in_child(name, &[]) else {
        // SAFETY: start hakmem first, so its key is older than ours.
        unsafe { hakmem::raw::free(hakmem::raw::malloc(8)) };
        // SAFETY: a key with a plain C destructor.
        let made =
            unsafe { libc::pthread_key_create(&raw mut LAST_PASS_KEY, Some(last_pass_destructor)) };
        assert_eq!(made, 0);
        let before = hakmem::stats();
        std::thread::spawn(|| {
            // SAFETY: our key. The thread makes no other allocator call.
            unsafe { libc::pthread_setspecific(LAST_PASS_KEY, std::ptr::dangling()) };
        })
        .join()
        .unwrap();
        // Later threads each look at one other heap; the orphan is found and retired.
        for _ in 0..16 {
            if hakmem::stats().threads() == before.threads() {
                break;
            }
            std::thread::spawn(|| {
                // SAFETY: the C-style API.
                unsafe { hakmem::raw::free(hakmem::raw::malloc(24)) };
            })
            .join()
            .unwrap();
        }
        let after = hakmem::stats();
        assert_eq!(
            after.threads(),
            before.threads(),
            "the last-pass heap was retired"
        );
        assert_eq!(
            after.live_blocks(),
            before.live_blocks(),
            "every block back"
        );
        return;
    };
    assert!(o.status.success(), "stderr: {}", stderr(&o));
}
