//! `ewtune`: the command line for people. Parses flags and hands each subcommand to its file;
//! errors are printed once with their cause and map to exit code 2.

mod bench;
mod synth;
mod train;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// ewtune: privacy-preserving fine-tuning of causal language models with DP-SGD.
#[derive(Parser, Debug)]
#[command(name = "ewtune", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a fine-tuning job locally from a job.toml (resumes from its checkpoints).
    Train(train::TrainArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Make a small base model, a synthetic sensitive dataset and a job.toml (no downloads).
    Synth(synth::SynthArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train::run(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Synth(args) => synth::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
