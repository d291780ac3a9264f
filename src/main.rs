//! `ferry`: the one binary of ferry.

use clap::Parser;

/// ferry: a Redis-protocol cache with read replicas fed by WAL shipping.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
