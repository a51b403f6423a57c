//! `ewtuned`: the daemon. Parses flags and the environment, resolves the configuration (both in
//! `ewtune::service::config`), and either prints it, manages tenant tokens (create, list,
//! revoke), prints the public key that signs its reports, or serves until SIGTERM/SIGINT
//! (running jobs checkpoint and go back to the queue).
//! Files it creates are private (umask 0o077).

use clap::Parser;
use ewtune::service::config::{Cli, Command, KeyCommand, LogFormat, TokenCommand};
use ewtune::service::signing::{self, rfc3339_utc, Signer};
use ewtune::service::{self, State};
use ewtune::store::{Revocation, TenantId, TokenId, TokenInfo};
use std::process::ExitCode;

fn main() -> ExitCode {
    // Flags and their EWTUNED_* variables (clap's `env`); the file and the defaults come in
    // `daemon_config`.
    let args = Cli::parse();
    // Everything the daemon writes (store, datasets, outputs, key) is its user's only.
    service::data_dir::private_umask();
    init_log(args.log_format);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The log on stderr, filtered by `RUST_LOG` (default `info`): JSON lines or text as `format`
/// says, colour only on a terminal.
fn init_log(format: LogFormat) {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let log = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => log.json().init(),
        LogFormat::Auto if !terminal => log.json().init(),
        LogFormat::Auto | LogFormat::Text => log.with_ansi(terminal).init(),
    }
}

fn run(args: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let config = args.daemon_config()?;
    if args.print_config {
        print!("{}", config.to_toml()?);
        return Ok(());
    }
    match args.command {
        Some(Command::Key(KeyCommand::Show)) => {
            println!("{}", Signer::load(&signing::key_path(&config.data_dir))?.public_key_hex());
            Ok(())
        }
        Some(Command::Token(TokenCommand::Create { tenant })) => {
            let token = service::open_store(&config)?.create_token(&tenant)?;
            println!("{token}");
            let id = TokenId::of(&token);
            eprintln!("token id {id} (tenant {tenant}); `ewtuned token revoke {id}` revokes it");
            Ok(())
        }
        Some(Command::Token(TokenCommand::List { tenant })) => {
            let tenant = tenant.as_deref().map(TenantId::parse).transpose()?;
            println!("{:<12}  {:<24}  {:<24}  revoked", "id", "tenant", "created");
            for t in service::open_store(&config)?.list_tokens(tenant.as_ref())? {
                let revoked = t.revoked_at_ms.map_or_else(|| "-".to_string(), rfc3339_utc);
                println!("{:<12}  {:<24}  {:<24}  {revoked}", t.id, t.tenant, rfc3339_utc(t.created_at_ms));
            }
            Ok(())
        }
        Some(Command::Token(TokenCommand::Revoke { id })) => {
            let (TokenInfo { id, tenant, revoked_at_ms, .. }, what) = match service::open_store(&config)?.revoke_token(&id)? {
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
                let listeners = ewtune::api::server::Listeners::bind(&config).await?;
                tracing::info!(listen = %listeners.grpc.local_addr()?, data_dir = %config.data_dir.display(), "ewtuned serving");
                ewtune::api::server::run(state, listeners, shutdown_signal()).await?;
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
