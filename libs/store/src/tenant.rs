//! Tenants and their API tokens. A token is `rc_<id>_<secret>`: the id finds the row, the
//! secret is compared with the stored SHA-256 in constant time. Secrets are 256 random bits, so
//! a fast hash is enough; the secret itself is never stored or logged.
//!
//! [`TokenVerifier`] is the one way a service checks the bearer token of a request: verified
//! tokens are remembered for a few seconds in a cache bounded in entries and time, refused ones
//! never, so that no stream of wrong tokens can grow it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use tracing::instrument;

use crate::{Store, StoreError};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Provision through the SCIM API.
    Scim,
    /// Read the audit API.
    Audit,
    /// Receive Shared Signals: manage the tenant's SSF streams and poll them.
    Ssf,
}

impl Scope {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Scim => "scim",
            Scope::Audit => "audit",
            Scope::Ssf => "ssf",
        }
    }

    /// Parses a stored or typed name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "scim" => Some(Scope::Scim),
            "audit" => Some(Scope::Audit),
            "ssf" => Some(Scope::Ssf),
            _ => None,
        }
    }
}

/// A token as listed (never with its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The token's public id.
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// What it may do.
    pub scope: Scope,
    /// A note from whoever created it.
    pub description: Option<String>,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// When it was revoked, if it was.
    pub revoked_at: Option<OffsetDateTime>,
}

/// A new token: its info and the full token string, shown once.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// The stored info.
    pub info: TokenInfo,
    /// `rc_<id>_<secret>`: the only time the secret exists outside the client.
    pub token: String,
}

fn random_hex(bytes: usize) -> Result<String, StoreError> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer)
        .map_err(|error| StoreError::Invalid(format!("no randomness: {error}")))?;
    Ok(hex::encode(buffer))
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Splits `rc_<id>_<secret>`.
fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("rc_")?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && secret.len() == 64).then_some((id, secret))
}

type TokenRow = (
    String,
    String,
    String,
    Option<String>,
    OffsetDateTime,
    Option<OffsetDateTime>,
);

fn info(
    (id, tenant, scope, description, created_at, revoked_at): TokenRow,
) -> Result<TokenInfo, StoreError> {
    let scope = Scope::parse(&scope)
        .ok_or_else(|| StoreError::Corrupt(format!("token {id} has scope {scope:?}")))?;
    Ok(TokenInfo {
        id,
        tenant,
        scope,
        description,
        created_at,
        revoked_at,
    })
}

impl Store {
    /// Creates a tenant; `Ok(false)` if it existed already.
    #[instrument(skip_all, fields(tenant = %name), err)]
    pub async fn create_tenant(&self, name: &str) -> Result<bool, StoreError> {
        let result =
            sqlx::query("INSERT INTO tenant (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
                .bind(name)
                .execute(self.pool())
                .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Every tenant's name, oldest first.
    pub async fn tenants(&self) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT name FROM tenant ORDER BY created_at, name")
                .fetch_all(self.pool())
                .await?,
        )
    }

    /// Whether a tenant exists.
    pub async fn tenant_exists(&self, name: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query_scalar::<_, i32>("SELECT 1 FROM tenant WHERE name = $1")
                .bind(name)
                .fetch_optional(self.pool())
                .await?
                .is_some(),
        )
    }

    /// Creates a token for an existing tenant.
    #[instrument(skip_all, fields(tenant = %tenant, scope = scope.as_str()), err)]
    pub async fn create_token(
        &self,
        tenant: &str,
        scope: Scope,
        description: Option<&str>,
    ) -> Result<NewToken, StoreError> {
        if !self.tenant_exists(tenant).await? {
            return Err(StoreError::Invalid(format!(
                "no tenant {tenant:?}; create it with `rollcall tenants create {tenant}`"
            )));
        }
        let id = random_hex(8)?;
        let secret = random_hex(32)?;
        let row: TokenRow = sqlx::query_as(
            "INSERT INTO api_token (id, tenant, scope, secret_hash, description) VALUES ($1, $2, $3, $4, $5)
             RETURNING id, tenant, scope, description, created_at, revoked_at",
        )
        .bind(&id)
        .bind(tenant)
        .bind(scope.as_str())
        .bind(hash(&secret))
        .bind(description)
        .fetch_one(self.pool())
        .await?;
        Ok(NewToken {
            info: info(row)?,
            token: format!("rc_{id}_{secret}"),
        })
    }

    /// The tokens of a tenant (or of all tenants), newest first.
    pub async fn tokens(&self, tenant: Option<&str>) -> Result<Vec<TokenInfo>, StoreError> {
        let rows: Vec<TokenRow> = sqlx::query_as(
            "SELECT id, tenant, scope, description, created_at, revoked_at FROM api_token
             WHERE $1::text IS NULL OR tenant = $1 ORDER BY created_at DESC, id",
        )
        .bind(tenant)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(info).collect()
    }

    /// Revokes a token; `Ok(false)` if there is no such live token.
    #[instrument(skip_all, fields(token.id = %id), err)]
    pub async fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE api_token SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// The live token a client presented, if the secret matches (compared in constant time)
    /// and the scope is right.
    pub async fn verify_token(
        &self,
        presented: &str,
        scope: Scope,
    ) -> Result<Option<TokenInfo>, StoreError> {
        let Some((id, secret)) = split(presented) else {
            return Ok(None);
        };
        let stored: Option<(Vec<u8>, TokenRow)> = sqlx::query_as::<_, StoredToken>(
            "SELECT secret_hash, id, tenant, scope, description, created_at, revoked_at FROM api_token WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .map(|row| (row.secret_hash, (row.id, row.tenant, row.scope, row.description, row.created_at, row.revoked_at)));
        let Some((stored_hash, row)) = stored else {
            return Ok(None);
        };
        let matches: bool = hash(secret).ct_eq(&stored_hash).into();
        if !matches || row.5.is_some() || row.2 != scope.as_str() {
            return Ok(None);
        }
        Ok(Some(info(row)?))
    }
}

/// How long a verified token is trusted without asking PostgreSQL again: a revocation takes
/// effect within this time.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);

/// How many verified tokens a [`TokenVerifier`] remembers at most.
pub const TOKEN_CACHE_ENTRIES: usize = 10_000;

/// Verifies bearer tokens of one scope, remembering verified ones for [`TOKEN_CACHE_TTL`] in a
/// cache of at most [`TOKEN_CACHE_ENTRIES`]. Refusals are not remembered: a wrong token costs one
/// primary-key lookup (none if it is not shaped like a token) and no memory. Clones share the
/// cache.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    scope: Scope,
    cache: Arc<Mutex<VerifiedTokens>>,
}

impl TokenVerifier {
    /// A verifier of `scope` tokens with the default bounds.
    pub fn new(scope: Scope) -> Self {
        Self::with_bounds(scope, TOKEN_CACHE_ENTRIES, TOKEN_CACHE_TTL)
    }

    /// A verifier remembering at most `entries` tokens, each for `ttl`.
    pub fn with_bounds(scope: Scope, entries: usize, ttl: Duration) -> Self {
        Self {
            scope,
            cache: Arc::new(Mutex::new(VerifiedTokens::new(entries, ttl))),
        }
    }

    /// The live token of this verifier's scope that a client presented, or `None`.
    pub async fn verify(
        &self,
        store: &Store,
        presented: &str,
    ) -> Result<Option<TokenInfo>, StoreError> {
        // Keyed by the presented token's SHA-256: the cache never holds a secret.
        let key: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let now = Instant::now();
        if let Some(info) = self.cache.lock().ok().and_then(|c| c.get(&key, now)) {
            return Ok(Some(info));
        }
        let verified = store.verify_token(presented, self.scope).await?;
        if let (Some(info), Ok(mut cache)) = (&verified, self.cache.lock()) {
            cache.insert(key, info.clone(), Instant::now());
        }
        Ok(verified)
    }

    /// How many verified tokens are remembered now.
    pub fn cached(&self) -> usize {
        self.cache.lock().map(|c| c.entries.len()).unwrap_or(0)
    }
}

/// Verified tokens by the SHA-256 of the presented token, with when each was verified.
#[derive(Debug)]
struct VerifiedTokens {
    entries: HashMap<[u8; 32], (TokenInfo, Instant)>,
    capacity: usize,
    ttl: Duration,
}

impl VerifiedTokens {
    fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
            ttl,
        }
    }

    fn get(&self, key: &[u8; 32], now: Instant) -> Option<TokenInfo> {
        self.entries
            .get(key)
            .filter(|(_, at)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(info, _)| info.clone())
    }

    /// Remembers a verified token. When full, expired entries go first; if none has expired,
    /// the token is not remembered (it is verified against PostgreSQL again next time).
    fn insert(&mut self, key: [u8; 32], info: TokenInfo, now: Instant) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let ttl = self.ttl;
            self.entries
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
            if self.entries.len() >= self.capacity {
                return;
            }
        }
        self.entries.insert(key, (info, now));
    }
}

/// A stored token with its secret's hash.
#[derive(sqlx::FromRow)]
struct StoredToken {
    secret_hash: Vec<u8>,
    id: String,
    tenant: String,
    scope: String,
    description: Option<String>,
    created_at: OffsetDateTime,
    revoked_at: Option<OffsetDateTime>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> TokenInfo {
        TokenInfo {
            id: id.into(),
            tenant: "t".into(),
            scope: Scope::Scim,
            description: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
            revoked_at: None,
        }
    }

    fn key(n: usize) -> [u8; 32] {
        Sha256::digest(n.to_le_bytes()).into()
    }

    #[test]
    fn the_token_cache_never_holds_more_than_its_capacity() {
        let mut cache = VerifiedTokens::new(3, Duration::from_secs(5));
        let now = Instant::now();
        for n in 0..100 {
            cache.insert(key(n), info(&n.to_string()), now);
        }
        assert_eq!(cache.entries.len(), 3);
        // Full of live entries: a newcomer is verified again next time, not remembered.
        assert_eq!(cache.get(&key(99), now), None);
        assert_eq!(cache.get(&key(0), now).map(|i| i.id), Some("0".into()));
    }

    #[test]
    fn expired_tokens_are_forgotten_and_make_room() {
        let mut cache = VerifiedTokens::new(2, Duration::from_secs(5));
        let then = Instant::now();
        cache.insert(key(1), info("1"), then);
        cache.insert(key(2), info("2"), then);
        let later = then + Duration::from_secs(6);
        assert_eq!(
            cache.get(&key(1), later),
            None,
            "a revocation shows after the TTL"
        );
        cache.insert(key(3), info("3"), later);
        assert_eq!(cache.entries.len(), 1);
        assert_eq!(cache.get(&key(3), later).map(|i| i.id), Some("3".into()));
    }

    #[tokio::test]
    async fn wrong_tokens_are_refused_without_growing_the_cache() {
        // Nothing listens there: tokens not shaped like ours never reach the database.
        let options = sqlx::postgres::PgConnectOptions::new()
            .host("127.0.0.1")
            .port(1);
        let pool = sqlx::postgres::PgPoolOptions::new().connect_lazy_with(options.clone());
        let store = Store {
            keyring: crate::personal_key::keyring(&pool),
            pool,
            schema: crate::LIVE_SCHEMA.into(),
            options,
        };
        let verifier = TokenVerifier::new(Scope::Scim);
        for n in 0..1_000 {
            let presented = format!("not-a-token-{n}");
            assert_eq!(verifier.verify(&store, &presented).await.ok(), Some(None));
        }
        assert_eq!(verifier.cached(), 0);
    }

    #[test]
    fn tokens_split_into_id_and_secret_and_nothing_else_parses() {
        let token = format!("rc_{}_{}", "a".repeat(16), "b".repeat(64));
        assert_eq!(
            split(&token),
            Some(("a".repeat(16).as_str(), "b".repeat(64).as_str()))
        );
        assert_eq!(split("Bearer x"), None);
        assert_eq!(
            split(&format!("rc_{}_{}", "a".repeat(15), "b".repeat(64))),
            None
        );
    }
}
