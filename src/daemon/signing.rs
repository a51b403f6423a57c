//! The daemon's Ed25519 identity: generated once into the data directory (PKCS#8, mode 0600,
//! written atomically), used to sign budget reports, and the offline check behind
//! `ewtune verify`.

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Signing failures.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The key file cannot be read or written.
    #[error("signing key {path}: {reason}")]
    Key {
        /// The key file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A signed document does not verify.
    #[error("signature does not verify: {0}")]
    Invalid(String),
}

/// The daemon's key pair.
pub struct Signer {
    pair: Ed25519KeyPair,
}

impl Signer {
    /// Loads `path`, creating a new key there (0600) when absent.
    pub fn load_or_create(path: &Path) -> Result<Self, SigningError> {
        let err = |reason: String| SigningError::Key { path: path.display().to_string(), reason };
        if !path.exists() {
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| err(e.to_string()))?;
            let tmp = path.with_extension("tmp");
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(|e| err(e.to_string()))?;
                f.write_all(pkcs8.as_ref()).and_then(|_| f.sync_all()).map_err(|e| err(e.to_string()))?;
            }
            std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
        }
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let pair = Ed25519KeyPair::from_pkcs8(&bytes).map_err(|e| err(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        Ok(Signer { pair })
    }

    /// The public key (32 bytes).
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

/// A signed report as `ewtune budget show --json` saves it and `ewtune verify` reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedReport {
    /// The report, exactly the bytes that were signed.
    pub report_json: String,
    /// Ed25519 signature, hex.
    pub signature: String,
    /// The signer's public key, hex.
    pub public_key: String,
}

impl SignedReport {
    /// A report with its raw Ed25519 signature and public key (as the API returns them).
    pub fn new(report_json: String, signature: &[u8], public_key: &[u8]) -> Self {
        SignedReport { report_json, signature: crate::digest::hex(signature), public_key: crate::digest::hex(public_key) }
    }
}


fn from_hex(s: &str, what: &str) -> Result<Vec<u8>, SigningError> {
    if !s.len().is_multiple_of(2) {
        return Err(SigningError::Invalid(format!("{what} is not hex")));
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| SigningError::Invalid(format!("{what} is not hex")))).collect()
}

/// Verifies `report` against its embedded key, and against `pinned` (hex) when given: the
/// embedded key alone proves integrity, the pinned key proves which daemon signed.
pub fn verify(report: &SignedReport, pinned: Option<&str>) -> Result<(), SigningError> {
    let key = from_hex(&report.public_key, "public_key")?;
    if let Some(p) = pinned {
        if !p.eq_ignore_ascii_case(&report.public_key) {
            return Err(SigningError::Invalid("signed by a different key than the pinned one".into()));
        }
    }
    let sig = from_hex(&report.signature, "signature")?;
    UnparsedPublicKey::new(&ED25519, key)
        .verify(report.report_json.as_bytes(), &sig)
        .map_err(|_| SigningError::Invalid("the report was altered or signed by another key".into()))
}
