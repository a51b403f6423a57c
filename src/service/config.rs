//! The daemon's configuration: a TOML file and `EWTUNED_*` environment variables, merged with the
//! command line into one [`DaemonConfig`] with every default resolved and every path absolute.
//! The server's resource limits ([`ServerLimits`]) resolve here too, each validated by key.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Configuration errors, each naming its key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key has an invalid value.
    #[error("invalid {key}: {reason}")]
    Invalid {
        /// The key (`listen`, `concurrency`, ...).
        key: &'static str,
        /// Why.
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
}

/// `ewtuned.toml` as written; every key optional, and a key not listed here is refused, named
/// with the closest known key (`crate::strict_toml`).
#[derive(Debug, Default, Deserialize)]
pub struct FileConfig {
    /// Address to serve gRPC on.
    pub listen: Option<String>,
    /// Directory of base models (one HF checkpoint directory per model name).
    pub models_dir: Option<PathBuf>,
    /// Jobs run at once.
    pub concurrency: Option<usize>,
    /// PEM certificate chain; with `tls_key`, serve TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// Connections served at once; past it a new connection is closed at accept.
    pub max_connections: Option<u64>,
    /// Seconds a new connection has to send its first request (TLS and HTTP/2 handshakes included).
    pub handshake_timeout_secs: Option<u64>,
    /// Seconds a connection with no request in flight stays open.
    pub idle_timeout_secs: Option<u64>,
    /// Seconds between HTTP/2 keepalive pings.
    pub keepalive_interval_secs: Option<u64>,
    /// Seconds to wait for a ping's acknowledgement before closing the connection.
    pub keepalive_timeout_secs: Option<u64>,
    /// Uploads (Datasets.Register, Audits.Create) decoded at once; the others wait.
    pub max_concurrent_uploads: Option<u64>,
    /// Open Watch streams per tenant.
    pub watch_streams_per_tenant: Option<u64>,
    /// Jobs.GetArtifacts streams per tenant.
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
    /// Base models.
    pub models_dir: PathBuf,
    /// Concurrent jobs (default 1).
    pub concurrency: usize,
    /// TLS certificate and key, when configured.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Connection, upload and stream limits.
    pub limits: ServerLimits,
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    }
}

impl DaemonConfig {
    /// Merges command line (highest), environment, file and defaults.
    pub fn resolve(data_dir: &Path, listen: Option<&str>, file: Option<&Path>) -> Result<Self, ConfigError> {
        let fc = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File { path: path.to_path_buf(), reason: e.to_string() })?;
                let file = path.file_name().map_or_else(|| "ewtuned.toml".into(), |n| n.to_string_lossy().into_owned());
                crate::strict_toml::from_str::<FileConfig>(&text, &file, &[crate::strict_toml::Table::of::<FileConfig>("")])
                    .map_err(|e| ConfigError::File { path: path.to_path_buf(), reason: e.to_string() })?
            }
            None => FileConfig::default(),
        };
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let listen = listen.map(str::to_string).or_else(|| env("EWTUNED_LISTEN")).or(fc.listen).unwrap_or_else(|| "127.0.0.1:50051".into());
        let listen: SocketAddr = listen.parse().map_err(|e| ConfigError::Invalid { key: "listen", reason: format!("`{listen}`: {e}") })?;
        let concurrency = match env("EWTUNED_CONCURRENCY") {
            Some(v) => v.parse().map_err(|_| ConfigError::Invalid { key: "concurrency", reason: format!("`{v}` is not a number") })?,
            None => fc.concurrency.unwrap_or(1),
        };
        if concurrency == 0 {
            return Err(ConfigError::Invalid { key: "concurrency", reason: "must be >= 1".into() });
        }
        let d = ServerLimits::default();
        let secs = |key, file, default: Duration| match positive(key, env, file, default.as_secs())? {
            n if n > MAX_TIMEOUT_SECS => Err(ConfigError::Invalid { key, reason: format!("{n} s is more than a day ({MAX_TIMEOUT_SECS} s)") }),
            n => Ok(Duration::from_secs(n)),
        };
        // Counts size semaphores and tables: at most a million (a semaphore panics past its maximum).
        const MAX_COUNT: u64 = 1_000_000;
        let count = |key, file, default: usize| {
            positive(key, env, file, default as u64).and_then(|n| match usize::try_from(n) {
                Ok(n) if n as u64 <= MAX_COUNT => Ok(n),
                _ => Err(ConfigError::Invalid { key, reason: format!("{n} is too large (at most {MAX_COUNT})") }),
            })
        };
        let limits = ServerLimits {
            max_connections: count("max_connections", fc.max_connections, d.max_connections)?,
            handshake_timeout: secs("handshake_timeout_secs", fc.handshake_timeout_secs, d.handshake_timeout)?,
            idle_timeout: secs("idle_timeout_secs", fc.idle_timeout_secs, d.idle_timeout)?,
            keepalive_interval: secs("keepalive_interval_secs", fc.keepalive_interval_secs, d.keepalive_interval)?,
            keepalive_timeout: secs("keepalive_timeout_secs", fc.keepalive_timeout_secs, d.keepalive_timeout)?,
            max_concurrent_uploads: count("max_concurrent_uploads", fc.max_concurrent_uploads, d.max_concurrent_uploads)?,
            watch_streams_per_tenant: count("watch_streams_per_tenant", fc.watch_streams_per_tenant, d.watch_streams_per_tenant)?,
            downloads_per_tenant: count("downloads_per_tenant", fc.downloads_per_tenant, d.downloads_per_tenant)?,
        };
        let data_dir = absolute(data_dir);
        let models_dir = env("EWTUNED_MODELS_DIR").map(PathBuf::from).or(fc.models_dir).map(|p| absolute(&p)).unwrap_or_else(|| data_dir.join("models"));
        let tls = match (fc.tls_cert, fc.tls_key) {
            (Some(c), Some(k)) => Some((absolute(&c), absolute(&k))),
            (None, None) => None,
            _ => return Err(ConfigError::Invalid { key: "tls_cert", reason: "tls_cert and tls_key go together".into() }),
        };
        Ok(DaemonConfig { data_dir, listen, models_dir, concurrency, tls, limits })
    }
}

/// The longest timeout or interval accepted, in seconds (a day).
const MAX_TIMEOUT_SECS: u64 = 86_400;

/// A whole number >= 1 for `key`: from `EWTUNED_<KEY>`, else the file, else `default`.
fn positive(key: &'static str, env: impl Fn(&str) -> Option<String>, file: Option<u64>, default: u64) -> Result<u64, ConfigError> {
    let n = match env(&format!("EWTUNED_{}", key.to_ascii_uppercase())) {
        Some(v) => v.parse().map_err(|_| ConfigError::Invalid { key, reason: format!("`{v}` is not a whole number") })?,
        None => file.unwrap_or(default),
    };
    if n == 0 {
        return Err(ConfigError::Invalid { key, reason: "must be >= 1".into() });
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_file(toml: &str) -> Result<DaemonConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ewtuned.toml");
        std::fs::write(&path, toml).unwrap();
        DaemonConfig::resolve(dir.path(), Some("127.0.0.1:0"), Some(&path))
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
                Err(ConfigError::Invalid { key: k, reason }) => assert!(k == key && reason.contains(">= 1"), "{k}: {reason}"),
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
    fn a_bad_environment_value_names_its_key() {
        let env = |k: &str| (k == "EWTUNED_WATCH_STREAMS_PER_TENANT").then(|| "many".to_string());
        match positive("watch_streams_per_tenant", env, Some(3), 32) {
            Err(ConfigError::Invalid { key, reason }) => assert!(key == "watch_streams_per_tenant" && reason.contains("many"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let env = |k: &str| (k == "EWTUNED_MAX_CONNECTIONS").then(|| "12".to_string());
        assert_eq!(positive("max_connections", env, Some(3), 256).unwrap(), 12, "the environment beats the file");
        assert_eq!(positive("max_connections", |_| None, Some(3), 256).unwrap(), 3);
        assert_eq!(positive("max_connections", |_| None, None, 256).unwrap(), 256);
    }
}
