//! `ewtuned`: the daemon. Parses flags, resolves the configuration, and either manages tenant
//! tokens (create, list, revoke), prints the public key that signs its reports, or serves until
//! SIGTERM/SIGINT (running jobs checkpoint and go back to the queue).
//! Files it creates are private (umask 0o077).

use clap::{Parser, Subcommand};
use ewtune::service::signing::{self, rfc3339_utc, Signer};
use ewtune::service::{self, config::DaemonConfig, State};
use ewtune::store::{Revocation, TenantId, TokenId, TokenInfo};
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
    /// The daemon's report-signing key.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Print a new bearer token for a tenant on stdout, and its id on stderr (only the token's
    /// hash is stored: it cannot be shown again).
    Create {
        /// Tenant name: 1-64 of [A-Za-z0-9_.-].
        #[arg(long)]
        tenant: String,
    },
    /// List token ids, tenants, and when each was created and revoked (never the tokens).
    List {
        /// Only this tenant's tokens.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a token: it authenticates nothing from the next request on, also for a running
    /// daemon. Final.
    Revoke {
        /// The token's id as `token list` shows it (or a longer prefix of its SHA-256).
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Print the Ed25519 public key (hex) that signs this daemon's reports, for
    /// `ewtune verify --public-key`. Does not start the server, and never creates a key.
    Show,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Everything the daemon writes (store, datasets, outputs, key) is its user's only.
    service::data_dir::private_umask();
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
        Some(Command::Key(KeyCommand::Show)) => {
            println!("{}", Signer::load(&signing::key_path(&config.data_dir))?.public_key_hex());
            Ok(())
        }
        Some(Command::Token(TokenCommand::Create { tenant })) => {
            let token = service::open_store(&config.data_dir)?.create_token(&tenant)?;
            println!("{token}");
            let id = TokenId::of(&token);
            eprintln!("token id {id} (tenant {tenant}); `ewtuned token revoke {id}` revokes it");
            Ok(())
        }
        Some(Command::Token(TokenCommand::List { tenant })) => {
            let tenant = tenant.as_deref().map(TenantId::parse).transpose()?;
            println!("{:<12}  {:<24}  {:<24}  revoked", "id", "tenant", "created");
            for t in service::open_store(&config.data_dir)?.list_tokens(tenant.as_ref())? {
                let revoked = t.revoked_at_ms.map_or_else(|| "-".to_string(), rfc3339_utc);
                println!("{:<12}  {:<24}  {:<24}  {revoked}", t.id, t.tenant, rfc3339_utc(t.created_at_ms));
            }
            Ok(())
        }
        Some(Command::Token(TokenCommand::Revoke { id })) => {
            let (TokenInfo { id, tenant, revoked_at_ms, .. }, what) = match service::open_store(&config.data_dir)?.revoke_token(&id)? {
                Revocation::Revoked(t) => (t, "revoked"),
                Revocation::AlreadyRevoked(t) => (t, "was already revoked"),
            };
            println!("token {id} of tenant {tenant} {what} at {}", revoked_at_ms.map_or_else(String::new, rfc3339_utc));
            Ok(())
        }
        None => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async move {
                let state = State::open(config.clone())?;
                let listener = tokio::net::TcpListener::bind(config.listen).await?;
                tracing::info!(listen = %listener.local_addr()?, data_dir = %config.data_dir.display(), "ewtuned serving");
                ewtune::api::server::run(state, listener, shutdown_signal()).await?;
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
