//! What the integration tests share: the workspace's one helper that runs a test again in a
//! child process (`tests/src/child.rs`, also `hakmem_tests::child`).
#[path = "../../../tests/src/child.rs"]
mod child_process;
#[allow(unused_imports)] // each test binary uses its part
pub use child_process::{alone, child, command, in_child, is_child, output};
