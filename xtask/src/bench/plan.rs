//! The suite's entries: which workload runs with which arguments in which lane.
use super::{Entry, Lane};

/// The suite's entries for `threads` threads, with the lifecycle patterns also run
/// oversubscribed, at `over` threads (4 per CPU): the Rust lane's, then the C lane's.
pub fn plan(t: usize, over: usize) -> Vec<Entry> {
    let e = |lane: Lane, name: String, args: &[&str]| Entry {
        name,
        lane,
        args: args.iter().map(|s| s.to_string()).collect(),
    };
    let r = |name: String, args: &[&str]| e(Lane::Rust, name, args);
    let c = |name: &str, args: &[&str]| e(Lane::C, format!("c/{name}"), args);
    let ts = t.to_string();
    let fs = t.max(2).to_string();
    let os = over.to_string();
    let mut v = vec![
        r("tiny-hot".into(), &["tiny-hot", "--threads", "1"]),
        r("tiny-reuse".into(), &["tiny-pair", "--threads", "1"]),
        r(
            "random-mixed/w400".into(),
            &["random-mixed", "--working-set", "400", "--threads", "1"],
        ),
        r(
            "random-mixed/w8192".into(),
            &["random-mixed", "--working-set", "8192", "--threads", "1"],
        ),
        r("random-medium".into(), &["random-medium", "--threads", "1"]),
        r(format!("larson/t{t}"), &["larson", "--threads", &ts]),
        r(
            format!("producer-consumer/t{t}"),
            &["producer-consumer", "--threads", &ts],
        ),
        r(
            "producer-consumer-64b".into(),
            &["producer-consumer-64b", "--threads", "2"],
        ),
        r(
            format!("cross-thread-realloc/t{t}"),
            &["cross-thread-realloc", "--threads", &ts],
        ),
        r(
            format!("false-sharing/t{}", t.max(2)),
            &["false-sharing", "--threads", &fs],
        ),
        r(
            format!("thread-churn/t{t}"),
            &["thread-churn", "--threads", &ts],
        ),
        r(format!("churn/t{t}"), &["churn", "--threads", &ts]),
        r("mixed-sizes".into(), &["mixed-sizes", "--threads", "1"]),
        r("large-blocks".into(), &["large-blocks", "--threads", "1"]),
        r(
            "realloc-growth".into(),
            &["realloc-growth", "--threads", "1"],
        ),
        r("fragmentation".into(), &["fragmentation", "--threads", "1"]),
        // Collections in an arena (issue 24): with the global allocator (directly, and through
        // `&Global`, at the arenas' collection sizes), in a `hakmem::Heap` dropped whole, and
        // in a `bumpalo::Bump`.
        r("tree".into(), &["tree", "--threads", "1"]),
        r(
            "tree/global-ref".into(),
            &["tree", "--arena", "global-ref", "--threads", "1"],
        ),
        r(
            "tree/heap".into(),
            &["tree", "--arena", "heap", "--threads", "1"],
        ),
        r(
            "tree/bump".into(),
            &["tree", "--arena", "bump", "--threads", "1"],
        ),
        r(
            "map-grow-shrink".into(),
            &["map-grow-shrink", "--threads", "1"],
        ),
        r(
            "map-grow-shrink/global-ref".into(),
            &["map-grow-shrink", "--arena", "global-ref", "--threads", "1"],
        ),
        r(
            "map-grow-shrink/heap".into(),
            &["map-grow-shrink", "--arena", "heap", "--threads", "1"],
        ),
        r(
            "map-grow-shrink/bump".into(),
            &["map-grow-shrink", "--arena", "bump", "--threads", "1"],
        ),
    ];
    if over != t {
        v.extend([
            r(format!("larson/t{over}"), &["larson", "--threads", &os]),
            r(
                format!("thread-churn/t{over}"),
                &["thread-churn", "--threads", &os],
            ),
            r(format!("churn/t{over}"), &["churn", "--threads", &os]),
        ]);
    }
    for n in [1, 2, 4, 8] {
        let ns = n.to_string();
        v.push(r(
            format!("scaling/random-mixed-w400/t{n}"),
            &["random-mixed", "--working-set", "400", "--threads", &ns],
        ));
    }
    for n in [1, 2, 4, 8] {
        let ns = n.to_string();
        v.push(r(
            format!("scaling/larson/t{n}"),
            &["larson", "--threads", &ns],
        ));
    }
    v.extend([
        c("tiny-hot", &["tiny-hot"]),
        c("tiny-reuse", &["pair"]),
        c(
            "random-mixed/w400",
            &["random-mixed", "--working-set", "400"],
        ),
        c(
            "random-mixed/w8192",
            &["random-mixed", "--working-set", "8192"],
        ),
        c("random-medium", &["random-medium"]),
        c("mixed-sizes", &["mixed-sizes"]),
        c("glibc-simple", &["glibc-simple"]),
        c("glibc-simple-written", &["glibc-simple-written"]),
        c("long-lived-tree", &["long-lived-tree"]),
        c("large-blocks", &["large-blocks"]),
        c(
            "producer-consumer-64b",
            &["producer-consumer-64b", "--threads", "2"],
        ),
        c(&format!("larson/t{t}"), &["larson", "--threads", &ts]),
        c(
            &format!("cross-thread-realloc/t{t}"),
            &["cross-thread-realloc", "--threads", &ts],
        ),
        c(&format!("churn/t{t}"), &["churn", "--threads", &ts]),
    ]);
    if over != t {
        v.extend([
            c(&format!("larson/t{over}"), &["larson", "--threads", &os]),
            c(&format!("churn/t{over}"), &["churn", "--threads", &os]),
        ]);
    }
    v
}

pub fn selected(filter: &[String], name: &str) -> bool {
    filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()))
}
