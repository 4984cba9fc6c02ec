//! `cargo xtask preload` (being written).
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_a: Args) -> Result<(), String> {
    Err("preload is not written yet".into())
}
