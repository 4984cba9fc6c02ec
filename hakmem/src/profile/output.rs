//! The profile's views: the in-memory [`Profile`], the pprof file (a gzipped protobuf written
//! by a small hand encoder: the format needs five message types of varints and
//! length-delimited fields, less code than a generated one and no build-time `protoc`; `flate2`
//! gzips it) and collapsed stacks. Everything here runs outside the allocator's locks and with
//! the thread's sampler guard set (module docs of [`super`]), so it may allocate freely.
use super::table::{self, StackRec};
use std::collections::HashMap;
use std::io::{self, Write};

/// One frame of a stack: a function (inlined frames of one address come one per function,
/// innermost first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The return address (the sampled allocation's call for the innermost frame).
    pub ip: usize,
    /// The function's name, demangled; `??` when no symbol covers the address.
    pub function: String,
    /// Source file and line, when debug info says.
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// One allocation stack and what it holds, estimated from its samples (scaled).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// Innermost (the allocating function) first; the allocator's own frames are left out.
    pub frames: Vec<Frame>,
    /// Blocks and bytes live now.
    pub live_objects: u64,
    pub live_bytes: u64,
    /// Blocks and bytes allocated since profiling started (or since the fork, in a child).
    pub alloc_objects: u64,
    pub alloc_bytes: u64,
}

/// A profile: every stack sampled, largest live bytes first.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// The mean sampling interval in bytes.
    pub sample_bytes: u64,
    pub sites: Vec<Site>,
}

impl Profile {
    /// Estimated live bytes over all sites.
    pub fn live_bytes(&self) -> u64 {
        self.sites.iter().map(|s| s.live_bytes).sum()
    }

    /// Writes the collapsed stacks of live bytes: `root;...;leaf bytes` per site that holds
    /// any.
    pub fn write_collapsed(&self, mut w: impl Write) -> io::Result<()> {
        for s in &self.sites {
            if s.live_bytes == 0 {
                continue;
            }
            let mut first = true;
            for f in s.frames.iter().rev() {
                if !first {
                    w.write_all(b";")?;
                }
                first = false;
                w.write_all(collapsed_name(&f.function).as_bytes())?;
            }
            if first {
                w.write_all(b"[unknown]")?;
            }
            writeln!(w, " {}", s.live_bytes)?;
        }
        w.flush()
    }

    /// Writes the profile as a gzipped pprof protobuf.
    pub fn write_pprof(&self, w: impl Write) -> io::Result<()> {
        let bytes = self.pprof_bytes();
        let mut gz = flate2::write::GzEncoder::new(w, flate2::Compression::default());
        gz.write_all(&bytes)?;
        gz.finish()?.flush()
    }

    /// The pprof message, not compressed.
    pub fn pprof_bytes(&self) -> Vec<u8> {
        let mut strings = Strings::default();
        let mut out = Vec::new();
        // sample_type (1), as Go's heap profiles have them.
        for (ty, unit) in [
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes"),
        ] {
            let mut m = Vec::new();
            uint(&mut m, 1, strings.id(ty));
            uint(&mut m, 2, strings.id(unit));
            msg(&mut out, 1, &m);
        }
        let maps = mappings();
        let mut locs: HashMap<(usize, usize, usize), u64> = HashMap::new();
        let mut loc_msgs = Vec::new();
        let mut funcs: HashMap<(String, Option<String>), u64> = HashMap::new();
        let mut func_msgs = Vec::new();
        for s in &self.sites {
            let mut ids = Vec::new();
            let mut i = 0;
            while i < s.frames.len() {
                let ip = s.frames[i].ip;
                let j = i + s.frames[i..].iter().take_while(|f| f.ip == ip).count();
                let next = locs.len() as u64 + 1;
                let id = *locs.entry((ip, i, j - i)).or_insert_with(|| {
                    let mut m = Vec::new();
                    uint(&mut m, 1, next);
                    if let Some(k) = maps.iter().position(|m| m.start <= ip && ip < m.limit) {
                        uint(&mut m, 2, k as u64 + 1);
                    }
                    uint(&mut m, 3, ip as u64);
                    for f in &s.frames[i..j] {
                        let key = (f.function.clone(), f.file.clone());
                        let fnext = funcs.len() as u64 + 1;
                        let fid = *funcs.entry(key).or_insert_with(|| {
                            let mut fm = Vec::new();
                            uint(&mut fm, 1, fnext);
                            uint(&mut fm, 2, strings.id(&f.function));
                            uint(&mut fm, 3, strings.id(&f.function));
                            if let Some(file) = &f.file {
                                uint(&mut fm, 4, strings.id(file));
                            }
                            func_msgs.push(fm);
                            fnext
                        });
                        let mut line = Vec::new();
                        uint(&mut line, 1, fid);
                        uint(&mut line, 2, f.line.unwrap_or(0) as u64);
                        msg(&mut m, 4, &line);
                    }
                    loc_msgs.push(m);
                    next
                });
                ids.push(id);
                i = j;
            }
            // sample (2): locations innermost first, and the four values.
            let mut m = Vec::new();
            packed(&mut m, 1, &ids);
            packed(
                &mut m,
                2,
                &[s.alloc_objects, s.alloc_bytes, s.live_objects, s.live_bytes],
            );
            msg(&mut out, 2, &m);
        }
        // mapping (3)
        for (k, map) in maps.iter().enumerate() {
            let mut m = Vec::new();
            uint(&mut m, 1, k as u64 + 1);
            uint(&mut m, 2, map.start as u64);
            uint(&mut m, 3, map.limit as u64);
            uint(&mut m, 4, map.offset);
            uint(&mut m, 5, strings.id(&map.file));
            uint(&mut m, 7, 1); // has_functions
            uint(&mut m, 9, 1); // has_line_numbers
            msg(&mut out, 3, &m);
        }
        for m in &loc_msgs {
            msg(&mut out, 4, m);
        }
        for m in &func_msgs {
            msg(&mut out, 5, m);
        }
        // period_type (11) and period (12): space, the mean interval; the default sample
        // type (14): inuse_space.
        let mut pt = Vec::new();
        uint(&mut pt, 1, strings.id("space"));
        uint(&mut pt, 2, strings.id("bytes"));
        let inuse = strings.id("inuse_space");
        let comment = strings.id("hakmem heap profile (sampled, scaled estimates)");
        // string_table (6)
        for s in &strings.list {
            bytes(&mut out, 6, s.as_bytes());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        uint(&mut out, 9, now);
        msg(&mut out, 11, &pt);
        uint(&mut out, 12, self.sample_bytes);
        uint(&mut out, 13, comment);
        uint(&mut out, 14, inuse);
        out
    }
}

/// A name for a collapsed line: no `;` (the frame separator) and no line break.
fn collapsed_name(s: &str) -> String {
    s.replace(';', ":").replace(['\n', '\r'], " ")
}

#[derive(Default)]
struct Strings {
    list: Vec<String>,
    ids: HashMap<String, u64>,
}

impl Strings {
    fn id(&mut self, s: &str) -> u64 {
        if self.list.is_empty() {
            self.list.push(String::new());
            self.ids.insert(String::new(), 0);
        }
        if let Some(&i) = self.ids.get(s) {
            return i;
        }
        let i = self.list.len() as u64;
        self.list.push(s.to_string());
        self.ids.insert(s.to_string(), i);
        i
    }
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        varint(out, u64::from(field) << 3);
        varint(out, v);
    }
}

fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    varint(out, u64::from(field) << 3 | 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn msg(out: &mut Vec<u8>, field: u32, m: &[u8]) {
    bytes(out, field, m);
}

fn packed(out: &mut Vec<u8>, field: u32, vals: &[u64]) {
    let mut b = Vec::new();
    for &v in vals {
        varint(&mut b, v);
    }
    bytes(out, field, &b);
}

/// An executable mapping of /proc/self/maps with a file.
struct Mapping {
    start: usize,
    limit: usize,
    offset: u64,
    file: String,
}

fn mappings() -> Vec<Mapping> {
    let text = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(range), Some(perms), Some(offset)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let file = it.nth(2).unwrap_or("");
        if !perms.contains('x') || file.is_empty() {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(limit), Ok(offset)) = (
            usize::from_str_radix(a, 16),
            usize::from_str_radix(b, 16),
            u64::from_str_radix(offset, 16),
        ) else {
            continue;
        };
        out.push(Mapping {
            start,
            limit,
            offset,
            file: file.to_string(),
        });
    }
    out
}

/// True for a frame of the allocator itself (hakmem's functions and the entry points that
/// lead to them), which a site leaves out of its innermost end.
fn allocator_frame(name: &str) -> bool {
    const ENTRIES: [&str; 12] = [
        "malloc",
        "calloc",
        "realloc",
        "reallocarray",
        "free",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "valloc",
        "pvalloc",
        "__libc_malloc",
        "__libc_calloc",
    ];
    name.starts_with("hakmem")
        || name.starts_with("<hakmem")
        || name.starts_with("__rust_")
        || name.starts_with("__rdl_")
        || name.starts_with("__rg_")
        || name.starts_with("alloc::alloc::")
        || name.starts_with("std::alloc::")
        || name.starts_with("_Zn")
        || name.starts_with("operator new")
        || ENTRIES.contains(&name)
}

/// The frames of one address, innermost first (several when functions were inlined there).
fn resolve(ip: usize) -> Vec<Frame> {
    let mut out = Vec::new();
    // A return address points after the call: the call itself is one byte before.
    let at = ip.saturating_sub(1);
    backtrace::resolve(at as *mut core::ffi::c_void, |sym| {
        let function = match sym.name() {
            Some(n) => format!("{n:#}"),
            None => "??".to_string(),
        };
        out.push(Frame {
            ip,
            function,
            file: sym.filename().map(|p| p.display().to_string()),
            line: sym.lineno(),
        });
    });
    if out.is_empty() {
        out.push(Frame {
            ip,
            function: format!("{ip:#x}"),
            file: None,
            line: None,
        });
    }
    out
}

/// The profile now, symbolised (the caller holds the sampler guard).
pub fn snapshot(sample_bytes: u64) -> Profile {
    let mut p = Profile {
        sample_bytes,
        sites: Vec::new(),
    };
    if !super::active() {
        return p;
    }
    // Room first, then the copy (nothing allocates under the table's lock, PT1).
    let (recs, frames) = loop {
        let (n, f, _) = table::counts();
        let mut recs: Vec<StackRec> = Vec::with_capacity(n + 64);
        let mut frames: Vec<usize> = Vec::with_capacity(f + 64 * table::MAX_FRAMES);
        if table::copy_into(&mut recs, &mut frames) {
            break (recs, frames);
        }
    };
    let mut cache: HashMap<usize, Vec<Frame>> = HashMap::new();
    for (id, r) in recs.iter().enumerate() {
        let round = |x: f64| x.max(0.0).round() as u64;
        let site = Site {
            frames: Vec::new(),
            live_objects: round(r.live_objects),
            live_bytes: round(r.live_bytes),
            alloc_objects: round(r.alloc_objects),
            alloc_bytes: round(r.alloc_bytes),
        };
        if site.alloc_bytes == 0 && site.live_bytes == 0 {
            continue;
        }
        let mut site = site;
        if id == 0 {
            site.frames.push(Frame {
                ip: 0,
                function: "[stack table full]".to_string(),
                file: None,
                line: None,
            });
        }
        for &ip in r.frames(&frames) {
            let fs = cache.entry(ip).or_insert_with(|| resolve(ip));
            site.frames.extend(fs.iter().cloned());
        }
        // The allocator's own frames at the innermost end go, with the std and core frames
        // inlined among them (the sampler's thread-local access).
        let mut trim = 0;
        for (i, f) in site.frames.iter().enumerate() {
            if allocator_frame(&f.function) {
                trim = i + 1;
            } else if !(f.function.starts_with("std::") || f.function.starts_with("core::")) {
                break;
            }
        }
        if trim < site.frames.len() {
            site.frames.drain(..trim);
        }
        p.sites.push(site);
    }
    // Stacks that differ only in the allocator's frames are one site.
    let mut merged: HashMap<Vec<(usize, String)>, usize> = HashMap::new();
    let mut sites: Vec<Site> = Vec::new();
    for s in p.sites.drain(..) {
        let key: Vec<(usize, String)> = s
            .frames
            .iter()
            .map(|f| (f.ip, f.function.clone()))
            .collect();
        match merged.get(&key) {
            Some(&i) => {
                let t = &mut sites[i];
                t.live_objects += s.live_objects;
                t.live_bytes += s.live_bytes;
                t.alloc_objects += s.alloc_objects;
                t.alloc_bytes += s.alloc_bytes;
            }
            None => {
                merged.insert(key, sites.len());
                sites.push(s);
            }
        }
    }
    sites.sort_by(|a, b| {
        b.live_bytes
            .cmp(&a.live_bytes)
            .then(b.alloc_bytes.cmp(&a.alloc_bytes))
    });
    p.sites = sites;
    p
}

/// `HAKMEM_PROF_SIGNAL=1`: a `SIGUSR2` handler that wakes a helper thread, which writes the
/// files ([`super::dump_env_files`]). The handler only posts a semaphore (async-signal-safe);
/// the thread blocks every signal.
pub fn start_signal_thread() {
    struct Sem(core::cell::UnsafeCell<libc::sem_t>);
    // SAFETY: a POSIX semaphore is made to be shared between threads.
    unsafe impl Sync for Sem {}
    // SAFETY: an all-zero sem_t is storage for sem_init, called before any use.
    static SEM: Sem = Sem(core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() }));

    extern "C" fn on_signal(_: libc::c_int) {
        // SAFETY: sem_post is async-signal-safe; SEM was initialised before the handler was set.
        unsafe { libc::sem_post(SEM.0.get()) };
    }
    extern "C" fn run(_: *mut libc::c_void) -> *mut libc::c_void {
        loop {
            // SAFETY: initialised before the thread started.
            if unsafe { libc::sem_wait(SEM.0.get()) } == 0 {
                super::dump_env_files();
            }
        }
    }
    // SAFETY: plain pthread, semaphore and signal calls on initialised locals and statics.
    unsafe {
        if libc::sem_init(SEM.0.get(), 0, 0) != 0 {
            return;
        }
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        let mut all: libc::sigset_t = core::mem::zeroed();
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let mut t: libc::pthread_t = 0;
        let rc = libc::pthread_create(&mut t, &attr, run, core::ptr::null_mut());
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut());
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 {
            return;
        }
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGUSR2, &sa, core::ptr::null_mut());
    }
}
