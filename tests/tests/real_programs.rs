//! Real programs of the machine on libhakmem.so: python3, git, gcc, perl and sort. Each must
//! produce the right result, and hakmem must have served it (its report counts allocations).
use hakmem_tests::{run, Harness};
use std::fs;
use std::path::Path;

fn h() -> &'static Harness {
    Harness::get(env!("CARGO_TARGET_TMPDIR"))
}

/// Builds a large nested dict on four threads, and round-trips it through json and pickle.
const PYTHON_SCRIPT: &str = r#"
import json, pickle, random, threading

def build(seed, n):
    r = random.Random(seed)
    d = {}
    for i in range(n):
        d[f"k{seed}-{i}"] = {
            "id": i,
            "name": "x" * r.randint(0, 50),
            "tags": [r.random() for _ in range(r.randint(0, 8))],
            "nested": {"a": [i, str(i), None, True], "b": {"c": r.randint(0, 10**12)}},
        }
    return d

sizes = [0] * 4
def work(t):
    d = build(t, 8000)
    s = json.dumps(d, sort_keys=True)
    assert json.loads(s) == d
    assert pickle.loads(pickle.dumps(d)) == d
    sizes[t] = len(s)

threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
for t in threads: t.start()
for t in threads: t.join()
assert all(sizes)
big = {"parts": [build(100 + t, 3000) for t in range(4)]}
text = json.dumps(big, indent=1)
assert json.loads(text) == big
print("python ok", sum(sizes) + len(text))
"#;

#[test]
fn python_threads_build_serialise_and_parse_a_large_dict() {
    let h = h();
    let dir = h.scratch("python");
    let script = dir.join("dicts.py");
    fs::write(&script, PYTHON_SCRIPT).unwrap();
    // PYTHONMALLOC=malloc: every object, small ones too, comes from malloc, not pymalloc.
    run(h
        .preloaded("python3")
        .arg(&script)
        .env("PYTHONMALLOC", "malloc"))
    .assert_success()
    .assert_stdout_has("python ok 11169163")
    .assert_served(100_000);
}

/// Hashes of arrays of hashes, deletes, sorts, joins, splits and substitutes.
const PERL_SCRIPT: &str = r#"
use strict; use warnings;
my %h; my $x = 12345;
for my $i (1 .. 150000) {
    $x = ($x * 1103515245 + 12345) % 2147483648;
    $h{"key$x"} = [$i, "v" x ($i % 40), { n => $i }];
}
my $n = scalar keys %h;
delete $h{$_} for grep { /7$/ } keys %h;
my @sorted = sort { $h{$a}[0] <=> $h{$b}[0] } keys %h;
my $joined = join(",", map { $h{$_}[2]{n} } @sorted[0 .. 999]);
my $text = join("\n", map { "line $_ " . ("x" x ($_ % 100)) } 1 .. 50000);
my @words = split /\s+/, $text;
(my $t2 = $text) =~ s/(\d+)/<$1>/g;
printf "perl ok %d %d %d %d %d\n", $n, scalar(@sorted), length($joined), scalar(@words), length($t2);
"#;

#[test]
fn perl_hashes_sorts_and_regexes() {
    let h = h();
    let dir = h.scratch("perl");
    let script = dir.join("hashes.pl");
    fs::write(&script, PERL_SCRIPT).unwrap();
    run(h.preloaded("perl").arg(&script))
        .assert_success()
        .assert_stdout_has("perl ok 150000 135103 4013 149500 3163893")
        .assert_served(100_000);
}

/// A git command in `repo`, isolated from any user or system configuration.
fn git(h: &Harness, repo: &Path, args: &[&str]) -> hakmem_tests::Outcome {
    let out = run(h
        .preloaded("git")
        .args(args)
        .current_dir(repo)
        .env("HOME", repo)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "hakmem")
        .env("GIT_AUTHOR_EMAIL", "hakmem@example.invalid")
        .env("GIT_COMMITTER_NAME", "hakmem")
        .env("GIT_COMMITTER_EMAIL", "hakmem@example.invalid"));
    out.assert_success();
    out.assert_served(100);
    out
}

#[test]
fn git_init_add_commit_log_in_a_temp_repo() {
    let h = h();
    let repo = h.scratch("git");
    git(h, &repo, &["init", "-q", "-b", "main"]);
    for i in 0..200 {
        let sub = repo.join(format!("dir{}", i % 10));
        fs::create_dir_all(&sub).unwrap();
        let body: String = (0..i * 5)
            .map(|k| format!("line {k} of file {i}\n"))
            .collect();
        fs::write(sub.join(format!("file{i}.txt")), body).unwrap();
    }
    git(h, &repo, &["add", "-A"]);
    git(h, &repo, &["commit", "-q", "-m", "first commit on hakmem"]);
    for i in (0..200).step_by(7) {
        let f = repo.join(format!("dir{}/file{i}.txt", i % 10));
        let mut body = fs::read_to_string(&f).unwrap();
        body.push_str("changed\n");
        fs::write(f, body).unwrap();
    }
    git(
        h,
        &repo,
        &["commit", "-q", "-a", "-m", "second commit on hakmem"],
    );
    git(h, &repo, &["gc", "-q"]);
    git(h, &repo, &["fsck", "--no-progress"]);
    let log = git(h, &repo, &["log", "--format=%s"]);
    assert_eq!(
        log.stdout.lines().collect::<Vec<_>>(),
        ["second commit on hakmem", "first commit on hakmem"],
        "{log:?}"
    );
    let files = git(h, &repo, &["ls-files"]);
    assert_eq!(files.stdout.lines().count(), 200, "{files:?}");
}

/// A C program with some allocation in it, for gcc to compile.
const C_SOURCE: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) {
    size_t n = 1000000;
    char *sieve = calloc(n + 1, 1);
    if (!sieve) return 1;
    size_t primes = 0;
    for (size_t i = 2; i <= n; i++) {
        if (sieve[i]) continue;
        primes++;
        for (size_t j = i * i; j <= n; j += i) sieve[j] = 1;
    }
    free(sieve);
    char *s = strdup("compiled by gcc on hakmem");
    printf("%s: %zu primes\n", s, primes);
    free(s);
    return 0;
}
"#;

#[test]
fn gcc_compiles_and_links_a_program_that_then_runs() {
    let h = h();
    let dir = h.scratch("gcc");
    fs::write(dir.join("primes.c"), C_SOURCE).unwrap();
    // The driver, cc1, as, collect2 and ld all run preloaded (they inherit LD_PRELOAD).
    run(h
        .preloaded("gcc")
        .args(["-O2", "-Wall", "-o", "primes", "primes.c"])
        .current_dir(&dir))
    .assert_success()
    .assert_served(1000);
    run(&mut h.preloaded(dir.join("primes")))
        .assert_success()
        .assert_stdout_has("compiled by gcc on hakmem: 78498 primes")
        .assert_served(2);
}

#[test]
fn sort_a_million_lines() {
    let h = h();
    let dir = h.scratch("sort");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut lines: Vec<String> = (0..1_000_000)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{:x} {}", x % 1_000_000_007, "z".repeat(i % 13))
        })
        .collect();
    let mut input = lines.join("\n");
    input.push('\n');
    fs::write(dir.join("in.txt"), input).unwrap();
    run(h
        .preloaded("sort")
        .args(["--parallel=2", "-o", "out.txt", "in.txt"])
        .current_dir(&dir)
        .env("LC_ALL", "C"))
    .assert_success()
    .assert_served(5); // sort reads into a few big buffers
    lines.sort_unstable();
    let mut want = lines.join("\n");
    want.push('\n');
    let got = fs::read_to_string(dir.join("out.txt")).unwrap();
    assert!(got == want, "sort's output differs from the expected order");
}
