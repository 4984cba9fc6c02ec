//! Stats as data (issue 12): named accessors, the report (`Display`, and at exit with
//! `HAKMEM_STATS=1`, headed by the pid and the program name, to stderr or `HAKMEM_STATS_FILE`),
//! JSON with the `serde` feature, and warnings for unknown or out-of-range settings.
mod common;
use common::child;

#[global_allocator]
static A: hakmem::HakMem = hakmem::HakMem;

/// The program name the report shows: the test binary's file name.
fn program() -> String {
    let exe = std::env::current_exe().unwrap();
    exe.file_name().unwrap().to_string_lossy().into_owned()
}

/// 3000 blocks of 20 000 bytes: a class nothing else in a child process uses.
const N: usize = 3000;
const SIZE: usize = 20_000;

#[test]
#[ignore = "run by the_child_reports_its_figures"]
fn child_holds_blocks() {
    let before = hakmem::stats();
    let held: Vec<Box<[u8; SIZE]>> = (0..N).map(|_| Box::new([7u8; SIZE])).collect();
    let s = hakmem::stats();
    let row = s
        .classes()
        .find(|c| c.block_size >= SIZE && c.allocs > 0)
        .expect("the class of the blocks");
    assert!(row.live >= N as i64 && row.live < N as i64 + 10, "{row:?}");
    assert!(row.peak_live_or_cached >= row.live as u64, "{row:?}");
    assert_eq!(row.live_bytes(), row.live * row.block_size as i64);
    assert!(s.live_bytes() - before.live_bytes() >= (N * SIZE) as i64);
    assert!(
        s.mapped_bytes() >= (N * SIZE) as u64,
        "{}",
        s.mapped_bytes()
    );
    assert!(s.resident_bytes() >= (N * SIZE) as u64, "touched: resident");
    assert!(
        s.peak_resident_bytes() >= s.resident_bytes(),
        "the peak is never below the resident set: {} < {}",
        s.peak_resident_bytes(),
        s.resident_bytes()
    );
    assert_eq!(s.pid(), std::process::id());
    assert_eq!(s.class(row_index(&s, row.block_size)), Some(row));
    // Debug names what counted; no raw 128-entry arrays.
    let debug = format!("{s:?}");
    assert!(!debug.contains("0, 0, 0, 0"), "{debug}");
    assert!(debug.len() < 6000, "{}", debug.len());
    // ... under the accessors' names, not the struct's internal fields.
    for name in [
        "live_blocks",
        "mapped_bytes",
        "peak_resident_bytes",
        "total_allocs",
    ] {
        assert!(debug.contains(&format!("{name}: ")), "{name} in {debug}");
    }
    for internal in ["snap", "held:", "peak_held"] {
        assert!(!debug.contains(internal), "{internal} in {debug}");
    }
    assert_eq!(row.tier, hakmem::Tier::Small);
    assert_eq!(
        s.classes().last().map(|c| c.tier),
        Some(hakmem::Tier::MediumAndLarge)
    );
    // Display is the report.
    let report = s.to_string();
    assert!(report.starts_with(&format!(
        "hakmem: statistics for pid {} ({})\n",
        std::process::id(),
        program()
    )));
    assert!(report.contains("  total allocs "), "{report}");
    assert!(report.contains("reserved"), "{report}");
    #[cfg(feature = "serde")]
    {
        let v: serde_json::Value = serde_json::to_value(s).unwrap();
        assert_eq!(v["pid"], std::process::id());
        assert_eq!(v["program"], program().as_str());
        assert_eq!(v["live_bytes"], s.live_bytes());
        assert_eq!(v["mapped_bytes"], s.mapped_bytes());
        assert_eq!(v["reserved_bytes"], s.reserved_bytes());
        assert_eq!(v["cached_bytes"], s.cached_bytes());
        assert_eq!(v["resident_bytes"], s.resident_bytes());
        assert_eq!(v["events"]["mmap"]["count"], s.count(hakmem::Event::Mmap));
        let classes = v["classes"].as_array().unwrap();
        assert!(classes
            .iter()
            .any(|c| c["block_size"] == row.block_size && c["live"] == row.live));
        assert!(classes
            .iter()
            .all(|c| c["tier"] == "small" || c["tier"] == "medium_and_large"));
        println!("json {}", serde_json::to_string(&s).unwrap().len());
    }
    drop(held);
    println!("checked");
}

fn row_index(s: &hakmem::Stats, block_size: usize) -> usize {
    s.classes()
        .position(|c| c.block_size == block_size)
        .unwrap()
}

#[test]
fn the_child_reports_its_figures() {
    let out = child("child_holds_blocks", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("checked"), "{stdout}");
    #[cfg(feature = "serde")]
    assert!(stdout.contains("json "), "the JSON was checked: {stdout}");
    assert!(
        !stderr.contains("statistics for"),
        "no report unless asked: {stderr}"
    );
}

#[test]
fn the_exit_report_opens_with_the_pid_and_the_program_name() {
    let out = child(
        "child_holds_blocks",
        &[("HAKMEM_STATS", "1"), ("HAKMEM_STAT", "1")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let header = "hakmem: statistics for pid ";
    assert_eq!(stderr.matches(header).count(), 1, "one report: {stderr}");
    let line = stderr.lines().find(|l| l.starts_with(header)).unwrap();
    let pid: u32 = line[header.len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(pid > 1);
    assert!(line.ends_with(&format!("({})", program())), "{line}");
    assert!(stderr.contains("  total allocs "), "{stderr}");
    // The typo gets a warning naming the setting meant.
    assert!(
        stderr.contains(
            "hakmem: warning: HAKMEM_STAT is not a hakmem setting (did you mean HAKMEM_STATS?)"
        ),
        "{stderr}"
    );
}

#[test]
fn the_report_goes_to_the_stats_file_with_the_pid_in_its_name() {
    let dir = std::env::temp_dir().join(format!("hakmem-stats-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pattern = dir.join("report.%p.txt");
    let out = child(
        "child_holds_blocks",
        &[
            ("HAKMEM_STATS", "1"),
            ("HAKMEM_STATS_FILE", pattern.to_str().unwrap()),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("statistics for"),
        "not on stderr: {stderr}"
    );
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    let pid = name
        .strip_prefix("report.")
        .and_then(|n| n.strip_suffix(".txt"))
        .unwrap();
    assert!(
        text.starts_with(&format!("hakmem: statistics for pid {pid} (")),
        "{name}: {text}"
    );
    assert_eq!(text.matches("statistics for").count(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn values_out_of_range_get_a_warning_that_states_the_range() {
    let out = child(
        "child_holds_blocks",
        &[
            ("HAKMEM_LRU_DECAY_MS", "99999999999"),
            ("HAKMEM_LRU_MB", "lots"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "hakmem: warning: HAKMEM_LRU_DECAY_MS=\"99999999999\" (from the environment) is out of range (valid: 0 to 86400000); using 1000"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "HAKMEM_LRU_MB=\"lots\" (from the environment) is not a whole number (valid: 0 to 1048576); using 256"
        ),
        "{stderr}"
    );
}
