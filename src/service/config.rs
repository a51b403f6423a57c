//! The daemon's command line ([`Cli`]) and configuration ([`DaemonConfig`]). Every setting comes
//! from, highest first: its command-line flag, its `EWTUNED_*` environment variable, the TOML
//! file given with `--config` (conventionally `ewtuned.toml`; strict: an unknown key is refused,
//! named), its built-in default. clap reads the flags and the variables (its `env` feature) into
//! [`Settings`], every one optional and with no clap default, so that a value there is one the
//! operator gave; [`DaemonConfig::from_settings`] lays them over the file's values, fills what is
//! left with the defaults, checks each value naming its key, and makes every path absolute.
//! The server's resource limits ([`ServerLimits`]) resolve here too.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use crate::store::{DaemonId, Database, Worker};

/// Configuration errors, each naming its key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key has an invalid value.
    #[error("invalid {key}: {reason}")]
    Invalid {
        /// The key (`listen`, `concurrency`, ...).
        key: &'static str,
        /// Why, and where the value came from.
        reason: String,
    },
    /// The config file cannot be read or parsed.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A required setting has no value.
    #[error("{key} is required: give --{} or set {}", flag(.key), env_var(.key))]
    Missing {
        /// The key (`data_dir`).
        key: &'static str,
    },
}

/// The flag of a key, without its dashes: `models-dir` for `models_dir`.
fn flag(key: &str) -> String {
    key.replace('_', "-")
}

/// The environment variable of a key: `EWTUNED_MODELS_DIR` for `models_dir`.
fn env_var(key: &str) -> String {
    format!("EWTUNED_{}", key.to_ascii_uppercase())
}

/// A path, where an empty one parses too (clap's own path parser refuses it), so that an empty
/// variable counts as unset like any other.
fn any_path() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), PathBuf::from)
}

/// ewtune's daemon: DP fine-tuning jobs over gRPC, with a durable privacy-budget ledger.
///
/// Each setting comes from its flag, else its environment variable, else the --config file (the
/// key named in its help), else its default. An empty value counts as unset.
#[derive(clap::Parser, Debug)]
#[command(name = "ewtuned", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Data directory: ewtune.db, datasets/, jobs/, models/, the signing key. Required by every
    /// command, as this flag or the environment variable (not in the config file).
    #[arg(long, global = true, env = "EWTUNED_DATA_DIR", value_parser = any_path(), value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML config file (conventionally ewtuned.toml): any setting below, by its key; a key it
    /// does not know is refused.
    #[arg(long, env = "EWTUNED_CONFIG", value_parser = any_path(), value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the resolved configuration (as ewtuned.toml keys) and exit, without serving or
    /// opening the data directory.
    #[arg(long)]
    pub print_config: bool,
    /// How the log on stderr is written: `json` (one JSON object per line, for collectors),
    /// `text` (for people; coloured only on a terminal), or `auto`: text on a terminal, JSON lines
    /// otherwise (a log file never holds colour codes).
    #[arg(long, global = true, env = "EWTUNED_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto, value_name = "FORMAT")]
    pub log_format: LogFormat,
    // The settings (a `//` comment: clap would take a doc comment for help).
    #[command(flatten)]
    pub settings: Settings,
    // None: serve.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// How `ewtuned` writes its log (`--log-format`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Text on a terminal, JSON lines otherwise.
    Auto,
    /// Text, coloured only on a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

/// `ewtuned`'s commands besides serving.
#[derive(clap::Subcommand, Debug, PartialEq)]
pub enum Command {
    /// Tenant tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The daemon's report-signing key.
    #[command(subcommand)]
    Key(KeyCommand),
}

/// `ewtuned token ...`.
#[derive(clap::Subcommand, Debug, PartialEq)]
pub enum TokenCommand {
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

/// `ewtuned key ...`.
#[derive(clap::Subcommand, Debug, PartialEq)]
pub enum KeyCommand {
    /// Print the Ed25519 public key (hex) that signs this daemon's reports, for
    /// `ewtune verify --public-key`. Does not start the server, and never creates a key.
    Show,
}

/// The settings the command line and the environment give, each as its flag, else its
/// `EWTUNED_<KEY>` variable (clap's `env`). Every one is optional and has no clap default: a
/// value here beats the file's. Numbers stay text until [`DaemonConfig::from_settings`] checks
/// them, so that a bad one is refused naming its key, its flag and its variable.
/// Each field is named as the file's key (`max_connections`: `--max-connections`,
/// `EWTUNED_MAX_CONNECTIONS`).
#[derive(clap::Args, Debug, Default, Clone, PartialEq)]
pub struct Settings {
    /// Address to serve gRPC on [file: listen] [default: 127.0.0.1:50051]
    #[arg(long, env = "EWTUNED_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Address to serve the report pages on, over HTTP(S) (TLS when tls_cert is set), behind
    /// the same tokens [file: http_listen] [default: none, not served]
    #[arg(long, env = "EWTUNED_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// Address to serve Prometheus metrics on, at /metrics, plain HTTP without tokens: bind it to
    /// the operators' network [file: metrics_listen] [default: none, not served]
    #[arg(long, env = "EWTUNED_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Base models, one Hugging Face checkpoint directory per model name [file: models_dir]
    /// [default: DIR/models]
    #[arg(long, env = "EWTUNED_MODELS_DIR", value_parser = any_path(), value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Where the ledger lives: a `postgres://USER:PASSWORD@HOST:PORT/DB` URL for several daemons
    /// sharing one ledger (each with the same data directory, on shared storage), or a SQLite
    /// file path [file: database_url] [default: DIR/ewtune.db]
    #[arg(long = "database-url", visible_alias = "database", global = true, env = "EWTUNED_DATABASE_URL", value_name = "URL", help_heading = "Several daemons")]
    pub database_url: Option<String>,
    /// This daemon's id as the owner of the jobs it runs: unique among the daemons on one
    /// database and the same across its restarts [file: daemon_id] [default: HOST:PORT of the
    /// gRPC address on PostgreSQL, `local` on SQLite]
    #[arg(long, env = "EWTUNED_DAEMON_ID", value_name = "ID", help_heading = "Several daemons")]
    pub daemon_id: Option<String>,
    /// Seconds a daemon's claim on a running job holds without its heartbeat (every third of
    /// it); past it another daemon takes the job over [file: lease_secs] [default: 30]
    #[arg(long, env = "EWTUNED_LEASE_SECS", value_name = "SECS", help_heading = "Several daemons")]
    pub lease_secs: Option<String>,
    /// Jobs trained at once, >= 1 [file: concurrency] [default: 1]
    #[arg(long, env = "EWTUNED_CONCURRENCY", value_name = "N")]
    pub concurrency: Option<String>,
    /// PEM certificate chain; with the key, serve TLS only [file: tls_cert] [default: none, plain
    /// HTTP/2]
    #[arg(long, env = "EWTUNED_TLS_CERT", value_parser = any_path(), value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate [file: tls_key]
    #[arg(long, env = "EWTUNED_TLS_KEY", value_parser = any_path(), value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Connections served at once; past it a new connection is closed at accept [file:
    /// max_connections] [default: 256]
    #[arg(long, env = "EWTUNED_MAX_CONNECTIONS", value_name = "N", help_heading = "Server limits")]
    pub max_connections: Option<String>,
    /// Seconds from accept to a connection's first request [file: handshake_timeout_secs]
    /// [default: 10]
    #[arg(long, env = "EWTUNED_HANDSHAKE_TIMEOUT_SECS", value_name = "SECS", help_heading = "Server limits")]
    pub handshake_timeout_secs: Option<String>,
    /// Seconds a connection with no request in flight stays open [file: idle_timeout_secs]
    /// [default: 300]
    #[arg(long, env = "EWTUNED_IDLE_TIMEOUT_SECS", value_name = "SECS", help_heading = "Server limits")]
    pub idle_timeout_secs: Option<String>,
    /// Seconds between HTTP/2 keepalive pings [file: keepalive_interval_secs] [default: 60]
    #[arg(long, env = "EWTUNED_KEEPALIVE_INTERVAL_SECS", value_name = "SECS", help_heading = "Server limits")]
    pub keepalive_interval_secs: Option<String>,
    /// Seconds to wait for a ping's acknowledgement [file: keepalive_timeout_secs] [default: 20]
    #[arg(long, env = "EWTUNED_KEEPALIVE_TIMEOUT_SECS", value_name = "SECS", help_heading = "Server limits")]
    pub keepalive_timeout_secs: Option<String>,
    /// Uploads (Datasets.Register, Audits.Create) received at once [file: max_concurrent_uploads]
    /// [default: 2]
    #[arg(long, env = "EWTUNED_MAX_CONCURRENT_UPLOADS", value_name = "N", help_heading = "Server limits")]
    pub max_concurrent_uploads: Option<String>,
    /// Open Jobs.Watch streams per tenant [file: watch_streams_per_tenant] [default: 32]
    #[arg(long, env = "EWTUNED_WATCH_STREAMS_PER_TENANT", value_name = "N", help_heading = "Server limits")]
    pub watch_streams_per_tenant: Option<String>,
    /// Open Jobs.GetArtifacts streams per tenant [file: downloads_per_tenant] [default: 4]
    #[arg(long, env = "EWTUNED_DOWNLOADS_PER_TENANT", value_name = "N", help_heading = "Server limits")]
    pub downloads_per_tenant: Option<String>,
}

impl Cli {
    /// The configuration this command line, the environment it was parsed under and its
    /// `--config` file give.
    pub fn daemon_config(&self) -> Result<DaemonConfig, ConfigError> {
        let data_dir = given_path(&self.data_dir).ok_or(ConfigError::Missing { key: "data_dir" })?;
        let file = given_path(&self.config);
        DaemonConfig::from_settings(data_dir, file, &self.settings)
    }
}

/// `ewtuned.toml` as written; every key optional, and a key not listed here is refused, named
/// with the closest known key (`crate::strict_toml`). Each key is also a field of [`Settings`].
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
pub struct FileConfig {
    /// Address to serve gRPC on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Address to serve the report pages on (HTTP, or HTTPS with TLS), behind the tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<String>,
    /// Address to serve Prometheus metrics on (`/metrics`, plain HTTP, no tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// Directory of base models (one HF checkpoint directory per model name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models_dir: Option<PathBuf>,
    /// The ledger's database: a `postgres://` URL or a SQLite file path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// This daemon's id as the owner of the jobs it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon_id: Option<String>,
    /// Seconds a claim on a running job holds without a heartbeat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_secs: Option<u64>,
    /// Jobs run at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// PEM certificate chain; with `tls_key`, serve TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Connections served at once; past it a new connection is closed at accept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
    /// Seconds a new connection has to send its first request (TLS and HTTP/2 handshakes included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_timeout_secs: Option<u64>,
    /// Seconds a connection with no request in flight stays open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    /// Seconds between HTTP/2 keepalive pings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive_interval_secs: Option<u64>,
    /// Seconds to wait for a ping's acknowledgement before closing the connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive_timeout_secs: Option<u64>,
    /// Uploads (Datasets.Register, Audits.Create) decoded at once; the others wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_uploads: Option<u64>,
    /// Open Watch streams per tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch_streams_per_tenant: Option<u64>,
    /// Jobs.GetArtifacts streams per tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downloads_per_tenant: Option<u64>,
}

/// The server's resource limits, resolved (every one at least 1).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerLimits {
    /// Connections served at once (`max_connections`, default 256).
    pub max_connections: usize,
    /// Time from accept to the first request (`handshake_timeout_secs`, default 10 s).
    pub handshake_timeout: Duration,
    /// Time a connection with no request in flight stays open (`idle_timeout_secs`, default 300 s).
    pub idle_timeout: Duration,
    /// HTTP/2 keepalive ping interval (`keepalive_interval_secs`, default 60 s).
    pub keepalive_interval: Duration,
    /// HTTP/2 keepalive ping acknowledgement timeout (`keepalive_timeout_secs`, default 20 s).
    pub keepalive_timeout: Duration,
    /// Uploads decoded at once (`max_concurrent_uploads`, default 2); each carries up to 256 MiB.
    pub max_concurrent_uploads: usize,
    /// Open Watch streams per tenant (`watch_streams_per_tenant`, default 32).
    pub watch_streams_per_tenant: usize,
    /// Jobs.GetArtifacts streams per tenant (`downloads_per_tenant`, default 4); each buffers
    /// at most a few MiB.
    pub downloads_per_tenant: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 256,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            max_concurrent_uploads: 2,
            watch_streams_per_tenant: 32,
            downloads_per_tenant: 4,
        }
    }
}

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// Holds `ewtune.db`, datasets/, jobs/, the signing key.
    pub data_dir: PathBuf,
    /// gRPC address.
    pub listen: SocketAddr,
    /// The report pages' address, when served.
    pub http_listen: Option<SocketAddr>,
    /// The metrics' address, when served.
    pub metrics_listen: Option<SocketAddr>,
    /// Base models.
    pub models_dir: PathBuf,
    /// The ledger's database (default: `ewtune.db` in the data directory).
    pub database: Database,
    /// This daemon as the owner of the jobs it runs, and its lease.
    pub worker: Worker,
    /// Concurrent jobs (default 1).
    pub concurrency: usize,
    /// TLS certificate and key, when configured.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Connection, upload and stream limits.
    pub limits: ServerLimits,
}

/// This machine's host name (`localhost` when it has none).
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let name = if ok { String::from_utf8_lossy(&buf[..buf.iter().position(|&b| b == 0).unwrap_or(buf.len())]).into_owned() } else { String::new() };
    if name.is_empty() { "localhost".into() } else { name }
}

/// A PostgreSQL URL with its password (if any: in the user part, or as a `password=` query
/// parameter or keyword) replaced by `********`, for printing.
pub fn redact_password(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let rest = match rest.split_once('@') {
            Some((userinfo, host)) if userinfo.contains(':') => format!("{}:********@{host}", userinfo.split_once(':').map_or("", |(u, _)| u)),
            _ => rest.to_owned(),
        };
        let rest = match rest.split_once('?') {
            Some((path, query)) => {
                let query: Vec<&str> = query.split('&').map(|kv| if kv.starts_with("password=") { "password=********" } else { kv }).collect();
                format!("{path}?{}", query.join("&"))
            }
            None => rest,
        };
        return format!("{scheme}://{rest}");
    }
    url.split_whitespace().map(|kv| if kv.starts_with("password=") { "password=********" } else { kv }).collect::<Vec<_>>().join(" ")
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    }
}

/// The longest timeout or interval accepted, in seconds (a day).
const MAX_TIMEOUT_SECS: u64 = 86_400;

/// The largest count accepted: counts size semaphores and tables, and a semaphore panics past
/// its maximum.
const MAX_COUNT: u64 = 1_000_000;

/// Where a value came from, for the messages that refuse it.
#[derive(Debug, Clone, Copy)]
enum Origin<'a> {
    /// The command line or the environment (clap cannot tell which once parsed).
    Given(&'static str),
    /// The config file, by name.
    File(&'a str),
}

impl std::fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Given(key) => write!(f, "from --{} or {}", flag(key), env_var(key)),
            Origin::File(file) => write!(f, "from {file}"),
        }
    }
}

/// An empty flag or variable counts as unset.
fn given_text(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|v| !v.is_empty())
}

/// An empty path counts as unset.
fn given_path(v: &Option<PathBuf>) -> Option<&Path> {
    v.as_deref().filter(|p| !p.as_os_str().is_empty())
}

/// A whole number for `key` in `1..=max` from the flag or variable's text, else the file,
/// else `default`; `too_large` says why a number past `max` is refused.
fn bounded(key: &'static str, given: &Option<String>, file: Option<u64>, file_name: &str, default: u64, max: u64, too_large: impl Fn(u64) -> String) -> Result<u64, ConfigError> {
    let (n, from) = match given_text(given) {
        Some(v) => {
            let n = v.parse().map_err(|_| ConfigError::Invalid { key, reason: format!("`{v}` is not a whole number ({})", Origin::Given(key)) })?;
            (n, Origin::Given(key))
        }
        None => match file {
            Some(n) => (n, Origin::File(file_name)),
            None => return Ok(default),
        },
    };
    if n == 0 {
        return Err(ConfigError::Invalid { key, reason: format!("must be >= 1 ({from})") });
    }
    if n > max {
        return Err(ConfigError::Invalid { key, reason: format!("{} ({from})", too_large(n)) });
    }
    Ok(n)
}

impl DaemonConfig {
    /// The TLS certificate chain and private key, PEM, when TLS is configured: read when the
    /// server starts, so a renewed certificate takes effect on restart.
    pub fn tls_pem(&self) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.tls.as_ref().map(|(cert, key)| Ok((std::fs::read(cert)?, std::fs::read(key)?))).transpose()
    }

    /// The file (when given) under `listen` (when given), then the defaults. The environment is
    /// not read: only [`Cli`] reads it. For tests and embedders.
    pub fn resolve(data_dir: &Path, listen: Option<&str>, file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_settings(data_dir, file, &Settings { listen: listen.map(str::to_string), ..Settings::default() })
    }

    /// Lays `given` (the flags and the environment, as clap parsed them) over the file's values,
    /// fills what is left with the defaults, and checks every value, naming its key and where
    /// it came from.
    pub fn from_settings(data_dir: &Path, file: Option<&Path>, given: &Settings) -> Result<Self, ConfigError> {
        let (fc, file_name) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File { path: path.to_path_buf(), reason: e.to_string() })?;
                let name = path.file_name().map_or_else(|| "ewtuned.toml".into(), |n| n.to_string_lossy().into_owned());
                let fc = crate::strict_toml::from_str::<FileConfig>(&text, &name, &[crate::strict_toml::Table::of::<FileConfig>("")])
                    .map_err(|e| ConfigError::File { path: path.to_path_buf(), reason: e.to_string() })?;
                (fc, name)
            }
            None => (FileConfig::default(), String::new()),
        };
        let file_name = file_name.as_str();

        let (listen, from) = match (given_text(&given.listen), fc.listen.as_deref()) {
            (Some(v), _) => (v, Some(Origin::Given("listen"))),
            (None, Some(v)) => (v, Some(Origin::File(file_name))),
            (None, None) => ("127.0.0.1:50051", None),
        };
        let listen: SocketAddr = listen.parse().map_err(|e| ConfigError::Invalid {
            key: "listen",
            reason: format!("`{listen}`: {e}{}", from.map_or_else(String::new, |f| format!(" ({f})"))),
        })?;

        let optional_addr = |key: &'static str, given: &Option<String>, file: Option<&str>| -> Result<Option<SocketAddr>, ConfigError> {
            let (text, from) = match (given_text(given), file.filter(|v| !v.is_empty())) {
                (Some(v), _) => (v, Origin::Given(key)),
                (None, Some(v)) => (v, Origin::File(file_name)),
                (None, None) => return Ok(None),
            };
            text.parse().map(Some).map_err(|e| ConfigError::Invalid { key, reason: format!("`{text}`: {e} ({from})") })
        };
        let http_listen = optional_addr("http_listen", &given.http_listen, fc.http_listen.as_deref())?;
        let metrics_listen = optional_addr("metrics_listen", &given.metrics_listen, fc.metrics_listen.as_deref())?;

        let concurrency = bounded("concurrency", &given.concurrency, fc.concurrency.map(|n| n as u64), file_name, 1, usize::MAX as u64, |n| format!("{n} is too large"))? as usize;

        let secs = |key, given, file, default: Duration| {
            bounded(key, given, file, file_name, default.as_secs(), MAX_TIMEOUT_SECS, |n| format!("{n} s is more than a day ({MAX_TIMEOUT_SECS} s)")).map(Duration::from_secs)
        };
        let count = |key, given, file, default: usize| bounded(key, given, file, file_name, default as u64, MAX_COUNT, |n| format!("{n} is too large (at most {MAX_COUNT})")).map(|n| n as usize);
        let d = ServerLimits::default();
        let limits = ServerLimits {
            max_connections: count("max_connections", &given.max_connections, fc.max_connections, d.max_connections)?,
            handshake_timeout: secs("handshake_timeout_secs", &given.handshake_timeout_secs, fc.handshake_timeout_secs, d.handshake_timeout)?,
            idle_timeout: secs("idle_timeout_secs", &given.idle_timeout_secs, fc.idle_timeout_secs, d.idle_timeout)?,
            keepalive_interval: secs("keepalive_interval_secs", &given.keepalive_interval_secs, fc.keepalive_interval_secs, d.keepalive_interval)?,
            keepalive_timeout: secs("keepalive_timeout_secs", &given.keepalive_timeout_secs, fc.keepalive_timeout_secs, d.keepalive_timeout)?,
            max_concurrent_uploads: count("max_concurrent_uploads", &given.max_concurrent_uploads, fc.max_concurrent_uploads, d.max_concurrent_uploads)?,
            watch_streams_per_tenant: count("watch_streams_per_tenant", &given.watch_streams_per_tenant, fc.watch_streams_per_tenant, d.watch_streams_per_tenant)?,
            downloads_per_tenant: count("downloads_per_tenant", &given.downloads_per_tenant, fc.downloads_per_tenant, d.downloads_per_tenant)?,
        };

        let data_dir = absolute(data_dir);
        let path = |given: &Option<PathBuf>, file: Option<PathBuf>| given_path(given).map(Path::to_path_buf).or(file).filter(|p| !p.as_os_str().is_empty()).map(|p| absolute(&p));
        let models_dir = path(&given.models_dir, fc.models_dir).unwrap_or_else(|| data_dir.join("models"));
        let tls = match (path(&given.tls_cert, fc.tls_cert), path(&given.tls_key, fc.tls_key)) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (c, _) => {
                let only = if c.is_some() { "tls_cert" } else { "tls_key" };
                return Err(ConfigError::Invalid { key: "tls_cert", reason: format!("tls_cert and tls_key go together, and only {only} is set") });
            }
        };
        let database = match (given_text(&given.database_url), fc.database_url.as_deref().filter(|v| !v.is_empty())) {
            (Some(v), _) | (None, Some(v)) => match Database::parse(v) {
                Database::Sqlite(p) => Database::Sqlite(absolute(&p)),
                pg => pg,
            },
            (None, None) => Database::Sqlite(data_dir.join("ewtune.db")),
        };
        if let Database::Postgres(url) = &database {
            url.parse::<postgres::Config>().map_err(|e| ConfigError::Invalid { key: "database_url", reason: format!("not a PostgreSQL URL: {e}") })?;
        }
        let daemon_id = match (given_text(&given.daemon_id), fc.daemon_id.as_deref().filter(|v| !v.is_empty())) {
            (Some(v), _) | (None, Some(v)) => v.to_owned(),
            // One daemon per SQLite file: one fixed id, whatever port it restarts on, so that it
            // requeues its own interrupted jobs at once.
            (None, None) if matches!(database, Database::Sqlite(_)) => Worker::local().id.to_string(),
            (None, None) => format!("{}:{}", host_name(), listen.port()),
        };
        let id = DaemonId::parse(&daemon_id).map_err(|e| ConfigError::Invalid { key: "daemon_id", reason: format!("`{daemon_id}`: {e}") })?;
        let lease = bounded("lease_secs", &given.lease_secs, fc.lease_secs, file_name, Worker::DEFAULT_LEASE_MS as u64 / 1000, MAX_TIMEOUT_SECS, |n| format!("{n} s is more than a day ({MAX_TIMEOUT_SECS} s)"))?;
        let worker = Worker { id, lease_ms: lease as i64 * 1000 };
        Ok(DaemonConfig { data_dir, listen, http_listen, metrics_listen, models_dir, database, worker, concurrency, tls, limits })
    }

    /// This configuration as an `ewtuned.toml` that sets every key (the TLS keys only with TLS),
    /// with the data directory, which is no file key, in a comment at the top.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        let l = &self.limits;
        let fc = FileConfig {
            listen: Some(self.listen.to_string()),
            http_listen: self.http_listen.map(|a| a.to_string()),
            metrics_listen: self.metrics_listen.map(|a| a.to_string()),
            models_dir: Some(self.models_dir.clone()),
            database_url: Some(match &self.database {
                Database::Sqlite(path) => path.to_string_lossy().into_owned(),
                Database::Postgres(url) => redact_password(url),
            }),
            daemon_id: Some(self.worker.id.to_string()),
            lease_secs: Some(self.worker.lease_ms as u64 / 1000),
            concurrency: Some(self.concurrency),
            tls_cert: self.tls.as_ref().map(|(c, _)| c.clone()),
            tls_key: self.tls.as_ref().map(|(_, k)| k.clone()),
            max_connections: Some(l.max_connections as u64),
            handshake_timeout_secs: Some(l.handshake_timeout.as_secs()),
            idle_timeout_secs: Some(l.idle_timeout.as_secs()),
            keepalive_interval_secs: Some(l.keepalive_interval.as_secs()),
            keepalive_timeout_secs: Some(l.keepalive_timeout.as_secs()),
            max_concurrent_uploads: Some(l.max_concurrent_uploads as u64),
            watch_streams_per_tenant: Some(l.watch_streams_per_tenant as u64),
            downloads_per_tenant: Some(l.downloads_per_tenant as u64),
        };
        let data_dir = toml::Value::String(self.data_dir.to_string_lossy().into_owned());
        Ok(format!("# data_dir = {data_dir} (--data-dir or EWTUNED_DATA_DIR only)\n{}", toml::to_string(&fc)?))
    }
}

#[cfg(test)]
mod tests {
    //! These tests never set a variable: the environment is process-wide and the tests run in
    //! threads. The environment's layer is a [`Settings`] built here, or flags, which beat any
    //! variable; tests/config.rs runs the real `ewtuned` under a chosen environment.
    use super::*;
    use clap::{CommandFactory, Parser};

    fn resolve_file(toml: &str) -> Result<DaemonConfig, ConfigError> {
        resolve_with(toml, &Settings::default())
    }

    fn resolve_with(toml: &str, given: &Settings) -> Result<DaemonConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ewtuned.toml");
        std::fs::write(&path, toml).unwrap();
        DaemonConfig::from_settings(dir.path(), Some(&path), &Settings { listen: Some("127.0.0.1:0".into()), ..given.clone() })
    }

    #[test]
    fn limits_default_to_safe_values() {
        let c = resolve_file("").unwrap();
        assert_eq!(c.limits, ServerLimits::default());
        assert_eq!(c.limits.max_connections, 256);
        assert_eq!(c.limits.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(300));
        assert_eq!((c.limits.keepalive_interval, c.limits.keepalive_timeout), (Duration::from_secs(60), Duration::from_secs(20)));
        assert_eq!((c.limits.max_concurrent_uploads, c.limits.watch_streams_per_tenant, c.limits.downloads_per_tenant), (2, 32, 4));
        assert_eq!((c.concurrency, c.tls.as_ref()), (1, None));
        assert_eq!(c.models_dir, c.data_dir.join("models"));
    }

    #[test]
    fn limits_come_from_the_file() {
        let c = resolve_file(
            "max_connections = 8\nhandshake_timeout_secs = 2\nidle_timeout_secs = 30\nkeepalive_interval_secs = 5\n\
             keepalive_timeout_secs = 3\nmax_concurrent_uploads = 1\nwatch_streams_per_tenant = 4\ndownloads_per_tenant = 2\n",
        )
        .unwrap();
        let want = ServerLimits {
            max_connections: 8,
            handshake_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(3),
            max_concurrent_uploads: 1,
            watch_streams_per_tenant: 4,
            downloads_per_tenant: 2,
        };
        assert_eq!(c.limits, want);
    }

    #[test]
    fn invalid_limits_name_their_key() {
        for key in ["max_connections", "handshake_timeout_secs", "idle_timeout_secs", "keepalive_interval_secs", "keepalive_timeout_secs", "max_concurrent_uploads", "watch_streams_per_tenant", "downloads_per_tenant"] {
            match resolve_file(&format!("{key} = 0\n")) {
                Err(ConfigError::Invalid { key: k, reason }) => assert!(k == key && reason.contains(">= 1") && reason.contains("from ewtuned.toml"), "{k}: {reason}"),
                other => panic!("{key} = 0: {other:?}"),
            }
            // Negative and non-integer values do not parse as a count.
            assert!(matches!(resolve_file(&format!("{key} = -1\n")), Err(ConfigError::File { .. })), "{key} = -1");
            assert!(matches!(resolve_file(&format!("{key} = \"ten\"\n")), Err(ConfigError::File { .. })), "{key} = ten");
        }
        match resolve_file("max_conections = 3\n") {
            Err(ConfigError::File { reason, .. }) => {
                assert_eq!(reason, "unknown key `max_conections` in ewtuned.toml; did you mean `max_connections`?", "unknown keys are refused, named")
            }
            other => panic!("{other:?}"),
        }
        match resolve_file("max_concurrent_uploads = 4611686018427387904\n") {
            Err(ConfigError::Invalid { key, reason }) => assert!(key == "max_concurrent_uploads" && reason.contains("too large"), "{reason}"),
            other => panic!("{other:?}"),
        }
        match resolve_file("idle_timeout_secs = 100000000000\n") {
            Err(ConfigError::Invalid { key, reason }) => assert!(key == "idle_timeout_secs" && reason.contains("day"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bad_flag_or_variable_names_its_key_flag_and_variable() {
        let cases = [
            (Settings { watch_streams_per_tenant: Some("many".into()), ..Settings::default() }, "watch_streams_per_tenant", "`many` is not a whole number (from --watch-streams-per-tenant or EWTUNED_WATCH_STREAMS_PER_TENANT)"),
            (Settings { concurrency: Some("0".into()), ..Settings::default() }, "concurrency", "must be >= 1 (from --concurrency or EWTUNED_CONCURRENCY)"),
            (Settings { concurrency: Some("-2".into()), ..Settings::default() }, "concurrency", "`-2` is not a whole number (from --concurrency or EWTUNED_CONCURRENCY)"),
            (Settings { max_connections: Some("2000000".into()), ..Settings::default() }, "max_connections", "2000000 is too large (at most 1000000) (from --max-connections or EWTUNED_MAX_CONNECTIONS)"),
            (Settings { keepalive_timeout_secs: Some("86401".into()), ..Settings::default() }, "keepalive_timeout_secs", "86401 s is more than a day (86400 s) (from --keepalive-timeout-secs or EWTUNED_KEEPALIVE_TIMEOUT_SECS)"),
        ];
        for (given, want_key, want) in cases {
            // The file's value is good: the bad given one is refused all the same.
            match resolve_with(&format!("{want_key} = 3\n"), &given) {
                Err(ConfigError::Invalid { key, reason }) => assert_eq!((key, reason.as_str()), (want_key, want)),
                other => panic!("{given:?}: {other:?}"),
            }
        }
        let dir = tempfile::tempdir().unwrap();
        match DaemonConfig::from_settings(dir.path(), None, &Settings { listen: Some("nowhere".into()), ..Settings::default() }) {
            Err(e @ ConfigError::Invalid { key: "listen", .. }) => {
                assert_eq!(e.to_string(), "invalid listen: `nowhere`: invalid socket address syntax (from --listen or EWTUNED_LISTEN)")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn given_beats_the_file_which_beats_the_default() {
        let file = "listen = \"127.0.0.1:6000\"\nconcurrency = 2\nmax_connections = 3\nmodels_dir = \"/models/file\"\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ewtuned.toml");
        std::fs::write(&path, file).unwrap();
        let resolve = |given: &Settings| DaemonConfig::from_settings(dir.path(), Some(&path), given).unwrap();

        let c = resolve(&Settings::default());
        assert_eq!((c.listen.to_string().as_str(), c.concurrency, c.limits.max_connections, c.models_dir.as_path()), ("127.0.0.1:6000", 2, 3, Path::new("/models/file")));
        let given = Settings { listen: Some("127.0.0.1:7000".into()), concurrency: Some("4".into()), max_connections: Some("12".into()), models_dir: Some("/models/given".into()), ..Settings::default() };
        let c = resolve(&given);
        assert_eq!((c.listen.to_string().as_str(), c.concurrency, c.limits.max_connections, c.models_dir.as_path()), ("127.0.0.1:7000", 4, 12, Path::new("/models/given")));
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(300), "a key neither sets keeps its default");
        // An empty value (EWTUNED_LISTEN= in a unit file) counts as unset.
        let empty = Settings { listen: Some(String::new()), concurrency: Some(String::new()), models_dir: Some(PathBuf::new()), ..Settings::default() };
        assert_eq!(resolve(&empty), resolve(&Settings::default()));
        // Relative paths are made absolute against the current directory.
        let c = resolve(&Settings { models_dir: Some("rel/models".into()), ..Settings::default() });
        assert_eq!(c.models_dir, std::env::current_dir().unwrap().join("rel/models"));
    }

    #[test]
    fn tls_cert_and_key_merge_per_key_and_go_together() {
        let c = resolve_with("tls_key = \"/pki/file.key\"\n", &Settings { tls_cert: Some("/pki/given.crt".into()), ..Settings::default() }).unwrap();
        assert_eq!(c.tls, Some((PathBuf::from("/pki/given.crt"), PathBuf::from("/pki/file.key"))));
        match resolve_with("", &Settings { tls_cert: Some("/pki/given.crt".into()), ..Settings::default() }) {
            Err(ConfigError::Invalid { key: "tls_cert", reason }) => assert_eq!(reason, "tls_cert and tls_key go together, and only tls_cert is set"),
            other => panic!("{other:?}"),
        }
        match resolve_file("tls_key = \"/pki/file.key\"\n") {
            Err(ConfigError::Invalid { key: "tls_cert", reason }) => assert!(reason.ends_with("only tls_key is set"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_beat_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ewtuned.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:6000\"\nconcurrency = 2\nmax_connections = 3\nidle_timeout_secs = 30\n").unwrap();
        let (d, p) = (dir.path().to_str().unwrap(), path.to_str().unwrap());
        let cli = Cli::try_parse_from(["ewtuned", "--data-dir", d, "--config", p, "--listen", "127.0.0.1:7000", "--concurrency", "4", "--max-connections", "12"]).unwrap();
        assert_eq!((&cli.command, cli.print_config), (&None, false));
        let c = cli.daemon_config().unwrap();
        assert_eq!((c.data_dir.as_path(), c.listen.to_string().as_str(), c.concurrency, c.limits.max_connections), (dir.path(), "127.0.0.1:7000", 4, 12));
        let cli = Cli::try_parse_from(["ewtuned", "--data-dir", d, "--config", p, "--max-connections", "0"]).unwrap();
        match cli.daemon_config() {
            Err(ConfigError::Invalid { key: "max_connections", reason }) => assert_eq!(reason, "must be >= 1 (from --max-connections or EWTUNED_MAX_CONNECTIONS)"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_http_addresses_are_optional_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let c = DaemonConfig::from_settings(dir.path(), None, &Settings::default()).unwrap();
        assert_eq!((c.http_listen, c.metrics_listen), (None, None), "nothing but gRPC is served unless asked");
        let given = Settings { http_listen: Some("127.0.0.1:8080".into()), metrics_listen: Some("127.0.0.1:9090".into()), ..Settings::default() };
        let c = DaemonConfig::from_settings(dir.path(), None, &given).unwrap();
        assert_eq!((c.http_listen.unwrap().port(), c.metrics_listen.unwrap().port()), (8080, 9090));
        match DaemonConfig::from_settings(dir.path(), None, &Settings { metrics_listen: Some("9090".into()), ..Settings::default() }) {
            Err(e @ ConfigError::Invalid { key: "metrics_listen", .. }) => {
                assert_eq!(e.to_string(), "invalid metrics_listen: `9090`: invalid socket address syntax (from --metrics-listen or EWTUNED_METRICS_LISTEN)")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_ledger_database_and_the_daemon_id() {
        let dir = tempfile::tempdir().unwrap();
        let c = DaemonConfig::from_settings(dir.path(), None, &Settings::default()).unwrap();
        assert_eq!((c.database, c.worker.id.as_str(), c.worker.lease_ms), (Database::Sqlite(dir.path().join("ewtune.db")), "local", 30_000));
        let url = "postgres://ewtune:s3cret@db.internal:5432/ewtune";
        let given = Settings { database_url: Some(url.into()), listen: Some("0.0.0.0:7000".into()), lease_secs: Some("5".into()), ..Settings::default() };
        let c = DaemonConfig::from_settings(dir.path(), None, &given).unwrap();
        assert_eq!(c.database, Database::Postgres(url.into()));
        assert!(c.worker.id.as_str().ends_with(":7000"), "{}", c.worker.id);
        assert_eq!(c.worker.lease_ms, 5000);
        let printed = c.to_toml().unwrap();
        assert!(printed.contains("postgres://ewtune:********@db.internal:5432/ewtune") && !printed.contains("s3cret"), "{printed}");
        assert_eq!(redact_password("host=db password=s3cret dbname=e"), "host=db password=******** dbname=e");
        assert_eq!(redact_password("postgres://u@db/e?sslmode=disable&password=s3cret"), "postgres://u@db/e?sslmode=disable&password=********");
        let bad = Settings { daemon_id: Some("two words".into()), ..given.clone() };
        assert!(matches!(DaemonConfig::from_settings(dir.path(), None, &bad), Err(ConfigError::Invalid { key: "daemon_id", .. })));
        let bad = Settings { database_url: Some("postgres://host:notaport/db".into()), ..given };
        assert!(matches!(DaemonConfig::from_settings(dir.path(), None, &bad), Err(ConfigError::Invalid { key: "database_url", .. })));
    }

    #[test]
    fn the_command_line_parses_as_before() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["ewtuned", "token", "create", "--data-dir", "/d", "--tenant", "ward"]).unwrap();
        assert_eq!((cli.data_dir.as_deref(), cli.command), (Some(Path::new("/d")), Some(Command::Token(TokenCommand::Create { tenant: "ward".into() }))));
        let cli = Cli::try_parse_from(["ewtuned", "key", "show", "--data-dir", "/d"]).unwrap();
        assert_eq!(cli.command, Some(Command::Key(KeyCommand::Show)));
        // Serving's settings are no subcommand's: flags for both are refused.
        assert!(Cli::try_parse_from(["ewtuned", "--listen", "127.0.0.1:1", "token", "list", "--data-dir", "/d"]).is_err());
        assert!(Cli::try_parse_from(["ewtuned", "--concurrency", "x", "--bogus"]).is_err());
    }

    #[test]
    fn every_file_key_has_a_flag_and_a_variable_shown_in_help() {
        let cmd = Cli::command();
        let help = Cli::command().render_long_help().to_string();
        let keys = serde_aux::serde_introspection::serde_introspect::<FileConfig>();
        assert_eq!(keys.len(), 18);
        for key in keys {
            let arg = cmd.get_arguments().find(|a| a.get_id() == *key).unwrap_or_else(|| panic!("no flag for file key {key}"));
            assert_eq!(arg.get_long(), Some(flag(key).as_str()), "{key}");
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(env_var(key).as_str()), "{key}");
            assert!(arg.get_default_values().is_empty(), "{key}: a clap default would hide the file's value");
            assert!(help.contains(&format!("[env: {}", env_var(key))) && help.contains(&format!("[file: {key}]")), "{key} in --help:\n{help}");
        }
        for (id, var) in [("data_dir", "EWTUNED_DATA_DIR"), ("config", "EWTUNED_CONFIG")] {
            let arg = cmd.get_arguments().find(|a| a.get_id() == id).unwrap();
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(var));
            assert!(help.contains(&format!("[env: {var}")), "{var} in --help:\n{help}");
        }
        assert!(help.contains("Required by every command"), "--help says --data-dir is required:\n{help}");
    }

    #[test]
    fn the_printed_configuration_reads_back_the_same() {
        let c = resolve_with(
            "concurrency = 3\nidle_timeout_secs = 30\nmodels_dir = \"/models/x\"\n",
            &Settings { tls_cert: Some("/pki/a.crt".into()), tls_key: Some("/pki/a.key".into()), downloads_per_tenant: Some("7".into()), ..Settings::default() },
        )
        .unwrap();
        let text = c.to_toml().unwrap();
        assert!(text.starts_with(&format!("# data_dir = \"{}\"", c.data_dir.display())), "{text}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("printed.toml");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(DaemonConfig::from_settings(&c.data_dir, Some(&path), &Settings::default()).unwrap(), c, "{text}");
    }
}
