//! The daemon's configuration: a TOML file and `EWTUNED_*` environment variables, merged with the
//! command line into one [`DaemonConfig`] with every default resolved and every path absolute.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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

/// `ewtuned.toml` as written; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
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
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::File { path: path.to_path_buf(), reason: e.to_string() })?
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
        let data_dir = absolute(data_dir);
        let models_dir = env("EWTUNED_MODELS_DIR").map(PathBuf::from).or(fc.models_dir).map(|p| absolute(&p)).unwrap_or_else(|| data_dir.join("models"));
        let tls = match (fc.tls_cert, fc.tls_key) {
            (Some(c), Some(k)) => Some((absolute(&c), absolute(&k))),
            (None, None) => None,
            _ => return Err(ConfigError::Invalid { key: "tls_cert", reason: "tls_cert and tls_key go together".into() }),
        };
        Ok(DaemonConfig { data_dir, listen, models_dir, concurrency, tls })
    }
}
