//! `cargo xtask verify` (being written).
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_a: Args) -> Result<(), String> {
    Err("verify is not written yet".into())
}
