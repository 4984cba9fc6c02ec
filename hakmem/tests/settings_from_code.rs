//! Settings from code (issue 12): `HakMem::with(Settings { .. })` as the global allocator; the
//! environment overrides each setting it names; `hakmem::settings()` says where each came from.
use hakmem::{HakMem, OnInvalid, Settings, Source};
mod common;
use common::child;

#[global_allocator]
static B: HakMem = HakMem::with(Settings {
    lru_mb: 64,
    on_invalid: OnInvalid::Warn,
    ..Settings::DEFAULT
});

/// The plain form compiles as a value too.
#[allow(dead_code)]
static A: hakmem::HakMem = hakmem::HakMem;

#[test]
#[ignore = "run by code_settings_apply_and_the_environment_overrides_them"]
fn child_reports_settings() {
    print!("{}", hakmem::settings());
    let mut on_stack = 1u8;
    // SAFETY: not ours: reported, and with `warn` from code (unless overridden) dropped.
    unsafe { hakmem::raw::free(&mut on_stack) };
    println!("went on");
}

#[test]
fn code_settings_apply_and_the_environment_overrides_them() {
    let out = child("child_reports_settings", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("HAKMEM_LRU_MB=64 (code)\n"), "{stdout}");
    assert!(
        stdout.contains("HAKMEM_INVALID_FREE=warn (code)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("HAKMEM_LRU_DECAY_MS=1000 (default)\n"),
        "{stdout}"
    );
    assert!(stdout.contains("went on"), "warn from code holds");

    let out = child(
        "child_reports_settings",
        &[("HAKMEM_LRU_MB", "32"), ("HAKMEM_INVALID_FREE", "abort")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("HAKMEM_LRU_MB=32 (env)\n"), "{stdout}");
    assert!(
        stdout.contains("HAKMEM_INVALID_FREE=abort (env)\n"),
        "{stdout}"
    );
    assert!(!out.status.success(), "abort from the environment holds");
    assert!(!stdout.contains("went on"));
}

#[test]
fn settings_in_force_are_the_code_ones_here() {
    // This process may have HAKMEM_* variables of its own: compare with what they say.
    let s = hakmem::settings();
    let env_mb = std::env::var("HAKMEM_LRU_MB").ok();
    match env_mb.as_deref().and_then(|v| v.parse::<usize>().ok()) {
        Some(mb) if mb <= 1 << 20 => {
            assert_eq!(
                (s.lru_mb, s.source("HAKMEM_LRU_MB")),
                (mb, Some(Source::Env))
            )
        }
        _ => assert_eq!(
            (s.lru_mb, s.source("HAKMEM_LRU_MB")),
            (64, Some(Source::Code))
        ),
    }
    assert_eq!(B.code_settings().map(|c| c.lru_mb), Some(64));
    assert_eq!(A.code_settings(), None);
    // Settings stay a Copy struct usable in const context.
    const C: Settings = Settings {
        check: true,
        ..Settings::DEFAULT
    };
    let copy = C;
    assert!(copy.check && C.check);
    assert_eq!(
        s.sources().count(),
        hakmem::SETTING_NAMES.len(),
        "every setting is listed with its source"
    );
}

#[test]
#[ignore = "run by the_lru_holds_what_code_allows"]
fn child_frees_160_mib_of_large_blocks() {
    let blocks: Vec<Vec<u8>> = (0..40).map(|_| vec![1u8; 4 << 20]).collect();
    drop(blocks);
    println!("\ncached {} bytes", hakmem::stats().cached_bytes());
}

#[test]
fn the_lru_holds_what_code_allows() {
    // A day of decay, so nothing leaves the cache by age during the run.
    let out = child(
        "child_frees_160_mib_of_large_blocks",
        &[("HAKMEM_LRU_DECAY_MS", "86400000")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let cached: u64 = stdout
        .lines()
        .find_map(|l| l.split("cached ").nth(1))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        cached > 0 && cached <= 64 << 20,
        "lru_mb = 64 from code bounds the cache: {cached}"
    );
}
