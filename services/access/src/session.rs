//! Rollcall sessions: compact JWS (HS256, via `jsonwebtoken`) with session id, tenant, user id,
//! issue time and expiry. Every key verifies; one signs: with configured keys the first listed,
//! with the installation's key set ([`crate::keys`]) the newest key whose signing time has come,
//! so that a rotation reaches every replica before any replica signs with the new key.
//! Tampered, expired, wrongly signed and `alg: none` tokens are rejected.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// The issuer claim of Rollcall sessions.
pub const ISSUER: &str = "rollcall";

/// What a session says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// Always [`ISSUER`].
    pub iss: String,
    /// The session id.
    pub sid: String,
    /// The tenant.
    pub tid: String,
    /// The user id.
    pub sub: String,
    /// Issued at (seconds).
    pub iat: i64,
    /// Issued at, in milliseconds: compared with revocation instants.
    pub iat_ms: i64,
    /// Expiry (seconds).
    pub exp: i64,
}

impl SessionClaims {
    /// The issue instant.
    pub fn issued_at(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.iat_ms) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// Why a session token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Not a token of ours (malformed, unknown key, wrong algorithm, bad signature, tampered).
    #[error("invalid session: {0}")]
    Invalid(String),
    /// Expired.
    #[error("the session has expired")]
    Expired,
}

/// Why the key configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ROLLCALL_SESSION_KEYS: {0}")]
pub struct KeyError(String);

/// A key that signs from a given instant on.
struct Signer {
    kid: String,
    key: EncodingKey,
    /// Unix nanoseconds from which this key signs.
    from: i128,
}

/// One key as [`SessionKeys::from_keys`] takes it.
#[derive(Clone)]
pub struct KeyMaterial<'a> {
    /// The key id (the JWS `kid`).
    pub kid: &'a str,
    /// The HMAC secret (at least 32 bytes).
    pub secret: &'a [u8],
    /// From when the key signs; `None`: it only verifies.
    pub signs_from: Option<OffsetDateTime>,
}

impl std::fmt::Debug for KeyMaterial<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("kid", &self.kid)
            .field("signs_from", &self.signs_from)
            .finish_non_exhaustive()
    }
}

/// The session keys.
pub struct SessionKeys {
    /// Newest signing instant first.
    signers: Vec<Signer>,
    verifying: HashMap<String, DecodingKey>,
    ttl: Duration,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field(
                "signing_kids",
                &self.signers.iter().map(|s| &s.kid).collect::<Vec<_>>(),
            )
            .field("kids", &self.verifying.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SessionKeys {
    /// Keys from `kid=base64secret[,kid=base64secret…]`; the first signs. Each secret must be
    /// at least 32 bytes (44 base64 characters).
    pub fn parse(spec: &str, ttl: Duration) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (kid, secret) = entry.split_once('=').ok_or_else(|| {
                KeyError(format!(
                    "{:?} is not kid=base64secret",
                    entry.split('=').next().unwrap_or_default()
                ))
            })?;
            let (kid, secret) = (kid.trim(), secret.trim());
            if kid.is_empty() || secret.len() < 43 {
                return Err(KeyError(format!(
                    "key {kid:?} needs an id and a secret of at least 32 bytes, base64-encoded"
                )));
            }
            let encoding = EncodingKey::from_base64_secret(secret)
                .map_err(|e| KeyError(format!("key {kid:?}: {e}")))?;
            let decoding = DecodingKey::from_base64_secret(secret)
                .map_err(|e| KeyError(format!("key {kid:?}: {e}")))?;
            keys.push((kid.to_owned(), encoding, decoding));
        }
        let mut keys = keys.into_iter();
        let (signing_kid, signing, first) =
            keys.next().ok_or_else(|| KeyError("no key given".into()))?;
        let mut verifying = HashMap::from([(signing_kid.clone(), first)]);
        for (kid, _, decoding) in keys {
            verifying.insert(kid, decoding);
        }
        Ok(Self {
            signers: vec![Signer {
                kid: signing_kid,
                key: signing,
                from: i128::MIN,
            }],
            verifying,
            ttl,
        })
    }

    /// Keys with their signing instants: at any instant the key with the latest `signs_from`
    /// not after it signs (of equal instants the one given last; before every key's instant,
    /// the earliest one); every key verifies.
    pub fn from_keys<'a>(
        keys: impl IntoIterator<Item = KeyMaterial<'a>>,
        ttl: Duration,
    ) -> Result<Self, KeyError> {
        let mut signers = Vec::new();
        let mut verifying = HashMap::new();
        for key in keys {
            if key.kid.is_empty() || key.secret.len() < 32 {
                return Err(KeyError(format!(
                    "key {:?} needs an id and a secret of at least 32 bytes",
                    key.kid
                )));
            }
            if verifying
                .insert(key.kid.to_owned(), DecodingKey::from_secret(key.secret))
                .is_some()
            {
                return Err(KeyError(format!("key id {:?} appears twice", key.kid)));
            }
            if let Some(from) = key.signs_from {
                signers.push(Signer {
                    kid: key.kid.to_owned(),
                    key: EncodingKey::from_secret(key.secret),
                    from: from.unix_timestamp_nanos(),
                });
            }
        }
        if signers.is_empty() {
            return Err(KeyError("no key signs".into()));
        }
        // Newest instant first; of equal instants, the one given last.
        signers.reverse();
        signers.sort_by_key(|signer| std::cmp::Reverse(signer.from));
        Ok(Self {
            signers,
            verifying,
            ttl,
        })
    }

    /// A random key for this process only (sessions do not survive a restart).
    pub fn ephemeral(ttl: Duration) -> Self {
        let mut secret = Vec::with_capacity(32);
        secret.extend_from_slice(Uuid::new_v4().as_bytes());
        secret.extend_from_slice(Uuid::new_v4().as_bytes());
        let kid = format!("ephemeral-{}", Uuid::new_v4().simple());
        Self {
            signers: vec![Signer {
                kid: kid.clone(),
                key: EncodingKey::from_secret(&secret),
                from: i128::MIN,
            }],
            verifying: HashMap::from([(kid, DecodingKey::from_secret(&secret))]),
            ttl,
        }
    }

    /// The key that signs at `now`.
    fn signer(&self, now: OffsetDateTime) -> Option<&Signer> {
        let now = now.unix_timestamp_nanos();
        self.signers
            .iter()
            .find(|signer| signer.from <= now)
            .or_else(|| self.signers.last())
    }

    /// The id of the key that signs at `now`.
    pub fn signing_kid(&self, now: OffsetDateTime) -> Option<&str> {
        self.signer(now).map(|signer| signer.kid.as_str())
    }

    /// Whether a key with this id verifies.
    pub fn verifies_with(&self, kid: &str) -> bool {
        self.verifying.contains_key(kid)
    }

    /// How long sessions last.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issues a session for a user of a tenant at `now`.
    pub fn issue(
        &self,
        tenant: &str,
        user: Uuid,
        now: OffsetDateTime,
    ) -> Result<(String, SessionClaims), SessionError> {
        let iat_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
        let claims = SessionClaims {
            iss: ISSUER.into(),
            sid: Uuid::now_v7().to_string(),
            tid: tenant.to_owned(),
            sub: user.to_string(),
            iat: now.unix_timestamp(),
            iat_ms,
            exp: now.unix_timestamp() + self.ttl.as_secs() as i64,
        };
        let token = self.sign_at(&claims, now)?;
        Ok((token, claims))
    }

    /// Signs any claims with the current key (HS256, with its key id): sign-in state cookies.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, SessionError> {
        self.sign_at(claims, OffsetDateTime::now_utc())
    }

    fn sign_at<T: Serialize>(
        &self,
        claims: &T,
        now: OffsetDateTime,
    ) -> Result<String, SessionError> {
        let signer = self
            .signer(now)
            .ok_or_else(|| SessionError::Invalid("no signing key".into()))?;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(signer.kid.clone());
        jsonwebtoken::encode(&header, claims, &signer.key)
            .map_err(|e| SessionError::Invalid(e.to_string()))
    }

    /// Verifies a token signed by [`SessionKeys::sign`]: key id known, HS256 only, signature,
    /// issuer, expiry (5 s leeway).
    pub fn verify_as<T: DeserializeOwned>(
        &self,
        token: &str,
        issuer: &str,
    ) -> Result<T, SessionError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| SessionError::Invalid(e.to_string()))?;
        let kid = header
            .kid
            .ok_or_else(|| SessionError::Invalid("no key id".into()))?;
        let key = self
            .verifying
            .get(&kid)
            .ok_or_else(|| SessionError::Invalid(format!("unknown key id {kid:?}")))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.validate_aud = false;
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iss"]);
        match jsonwebtoken::decode::<T>(token, key, &validation) {
            Ok(data) => Ok(data.claims),
            Err(error)
                if matches!(
                    error.kind(),
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature
                ) =>
            {
                Err(SessionError::Expired)
            }
            Err(error) => Err(SessionError::Invalid(error.to_string())),
        }
    }

    /// Verifies a session token: key id known, HS256 only, signature, issuer, expiry (5 s leeway).
    pub fn verify(&self, token: &str) -> Result<SessionClaims, SessionError> {
        self.verify_as(token, ISSUER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "a=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVm";
    const KEY_B: &str = "b=ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTBmZWRjYmE5ODc2NTQzMjEw";

    fn keys(spec: &str) -> SessionKeys {
        SessionKeys::parse(spec, Duration::from_secs(3600)).unwrap()
    }

    #[test]
    fn a_session_verifies_and_says_who_and_when() {
        let keys = keys(KEY_A);
        let user = Uuid::now_v7();
        let (token, claims) = keys.issue("acme", user, OffsetDateTime::now_utc()).unwrap();
        assert_eq!(keys.verify(&token), Ok(claims.clone()));
        assert_eq!(
            (claims.tid.as_str(), claims.sub),
            ("acme", user.to_string())
        );
    }

    #[test]
    fn rotated_keys_keep_old_sessions_valid_until_retired() {
        let (old_token, _) = keys(KEY_A)
            .issue("t", Uuid::now_v7(), OffsetDateTime::now_utc())
            .unwrap();
        let rotated = keys(&format!("{KEY_B},{KEY_A}"));
        assert!(rotated.verify(&old_token).is_ok());
        let (new_token, _) = rotated
            .issue("t", Uuid::now_v7(), OffsetDateTime::now_utc())
            .unwrap();
        assert!(jsonwebtoken::decode_header(&new_token).unwrap().kid == Some("b".into()));
        let retired = keys(KEY_B);
        assert!(matches!(
            retired.verify(&old_token),
            Err(SessionError::Invalid(_))
        ));
    }

    #[test]
    fn tampered_expired_foreign_and_unsigned_tokens_are_refused() {
        let keys = keys(KEY_A);
        let (token, _) = keys
            .issue("t", Uuid::now_v7(), OffsetDateTime::now_utc())
            .unwrap();
        // Tampered payload: another user, same signature.
        let parts: Vec<&str> = token.split('.').collect();
        let forged_claims = format!("{{\"iss\":\"rollcall\",\"sid\":\"x\",\"tid\":\"t\",\"sub\":\"{}\",\"iat\":1,\"iat_ms\":1,\"exp\":9999999999}}", Uuid::nil());
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            base64url(forged_claims.as_bytes()),
            parts[2]
        );
        assert!(matches!(
            keys.verify(&forged),
            Err(SessionError::Invalid(_))
        ));
        // Expired.
        let (old, _) = keys
            .issue(
                "t",
                Uuid::now_v7(),
                OffsetDateTime::now_utc() - time::Duration::hours(2),
            )
            .unwrap();
        assert_eq!(keys.verify(&old), Err(SessionError::Expired));
        // Signed by a key we do not hold, with our key id.
        let stranger =
            SessionKeys::parse(&KEY_B.replace("b=", "a="), Duration::from_secs(60)).unwrap();
        let (foreign, _) = stranger
            .issue("t", Uuid::now_v7(), OffsetDateTime::now_utc())
            .unwrap();
        assert!(matches!(
            keys.verify(&foreign),
            Err(SessionError::Invalid(_))
        ));
        // alg: none.
        let unsigned = format!(
            "{}.{}.",
            base64url(br#"{"alg":"none","typ":"JWT","kid":"a"}"#),
            parts[1]
        );
        assert!(matches!(
            keys.verify(&unsigned),
            Err(SessionError::Invalid(_))
        ));
        assert!(matches!(
            keys.verify("garbage"),
            Err(SessionError::Invalid(_))
        ));
    }

    #[test]
    fn the_newest_key_whose_instant_has_come_signs_and_every_key_verifies() {
        let now = OffsetDateTime::now_utc();
        let (old, new) = ([1u8; 32], [2u8; 32]);
        let keys = SessionKeys::from_keys(
            [
                KeyMaterial {
                    kid: "old",
                    secret: &old,
                    signs_from: Some(now - time::Duration::days(1)),
                },
                KeyMaterial {
                    kid: "new",
                    secret: &new,
                    signs_from: Some(now + time::Duration::minutes(1)),
                },
            ],
            Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(keys.signing_kid(now), Some("old"));
        assert_eq!(
            keys.signing_kid(now + time::Duration::minutes(2)),
            Some("new")
        );
        let (early, _) = keys.issue("t", Uuid::now_v7(), now).unwrap();
        let (late, _) = keys
            .issue("t", Uuid::now_v7(), now + time::Duration::minutes(2))
            .unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&late).unwrap().kid,
            Some("new".into())
        );
        assert!(keys.verify(&early).is_ok() && keys.verify(&late).is_ok());
    }

    #[test]
    fn key_sets_without_a_signer_or_with_short_or_repeated_keys_are_refused() {
        let secret = [1u8; 32];
        let key = |kid, secret, signs_from| KeyMaterial {
            kid,
            secret,
            signs_from,
        };
        let ttl = Duration::from_secs(1);
        assert!(SessionKeys::from_keys([key("a", &secret, None)], ttl).is_err());
        assert!(SessionKeys::from_keys(
            [key("a", &secret[..16], Some(OffsetDateTime::UNIX_EPOCH))],
            ttl
        )
        .is_err());
        let now = Some(OffsetDateTime::now_utc());
        assert!(
            SessionKeys::from_keys([key("a", &secret, now), key("a", &secret, now)], ttl).is_err()
        );
    }

    #[test]
    fn weak_or_malformed_key_configuration_is_refused() {
        assert!(SessionKeys::parse("", Duration::from_secs(1)).is_err());
        assert!(SessionKeys::parse("a=c2hvcnQ=", Duration::from_secs(1)).is_err());
        assert!(SessionKeys::parse("no-equals-sign", Duration::from_secs(1)).is_err());
    }

    fn base64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = (u32::from(chunk[0]) << 16)
                | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
                | u32::from(*chunk.get(2).unwrap_or(&0));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}
