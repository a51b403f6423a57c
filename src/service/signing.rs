//! The daemon's Ed25519 identity: generated once into the data directory (PKCS#8, mode 0600,
//! written atomically), used to sign budget and audit reports, read back without creating it
//! for `ewtuned key show`, and the offline check behind `ewtune verify`.
//!
//! A signature alone proves only that a report is intact: anyone can sign any JSON with a key
//! of their own and embed that key. Which daemon signed is proved by comparing the signer with a
//! key the operator published ([`verify`]'s `pinned`); [`Verified::pinned`] says whether that
//! was done. Which report is current is told by what the daemon puts in every signed report:
//! the tenant, the time it was issued and, for budget reports, a per-dataset sequence number
//! ([`ReportFacts`]).
//!
//! What this module does not own: what goes into a report (`store/ledger.rs`,
//! `audit/report.rs`) and the exit codes of `ewtune verify` (`src/bin/ewtune/verify.rs`).

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The key's file name in the data directory.
pub const KEY_FILE: &str = "signing_key.pk8";

/// Bytes in an Ed25519 public key.
const PUBLIC_KEY_BYTES: usize = 32;

/// The daemon's key file under `data_dir`.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

/// Signing and verification failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SigningError {
    /// The key file cannot be read or written.
    #[error("signing key {}: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// There is no key file (and the caller asked not to create one).
    #[error("no signing key at {}: the daemon creates it when it first starts (`ewtuned --data-dir DIR`)", path.display())]
    NoKey {
        /// Where the key was looked for.
        path: PathBuf,
    },
    /// A hex field is not hex (odd length, or a character outside 0-9 a-f A-F).
    #[error("{field} is not hex: {reason}")]
    Hex {
        /// Which value (`public_key`, `signature`, `the pinned public key`).
        field: &'static str,
        /// What the decoder found.
        reason: hex::FromHexError,
    },
    /// A public key of the wrong length.
    #[error("{field} is {found} bytes long; an Ed25519 public key is 32 bytes (64 hex digits)")]
    KeyLength {
        /// Which key.
        field: &'static str,
        /// Its length in bytes.
        found: usize,
    },
    /// The report verifies, but under another key than the pinned one.
    #[error("the report is signed by {signer}, not by the pinned key {pinned}")]
    SignerMismatch {
        /// The pinned key, hex.
        pinned: String,
        /// The report's signer, hex.
        signer: String,
    },
    /// The signature does not verify under the report's key.
    #[error("the signature does not verify: the report was altered, or not signed by the key it names")]
    BadSignature,
}

/// The daemon's key pair.
pub struct Signer {
    pair: Ed25519KeyPair,
}

impl Signer {
    /// Loads `path`, creating a new key there (0600, from ring's `SystemRandom`) when absent.
    pub fn load_or_create(path: &Path) -> Result<Self, SigningError> {
        let err = |reason: String| SigningError::Key { path: path.to_owned(), reason };
        if !path.exists() {
            // Several daemons on one shared data directory may start together: each writes its
            // own temp file and links it into place only if no key is there yet, so all of them
            // end up loading the one key that won.
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| err(e.to_string()))?;
            let dir = path.parent().unwrap_or(Path::new("."));
            let mut tmp = tempfile::Builder::new().prefix(".tmp-key").tempfile_in(dir).map_err(|e| err(e.to_string()))?;
            {
                use std::io::Write;
                use std::os::unix::fs::PermissionsExt;
                tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(|e| err(e.to_string()))?;
                tmp.write_all(pkcs8.as_ref()).and_then(|_| tmp.as_file().sync_all()).map_err(|e| err(e.to_string()))?;
            }
            match std::fs::hard_link(tmp.path(), path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(err(e.to_string())),
            }
        }
        Signer::load(path)
    }

    /// Loads the key at `path`; [`SigningError::NoKey`] if there is none (nothing is created).
    pub fn load(path: &Path) -> Result<Self, SigningError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SigningError::NoKey { path: path.to_owned() }),
            Err(e) => return Err(SigningError::Key { path: path.to_owned(), reason: e.to_string() }),
        };
        let pair = Ed25519KeyPair::from_pkcs8(&bytes)
            .map_err(|e| SigningError::Key { path: path.to_owned(), reason: format!("not an Ed25519 PKCS#8 key: {e}") })?;
        Ok(Signer { pair })
    }

    /// The public key (32 bytes).
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// The public key as lower-case hex, as `ewtuned key show` prints it for pinning.
    pub fn public_key_hex(&self) -> String {
        crate::digest::hex(self.pair.public_key().as_ref())
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

/// What a signed report says about itself: which tenant and dataset or audit it is about, when
/// the daemon issued it and, for budget reports, its sequence number. Read from the signed
/// bytes, so only meaningful once the signature verified. A field is `None` when the report
/// does not carry it (reports from before these fields existed carry none: such a report
/// cannot be told apart from a replayed one).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ReportFacts {
    /// The tenant the report was issued to.
    pub tenant: Option<String>,
    /// The dataset (budget reports).
    pub dataset: Option<String>,
    /// The per-dataset sequence number (budget reports): a later report has a larger one.
    pub sequence: Option<u64>,
    /// When the daemon issued the report, unix milliseconds (UTC).
    pub issued_at_unix_ms: Option<i64>,
    /// The audit (daemon audit reports).
    pub audit_id: Option<String>,
    /// The audited job (audit reports).
    pub job_id: Option<String>,
}

impl ReportFacts {
    /// The facts of `report_json`; all `None` for JSON that is not an object with these fields.
    pub fn of(report_json: &str) -> ReportFacts {
        serde_json::from_str(report_json).unwrap_or_default()
    }
}

/// A report whose signature verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The signer's public key, lower-case hex.
    pub signer: String,
    /// True when the signer is the pinned key. False when no key was pinned: the report is
    /// intact, but nothing says which daemon signed it.
    pub pinned: bool,
    /// What the report says about itself.
    pub facts: ReportFacts,
}

/// Decodes a hex Ed25519 public key.
fn public_key(text: &str, field: &'static str) -> Result<Vec<u8>, SigningError> {
    let key = crate::digest::from_hex(text.trim()).map_err(|reason| SigningError::Hex { field, reason })?;
    if key.len() != PUBLIC_KEY_BYTES {
        return Err(SigningError::KeyLength { field, found: key.len() });
    }
    Ok(key)
}

/// Verifies `report`'s signature under its embedded key and, when `pinned` (hex) is given,
/// that this key is the pinned one. The embedded key alone proves integrity only; the pinned
/// key proves which daemon signed ([`Verified::pinned`]). Malformed hex anywhere is an error.
pub fn verify(report: &SignedReport, pinned: Option<&str>) -> Result<Verified, SigningError> {
    let key = public_key(&report.public_key, "public_key")?;
    let pinned_key = pinned.map(|p| public_key(p, "the pinned public key")).transpose()?;
    let sig = crate::digest::from_hex(report.signature.trim()).map_err(|reason| SigningError::Hex { field: "signature", reason })?;
    UnparsedPublicKey::new(&ED25519, &key).verify(report.report_json.as_bytes(), &sig).map_err(|_| SigningError::BadSignature)?;
    let signer = crate::digest::hex(&key);
    if let Some(p) = &pinned_key {
        if *p != key {
            return Err(SigningError::SignerMismatch { pinned: crate::digest::hex(p), signer });
        }
    }
    Ok(Verified { signer, pinned: pinned_key.is_some(), facts: ReportFacts::of(&report.report_json) })
}

/// `unix_ms` as RFC 3339 in UTC with milliseconds (`2024-02-29T23:59:59.999Z`), for people
/// reading a report's `issued_at_unix_ms`; an instant outside years 0000-9999 as plain
/// milliseconds.
pub fn rfc3339_utc(unix_ms: i64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_else(|| format!("{unix_ms} ms after 1970-01-01 UTC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> (tempfile::TempDir, Signer) {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(&key_path(dir.path())).unwrap();
        (dir, signer)
    }

    fn signed(signer: &Signer, json: &str) -> SignedReport {
        SignedReport::new(json.to_string(), &signer.sign(json.as_bytes()), &signer.public_key())
    }

    #[test]
    fn load_never_creates_and_load_or_create_persists_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_path(dir.path());
        assert!(matches!(Signer::load(&path), Err(SigningError::NoKey { .. })));
        assert!(!path.exists(), "load created a key");
        let created = Signer::load_or_create(&path).unwrap();
        assert_eq!(Signer::load(&path).unwrap().public_key(), created.public_key());
        assert_eq!(Signer::load_or_create(&path).unwrap().public_key_hex(), created.public_key_hex());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, b"not a key").unwrap();
        assert!(matches!(Signer::load(&path), Err(SigningError::Key { .. })));
    }

    #[test]
    fn verify_tells_pinned_from_unpinned_and_refuses_other_signers() {
        let (_a, a) = signer();
        let (_b, b) = signer();
        let json = r#"{"tenant":"acme","dataset":"d","sequence":7,"issued_at_unix_ms":951782400000}"#;
        let report = signed(&a, json);

        let unpinned = verify(&report, None).unwrap();
        assert!(!unpinned.pinned);
        assert_eq!(unpinned.signer, a.public_key_hex());
        let facts = ReportFacts {
            tenant: Some("acme".into()),
            dataset: Some("d".into()),
            sequence: Some(7),
            issued_at_unix_ms: Some(951_782_400_000),
            ..ReportFacts::default()
        };
        assert_eq!(unpinned.facts, facts);

        let pinned = verify(&report, Some(&a.public_key_hex())).unwrap();
        assert!(pinned.pinned);
        assert!(verify(&report, Some(&a.public_key_hex().to_uppercase())).unwrap().pinned, "hex of either case");

        let err = verify(&report, Some(&b.public_key_hex())).unwrap_err();
        assert!(matches!(&err, SigningError::SignerMismatch { signer, .. } if *signer == a.public_key_hex()), "{err:?}");

        // Signed by b, claiming a's key: the signature fails before any pin is looked at.
        let forged = SignedReport { public_key: a.public_key_hex(), ..signed(&b, json) };
        assert!(matches!(verify(&forged, None), Err(SigningError::BadSignature)));
        let altered = SignedReport { report_json: json.replace("acme", "acmf"), ..report.clone() };
        assert!(matches!(verify(&altered, Some(&a.public_key_hex())), Err(SigningError::BadSignature)));
    }

    #[test]
    fn malformed_hex_is_an_error_never_a_panic() {
        let (_a, a) = signer();
        let report = signed(&a, "{}");
        let key = a.public_key_hex();
        let mut non_ascii = key.clone();
        non_ascii.replace_range(0..2, "é");
        for pin in [non_ascii.as_str(), &key[1..], "zz", "", &key[..62]] {
            let err = verify(&report, Some(pin)).unwrap_err();
            assert!(matches!(err, SigningError::Hex { .. } | SigningError::KeyLength { .. }), "{pin:?}: {err:?}");
        }
        let bad_sig = SignedReport { signature: format!("é{}", &report.signature[2..]), ..report.clone() };
        assert!(matches!(verify(&bad_sig, None), Err(SigningError::Hex { field: "signature", .. })));
        let bad_key = SignedReport { public_key: format!("{}ü", &key[..62]), ..report.clone() };
        assert!(matches!(verify(&bad_key, None), Err(SigningError::Hex { field: "public_key", .. })));
        let short_sig = SignedReport { signature: report.signature[..64].to_string(), ..report };
        assert!(matches!(verify(&short_sig, None), Err(SigningError::BadSignature)));
    }

    #[test]
    fn facts_of_reports_without_them_are_none() {
        assert_eq!(ReportFacts::of("{}"), ReportFacts::default());
        assert_eq!(ReportFacts::of("[1, 2]"), ReportFacts::default());
        assert_eq!(ReportFacts::of("not json"), ReportFacts::default());
    }

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_utc(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(rfc3339_utc(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_utc(253_402_300_799_000), "9999-12-31T23:59:59.000Z");
    }
}
