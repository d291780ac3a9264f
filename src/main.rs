//! `ferry`: the one binary of ferry.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferry_wal::FrameLimits;
use ferry_wal::storage::FsStorage;

/// ferry: a Redis-protocol cache with read replicas fed by WAL shipping.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tools for WAL directories: a primary's, a replica's or a copy.
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
}

#[derive(Debug, Subcommand)]
enum WalCommand {
    /// Checks every frame of a WAL directory without changing it. Exits 0
    /// when the log is intact, 1 when it has a torn tail (which opening the
    /// log would cut off) or is corrupt.
    Verify {
        /// The WAL directory.
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Wal {
            command: WalCommand::Verify { dir },
        } => wal_verify(&dir),
    }
}

fn wal_verify(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    let summary = match ferry_wal::verify(&FsStorage, dir, FrameLimits::default()) {
        Ok(summary) => summary,
        Err(err @ ferry_wal::WalError::Corruption { .. }) => {
            eprintln!("corrupt: {err}");
            return Ok(ExitCode::FAILURE);
        }
        Err(err) => {
            return Err(err).with_context(|| format!("verifying the WAL in {}", dir.display()));
        }
    };
    println!(
        "{} segments, {} bytes, lsn {}..={}, last epoch {}",
        summary.segments, summary.bytes, summary.first_lsn, summary.last_lsn, summary.epoch
    );
    match summary.torn_tail {
        None => {
            println!("intact");
            Ok(ExitCode::SUCCESS)
        }
        Some(torn) => {
            println!(
                "torn tail: {} from byte {} ({} bytes): {}; opening the log cuts it off and keeps a .broken copy",
                torn.segment.display(),
                torn.offset,
                torn.bytes,
                torn.reason
            );
            Ok(ExitCode::FAILURE)
        }
    }
}
