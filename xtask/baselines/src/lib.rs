//! Nothing to call: this crate exists so that `cargo xtask bench` can have cargo build the
//! mimalloc and jemalloc C sources bundled by `libmimalloc-sys` and `tikv-jemalloc-sys`, with
//! the features that make them define the plain `malloc`, `free`, ... names (mimalloc's
//! `override`, jemalloc's `unprefixed_malloc_on_supported_platforms`). The bench then links
//! each static library, whole, into a shared library for the LD_PRELOAD lane: the same
//! library a C program preloads when it uses `libmimalloc.so` or `libjemalloc.so`.
//!
//! Build one feature at a time, each in its own target dir (`--features mimalloc` or
//! `--features jemalloc`); with no feature nothing C is built, which keeps
//! `cargo clippy --workspace` and `cargo test --workspace` fast.
