//! `ewtuned`: the daemon. Parses flags, resolves the configuration, and either creates a tenant
//! token or serves until SIGTERM/SIGINT (running jobs checkpoint and go back to the queue).
//! Files it creates are private (umask 0o077).

use clap::{Parser, Subcommand};
use ewtune::daemon::{self, config::DaemonConfig, State};
use std::path::PathBuf;
use std::process::ExitCode;

/// ewtune's daemon: DP fine-tuning jobs over gRPC, with a durable privacy-budget ledger.
#[derive(Parser, Debug)]
#[command(name = "ewtuned", version, args_conflicts_with_subcommands = true)]
struct Args {
    /// Data directory: ewtune.db, datasets/, jobs/, models/, the signing key.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Address to serve gRPC on (default 127.0.0.1:50051; env EWTUNED_LISTEN).
    #[arg(long)]
    listen: Option<String>,
    /// TOML config file (models_dir, concurrency, tls_cert, tls_key, server limits; see README).
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Tenant tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Print a new bearer token for a tenant (only its hash is stored).
    Create {
        /// Tenant name: 1-64 of [A-Za-z0-9_.-].
        #[arg(long)]
        tenant: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Everything the daemon writes (store, datasets, outputs, key) is its user's only.
    daemon::data_dir::private_umask();
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())).with_writer(std::io::stderr).init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let data_dir = args.data_dir.ok_or("--data-dir is required")?;
    let config = DaemonConfig::resolve(&data_dir, args.listen.as_deref(), args.config.as_deref())?;
    match args.command {
        Some(Command::Token(TokenCommand::Create { tenant })) => {
            let state = State::open(config)?;
            println!("{}", state.store.create_token(&tenant)?);
            Ok(())
        }
        None => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async move {
                let state = State::open(config.clone())?;
                let listener = tokio::net::TcpListener::bind(config.listen).await?;
                tracing::info!(listen = %listener.local_addr()?, data_dir = %config.data_dir.display(), "ewtuned serving");
                daemon::run(state, listener, shutdown_signal()).await?;
                Ok(())
            })
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "no SIGTERM handler; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
