//! The `HAKMEM_*` settings: read once at start-up with `libc::getenv` (which does not allocate).
//! Every setting has a default that is right; a bad value gets a warning and the default.
use crate::out::eprint;
use core::ffi::CStr;

/// What to do with a pointer `free` cannot accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnInvalid {
    /// Print the error and abort, as glibc does (the default).
    Abort,
    /// Print the error and go on; the pointer is dropped.
    Warn,
}

/// Every setting, with its value in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `HAKMEM_CHECK` (0/1, default 0): full double-free checks through a per-slab bitmap.
    pub check: bool,
    /// `HAKMEM_INVALID_FREE` (`abort`/`warn`, default `abort`).
    pub on_invalid: OnInvalid,
    /// `HAKMEM_STATS` (0/1, default 0): print a report on stderr at exit (libhakmem.so).
    pub stats: bool,
    /// `HAKMEM_SS_LAZY_ZERO` (0/1, default 1): give a cached region's pages back with
    /// `MADV_DONTNEED` as it enters the lru.
    pub lazy_zero: bool,
    /// `HAKMEM_LRU_MB` (default 256; 0 turns the cache off): most MiB of empty regions cached.
    pub lru_mb: usize,
    /// `HAKMEM_LRU_DECAY_MS` (default 1000): a cached region is unmapped after this long.
    pub lru_decay_ms: u64,
    /// `HAKMEM_BACKGROUND_PURGE_MS` (default 0, off): a background thread wakes this often to
    /// run due purges, for programs that go idle.
    pub background_purge_ms: u64,
}

impl Settings {
    /// The defaults.
    pub const DEFAULT: Settings = Settings {
        check: false,
        on_invalid: OnInvalid::Abort,
        stats: false,
        lazy_zero: true,
        lru_mb: 256,
        lru_decay_ms: 1000,
        background_purge_ms: 0,
    };

    /// Reads the environment.
    pub fn from_env() -> Settings {
        Self::from_lookup(|name| {
            // SAFETY: `name` is NUL-terminated; getenv returns null or a NUL-terminated string
            // that stays valid while the environment is not changed (we copy what we need now).
            let v = unsafe { libc::getenv(name.as_ptr()) };
            // SAFETY: as above.
            (!v.is_null()).then(|| unsafe { CStr::from_ptr(v) }.to_bytes())
        })
    }

    /// Reads settings through `get` (the environment, or a table in tests).
    pub fn from_lookup<'a>(get: impl Fn(&CStr) -> Option<&'a [u8]>) -> Settings {
        let d = Self::DEFAULT;
        Settings {
            check: flag(&get, c"HAKMEM_CHECK", d.check),
            on_invalid: match get(c"HAKMEM_INVALID_FREE") {
                None => d.on_invalid,
                Some(b"abort") => OnInvalid::Abort,
                Some(b"warn") => OnInvalid::Warn,
                Some(v) => {
                    warn(c"HAKMEM_INVALID_FREE", v, "abort or warn", "abort");
                    d.on_invalid
                }
            },
            stats: flag(&get, c"HAKMEM_STATS", d.stats),
            lazy_zero: flag(&get, c"HAKMEM_SS_LAZY_ZERO", d.lazy_zero),
            lru_mb: number(&get, c"HAKMEM_LRU_MB", d.lru_mb as u64, 1 << 20) as usize,
            lru_decay_ms: number(
                &get,
                c"HAKMEM_LRU_DECAY_MS",
                d.lru_decay_ms,
                24 * 3600 * 1000,
            ),
            background_purge_ms: number(
                &get,
                c"HAKMEM_BACKGROUND_PURGE_MS",
                d.background_purge_ms,
                3600 * 1000,
            ),
        }
    }
}

fn flag<'a>(get: &impl Fn(&CStr) -> Option<&'a [u8]>, name: &CStr, default: bool) -> bool {
    match get(name) {
        None => default,
        Some(b"1") => true,
        Some(b"0") => false,
        Some(v) => {
            warn(name, v, "0 or 1", if default { "1" } else { "0" });
            default
        }
    }
}

fn number<'a>(
    get: &impl Fn(&CStr) -> Option<&'a [u8]>,
    name: &CStr,
    default: u64,
    max: u64,
) -> u64 {
    let Some(v) = get(name) else { return default };
    let parsed = core::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&n| n <= max);
    match parsed {
        Some(n) => n,
        None => {
            let mut buf = [0u8; 24];
            warn(
                name,
                v,
                "a whole number up to the limit",
                fmt_u64(default, &mut buf),
            );
            default
        }
    }
}

fn fmt_u64(mut n: u64, buf: &mut [u8; 24]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    core::str::from_utf8(&buf[i..]).unwrap_or("?")
}

fn warn(name: &CStr, value: &[u8], expected: &str, default: &str) {
    let shown = core::str::from_utf8(value).unwrap_or("(not UTF-8)");
    eprint(format_args!(
        "hakmem: warning: {}={shown:?} is not valid (expected {expected}); using the default {default}\n",
        name.to_str().unwrap_or("?"),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &'static [(&'static CStr, &'static [u8])]) -> Settings {
        Settings::from_lookup(|n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| *v))
    }

    #[test]
    fn defaults_and_valid_values() {
        assert_eq!(with(&[]), Settings::DEFAULT);
        let s = with(&[
            (c"HAKMEM_CHECK", b"1"),
            (c"HAKMEM_INVALID_FREE", b"warn"),
            (c"HAKMEM_STATS", b"1"),
            (c"HAKMEM_SS_LAZY_ZERO", b"0"),
            (c"HAKMEM_LRU_MB", b"0"),
            (c"HAKMEM_LRU_DECAY_MS", b"250"),
            (c"HAKMEM_BACKGROUND_PURGE_MS", b"100"),
        ]);
        assert_eq!(s.background_purge_ms, 100);
        assert!(s.check && s.stats && !s.lazy_zero);
        assert_eq!(
            (s.on_invalid, s.lru_mb, s.lru_decay_ms),
            (OnInvalid::Warn, 0, 250)
        );
    }

    #[test]
    fn bad_values_fall_back_to_defaults() {
        let s = with(&[
            (c"HAKMEM_CHECK", b"yes"),
            (c"HAKMEM_INVALID_FREE", b"ignore"),
            (c"HAKMEM_LRU_MB", b"-3"),
            (c"HAKMEM_LRU_DECAY_MS", b"99999999999999999"),
        ]);
        assert_eq!(s, Settings::DEFAULT);
    }
}
