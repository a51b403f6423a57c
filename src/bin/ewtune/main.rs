//! `ewtune`: the command line for people. Parses flags and hands each subcommand to its file;
//! errors are printed once with their cause and map to exit code 2 (`verify` also exits 3 for an
//! intact report whose signer was not pinned).

mod audit;
mod bench;
mod client;
mod remote;
mod synth;
mod terminal;
mod train;
mod verify;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// ewtune: privacy-preserving fine-tuning of causal language models with DP-SGD.
#[derive(Parser, Debug)]
#[command(name = "ewtune", version)]
struct Cli {
    #[command(flatten)]
    connect: client::Connect,
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
    /// Datasets on the daemon.
    #[command(subcommand)]
    Datasets(remote::DatasetsCommand),
    /// Jobs on the daemon.
    #[command(subcommand)]
    Jobs(remote::JobsCommand),
    /// Privacy-budget reports.
    #[command(subcommand)]
    Budget(remote::BudgetCommand),
    /// Membership audits of jobs on the daemon, signed.
    #[command(subcommand)]
    Audits(remote::AuditsCommand),
    /// Check a signed budget or audit report (JSON or page) offline.
    Verify(verify::VerifyArgs),
    /// Score a trained model you hold for membership leakage, locally (texts, or a job's
    /// canaries); `ewtune audits` asks the daemon for a signed audit of its jobs.
    #[command(alias = "audit")]
    Score(audit::AuditArgs),
    /// Print the shell completions of ewtune, e.g. `ewtune completions bash > ~/.local/share/bash-completion/completions/ewtune`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train::run(args),
        Command::Bench(cmd) => bench::run(cmd, &cli.connect),
        Command::Synth(args) => synth::run(args),
        Command::Verify(args) => return verify::main(args),
        Command::Score(args) => {
            if std::env::args().skip(1).find(|a| a == "audit" || a == "score").as_deref() == Some("audit") {
                eprintln!("note: `ewtune audit` is now `ewtune score` (so that it is not mistaken for `ewtune audits`, the daemon's); the old name goes in the next release");
            }
            audit::run(args)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "ewtune", &mut std::io::stdout());
            Ok(())
        }
        Command::Datasets(cmd) => remote_call(remote::datasets(&cli.connect, cmd)),
        Command::Jobs(cmd) => remote_call(remote::jobs(&cli.connect, cmd)),
        Command::Budget(cmd) => remote_call(remote::budget(&cli.connect, cmd)),
        Command::Audits(cmd) => remote_call(remote::audits(&cli.connect, cmd)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn remote_call(f: impl std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>) -> Result<(), Box<dyn std::error::Error>> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}
