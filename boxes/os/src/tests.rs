use crate::*;
use std::vec::Vec;

#[test]
fn page_size_is_read_once_and_sane() {
    let p = page_size();
    assert!(p.is_power_of_two() && p >= PAGE);
    assert_eq!(page_size(), p);
    assert_eq!(LibcOs.page_size(), p);
}

#[test]
fn maps_aligned_zeroed_and_counts() {
    let stats = GlobalStats::new();
    let page = page_size();
    let align = 2 << 20;
    let p = LibcOs.map(2 * page, align, &stats).expect("two pages");
    assert_eq!(p.as_ptr() as usize % align, 0);
    // SAFETY: our fresh mapping of two pages, used by nothing else.
    unsafe {
        assert_eq!(*p.as_ptr().add(page + 7), 0);
        p.as_ptr().add(page + 7).write(42);
        assert!(LibcOs.purge(p, 2 * page, &stats));
        assert_eq!(*p.as_ptr().add(page + 7), 0, "a purged page reads as zero");
        LibcOs.unmap(p, 2 * page, &stats);
    }
    let s = stats.snapshot();
    // A first guess at an aligned address that misses is mapped and unmapped once more.
    assert!(s.count(Event::Mmap) >= 1);
    assert_eq!(s.count(Event::Mmap), s.count(Event::Munmap));
    assert_eq!(s.count(Event::Madvise), 1);
}

#[test]
fn map_offset_aligns_the_offset() {
    let stats = GlobalStats::new();
    let page = page_size();
    let align = 1 << 22;
    let p = LibcOs
        .map_offset(4 * page, align, page, &stats)
        .expect("four pages");
    assert_eq!((p.as_ptr() as usize + page) % align, 0);
    // SAFETY: our own mapping of four pages.
    unsafe { LibcOs.unmap(p, 4 * page, &stats) };
}

#[test]
fn remap_keeps_contents() {
    let stats = GlobalStats::new();
    let page = page_size();
    let p = LibcOs.map(page, page, &stats).expect("a page");
    // SAFETY: our own mapping; after `Some` the old range is not used again.
    unsafe {
        p.as_ptr().write(9);
        let q = LibcOs
            .remap(p, page, 64 * page, page, &stats)
            .expect("grown");
        assert_eq!(*q.as_ptr(), 9);
        assert_eq!(*q.as_ptr().add(63 * page), 0);
        LibcOs.unmap(q, 64 * page, &stats);
    }
    assert_eq!(stats.snapshot().count(Event::Mremap), 1);
}

#[test]
fn relocate_moves_pages_onto_the_target() {
    let stats = GlobalStats::new();
    let page = page_size();
    let from = LibcOs.map(4 * page, page, &stats).expect("four pages");
    let to = LibcOs.map(8 * page, page, &stats).expect("eight pages");
    // SAFETY: our own mappings, apart; `from` is not used after it moved.
    unsafe {
        from.as_ptr().write(7);
        from.as_ptr().add(3 * page).write(8);
        to.as_ptr().add(7 * page).write(9);
        let target = NonNull::new(to.as_ptr().add(2 * page)).unwrap();
        assert_eq!(
            LibcOs.relocate(from, target, 4 * page, &stats),
            Relocation::Moved
        );
        assert_eq!(*target.as_ptr(), 7);
        assert_eq!(*target.as_ptr().add(3 * page), 8);
        assert_eq!(
            *to.as_ptr().add(7 * page),
            9,
            "the rest of the target is kept"
        );
        assert_eq!(*to.as_ptr(), 0);
        let mut vec = [0u8; 1];
        let rc = libc::mincore(from.as_ptr().cast(), page, vec.as_mut_ptr());
        assert_eq!(rc, -1, "the source is no longer mapped");
        // Refused (the source is not mapped now). Whether the kernel unmapped the target
        // before it refused depends on its version: then the target is mapped again (Refused);
        // when something is mapped there, it cannot tell whose it is (LostTarget). This test
        // has no other thread, so the target is still its own either way.
        assert_ne!(
            LibcOs.relocate(from, target, 4 * page, &stats),
            Relocation::Moved
        );
        target.as_ptr().add(4 * page - 1).write(1);
        LibcOs.unmap(to, 8 * page, &stats);
    }
    let s = stats.snapshot();
    assert_eq!((s.count(Event::Mremap), s.bytes(Event::Mremap)), (1, 0));
    assert_eq!(s.count(Event::OsRefused), 1);
}

#[test]
fn an_absurd_mapping_is_refused() {
    let stats = GlobalStats::new();
    let page = page_size();
    let huge = (usize::MAX / 2) & !(page - 1);
    assert!(LibcOs.map(huge, page, &stats).is_none());
    assert!(LibcOs.map_offset(huge, 1 << 21, 0, &stats).is_none());
    assert!(stats.snapshot().count(Event::OsRefused) >= 2);
}

#[test]
fn reserved_metadata_is_zeroed() {
    let page = page_size();
    let p = LibcOs.map_reserved(page).expect("a page");
    // SAFETY: our own fresh mapping of one page.
    unsafe {
        assert_eq!(*p.as_ptr().add(page - 1), 0);
        LibcOs.unmap(p, page, &GlobalStats::new());
    }
}

#[test]
fn the_clock_never_runs_backwards() {
    let mut last = (monotonic_ns(), monotonic_coarse_ns());
    for _ in 0..1000 {
        let now = (monotonic_ns(), monotonic_coarse_ns());
        assert!(now.0 >= last.0 && now.1 >= last.1);
        last = now;
    }
    assert!(last.0 > 0 && last.1 > 0);
}

#[test]
fn secrets_differ_between_draws() {
    let draws: Vec<u64> = (0..4).map(secret).collect();
    // Four equal 64-bit random words would mean the source is broken.
    assert!(draws.windows(2).any(|w| w[0] != w[1]), "{draws:?}");
}

#[test]
fn getenv_reads_the_environment() {
    // PATH is set for every test run (cargo passes its own).
    let path = getenv(c"PATH").expect("PATH is set");
    assert_eq!(path, std::env::var("PATH").unwrap().as_bytes());
    assert_eq!(getenv(c"HAKMEM_OS_TEST_NEVER_SET_ANYWHERE"), None);
}

#[test]
fn threads_are_alive_until_they_end() {
    let me = thread_id();
    assert!(!thread_gone(pid(), me));
    // Another process's thread is never reported gone.
    assert!(!thread_gone(pid().wrapping_add(1), me));
    let other = std::thread::spawn(thread_id).join().unwrap();
    assert_ne!(other, me);
    // The joined thread has exited; the kernel releases its id just after it wakes the joiner,
    // so wait for that (ids are handed out in turn, so no new thread takes it meanwhile).
    let gone = (0..10_000).any(|_| {
        if thread_gone(pid(), other) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
        false
    });
    assert!(gone, "thread {other} still reported alive after its join");
}

#[test]
fn write_fd_writes_everything_or_says_no() {
    let mut fds = [0; 2];
    // SAFETY: a valid array of two descriptors for pipe to fill.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    assert!(write_fd(fds[1], b"hello, os"));
    let mut buf = [0u8; 16];
    // SAFETY: reads at most 16 bytes into `buf`.
    let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(&buf[..n as usize], b"hello, os");
    // SAFETY: our descriptors, closed once.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    assert!(!write_fd(fds[1], b"closed"));
    assert!(!write_fd(-1, b"x"));
    assert!(write_fd(-1, b""), "nothing to write is written");
    assert!(write_stderr(b""));
}

#[test]
fn memory_use_is_read() {
    let r = resident_bytes();
    assert!(r > 0 && r.is_multiple_of(page_size() as u64));
    assert!(peak_resident_bytes() > 0);
}

#[test]
fn abort_ends_the_process_with_sigabrt() {
    // SAFETY: the child calls only `abort` (async-signal-safe), so forking a process with other
    // threads is sound.
    let child = unsafe { libc::fork() };
    assert!(child >= 0);
    if child == 0 {
        abort();
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
    assert!(libc::WIFSIGNALED(status));
    assert_eq!(libc::WTERMSIG(status), libc::SIGABRT);
}

#[test]
fn the_threads_cpu_clock_runs_with_its_work() {
    let a = crate::thread_cpu_ns();
    assert_ne!(a, 0, "the thread's CPU clock reads");
    // Work until the clock moves (a few ms at most; bounded, so a stuck clock fails).
    let mut x = 0u64;
    for _ in 0..1u64 << 32 {
        x = core::hint::black_box(x.wrapping_add(1));
        if x.is_multiple_of(1024) && crate::thread_cpu_ns() != a {
            break;
        }
    }
    assert!(crate::thread_cpu_ns() > a);
}
