//! The public statistics snapshot, its report, and the exit report.
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};
use hakmem_route::{block_size_of, CLASSES};
use hakmem_stats::{Event, Snapshot};
use hakmem_superslab::Corrupt;

use crate::context::ctx;
use hakmem_large::LARGE_ROW;

/// A snapshot of every counter, taken by [`crate::stats`]. Plain data: taking and reading one
/// allocates nothing. `Display` is the report `HAKMEM_STATS=1` prints; `Debug` shows the
/// figures under their accessors' names; with the `serde` feature it serialises (to JSON, say)
/// with the same figures and names.
#[derive(Clone, Copy)]
pub struct Stats {
    snap: Snapshot,
    lru_regions: usize,
    lru_bytes: usize,
    abandoned: usize,
    threads: usize,
    pid: u32,
    resident: u64,
    peak_resident: u64,
}

/// Which blocks a row of the per-class table counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
pub enum Tier {
    /// One small size class, served from slabs.
    Small,
    /// Medium and large blocks together (one row).
    MediumAndLarge,
}

/// One row of the per-class table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ClassStats {
    /// The blocks this row counts.
    pub tier: Tier,
    /// Block size in bytes; 0 for the medium-and-large row, whose blocks vary.
    pub block_size: usize,
    /// Allocations.
    pub allocs: u64,
    /// Frees.
    pub frees: u64,
    /// Allocated and not yet freed.
    pub live: i64,
    /// Blocks out of their slabs now: live, or cached for reuse (in thread lists, caches or
    /// remote stacks). Always 0 for the large tier.
    pub live_or_cached: i64,
    /// The most blocks ever out of their slabs at once: live or cached, as above. An upper
    /// bound on the peak of live blocks (hakmem does not count live blocks on its fast path).
    pub peak_live_or_cached: u64,
}

impl ClassStats {
    /// Bytes of the live blocks (small classes; 0 for the large row, see
    /// [`Stats::live_bytes`]).
    pub fn live_bytes(&self) -> i64 {
        self.live * self.block_size as i64
    }
}

impl Stats {
    pub(crate) fn new(
        snap: Snapshot,
        lru: (usize, usize),
        abandoned: usize,
        threads: usize,
    ) -> Self {
        let resident = resident_bytes();
        Self {
            snap,
            lru_regions: lru.0,
            lru_bytes: lru.1,
            abandoned,
            threads,
            pid: hakmem_os::pid(),
            resident,
            peak_resident: peak_of(resident),
        }
    }

    /// An all-zero snapshot (before the first allocation).
    pub(crate) fn empty() -> Self {
        Self::new(Snapshot::default(), (0, 0), 0, 0)
    }

    /// The small classes, then the large tier (block size 0).
    pub fn classes(&self) -> impl Iterator<Item = ClassStats> + '_ {
        (0..=CLASSES).map(move |c| self.class_row(c))
    }

    /// Size class `class` (`0..classes().count() - 1`; the last row is the large tier, which
    /// counts medium blocks too).
    pub fn class(&self, class: usize) -> Option<ClassStats> {
        (class <= CLASSES).then(|| self.class_row(class))
    }

    fn class_row(&self, c: usize) -> ClassStats {
        let k = self.snap.class(c);
        let large = c == LARGE_ROW;
        ClassStats {
            tier: if large {
                Tier::MediumAndLarge
            } else {
                Tier::Small
            },
            block_size: if large { 0 } else { block_size_of(c) },
            allocs: k.allocs,
            frees: k.frees,
            live: k.live(),
            live_or_cached: k.held,
            peak_live_or_cached: k.peak_held,
        }
    }

    /// The process id this snapshot was taken in.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Blocks allocated and not yet freed, small, medium and large.
    pub fn live_blocks(&self) -> i64 {
        self.classes().map(|c| c.live).sum()
    }

    /// Bytes of those blocks: block sizes for small blocks, whole pages for medium ones, mapped
    /// bytes for large ones.
    pub fn live_bytes(&self) -> i64 {
        let small: i64 = self.classes().map(|c| c.live_bytes()).sum();
        small + self.bytes(Event::LargeAlloc) as i64 + self.bytes(Event::Mremap) as i64
            - self.bytes(Event::LargeFree) as i64
    }

    /// Memory mapped from the OS now (superslabs, large regions, cached regions, metadata),
    /// without the address space only reserved ([`Stats::reserved_bytes`]).
    pub fn mapped_bytes(&self) -> u64 {
        (self.bytes(Event::Mmap) + self.bytes(Event::Mremap))
            .saturating_sub(self.bytes(Event::Munmap))
    }

    /// Address space reserved but not in use as memory: the registry's leaves (512 KiB each,
    /// one per 128 GiB of address space in use), mapped `MAP_NORESERVE` and touched only under
    /// live regions, and the heap profiler's tables while it runs (`hakmem::profile`, about
    /// 67 MiB, touched as samples and stacks fill them).
    pub fn reserved_bytes(&self) -> u64 {
        self.bytes(Event::Reserve)
    }

    /// Bytes of empty regions cached for reuse (in the lru) now.
    pub fn cached_bytes(&self) -> u64 {
        self.lru_bytes as u64
    }

    /// The process's resident set when the snapshot was taken (`/proc/self/statm`), hakmem's
    /// memory and everything else; 0 if it could not be read.
    pub fn resident_bytes(&self) -> u64 {
        self.resident
    }

    /// The process's peak resident set so far: the larger of the kernel's peak (`getrusage`'s
    /// `ru_maxrss`) and [`Stats::resident_bytes`] of the same snapshot, so never below it. The
    /// kernel updates its peak lazily (it can lag `/proc/self/statm` by a few hundred KiB), and
    /// counts the peak of the program the process was before its last `exec` too.
    pub fn peak_resident_bytes(&self) -> u64 {
        self.peak_resident
    }

    /// Every allocation so far.
    pub fn total_allocs(&self) -> u64 {
        self.classes().map(|c| c.allocs).sum()
    }

    /// Every free so far.
    pub fn total_frees(&self) -> u64 {
        self.classes().map(|c| c.frees).sum()
    }

    /// How many times `e` happened.
    pub fn count(&self, e: Event) -> u64 {
        self.snap.count(e)
    }

    /// The bytes `e` moved (OS calls, large regions).
    pub fn bytes(&self, e: Event) -> u64 {
        self.snap.bytes(e)
    }

    /// Every event with its count and bytes.
    pub fn events(&self) -> impl Iterator<Item = (Event, u64, u64)> + '_ {
        self.snap.events().map(|(e, c)| (e, c.count, c.bytes))
    }

    /// `(regions, bytes)` in the lru now.
    pub fn lru(&self) -> (usize, usize) {
        (self.lru_regions, self.lru_bytes)
    }

    /// Superslabs waiting on the abandoned list now.
    pub fn abandoned_now(&self) -> usize {
        self.abandoned
    }

    /// Threads that have a heap now.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Writes the report `HAKMEM_STATS=1` prints at exit (the same as `Display`).
    pub fn write_report(&self, w: &mut impl Write) -> fmt::Result {
        writeln!(
            w,
            "hakmem: statistics for pid {} ({})",
            self.pid,
            program_name()
        )?;
        writeln!(
            w,
            "  class   block        allocs         frees        live  peak live+cached"
        )?;
        for (i, c) in self
            .classes()
            .enumerate()
            .filter(|(_, c)| c.allocs != 0 || c.frees != 0)
        {
            if c.block_size == 0 {
                write!(w, "  large       -")?;
            } else {
                write!(w, "  {i:5} {:7}", c.block_size)?;
            }
            writeln!(
                w,
                " {:13} {:13} {:11} {:17}",
                c.allocs, c.frees, c.live, c.peak_live_or_cached
            )?;
        }
        writeln!(
            w,
            "  total allocs {}, frees {}, live {}",
            self.total_allocs(),
            self.total_frees(),
            self.live_blocks()
        )?;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        writeln!(
            w,
            "  memory: live {:.1} MiB, mapped {:.1} MiB, cached {:.1} MiB, reserved {:.1} MiB \
             (address space only), resident {:.1} MiB (peak {:.1} MiB)",
            mib(self.live_bytes().max(0) as u64),
            mib(self.mapped_bytes()),
            mib(self.cached_bytes()),
            mib(self.reserved_bytes()),
            mib(self.resident_bytes()),
            mib(self.peak_resident_bytes()),
        )?;
        for e in [Event::Mmap, Event::Munmap, Event::Madvise, Event::Mremap] {
            writeln!(
                w,
                "  os {:8} {:10} calls {:12.1} MiB",
                e.name(),
                self.count(e),
                mib(self.bytes(e))
            )?;
        }
        if self.count(Event::OsRefused) != 0 {
            writeln!(
                w,
                "  os refused {} requests ({:.1} MiB)",
                self.count(Event::OsRefused),
                mib(self.bytes(Event::OsRefused))
            )?;
        }
        writeln!(
            w,
            "  superslabs created {}, cached {}, reused {}, released {}; lru holds {} regions ({:.1} MiB)",
            self.count(Event::SsCreated),
            self.count(Event::SsCached),
            self.count(Event::SsReused),
            self.count(Event::SsReleased),
            self.lru_regions,
            mib(self.lru_bytes as u64),
        )?;
        writeln!(
            w,
            "  large allocs {} ({:.1} MiB), frees {}",
            self.count(Event::LargeAlloc),
            mib(self.bytes(Event::LargeAlloc)),
            self.count(Event::LargeFree),
        )?;
        writeln!(
            w,
            "  remote frees {}, abandons {}, adopts {} (by an allocator {}, by a freer {}), \
             abandoned now {}, threads with a heap {}",
            self.count(Event::RemoteFree),
            self.count(Event::Abandon),
            self.count(Event::Adopt) + self.count(Event::AdoptByFree),
            self.count(Event::Adopt),
            self.count(Event::AdoptByFree),
            self.abandoned,
            self.threads,
        )?;
        if self.count(Event::Corrupt) != 0 {
            writeln!(w, "  corruptions reported {}", self.count(Event::Corrupt))?;
        }
        Ok(())
    }
}

/// The report.
impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_report(f)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Stats {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeStruct};
        struct Classes<'a>(&'a Stats);
        impl serde::Serialize for Classes<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.classes().filter(|c| c.allocs != 0 || c.frees != 0))
            }
        }
        struct Events<'a>(&'a Stats);
        impl serde::Serialize for Events<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                #[derive(serde::Serialize)]
                struct Counts {
                    count: u64,
                    bytes: u64,
                }
                let mut m = s.serialize_map(Some(hakmem_stats::EVENTS))?;
                for (e, count, bytes) in self.0.events() {
                    m.serialize_entry(e.key(), &Counts { count, bytes })?;
                }
                m.end()
            }
        }
        let mut st = s.serialize_struct("Stats", 16)?;
        st.serialize_field("pid", &self.pid)?;
        st.serialize_field("program", program_name())?;
        st.serialize_field("live_blocks", &self.live_blocks())?;
        st.serialize_field("live_bytes", &self.live_bytes())?;
        st.serialize_field("mapped_bytes", &self.mapped_bytes())?;
        st.serialize_field("reserved_bytes", &self.reserved_bytes())?;
        st.serialize_field("cached_bytes", &self.cached_bytes())?;
        st.serialize_field("cached_regions", &self.lru_regions)?;
        st.serialize_field("resident_bytes", &self.resident_bytes())?;
        st.serialize_field("peak_resident_bytes", &self.peak_resident_bytes())?;
        st.serialize_field("total_allocs", &self.total_allocs())?;
        st.serialize_field("total_frees", &self.total_frees())?;
        st.serialize_field("threads", &self.threads)?;
        st.serialize_field("abandoned_now", &self.abandoned)?;
        st.serialize_field("classes", &Classes(self))?;
        st.serialize_field("events", &Events(self))?;
        st.end()
    }
}

impl fmt::Debug for Stats {
    /// The figures under their accessors' names, and the rows of the classes in use.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Rows<'a>(&'a Stats);
        impl fmt::Debug for Rows<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list()
                    .entries(self.0.classes().filter(|c| c.allocs != 0 || c.frees != 0))
                    .finish()
            }
        }
        f.debug_struct("Stats")
            .field("pid", &self.pid)
            .field("live_blocks", &self.live_blocks())
            .field("live_bytes", &self.live_bytes())
            .field("mapped_bytes", &self.mapped_bytes())
            .field("reserved_bytes", &self.reserved_bytes())
            .field("cached_bytes", &self.cached_bytes())
            .field("cached_regions", &self.lru_regions)
            .field("resident_bytes", &self.resident_bytes())
            .field("peak_resident_bytes", &self.peak_resident_bytes())
            .field("total_allocs", &self.total_allocs())
            .field("total_frees", &self.total_frees())
            .field("threads", &self.threads)
            .field("abandoned_now", &self.abandoned)
            .field("classes", &Rows(self))
            .finish_non_exhaustive()
    }
}

/// The process's peak resident set, in KiB: the larger of `getrusage`'s `ru_maxrss` and the
/// resident set now (`/proc/self/statm`), so never below the latter (see
/// [`Stats::peak_resident_bytes`]).
pub fn peak_rss_kib() -> u64 {
    peak_of(resident_bytes()) / 1024
}

/// The peak resident set in bytes, given the resident set now: the kernel's peak, or `resident`
/// if that is more.
fn peak_of(resident: u64) -> u64 {
    hakmem_os::peak_resident_bytes().max(resident)
}

/// The process's resident set now ([`hakmem_os::resident_bytes`]); 0 when it cannot be read.
fn resident_bytes() -> u64 {
    hakmem_os::resident_bytes()
}

/// The program's name (glibc's `program_invocation_short_name`: argv\[0\] without its
/// directory), or `?`.
pub fn program_name() -> &'static str {
    extern "C" {
        static program_invocation_short_name: *const libc::c_char;
    }
    // SAFETY: glibc sets this pointer before any user code runs and never frees its string.
    let p = unsafe { program_invocation_short_name };
    if p.is_null() {
        return "?";
    }
    // SAFETY: a NUL-terminated string that lives as long as the process.
    unsafe { core::ffi::CStr::from_ptr(p) }
        .to_str()
        .unwrap_or("?")
}

/// The exit report has been written (or is being written).
static REPORTED: AtomicBool = AtomicBool::new(false);
/// The caller (libhakmem.so) writes the exit report from its own handler.
static BY_CALLER: AtomicBool = AtomicBool::new(false);

/// See [`crate::internal::exit_report_by_caller`].
pub fn exit_report_by_caller() {
    BY_CALLER.store(true, Ordering::Release);
}

/// At start-up, once hakmem is ready: the exit report (start-up's `at_exit` handler, which calls
/// [`at_exit`]), and the `tracing` hook.
pub fn after_start_up(at_exit: extern "C" fn()) {
    register_exit_report(at_exit);
    #[cfg(feature = "tracing")]
    crate::trace::install();
}

/// The exit handler's report: [`report_once`], unless the caller (libhakmem.so) writes it from
/// its own handler.
pub fn at_exit(now: impl FnOnce() -> Stats) {
    if !BY_CALLER.load(Ordering::Acquire) {
        report_once(now);
    }
}

/// The counters now; `late_heap_made` when the late heap (start-up's, owned by no thread)
/// exists, so it is not counted as a thread's.
pub fn snapshot(late_heap_made: bool) -> Stats {
    match ctx() {
        Some(c) => Stats::new(
            c.snapshot(),
            c.lru.usage(),
            c.abandoned.len(),
            c.live_heaps() - usize::from(late_heap_made),
        ),
        None => Stats::empty(),
    }
}

/// With `HAKMEM_STATS=1`, registers the exit report's handler (`atexit` takes a static slot, and
/// may allocate only past 32 handlers, which then finds hakmem ready).
fn register_exit_report(at_exit: extern "C" fn()) {
    if crate::settings::in_force().stats && !BY_CALLER.load(Ordering::Acquire) {
        // SAFETY: a plain C callback that lives as long as the program's code.
        unsafe { libc::atexit(at_exit) };
    }
}

/// With `HAKMEM_STATS=1`, writes the report, once per process: to `HAKMEM_STATS_FILE` (its
/// `%p` replaced by the pid, appended to) or to stderr. Nothing is allocated: the report is
/// formatted into a stack buffer and written with `write(2)`. `now` takes the counters (the
/// caller reaps ended threads first).
pub fn report_once(now: impl FnOnce() -> Stats) {
    let s = crate::settings::in_force();
    if !s.stats || ctx().is_none() || REPORTED.swap(true, Ordering::AcqRel) {
        return;
    }
    let stats = now();
    let fd = match s.stats_file {
        Some(path) => open_report_file(path.to_bytes(), stats.pid),
        None => 2,
    };
    {
        // One buffer for the whole report, so that one write(2) appends it.
        let mut w = crate::out::StackWriter::<16384>::new(fd);
        let _ = stats.write_report(&mut w);
    }
    if fd != 2 {
        // SAFETY: our descriptor, closed once.
        unsafe { libc::close(fd) };
    }
}

/// Opens the report file (`%p` becomes `pid`) for appending; stderr, with a warning, when it
/// cannot be opened.
fn open_report_file(path: &[u8], pid: u32) -> i32 {
    let mut name = crate::out::Buf::<{ crate::settings::STATS_FILE_MAX + 32 }>::new();
    let mut rest = path;
    let mut ok = true;
    while let Some(i) = rest.windows(2).position(|w| w == b"%p") {
        ok &= name.write_str(bytes_str(&rest[..i])).is_ok();
        ok &= write!(name, "{pid}").is_ok();
        rest = &rest[i + 2..];
    }
    ok &= name.write_str(bytes_str(rest)).is_ok();
    ok &= name.write_str("\0").is_ok();
    let fd = if ok {
        // SAFETY: a NUL-terminated path in our buffer; open has no memory effects.
        unsafe {
            libc::open(
                name.as_bytes().as_ptr().cast(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC,
                0o644,
            )
        }
    } else {
        -1
    };
    if fd < 0 {
        crate::out::eprint(format_args!(
            "hakmem: warning: cannot open HAKMEM_STATS_FILE {:?}; the report goes to stderr\n",
            name.as_str().trim_end_matches('\0'),
        ));
        return 2;
    }
    fd
}

fn bytes_str(b: &[u8]) -> &str {
    // The path came from a `&str` or the environment; a path that is not UTF-8 is cut at the
    // first bad byte (and then opening the shortened name most likely fails, with a warning).
    match core::str::from_utf8(b) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or(""),
    }
}

/// Counts a corruption the boxes found (and emits it with the `tracing` feature).
pub fn corruption(c: Corrupt) {
    let (op, what, p) = match c {
        Corrupt::DoubleFree(p) => ("free", "double free", p),
        Corrupt::NotABlock(p) => ("free", "invalid pointer", p),
        Corrupt::FreeList(p) => ("malloc", "corrupted free list", p),
        Corrupt::Invariant { at, .. } => ("validate", "broken invariant", at),
    };
    note_corruption(op, what, p);
}

/// Counts an invalid pointer given to `op` (and emits it with the `tracing` feature).
pub fn invalid_pointer(op: &str, p: *const u8) {
    note_corruption(op, "invalid pointer", p as usize);
}

#[cold]
fn note_corruption(op: &str, what: &str, p: usize) {
    // Read the settings (and print any warnings about them) before the report.
    let _ = crate::settings::in_force();
    if let Some(c) = ctx() {
        c.stats.event(Event::Corrupt, 0);
    }
    #[cfg(feature = "tracing")]
    crate::trace::corruption(op, what, p);
    #[cfg(not(feature = "tracing"))]
    let _ = (op, what, p);
}
