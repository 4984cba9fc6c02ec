//! The `HAKMEM_*` settings: from code ([`crate::HakMem::with`]), overridden by the environment
//! (read with `hakmem_os::getenv`, which does not allocate), over the defaults.
//!
//! Every setting has a default that is right. Values from code and from the environment are
//! checked alike: a bad one gets a warning that names its source and states what is valid, and
//! is not used (a bad value from code gives way to the default; one from the environment, to
//! the value from code or the default). So every value in force is in its documented range, and
//! the arithmetic start-up does on them cannot overflow. An unknown `HAKMEM_*` variable gets a
//! warning naming the closest known one.
//!
//! The settings are read at the first call that needs one, whichever it is (an error path
//! included), not at start-up: `HAKMEM_INVALID_FREE=warn` holds for a bad `free` that is the
//! process's first call. Settings from code arrive with the first allocation through a
//! [`crate::HakMem`](struct@crate::HakMem) (its `&self`), on the cold path, and count if that
//! comes before start-up ([`freeze`]), which is the case in any program that uses it as its
//! global allocator.
//!
//! Storage: the environment is parsed once, under a spin lock, into a static; the settings in
//! force are built into one of two static slots (without code, with code), each written once
//! and then published through an atomic pointer, so reading them is one load.
use crate::out::eprint;
use core::cell::UnsafeCell;
use core::ffi::{c_char, CStr};
use core::fmt;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

/// What to do with a pointer `free` cannot accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnInvalid {
    /// Print the error and abort, as glibc does (the default).
    Abort,
    /// Print the error and go on; the pointer is dropped.
    Warn,
}

/// Every setting. A plain `Copy` value, usable in const context:
/// `Settings { lru_mb: 64, ..Settings::DEFAULT }`.
///
/// Values given with [`crate::HakMem::with`] are checked as the environment's are: a number
/// outside its range (below), or a `stats_file` longer than 1023 bytes, gets a warning on
/// stderr (`hakmem: warning: HAKMEM_LRU_MB="5000000" (from code) is out of range (valid: 0 to
/// 1048576); using 256`) and the default is used instead; an environment variable that sets
/// the field overrides it (and then no warning is given). `stats_file: Some(c"")` means
/// stderr, as an empty `HAKMEM_STATS_FILE` does. Every field takes effect,
/// `background_purge_ms` included (see its notes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `HAKMEM_CHECK` (0/1, default 0): full double-free checks through a per-slab bitmap, and
    /// the validation of the heap's structures at its slow paths (which debug builds always run).
    pub check: bool,
    /// `HAKMEM_INVALID_FREE` (`abort`/`warn`, default `abort`).
    pub on_invalid: OnInvalid,
    /// `HAKMEM_STATS` (0/1, default 0): print the statistics report at exit.
    pub stats: bool,
    /// `HAKMEM_STATS_FILE` (a path, default none: stderr): where the report goes; `%p` in the
    /// path becomes the process id. The report is appended.
    pub stats_file: Option<&'static CStr>,
    /// `HAKMEM_SS_LAZY_ZERO` (0/1, default 1): give a cached region's pages back with
    /// `MADV_DONTNEED` once the lru has gone unused for its purge delay, or at once while the
    /// cached pages exceed its resident budget (lru C4); 0 keeps them until the region decays.
    pub lazy_zero: bool,
    /// `HAKMEM_LRU_MB` (0 to 1048576, default 256; 0 turns the cache off): most MiB of empty
    /// regions cached.
    pub lru_mb: usize,
    /// `HAKMEM_LRU_DECAY_MS` (0 to 86400000, default 1000): a cached region is unmapped after
    /// this long.
    pub lru_decay_ms: u64,
    /// `HAKMEM_BACKGROUND_PURGE_MS` (0 to 3600000, default 0, off): a background thread wakes
    /// this often to run due purges, for programs that go idle. Set from the environment, the
    /// thread starts when hakmem is loaded; set from code, at start-up (the first allocation
    /// through the [`crate::HakMem`](struct@crate::HakMem)); either way only where hakmem serves
    /// the process from its start (the executable, or `LD_PRELOAD`), never in a `dlopen`ed copy.
    pub background_purge_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Where a setting's value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Source {
    /// The default.
    Default,
    /// Set in code, with [`crate::HakMem::with`] (a value equal to the default counts as the
    /// default).
    Code,
    /// The environment variable.
    Env,
}

impl Source {
    /// `default`, `code` or `env`.
    pub fn name(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::Code => "code",
            Source::Env => "env",
        }
    }
}

/// How a setting's value is spelled and checked.
#[derive(Clone, Copy)]
enum Kind {
    /// `0` or `1`.
    Flag,
    /// `abort` or `warn`.
    OnInvalid,
    /// A whole number from 0 to `max`.
    Number { max: u64 },
    /// A path of at most [`STATS_FILE_MAX`] bytes; empty means stderr.
    Path,
}

/// A setting's value, of any kind.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Value {
    Flag(bool),
    OnInvalid(OnInvalid),
    Number(u64),
    Path(Option<&'static CStr>),
}

impl Value {
    const fn flag(self) -> bool {
        match self {
            Value::Flag(b) => b,
            _ => panic!("not a flag"),
        }
    }

    const fn number(self) -> u64 {
        match self {
            Value::Number(n) => n,
            _ => panic!("not a number"),
        }
    }
}

/// One setting, everything about it in one entry (the model: mimalloc's `options.c`): its
/// variable, how its value is spelled and checked, its default, the README's line for it, and
/// its field of [`Settings`].
struct Setting {
    /// The environment variable, which is also the setting's name.
    var: &'static CStr,
    kind: Kind,
    default: Value,
    /// What it does: the README's settings table says exactly this (a test checks it).
    #[cfg_attr(not(test), allow(dead_code))]
    doc: &'static str,
    /// Its field of [`Settings`].
    get: fn(&Settings) -> Value,
    set: fn(&mut Settings, Value),
}

/// Every setting, in the order of [`Settings`]' fields and of the README's table.
const SETTINGS: [Setting; COUNT] = [
    Setting {
        var: c"HAKMEM_CHECK",
        kind: Kind::Flag,
        default: Value::Flag(false),
        doc: "`1` turns on full checks: a per-slab bitmap that catches every double free, and a \
              validation of the heap's structures at its slow paths (a refill, an adoption, \
              thread exit) that aborts naming a broken invariant. Slower.",
        get: |s| Value::Flag(s.check),
        set: |s, v| s.check = v.flag(),
    },
    Setting {
        var: c"HAKMEM_INVALID_FREE",
        kind: Kind::OnInvalid,
        default: Value::OnInvalid(OnInvalid::Abort),
        doc: "`warn` reports an invalid or double free and goes on, instead of aborting.",
        get: |s| Value::OnInvalid(s.on_invalid),
        set: |s, v| {
            if let Value::OnInvalid(o) = v {
                s.on_invalid = o;
            }
        },
    },
    Setting {
        var: c"HAKMEM_STATS",
        kind: Kind::Flag,
        default: Value::Flag(false),
        doc: "`1` prints a statistics report when the process exits (Rust programs and \
              `libhakmem.so` alike), headed by the pid and the program name.",
        get: |s| Value::Flag(s.stats),
        set: |s, v| s.stats = v.flag(),
    },
    Setting {
        var: c"HAKMEM_STATS_FILE",
        kind: Kind::Path,
        default: Value::Path(None),
        doc: "Where that report goes: a path, in which `%p` becomes the pid \
              (`/tmp/hakmem.%p.txt`). The report is appended. At most 1023 bytes.",
        get: |s| Value::Path(s.stats_file),
        set: |s, v| {
            if let Value::Path(p) = v {
                s.stats_file = p;
            }
        },
    },
    Setting {
        var: c"HAKMEM_SS_LAZY_ZERO",
        kind: Kind::Flag,
        default: Value::Flag(true),
        doc: "`1` gives the pages of cached empty regions back (`MADV_DONTNEED`) once the cache \
              has gone 100 ms without a region put in or taken out (the program went quiet), or \
              sooner, oldest first, while the cached pages pass a budget: three quarters of the \
              most memory the program recently held in regions (superslabs and large blocks), \
              or that peak less what it holds now if more (at least 32 MiB, at most \
              `HAKMEM_LRU_MB`). A region reused before that costs no system call and no page \
              fault. The same delay and switch apply to the free pages inside medium regions \
              (blocks of 64 KiB to 1020 KiB): a page run free for one to two delays is purged at \
              the next medium or large call. The purges that are due run at the next allocator \
              slow path (a thread's list of free blocks running empty or full, a large \
              allocation or free, a new thread's first allocation); `hakmem::collect()` and \
              `malloc_trim` run them all at once. `0` keeps the pages until the region is \
              unmapped.",
        get: |s| Value::Flag(s.lazy_zero),
        set: |s, v| s.lazy_zero = v.flag(),
    },
    Setting {
        var: c"HAKMEM_LRU_MB",
        kind: Kind::Number { max: LRU_MB_MAX },
        default: Value::Number(256),
        doc: "The most MiB of empty regions kept for reuse (0 to 1048576); `0` turns the cache \
              off. A request takes the smallest cached region that fits, splitting a much \
              larger one at a 2 MiB step; cached regions that lie end to end are merged, and a \
              large request no one region fits moves the pages of several onto one new \
              mapping.",
        // A usize of a 64-bit target: no value is cut.
        get: |s| Value::Number(s.lru_mb as u64),
        set: |s, v| s.lru_mb = v.number() as usize,
    },
    Setting {
        var: c"HAKMEM_LRU_DECAY_MS",
        kind: Kind::Number {
            max: LRU_DECAY_MS_MAX,
        },
        default: Value::Number(1000),
        doc: "A cached empty region is unmapped once it has waited this many milliseconds (0 to \
              86400000), at the next allocator slow path after that.",
        get: |s| Value::Number(s.lru_decay_ms),
        set: |s, v| s.lru_decay_ms = v.number(),
    },
    Setting {
        var: c"HAKMEM_BACKGROUND_PURGE_MS",
        kind: Kind::Number {
            max: BACKGROUND_PURGE_MS_MAX,
        },
        default: Value::Number(0),
        doc: "`N` > 0 (at most 3600000) starts a thread that wakes every `N` milliseconds to run \
              the due purges and decay, for programs that go fully idle (reach no slow path). \
              Started when hakmem is loaded (set from code: at the first allocation), and only \
              where hakmem serves the process from its start (linked into the program, or \
              `LD_PRELOAD`); never in a `dlopen`ed copy. A forked child has no such thread.",
        get: |s| Value::Number(s.background_purge_ms),
        set: |s, v| s.background_purge_ms = v.number(),
    },
];
const COUNT: usize = 8;

/// The name of setting `i` (its variable's name).
const fn name_of(i: usize) -> &'static str {
    match core::str::from_utf8(SETTINGS[i].var.to_bytes()) {
        Ok(n) => n,
        Err(_) => panic!("a setting's name is ASCII"),
    }
}

/// The names of the settings, in the order of [`Settings`]' fields.
pub const NAMES: [&str; COUNT] = {
    let mut names = [""; COUNT];
    let mut i = 0;
    while i < COUNT {
        names[i] = name_of(i);
        i += 1;
    }
    names
};

// Positions in the table, where code names one setting.
#[cfg(test)]
const CHECK: usize = 0;
#[cfg(test)]
const LRU_MB: usize = 5;
#[cfg(test)]
const LRU_DECAY_MS: usize = 6;
#[cfg(test)]
const BACKGROUND_PURGE_MS: usize = 7;
#[cfg(test)]
const STATS_FILE: usize = 3;

/// `HAKMEM_*` variables that belong to the project's tools, not to the allocator.
const TOOL_PREFIXES: [&str; 4] = [
    "HAKMEM_MODEL_",
    "HAKMEM_TESTS_",
    "HAKMEM_BENCH_",
    "HAKMEM_XTASK_",
];

/// The largest `HAKMEM_LRU_MB`.
pub const LRU_MB_MAX: u64 = 1 << 20;
/// The largest `HAKMEM_LRU_DECAY_MS` (a day).
pub const LRU_DECAY_MS_MAX: u64 = 24 * 3600 * 1000;
/// The longest `HAKMEM_BACKGROUND_PURGE_MS` (an hour).
pub const BACKGROUND_PURGE_MS_MAX: u64 = 3600 * 1000;
/// The longest `HAKMEM_STATS_FILE`, in bytes.
pub const STATS_FILE_MAX: usize = 1023;

impl Settings {
    /// The defaults.
    pub const DEFAULT: Settings = Settings {
        check: SETTINGS[0].default.flag(),
        on_invalid: match SETTINGS[1].default {
            Value::OnInvalid(o) => o,
            _ => panic!("not a choice"),
        },
        stats: SETTINGS[2].default.flag(),
        stats_file: match SETTINGS[3].default {
            Value::Path(p) => p,
            _ => panic!("not a path"),
        },
        lazy_zero: SETTINGS[4].default.flag(),
        lru_mb: SETTINGS[5].default.number() as usize,
        lru_decay_ms: SETTINGS[6].default.number(),
        background_purge_ms: SETTINGS[7].default.number(),
    };

    /// Whether setting `i` differs between `self` and `o`.
    fn differs(&self, o: &Settings, i: usize) -> bool {
        (SETTINGS[i].get)(self) != (SETTINGS[i].get)(o)
    }

    /// Copies setting `i` from `o`.
    fn take(&mut self, o: &Settings, i: usize) {
        (SETTINGS[i].set)(self, (SETTINGS[i].get)(o));
    }

    /// Numeric setting `i`'s value (0 for the others).
    fn number(&self, i: usize) -> u64 {
        match (SETTINGS[i].get)(self) {
            Value::Number(n) => n,
            _ => 0,
        }
    }

    /// Writes setting `i`'s value as the environment would spell it.
    fn write_value(&self, i: usize, f: &mut impl fmt::Write) -> fmt::Result {
        write_value((SETTINGS[i].get)(self), f)
    }
}

/// Writes `v` as the environment would spell it (a path not given: `(stderr)`).
fn write_value(v: Value, f: &mut impl fmt::Write) -> fmt::Result {
    match v {
        Value::Flag(b) => f.write_str(if b { "1" } else { "0" }),
        Value::OnInvalid(OnInvalid::Abort) => f.write_str("abort"),
        Value::OnInvalid(OnInvalid::Warn) => f.write_str("warn"),
        Value::Number(n) => write!(f, "{n}"),
        Value::Path(Some(p)) => f.write_str(p.to_str().unwrap_or("(not UTF-8)")),
        Value::Path(None) => f.write_str("(stderr)"),
    }
}

/// The settings in force, and where each came from. Dereferences to [`Settings`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SettingsInForce {
    values: Settings,
    sources: [Source; COUNT],
}

impl SettingsInForce {
    /// The values.
    pub fn values(&self) -> Settings {
        self.values
    }

    /// Where the setting named `name` (such as `"HAKMEM_LRU_MB"`) came from; `None` for a name
    /// that is not a setting.
    pub fn source(&self, name: &str) -> Option<Source> {
        NAMES
            .iter()
            .position(|&n| n == name)
            .map(|i| self.sources[i])
    }

    /// Every setting as `(name, source)`, in the README's order.
    pub fn sources(&self) -> impl Iterator<Item = (&'static str, Source)> + '_ {
        NAMES.iter().copied().zip(self.sources.iter().copied())
    }

    /// Code's settings under the environment's (`env`, with `set[i]` for each variable given
    /// and valid), over the defaults.
    fn merge(code: Option<&Settings>, env: &Settings, set: &[bool; COUNT]) -> Self {
        let d = Settings::DEFAULT;
        let mut values = code.copied().unwrap_or(d);
        let mut sources = [Source::Default; COUNT];
        for i in 0..COUNT {
            if set[i] {
                values.take(env, i);
                sources[i] = Source::Env;
            } else if values.differs(&d, i) {
                sources[i] = Source::Code;
            }
        }
        Self { values, sources }
    }
}

impl core::ops::Deref for SettingsInForce {
    type Target = Settings;
    fn deref(&self) -> &Settings {
        &self.values
    }
}

/// One line per setting: `HAKMEM_LRU_MB=64 (code)`.
impl fmt::Display for SettingsInForce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, source)) in self.sources().enumerate() {
            write!(f, "{name}=")?;
            self.values.write_value(i, f)?;
            writeln!(f, " ({})", source.name())?;
        }
        Ok(())
    }
}

/// Settings from code, checked as the environment's are: each bad value (a number out of its
/// range, a stats file path too long) replaced by the default, and marked. An empty stats file
/// path means stderr, as in the environment.
fn checked(code: &Settings) -> (Settings, [bool; COUNT]) {
    let mut s = *code;
    let mut bad = [false; COUNT];
    for (i, setting) in SETTINGS.iter().enumerate() {
        match (setting.kind, (setting.get)(code)) {
            (Kind::Number { max }, Value::Number(n)) if n > max => {
                s.take(&Settings::DEFAULT, i);
                bad[i] = true;
            }
            (Kind::Path, Value::Path(Some(p))) if p.is_empty() => {
                (setting.set)(&mut s, Value::Path(None));
            }
            (Kind::Path, Value::Path(Some(p))) if p.to_bytes().len() > STATS_FILE_MAX => {
                s.take(&Settings::DEFAULT, i);
                bad[i] = true;
            }
            _ => {}
        }
    }
    (s, bad)
}

/// Warns that setting `i` from code (`code`, as given) is bad (see [`checked`]).
fn warn_code(i: usize, code: &Settings) {
    match SETTINGS[i].kind {
        Kind::Number { max } => {
            let mut v = crate::out::Buf::<24>::new();
            let _ = code.write_value(i, &mut v);
            let d = Settings::DEFAULT.number(i);
            warn_range(
                NAMES[i],
                v.as_bytes(),
                Origin::Code,
                "is out of range",
                max,
                d,
            );
        }
        Kind::Path => {
            let value = match (SETTINGS[i].get)(code) {
                Value::Path(Some(p)) => p.to_bytes(),
                _ => &[],
            };
            warn(
                NAMES[i],
                value,
                Origin::Code,
                format_args!("a path of at most {STATS_FILE_MAX} bytes"),
                format_args!("the report on stderr"),
            )
        }
        // Every flag and choice a `Settings` can hold is valid.
        Kind::Flag | Kind::OnInvalid => {}
    }
}

/// The settings' statics (see the module docs).
struct Store {
    lock: AtomicBool,
    /// The settings in force: null until first read, then one of `slots`.
    current: AtomicPtr<SettingsInForce>,
    /// Start-up has used the settings: code can no longer change them.
    frozen: AtomicBool,
    /// Code's settings are in `slots[1]`.
    code_applied: AtomicBool,
    /// The parsed environment and which variables it set (under `lock`, once).
    env: UnsafeCell<Option<(Settings, [bool; COUNT])>>,
    /// Without code, with code: each written once, under `lock`, before it is published.
    slots: [UnsafeCell<MaybeUninit<SettingsInForce>>; 2],
    /// `HAKMEM_STATS_FILE`'s value, NUL-terminated (written once, with `env`).
    path: UnsafeCell<[u8; STATS_FILE_MAX + 1]>,
}

// SAFETY: `env`, `slots` and `path` are written only under `lock`, each before anything refers
// to it, and never again once published (`current` is stored with Release after the write and
// read with Acquire); everything else is atomic.
unsafe impl Sync for Store {}

impl Store {
    /// A store with nothing read yet.
    const fn new() -> Self {
        Store {
            lock: AtomicBool::new(false),
            current: AtomicPtr::new(core::ptr::null_mut()),
            frozen: AtomicBool::new(false),
            code_applied: AtomicBool::new(false),
            env: UnsafeCell::new(None),
            slots: [
                UnsafeCell::new(MaybeUninit::uninit()),
                UnsafeCell::new(MaybeUninit::uninit()),
            ],
            path: UnsafeCell::new([0; STATS_FILE_MAX + 1]),
        }
    }
}

static STORE: Store = Store::new();

/// The settings in force, read from the environment by the first call that needs them.
#[inline]
pub fn in_force() -> &'static SettingsInForce {
    let p = STORE.current.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: a published slot, never written again.
        return unsafe { &*p };
    }
    load(None, false)
}

/// Applies settings from code, unless start-up has already used the settings (then they are
/// ignored: the values in force stay as reported). Cold: called before start-up only.
#[cold]
pub fn apply_code(code: &Option<Settings>) {
    if let Some(c) = code {
        if !STORE.frozen.load(Ordering::Acquire) && !STORE.code_applied.load(Ordering::Acquire) {
            load(Some(c), false);
        }
    }
}

/// True once settings from code are part of the settings in force.
pub fn code_applied() -> bool {
    STORE.code_applied.load(Ordering::Acquire)
}

/// The settings start-up uses; code can no longer change them after this.
#[cold]
pub fn freeze() -> Settings {
    load(None, true).values
}

#[cold]
fn load(raw: Option<&Settings>, freeze: bool) -> &'static SettingsInForce {
    // Checked before anything uses them: only values in range go further.
    let vetted = raw.map(checked);
    let code = vetted.as_ref().map(|(c, _)| c);
    while STORE
        .lock
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    // SAFETY: under the lock; `env` is written here only, and read only under the lock.
    let env = unsafe { &mut *STORE.env.get() };
    let (env_values, set) = *env.get_or_insert_with(|| {
        let base = code.copied().unwrap_or(Settings::DEFAULT);
        warn_unknown_variables();
        parse(&base, &hakmem_os::getenv, &STORE)
    });
    let frozen = STORE.frozen.load(Ordering::Relaxed);
    let applied = STORE.code_applied.load(Ordering::Relaxed);
    let slot = if code.is_some() && !frozen && !applied {
        STORE.code_applied.store(true, Ordering::Relaxed);
        Some(1)
    } else if STORE.current.load(Ordering::Relaxed).is_null() {
        Some(0)
    } else {
        None
    };
    if let Some(i) = slot {
        let s = SettingsInForce::merge(code, &env_values, &set);
        if let (1, Some(raw), Some((_, bad))) = (i, raw, &vetted) {
            // Once: slot 1 is written once. A bad value the environment overrides is not used,
            // so not warned about.
            for j in (0..COUNT).filter(|&j| bad[j] && !set[j]) {
                warn_code(j, raw);
            }
        }
        // SAFETY: under the lock; slot `i` is written once (slot 0 while nothing is published,
        // slot 1 the one time code is applied), before it is published below.
        let p = unsafe { (*STORE.slots[i].get()).write(s) } as *mut SettingsInForce;
        STORE.current.store(p, Ordering::Release);
    }
    if freeze {
        STORE.frozen.store(true, Ordering::Release);
    }
    let p = STORE.current.load(Ordering::Relaxed);
    STORE.lock.store(false, Ordering::Release);
    // SAFETY: published above or before, never written again.
    unsafe { &*p }
}

/// Parses the environment (through `get`) over `base`: the values, and which were set. A bad
/// value is warned about (naming the value kept) and not used. `HAKMEM_STATS_FILE` is copied
/// into `store`'s path buffer.
fn parse<'a>(
    base: &Settings,
    get: &impl Fn(&CStr) -> Option<&'a [u8]>,
    store: &Store,
) -> (Settings, [bool; COUNT]) {
    let mut s = *base;
    let mut set = [false; COUNT];
    for (i, setting) in SETTINGS.iter().enumerate() {
        let Some(v) = get(setting.var) else { continue };
        let cur = (setting.get)(&s);
        let name = NAMES[i];
        let value = match (setting.kind, v) {
            (Kind::Flag, b"1") => Value::Flag(true),
            (Kind::Flag, b"0") => Value::Flag(false),
            (Kind::OnInvalid, b"abort") => Value::OnInvalid(OnInvalid::Abort),
            (Kind::OnInvalid, b"warn") => Value::OnInvalid(OnInvalid::Warn),
            (Kind::Flag | Kind::OnInvalid, _) => {
                let mut shown_cur = crate::out::Buf::<16>::new();
                let _ = write_value(cur, &mut shown_cur);
                let expected = match setting.kind {
                    Kind::Flag => "0 or 1",
                    _ => "abort or warn",
                };
                warn(
                    name,
                    v,
                    Origin::Env,
                    format_args!("{expected}"),
                    format_args!("{}", shown_cur.as_str()),
                );
                continue;
            }
            (Kind::Number { max }, _) => {
                let cur = cur.number();
                match core::str::from_utf8(v)
                    .ok()
                    .and_then(|t| t.parse::<u64>().ok())
                {
                    Some(n) if n <= max => Value::Number(n),
                    Some(_) => {
                        warn_range(name, v, Origin::Env, "is out of range", max, cur);
                        continue;
                    }
                    None => {
                        warn_range(name, v, Origin::Env, "is not a whole number", max, cur);
                        continue;
                    }
                }
            }
            (Kind::Path, []) => Value::Path(None),
            (Kind::Path, _) if v.len() > STATS_FILE_MAX => {
                warn(
                    name,
                    v,
                    Origin::Env,
                    format_args!("a path of at most {STATS_FILE_MAX} bytes"),
                    format_args!("the report on stderr"),
                );
                continue;
            }
            (Kind::Path, _) => {
                // SAFETY: called under the store's lock, once, before any settings that refer
                // to the buffer are published (the one path setting is parsed once).
                let buf = unsafe { &mut *store.path.get() };
                buf[..v.len()].copy_from_slice(v);
                buf[v.len()] = 0;
                // SAFETY: the buffer lives for the program and is not written again (see
                // above).
                let buf: &'static [u8] = unsafe { &*store.path.get() };
                Value::Path(CStr::from_bytes_until_nul(buf).ok())
            }
        };
        (setting.set)(&mut s, value);
        set[i] = true;
    }
    (s, set)
}

fn shown(value: &[u8]) -> &str {
    core::str::from_utf8(value).unwrap_or("(not UTF-8)")
}

/// Where a bad value came from, as its warning names it.
#[derive(Clone, Copy)]
enum Origin {
    Code,
    Env,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Code => "from code",
            Origin::Env => "from the environment",
        })
    }
}

fn warn(
    name: &str,
    value: &[u8],
    from: Origin,
    expected: fmt::Arguments<'_>,
    using: fmt::Arguments<'_>,
) {
    eprint(format_args!(
        "hakmem: warning: {name}={:?} ({from}) is not valid (expected {expected}); using {using}\n",
        shown(value),
    ));
}

fn warn_range(name: &str, value: &[u8], from: Origin, what: &str, max: u64, using: u64) {
    eprint(format_args!(
        "hakmem: warning: {name}={:?} ({from}) {what} (valid: 0 to {max}); using {using}\n",
        shown(value),
    ));
}

/// Warns about each `HAKMEM_*` variable that is not a setting, naming the closest one. Walks
/// `environ` without allocating.
fn warn_unknown_variables() {
    extern "C" {
        static environ: *const *const c_char;
    }
    // SAFETY: glibc's environment array: null, or null-terminated pointers to NUL-terminated
    // strings. It is read here once, before anything in this process is likely to change it.
    let mut p = unsafe { environ };
    if p.is_null() {
        return;
    }
    loop {
        // SAFETY: within the null-terminated array.
        let e = unsafe { *p };
        if e.is_null() {
            break;
        }
        // SAFETY: a NUL-terminated string of the environment.
        let entry = unsafe { CStr::from_ptr(e) }.to_bytes();
        let var = entry.split(|&b| b == b'=').next().unwrap_or(entry);
        if let Some(closest) = unknown(var) {
            eprint(format_args!(
                "hakmem: warning: {} is not a hakmem setting (did you mean {closest}?); ignored\n",
                shown(var),
            ));
        }
        // SAFETY: the next entry of the array (at most the terminating null).
        p = unsafe { p.add(1) };
    }
}

/// For a `HAKMEM_*` name that is no setting (nor a tool's variable), the closest setting.
fn unknown(var: &[u8]) -> Option<&'static str> {
    if !var.starts_with(b"HAKMEM_")
        || NAMES.iter().any(|n| n.as_bytes() == var)
        || TOOL_PREFIXES.iter().any(|p| var.starts_with(p.as_bytes()))
        || crate::profile::NAMES.iter().any(|n| n.as_bytes() == var)
    {
        return None;
    }
    NAMES
        .iter()
        .copied()
        .min_by_key(|n| edit_distance(var, n.as_bytes()))
}

/// Levenshtein distance, on the stack (names longer than 63 bytes compare by their start).
fn edit_distance(a: &[u8], b: &[u8]) -> usize {
    const N: usize = 64;
    let (a, b) = (&a[..a.len().min(N - 1)], &b[..b.len().min(N - 1)]);
    let mut prev = [0usize; N];
    let mut cur = [0usize; N];
    for (j, p) in prev.iter_mut().enumerate().take(b.len() + 1) {
        *p = j;
    }
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let sub = prev[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            cur[j] = sub.min(prev[j] + 1).min(cur[j - 1] + 1);
        }
        core::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> &'static Store {
        Box::leak(Box::new(Store::new()))
    }

    fn with(pairs: &'static [(&'static CStr, &'static [u8])]) -> (Settings, [bool; COUNT]) {
        let get = |n: &CStr| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
        parse(&Settings::DEFAULT, &get, store())
    }

    #[test]
    fn defaults_and_valid_values() {
        assert_eq!(with(&[]), (Settings::DEFAULT, [false; COUNT]));
        let (s, set) = with(&[
            (c"HAKMEM_CHECK", b"1"),
            (c"HAKMEM_INVALID_FREE", b"warn"),
            (c"HAKMEM_STATS", b"1"),
            (c"HAKMEM_STATS_FILE", b"/tmp/r.%p"),
            (c"HAKMEM_SS_LAZY_ZERO", b"0"),
            (c"HAKMEM_LRU_MB", b"0"),
            (c"HAKMEM_LRU_DECAY_MS", b"250"),
            (c"HAKMEM_BACKGROUND_PURGE_MS", b"100"),
        ]);
        assert_eq!(s.background_purge_ms, 100);
        assert!(s.check && s.stats && !s.lazy_zero);
        assert_eq!(
            (s.on_invalid, s.lru_mb, s.lru_decay_ms, s.stats_file),
            (OnInvalid::Warn, 0, 250, Some(c"/tmp/r.%p"))
        );
        assert_eq!(set, [true; COUNT]);
    }

    #[test]
    fn bad_values_fall_back_to_defaults() {
        let (s, set) = with(&[
            (c"HAKMEM_CHECK", b"yes"),
            (c"HAKMEM_INVALID_FREE", b"ignore"),
            (c"HAKMEM_LRU_MB", b"-3"),
            (c"HAKMEM_LRU_DECAY_MS", b"99999999999999999"),
        ]);
        assert_eq!((s, set), (Settings::DEFAULT, [false; COUNT]));
    }

    #[test]
    fn environment_overrides_code_over_defaults() {
        let code = Settings {
            lru_mb: 64,
            check: true,
            lru_decay_ms: Settings::DEFAULT.lru_decay_ms,
            ..Settings::DEFAULT
        };
        let (env, set) = with(&[(c"HAKMEM_CHECK", b"0"), (c"HAKMEM_STATS", b"1")]);
        let f = SettingsInForce::merge(Some(&code), &env, &set);
        assert_eq!((f.lru_mb, f.check, f.stats), (64, false, true));
        assert_eq!(f.source("HAKMEM_LRU_MB"), Some(Source::Code));
        assert_eq!(f.source("HAKMEM_CHECK"), Some(Source::Env));
        assert_eq!(f.source("HAKMEM_STATS"), Some(Source::Env));
        // Equal to the default: reported as the default.
        assert_eq!(f.source("HAKMEM_LRU_DECAY_MS"), Some(Source::Default));
        assert_eq!(f.source("HAKMEM_NOPE"), None);
        let shown = f.to_string();
        assert!(shown.contains("HAKMEM_LRU_MB=64 (code)\n"), "{shown}");
        assert!(shown.contains("HAKMEM_STATS=1 (env)\n"), "{shown}");
        assert!(
            shown.contains("HAKMEM_STATS_FILE=(stderr) (default)\n"),
            "{shown}"
        );
    }

    #[test]
    fn code_values_are_checked_as_the_environments_are() {
        let (s, bad) = checked(&Settings::DEFAULT);
        assert_eq!((s, bad), (Settings::DEFAULT, [false; COUNT]));
        let at_max = Settings {
            lru_mb: LRU_MB_MAX as usize,
            lru_decay_ms: LRU_DECAY_MS_MAX,
            background_purge_ms: BACKGROUND_PURGE_MS_MAX,
            ..Settings::DEFAULT
        };
        assert_eq!(checked(&at_max), (at_max, [false; COUNT]));
        static LONG: [u8; STATS_FILE_MAX + 2] = {
            let mut b = [b'x'; STATS_FILE_MAX + 2];
            b[STATS_FILE_MAX + 1] = 0;
            b
        };
        let long = CStr::from_bytes_with_nul(&LONG).unwrap();
        let past = Settings {
            lru_mb: usize::MAX,
            lru_decay_ms: u64::MAX,
            background_purge_ms: BACKGROUND_PURGE_MS_MAX + 1,
            stats_file: Some(long),
            check: true,
            ..Settings::DEFAULT
        };
        let (s, bad) = checked(&past);
        assert_eq!(
            s,
            Settings {
                check: true,
                ..Settings::DEFAULT
            }
        );
        let mut expected = [false; COUNT];
        for i in [LRU_MB, LRU_DECAY_MS, BACKGROUND_PURGE_MS, STATS_FILE] {
            expected[i] = true;
        }
        assert_eq!(bad, expected);
        // An empty path is stderr, as in the environment: not bad.
        let empty = Settings {
            stats_file: Some(c""),
            ..Settings::DEFAULT
        };
        assert_eq!(checked(&empty), (Settings::DEFAULT, [false; COUNT]));
        // What start-up computes from any checked value fits.
        for v in [s, at_max] {
            assert!(v.lru_mb.checked_mul(1 << 20).is_some());
            assert!(v.lru_decay_ms.checked_mul(1_000_000).is_some());
        }
    }

    #[test]
    fn positions_name_their_settings() {
        assert_eq!(NAMES[CHECK], "HAKMEM_CHECK");
        assert_eq!(NAMES[STATS_FILE], "HAKMEM_STATS_FILE");
        assert_eq!(NAMES[LRU_MB], "HAKMEM_LRU_MB");
        assert_eq!(NAMES[LRU_DECAY_MS], "HAKMEM_LRU_DECAY_MS");
        assert_eq!(NAMES[BACKGROUND_PURGE_MS], "HAKMEM_BACKGROUND_PURGE_MS");
        for (i, setting) in SETTINGS.iter().enumerate() {
            assert!(
                (setting.get)(&Settings::DEFAULT) == setting.default,
                "{}",
                NAMES[i]
            );
        }
    }

    #[test]
    fn the_readmes_table_is_the_settings_table() {
        let readme = include_str!("../../README.md");
        // The settings table is the README's first table of `HAKMEM_*` rows (the profiler's
        // own settings have a table of their own, in its section).
        let rows: Vec<&str> = readme
            .lines()
            .skip_while(|l| !l.starts_with("| `HAKMEM_"))
            .take_while(|l| l.starts_with("| `HAKMEM_"))
            .collect();
        assert_eq!(rows.len(), COUNT, "one README row per setting: {rows:#?}");
        for (i, row) in rows.iter().enumerate() {
            let inner = row.strip_prefix("| ").and_then(|r| r.strip_suffix(" |"));
            let cells: Vec<&str> = inner.expect(row).splitn(3, " | ").collect();
            let default = match SETTINGS[i].default {
                Value::Path(None) => "stderr".to_string(),
                v => {
                    let mut spelled = String::new();
                    write_value(v, &mut spelled).unwrap();
                    format!("`{spelled}`")
                }
            };
            assert_eq!(
                cells,
                [
                    format!("`{}`", NAMES[i]).as_str(),
                    default.as_str(),
                    SETTINGS[i].doc
                ],
                "README row {i} and the table's entry differ"
            );
        }
    }

    #[test]
    fn unknown_names_get_the_closest_setting() {
        assert_eq!(unknown(b"HAKMEM_STAT"), Some("HAKMEM_STATS"));
        assert_eq!(unknown(b"HAKMEM_LRUMB"), Some("HAKMEM_LRU_MB"));
        assert_eq!(unknown(b"HAKMEM_INVALID_FRE"), Some("HAKMEM_INVALID_FREE"));
        assert_eq!(unknown(b"HAKMEM_STATS"), None);
        assert_eq!(unknown(b"HAKMEM_MODEL_SEED"), None);
        assert_eq!(unknown(b"PATH"), None);
        assert_eq!(edit_distance(b"kitten", b"sitting"), 3);
        assert_eq!(edit_distance(b"", b"abc"), 3);
    }
}
