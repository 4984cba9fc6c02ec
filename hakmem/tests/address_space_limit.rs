//! Under an address-space limit (`ulimit -v`, `RLIMIT_AS`) hakmem still serves memory: start-up
//! reserves no large table, registry leaves are mapped only where regions are, and a start-up
//! the OS refused is tried again by the next call (issue 10).
//!
//! Each case runs in a child process: this test binary again, running only the ignored test
//! `child` with the case named in `ADDRESS_LIMIT_CASE`, its `RLIMIT_AS` set between fork and
//! exec. So the limit covers exactly one fresh process, in which hakmem starts up under it. The
//! cases use the `hakmem::raw` API (the binary's own allocator stays glibc's, so that the
//! `retry` case can watch hakmem's start-up itself).
use std::os::unix::process::CommandExt;

mod common;

const CASE_VAR: &str = "ADDRESS_LIMIT_CASE";
const DONE: &str = "address-limit case done";

/// Runs `case` in a child whose address space is limited to `limit_kib` KiB (as `ulimit -v`);
/// `None` runs it without a limit.
fn run_child(case: &str, limit_kib: Option<u64>) {
    let mut cmd = common::command("child", true, &[(CASE_VAR, case)]);
    if let Some(kib) = limit_kib {
        let bytes = kib * 1024;
        // SAFETY: the closure runs in the forked child before exec and only calls setrlimit,
        // which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
    }
    let out = common::output(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(DONE),
        "case {case} under {limit_kib:?} KiB: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

#[test]
fn malloc_works_under_ulimit_v_200000() {
    run_child("malloc_100", Some(200_000));
}

#[test]
fn a_hundred_thousand_1000_byte_mallocs_work_under_ulimit_v_400000() {
    run_child("many_1000", Some(400_000));
}

#[test]
fn a_refused_start_up_is_tried_again() {
    run_child("retry", None);
}

/// The child's side: runs the case named in `ADDRESS_LIMIT_CASE`, then prints [`DONE`].
#[test]
#[ignore = "a child process of the address-limit tests runs this"]
fn child() {
    let case = std::env::var(CASE_VAR).unwrap_or_default();
    match case.as_str() {
        "malloc_100" => malloc_100(),
        "many_1000" => many_1000(),
        "retry" => retry(),
        other => panic!("unknown case {other:?}: run through the address-limit tests"),
    }
    println!("{DONE}");
}

fn malloc_100() {
    // SAFETY: raw malloc/free of our own block.
    unsafe {
        let p = hakmem::raw::malloc(100);
        assert!(!p.is_null(), "malloc(100) under the limit");
        p.write_bytes(0xab, 100);
        assert_eq!(*p.add(99), 0xab);
        hakmem::raw::free(p);
    }
    // A large block too: its region is registered in a leaf mapped on demand.
    // SAFETY: as above.
    unsafe {
        let q = hakmem::raw::malloc(3 << 20);
        assert!(!q.is_null(), "malloc(3 MiB) under the limit");
        q.add((3 << 20) - 1).write(1);
        hakmem::raw::free(q);
    }
}

fn many_1000() {
    const N: usize = 100_000;
    let mut blocks = Vec::with_capacity(N);
    for i in 0..N {
        let p = hakmem::raw::malloc(1000);
        assert!(!p.is_null(), "malloc(1000) number {i} under the limit");
        // SAFETY: inside the block.
        unsafe {
            p.write(i as u8);
            p.add(999).write(!(i as u8));
        }
        blocks.push(p);
    }
    for (i, &p) in blocks.iter().enumerate() {
        // SAFETY: our live blocks, each freed once.
        unsafe {
            assert_eq!((*p, *p.add(999)), (i as u8, !(i as u8)), "block {i}");
            hakmem::raw::free(p);
        }
    }
}

/// The current soft and hard `RLIMIT_AS`.
fn limit() -> libc::rlimit {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) }, 0);
    lim
}

/// Bytes of address space this process has now (`VmSize`).
fn vm_size() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmSize");
    kib * 1024
}

fn retry() {
    let open = limit();
    // Leave no room for any new mapping: hakmem's start-up (its first call) is refused.
    let full = libc::rlimit {
        rlim_cur: vm_size(),
        rlim_max: open.rlim_max,
    };
    // SAFETY: lowering our own soft limit, then restoring it; nothing else runs meanwhile.
    let refused = unsafe {
        assert_eq!(libc::setrlimit(libc::RLIMIT_AS, &full), 0);
        let p = hakmem::raw::malloc(100);
        assert_eq!(libc::setrlimit(libc::RLIMIT_AS, &open), 0);
        p
    };
    assert!(
        refused.is_null(),
        "with no address space left, start-up cannot succeed"
    );
    assert!(
        hakmem::stats().threads() == 0,
        "no context was published by the refused start-up"
    );
    // The OS gives memory again: the next call starts hakmem up.
    // SAFETY: raw malloc/free of our own block.
    unsafe {
        let p = hakmem::raw::malloc(100);
        assert!(!p.is_null(), "a refused start-up is not permanent");
        p.write_bytes(7, 100);
        hakmem::raw::free(p);
    }
    assert!(hakmem::stats().threads() >= 1, "started up on the retry");
}
