//! `cargo xtask bench` (being written).
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_a: Args) -> Result<(), String> {
    Err("bench is not written yet".into())
}
