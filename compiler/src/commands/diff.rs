//! `qforge diff A.qfa B.qfa [--json]`.

use crate::artifact::{diff::diff, Artifact};
use anyhow::Result;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    a: PathBuf,
    b: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let (x, y) = (Artifact::load(&a.a)?, Artifact::load(&a.b)?);
    let d = diff(&x, &y, &a.a.display().to_string(), &a.b.display().to_string())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        print!("{}", d.to_text());
    }
    Ok(())
}
