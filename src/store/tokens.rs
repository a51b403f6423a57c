//! Tenants and their bearer tokens.
//!
//! A token is `ewt_` followed by 64 hex digits (32 bytes from ring's `SystemRandom`). The store
//! keeps only its SHA-256 and looks tokens up by that hash, so the database file never holds a
//! usable credential and no token comparison happens in Rust. A tenant exists once it has a
//! token. What this module does not own: the gRPC interceptor that reads the header.

use super::error::{Result, StoreError};
use super::{now_ms, Store};
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use rusqlite::{params, OptionalExtension, TransactionBehavior};

/// The prefix of every ewtune bearer token (lets secret scanners and people recognise one).
const TOKEN_PREFIX: &str = "ewt_";
/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;
/// Longest tenant name.
const TENANT_MAX_LEN: usize = 64;

text_id! {
    /// A tenant's name: 1 to 64 characters of `[A-Za-z0-9_.-]`.
    TenantId, "tenant"
}

impl TenantId {
    /// Validates a tenant name; a bad one is `InvalidArgument` naming `tenant`.
    pub fn parse(name: &str) -> Result<TenantId> {
        if name.is_empty() || name.len() > TENANT_MAX_LEN {
            return Err(StoreError::invalid(
                "tenant",
                format!("must be 1 to {TENANT_MAX_LEN} characters, got {}", name.len()),
            ));
        }
        if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
            return Err(StoreError::invalid("tenant", format!("may hold only A-Z a-z 0-9 _ . -, found {c:?}")));
        }
        Ok(TenantId(name.to_owned()))
    }
}

impl Store {
    /// Creates a new bearer token for `tenant` (creating the tenant on its first token) and
    /// returns it. Only its SHA-256 is stored: the token cannot be shown again.
    pub fn create_token(&self, tenant: &str) -> Result<String> {
        let tenant = TenantId::parse(tenant)?;
        let mut bytes = [0u8; TOKEN_BYTES];
        SystemRandom::new().fill(&mut bytes).map_err(|_| StoreError::Random)?;
        let token = format!("{TOKEN_PREFIX}{}", crate::digest::hex(&bytes));
        let now = now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("INSERT OR IGNORE INTO tenants (name, created_at_ms) VALUES (?1, ?2)", params![tenant, now])?;
        tx.execute(
            "INSERT INTO tokens (sha256, tenant, created_at_ms) VALUES (?1, ?2, ?3)",
            params![token_hash(&token), tenant, now],
        )?;
        tx.commit()?;
        Ok(token)
    }

    /// The tenant a bearer token belongs to, or `None` for an unknown or malformed token.
    pub fn authenticate(&self, token: &str) -> Result<Option<TenantId>> {
        let well_formed = token
            .strip_prefix(TOKEN_PREFIX)
            .is_some_and(|h| h.len() == 2 * TOKEN_BYTES && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !well_formed {
            return Ok(None);
        }
        Ok(self
            .reader()
            .query_row("SELECT tenant FROM tokens WHERE sha256 = ?1", [token_hash(token)], |row| row.get(0))
            .optional()?)
    }
}

/// The stored form of a token: its SHA-256, 32 bytes.
fn token_hash(token: &str) -> Vec<u8> {
    digest(&SHA256, token.as_bytes()).as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    use super::super::testutil::Fixture;
    use super::*;

    #[test]
    fn token_authenticates_its_tenant_and_only_the_hash_is_stored() {
        let fx = Fixture::new();
        let a = fx.store.create_token("acme").unwrap();
        let a2 = fx.store.create_token("acme").unwrap();
        let b = fx.store.create_token("globex.eu-1").unwrap();
        assert!(a.starts_with("ewt_") && a.len() == 68, "{a}");
        assert_ne!(a, a2);
        assert_eq!(fx.store.authenticate(&a).unwrap(), Some(TenantId::parse("acme").unwrap()));
        assert_eq!(fx.store.authenticate(&a2).unwrap(), Some(TenantId::parse("acme").unwrap()));
        assert_eq!(fx.store.authenticate(&b).unwrap(), Some(TenantId::parse("globex.eu-1").unwrap()));

        // A one-character change, a bare hash, garbage: all unknown.
        let mut wrong = a.clone().into_bytes();
        wrong[10] = if wrong[10] == b'0' { b'1' } else { b'0' };
        assert_eq!(fx.store.authenticate(&String::from_utf8(wrong).unwrap()).unwrap(), None);
        assert_eq!(fx.store.authenticate(&a[4..]).unwrap(), None);
        assert_eq!(fx.store.authenticate("").unwrap(), None);
        assert_eq!(fx.store.authenticate("Bearer nope").unwrap(), None);

        let hashes: Vec<Vec<u8>> = {
            let conn = fx.store.conn();
            let mut stmt = conn.prepare("SELECT sha256 FROM tokens ORDER BY rowid").unwrap();
            stmt.query_map([], |r| r.get(0)).unwrap().collect::<rusqlite::Result<_>>().unwrap()
        };
        assert_eq!(hashes.len(), 3);
        assert_eq!(hashes[0], token_hash(&a));

        // Neither the token nor its secret part appears anywhere on disk (file, WAL, shm).
        let path = fx.store.path().to_owned();
        let Fixture { store, dir } = fx;
        drop(store);
        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
        }
        assert!(bytes.len() > 4096, "{} holds data", path.display());
        for token in [&a, &a2, &b] {
            let secret = &token[4..];
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "token found in the database files");
        }
        assert!(bytes.windows(hashes[0].len()).any(|w| w == hashes[0].as_slice()), "the hash is stored");
    }

    #[test]
    fn tenant_names_are_validated() {
        let fx = Fixture::new();
        for bad in ["", "a b", "acme/../x", "ünï", &"x".repeat(65)] {
            let err = fx.store.create_token(bad).unwrap_err();
            assert!(matches!(err, StoreError::InvalidArgument { field: "tenant", .. }), "{bad:?}: {err:?}");
        }
        fx.store.create_token(&"x".repeat(64)).unwrap();
        fx.store.create_token("A-z_0.9").unwrap();
        let n: i64 = fx.store.conn().query_row("SELECT count(*) FROM tenants", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn tenant_id_deserialization_validates() {
        assert!(serde_json::from_str::<TenantId>("\"acme\"").is_ok());
        assert!(serde_json::from_str::<TenantId>("\"a b\"").is_err());
    }
}
