//! API tokens of the REST gateway, in the `api_tokens` table.
//!
//! A token is shown once, when it is created, and stored only as its SHA-256. A token looks like
//! `kf_<8 hex>_<56 hex>`: the first 11 characters are its *prefix*, stored in clear so a user can
//! tell tokens apart and so the gateway can find the candidate rows without an index on a
//! secret. The gateway then compares the full hash in constant time; this module never compares
//! secrets itself.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::store::{Result, Store, StoreError};

/// The columns of a [`TokenRow`], for every query that reads one.
macro_rules! token_columns {
    () => {
        "id, name, token_hash, token_prefix, namespaces, created_at, expires_at, revoked_at, \
         last_used_at"
    };
}

/// What every token starts with.
pub const TOKEN_MARKER: &str = "kf_";
/// Length of the stored, public part of a token (`kf_` and 8 hex digits).
pub const PREFIX_LEN: usize = TOKEN_MARKER.len() + 8;
/// The namespace entry that grants every namespace.
pub const ALL_NAMESPACES: &str = "*";

/// A stored token. The secret itself is not here: only its hash.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct TokenRow {
    /// Token id.
    pub id: Uuid,
    /// Human-readable name given at creation.
    pub name: String,
    /// SHA-256 of the token (32 bytes).
    pub token_hash: Vec<u8>,
    /// The token's first characters ([`PREFIX_LEN`]).
    pub token_prefix: String,
    /// Namespaces the token may act in; [`ALL_NAMESPACES`] grants all.
    pub namespaces: Vec<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When a gateway last accepted it, to the minute ([`Store::token_used`]); never when
    /// absent.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl TokenRow {
    /// Whether the token may be used at `now` (not revoked, not expired).
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }

    /// Whether the token may act in `namespace`.
    pub fn allows(&self, namespace: &str) -> bool {
        self.namespaces.iter().any(|n| n == ALL_NAMESPACES || n == namespace)
    }
}

/// A token just created: the secret, shown once, and its row.
#[derive(Clone, Debug)]
pub struct NewToken {
    /// The bearer token. Not stored anywhere; give it to the user once.
    pub secret: String,
    /// The stored row.
    pub row: TokenRow,
}

/// SHA-256 of a token, as stored in `token_hash`.
pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The stored prefix of a presented token, or `None` when it does not look like a token.
pub fn prefix_of(secret: &str) -> Option<&str> {
    let prefix = secret.get(..PREFIX_LEN)?;
    prefix.starts_with(TOKEN_MARKER).then_some(prefix)
}

/// A fresh random token: 256 bits from the operating system's generator (two v4 UUIDs give 244
/// random bits; a third covers the rest) in lower-case hex.
fn generate() -> String {
    let random: String = (0..3).map(|_| hex::encode(Uuid::new_v4().as_bytes())).collect::<String>();
    // 8 hex digits of prefix, `_`, 56 more: 64 hex digits of which 61 × 4 bits are random.
    format!("{TOKEN_MARKER}{}_{}", &random[..8], &random[8..64])
}

impl Store {
    /// Creates a token for `namespaces` (use [`ALL_NAMESPACES`] for all) and returns its secret,
    /// which is stored only as a hash.
    pub async fn create_token(
        &self,
        name: &str,
        namespaces: &[String],
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<NewToken> {
        let secret = generate();
        let prefix = prefix_of(&secret).unwrap_or_default().to_owned();
        let row: TokenRow = sqlx::query_as(concat!(
            "INSERT INTO api_tokens (id, name, token_hash, token_prefix, namespaces, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING ",
            token_columns!()
        ))
        .bind(Uuid::new_v4())
        .bind(name)
        .bind(hash(&secret).as_slice())
        .bind(&prefix)
        .bind(namespaces)
        .bind(expires_at)
        .fetch_one(self.pool())
        .await
        .map_err(|source| StoreError::Query { op: "create token", source })?;
        Ok(NewToken { secret, row })
    }

    /// The tokens whose stored prefix is `prefix` (usually one), active or not.
    pub async fn tokens_with_prefix(&self, prefix: &str) -> Result<Vec<TokenRow>> {
        sqlx::query_as(concat!(
            "SELECT ",
            token_columns!(),
            " FROM api_tokens WHERE token_prefix = $1"
        ))
        .bind(prefix)
        .fetch_all(self.pool())
        .await
        .map_err(|source| StoreError::Query { op: "find tokens by prefix", source })
    }

    /// Records that token `id` was just accepted. Writes at most once a minute per token, so
    /// gateways may call it freely.
    pub async fn token_used(&self, id: Uuid) -> Result<()> {
        sqlx::query(
            "UPDATE api_tokens SET last_used_at = now() WHERE id = $1 \
                 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        )
        .bind(id)
        .execute(self.pool())
        .await
        .map_err(|source| StoreError::Query { op: "record token use", source })?;
        Ok(())
    }

    /// Every token, newest first, revoked and expired ones included. The rows carry hashes:
    /// a caller that shows them leaves those out.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>> {
        sqlx::query_as(concat!(
            "SELECT ",
            token_columns!(),
            " FROM api_tokens ORDER BY created_at DESC, id"
        ))
        .fetch_all(self.pool())
        .await
        .map_err(|source| StoreError::Query { op: "list tokens", source })
    }

    /// Revokes a token: the revoked row, or `None` when no token with this id is active
    /// (unknown, or revoked already).
    pub async fn revoke_token(&self, id: Uuid) -> Result<Option<TokenRow>> {
        sqlx::query_as(concat!(
            "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL \
                 RETURNING ",
            token_columns!()
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .map_err(|source| StoreError::Query { op: "revoke token", source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_carry_their_prefix_and_differ() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), TOKEN_MARKER.len() + 8 + 1 + 56);
        assert_eq!(prefix_of(&a).map(str::len), Some(PREFIX_LEN));
        assert!(prefix_of("Bearer nonsense").is_none());
        assert!(prefix_of("kf_").is_none());
    }

    #[test]
    fn namespace_scope_and_expiry_are_honoured() {
        let now = Utc::now();
        let mut row = TokenRow {
            id: Uuid::nil(),
            name: "t".into(),
            token_hash: vec![0; 32],
            token_prefix: "kf_00000000".into(),
            namespaces: vec!["team-a".into()],
            created_at: now,
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
        };
        assert!(row.allows("team-a") && !row.allows("team-b"));
        assert!(row.is_active(now));
        row.expires_at = Some(now - chrono::Duration::seconds(1));
        assert!(!row.is_active(now));
        row.namespaces = vec![ALL_NAMESPACES.into()];
        assert!(row.allows("anything"));
    }
}
