//! Link settings for libhakmem.so.

fn main() {
    // `-z nodelete`: the library is never unmapped, not even by a dlclose. A malloc replacement
    // must outlive every block it handed out, and the exit handler the library registers (with
    // no DSO handle, so that it runs last) must still be there when exit() calls it.
    println!("cargo::rustc-cdylib-link-arg=-Wl,-z,nodelete");
    println!("cargo::rerun-if-changed=build.rs");
}
