//! Tenants and their bearer tokens.
//!
//! A token is `ewt_` followed by 64 hex digits (32 bytes from ring's `SystemRandom`). The store
//! keeps only its SHA-256 and looks tokens up by that hash, so the database file never holds a
//! usable credential and no token comparison happens in Rust. A tenant exists once it has a
//! token.
//!
//! A token is named by its [`TokenId`]: the first 12 hex digits of its stored SHA-256, which
//! `ewtuned token create` prints beside the token and `token list` shows (never the token).
//! `token revoke` takes an id (or any longer prefix of the hash, at least 6 digits) and sets the
//! token's `revoked_at_ms`; the schema makes that final (trigger `tokens_revocation_is_final`),
//! and [`Store::authenticate`] refuses a revoked token from the next request on: every request
//! reads the table, there is no cache, and a daemon sees another process's revocation as soon as
//! it is committed.
//!
//! What this module does not own: the gRPC interceptor that reads the header (`api/auth.rs`).

use super::error::{Result, StoreError};
use super::{now_ms, Store};
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use super::db::{args, Row};

/// The prefix of every ewtune bearer token (lets secret scanners and people recognise one).
const TOKEN_PREFIX: &str = "ewt_";
/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;
/// Longest tenant name.
const TENANT_MAX_LEN: usize = 64;
/// Hex digits of the token hash in a [`TokenId`].
const TOKEN_ID_HEX: usize = 12;
/// Fewest hex digits [`Store::revoke_token`] accepts.
const TOKEN_ID_MIN_HEX: usize = 6;

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

/// A token's public name: the first 12 hex digits of its SHA-256. Safe to print and log; it
/// cannot be turned back into the token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(String);

impl TokenId {
    /// The id of `token`.
    pub fn of(token: &str) -> TokenId {
        TokenId::of_hash(&token_hash(token))
    }

    fn of_hash(hash: &[u8]) -> TokenId {
        let mut hex = crate::digest::hex(hash);
        hex.truncate(TOKEN_ID_HEX);
        TokenId(hex)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the store keeps of a token, as `ewtuned token list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Its id.
    pub id: TokenId,
    /// Its full stored SHA-256, hex (what a longer `revoke` prefix matches).
    pub sha256: String,
    /// The tenant it authenticates.
    pub tenant: TenantId,
    /// When it was created, unix ms.
    pub created_at_ms: i64,
    /// When it was revoked, unix ms; `None` while it is valid.
    pub revoked_at_ms: Option<i64>,
}

impl TokenInfo {
    fn from_row(row: &Row) -> Result<TokenInfo> {
        let hash: Vec<u8> = row.get("sha256")?;
        Ok(TokenInfo {
            id: TokenId::of_hash(&hash),
            sha256: crate::digest::hex(&hash),
            tenant: row.get("tenant")?,
            created_at_ms: row.get("created_at_ms")?,
            revoked_at_ms: row.get("revoked_at_ms")?,
        })
    }
}

/// How [`Store::revoke_token`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// The token was valid and is revoked now.
    Revoked(TokenInfo),
    /// The token had been revoked before; nothing changed.
    AlreadyRevoked(TokenInfo),
}

/// The columns [`TokenInfo::from_row`] reads, by name: every SELECT of a whole token lists these.
const TOKEN_COLUMNS: &str = "sha256, tenant, created_at_ms, revoked_at_ms";

impl Store {
    /// Creates a new bearer token for `tenant` (creating the tenant on its first token) and
    /// returns it. Only its SHA-256 is stored: the token cannot be shown again.
    pub fn create_token(&self, tenant: &str) -> Result<String> {
        let tenant = TenantId::parse(tenant)?;
        let mut bytes = [0u8; TOKEN_BYTES];
        SystemRandom::new().fill(&mut bytes).map_err(|_| StoreError::Random)?;
        let token = format!("{TOKEN_PREFIX}{}", crate::digest::hex(&bytes));
        let now = now_ms();
        self.write(|tx| {
            tx.execute("INSERT INTO tenants (name, created_at_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING", args![tenant, now])?;
            tx.execute("INSERT INTO tokens (sha256, tenant, created_at_ms) VALUES (?1, ?2, ?3)", args![token_hash(&token), tenant, now])?;
            Ok(())
        })?;
        Ok(token)
    }

    /// The tenant a bearer token belongs to, or `None` for an unknown, revoked or malformed
    /// token. Reads the table on every call (no cache), so a revocation counts at once.
    pub fn authenticate(&self, token: &str) -> Result<Option<TenantId>> {
        let well_formed = token
            .strip_prefix(TOKEN_PREFIX)
            .is_some_and(|h| h.len() == 2 * TOKEN_BYTES && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !well_formed {
            return Ok(None);
        }
        self.read(|tx| tx.query_first("SELECT tenant FROM tokens WHERE sha256 = ?1 AND revoked_at_ms IS NULL", args![token_hash(token)], |row| row.get("tenant")))
    }

    /// Every token (of `tenant`, or of all tenants), oldest first, revoked ones included.
    pub fn list_tokens(&self, tenant: Option<&TenantId>) -> Result<Vec<TokenInfo>> {
        self.read(|tx| tx.query_map(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE CAST(?1 AS TEXT) IS NULL OR tenant = ?1 ORDER BY created_at_ms, rowid"), args![tenant], TokenInfo::from_row))
    }

    /// Revokes the token whose hash starts with `id` (a [`TokenId`] or any longer prefix of
    /// the hex hash, 6 to 64 digits). No token is `NotFound`; more than one is
    /// `InvalidArgument` naming them, and nothing is revoked. Revoking a revoked token changes
    /// nothing ([`Revocation::AlreadyRevoked`]).
    pub fn revoke_token(&self, id: &str) -> Result<Revocation> {
        let prefix = id.trim().to_ascii_lowercase();
        if !(TOKEN_ID_MIN_HEX..=2 * 32).contains(&prefix.len()) || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::invalid(
                "token id",
                format!("must be {TOKEN_ID_MIN_HEX} to 64 hex digits (the id `ewtuned token list` shows)"),
            ));
        }
        self.write(|tx| {
            let hex = tx.dialect().hex("sha256");
            let matches = tx.query_map(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE substr({hex}, 1, ?2) = ?1 ORDER BY rowid"), args![prefix, prefix.len()], TokenInfo::from_row)?;
            let token = match <[TokenInfo; 1]>::try_from(matches) {
                Ok([token]) => token,
                Err(matches) if matches.is_empty() => return Err(StoreError::not_found("token", prefix.clone())),
                Err(matches) => {
                    let hashes: Vec<&str> = matches.iter().map(|t| t.sha256.as_str()).collect();
                    return Err(StoreError::invalid(
                        "token id",
                        format!("`{prefix}` is ambiguous: it matches {} tokens ({}); give more digits", matches.len(), hashes.join(", ")),
                    ));
                }
            };
            if token.revoked_at_ms.is_some() {
                return Ok(Revocation::AlreadyRevoked(token));
            }
            let now = now_ms();
            tx.execute(&format!("UPDATE tokens SET revoked_at_ms = ?2 WHERE {hex} = ?1"), args![token.sha256, now])?;
            Ok(Revocation::Revoked(TokenInfo { revoked_at_ms: Some(now), ..token }))
        })
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

        let hashes: Vec<Vec<u8>> = fx.raw_column("SELECT sha256 FROM tokens ORDER BY rowid", "sha256");
        assert_eq!(hashes.len(), 3);
        assert_eq!(hashes[0], token_hash(&a));

        // Neither the token nor its secret part appears anywhere on disk (file, WAL, shm); on
        // PostgreSQL the rows live in the server (the same SQL writes them).
        if super::super::testutil::on_postgres() {
            return;
        }
        let path = fx.dir.path().join("ewtune.db");
        let Fixture { store, dir, .. } = fx;
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
        assert_eq!(super::super::testutil::count_rows(&fx.store, "tenants"), 2);
    }

    #[test]
    fn a_revoked_token_authenticates_nothing_and_revocation_is_final() {
        let fx = Fixture::new();
        let a = fx.store.create_token("acme").unwrap();
        let a2 = fx.store.create_token("acme").unwrap();
        let id = TokenId::of(&a);
        assert_eq!(id.as_str().len(), 12);
        assert_eq!(id.as_str(), &crate::digest::hex(&token_hash(&a))[..12]);

        let revoked = match fx.store.revoke_token(id.as_str()).unwrap() {
            Revocation::Revoked(t) => t,
            other => panic!("{other:?}"),
        };
        assert_eq!((&revoked.id, revoked.tenant.as_str()), (&id, "acme"));
        let at = revoked.revoked_at_ms.expect("revoked now");
        assert_eq!(fx.store.authenticate(&a).unwrap(), None);
        assert_eq!(fx.store.authenticate(&a2).unwrap(), Some(TenantId::parse("acme").unwrap()), "only that token");

        // Again, by its full hash in upper case: already revoked, unchanged.
        let again = fx.store.revoke_token(&revoked.sha256.to_uppercase()).unwrap();
        assert_eq!(again, Revocation::AlreadyRevoked(revoked.clone()));
        // The schema refuses to undo it, or to move it, even by hand.
        assert!(fx.raw("UPDATE tokens SET revoked_at_ms = NULL WHERE revoked_at_ms IS NOT NULL", args![]).is_err());
        assert!(fx.raw("UPDATE tokens SET revoked_at_ms = 1 WHERE revoked_at_ms IS NOT NULL", args![]).is_err());
        let fx = fx.reopen();
        assert_eq!(fx.store.authenticate(&a).unwrap(), None);
        assert_eq!(fx.store.list_tokens(None).unwrap()[0].revoked_at_ms, Some(at));
    }

    #[test]
    fn list_shows_ids_tenants_and_times_never_tokens() {
        let fx = Fixture::new();
        let a = fx.store.create_token("acme").unwrap();
        let b = fx.store.create_token("globex").unwrap();
        let a2 = fx.store.create_token("acme").unwrap();
        fx.store.revoke_token(TokenId::of(&a2).as_str()).unwrap();
        let all = fx.store.list_tokens(None).unwrap();
        assert_eq!(all.iter().map(|t| t.id.clone()).collect::<Vec<_>>(), [TokenId::of(&a), TokenId::of(&b), TokenId::of(&a2)]);
        assert_eq!(all.iter().map(|t| t.tenant.as_str()).collect::<Vec<_>>(), ["acme", "globex", "acme"]);
        assert_eq!(all.iter().map(|t| t.revoked_at_ms.is_some()).collect::<Vec<_>>(), [false, false, true]);
        assert!(all.iter().all(|t| t.created_at_ms > 0 && t.revoked_at_ms.is_none_or(|r| r >= t.created_at_ms)));
        let acme = fx.store.list_tokens(Some(&TenantId::parse("acme").unwrap())).unwrap();
        assert_eq!(acme.iter().map(|t| t.id.clone()).collect::<Vec<_>>(), [TokenId::of(&a), TokenId::of(&a2)]);
        assert!(fx.store.list_tokens(Some(&TenantId::parse("initech").unwrap())).unwrap().is_empty());
        let shown = format!("{all:?}");
        for token in [&a, &b, &a2] {
            assert!(!shown.contains(&token[4..]), "a token leaked into the listing");
        }
    }

    #[test]
    fn revoke_refuses_ambiguous_unknown_and_malformed_ids() {
        let fx = Fixture::new();
        fx.tenant("acme");
        // Two hashes that share their first 13 hex digits (random tokens practically never do).
        let twins: [[u8; 32]; 2] = std::array::from_fn(|i| {
            let mut h = [0u8; 32];
            h[..7].copy_from_slice(&[0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x00]);
            h[7] = i as u8 + 1;
            h
        });
        for h in &twins {
            fx.raw("INSERT INTO tokens (sha256, tenant, created_at_ms) VALUES (?1, 'acme', 1)", args![*h]).unwrap();
        }
        let before = fx.store.list_tokens(None).unwrap();
        for ambiguous in ["abcdef", "ABCDEF012345", "abcdef01234500"] {
            match fx.store.revoke_token(ambiguous).unwrap_err() {
                StoreError::InvalidArgument { field: "token id", reason } => {
                    assert!(reason.contains("ambiguous") && reason.contains(&crate::digest::hex(&twins[1])), "{reason}")
                }
                other => panic!("{ambiguous}: {other:?}"),
            }
        }
        assert_eq!(fx.store.list_tokens(None).unwrap(), before, "nothing revoked");
        let err = fx.store.revoke_token("ffffffffffff").unwrap_err();
        assert!(matches!(err, StoreError::NotFound { kind: "token", .. }), "{err:?}");
        for bad in ["", "abcde", "abcdeg", "ewt_abcdef", "é12345", &"a".repeat(65)] {
            let err = fx.store.revoke_token(bad).unwrap_err();
            assert!(matches!(err, StoreError::InvalidArgument { field: "token id", .. }), "{bad:?}: {err:?}");
        }
        // More digits pick one.
        match fx.store.revoke_token("abcdef0123450002").unwrap() {
            Revocation::Revoked(t) => assert_eq!(t.sha256, crate::digest::hex(&twins[1])),
            other => panic!("{other:?}"),
        }
        let revoked: Vec<bool> = fx.store.list_tokens(None).unwrap().iter().map(|t| t.revoked_at_ms.is_some()).collect();
        assert_eq!(revoked, [false, true, false], "the twins (created at 1 ms) list first");
    }

    #[test]
    fn tenant_id_deserialization_validates() {
        assert!(serde_json::from_str::<TenantId>("\"acme\"").is_ok());
        assert!(serde_json::from_str::<TenantId>("\"a b\"").is_err());
    }
}
