//! Signed chain heads an auditor can keep: Ed25519 over the tenant, sequence and hash of the
//! head, with the public key alongside. `rollcall audit verify --checkpoint FILE` checks that
//! the history still contains exactly that head.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The schema name of a checkpoint.
pub const SCHEMA: &str = "rollcall.audit.checkpoint.v1";

/// A signed chain head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCheckpoint {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The tenant.
    pub tenant: String,
    /// The stream sequence of the tenant's last event at signing.
    pub sequence: u64,
    /// The chain hash at that event (hex).
    pub hash: String,
    /// When it was signed (RFC 3339).
    pub signed_at: String,
    /// The Ed25519 public key (hex).
    pub public_key: String,
    /// The signature (hex).
    pub signature: String,
}

fn message(tenant: &str, sequence: u64, hash: &str, signed_at: &str) -> Vec<u8> {
    format!("{SCHEMA}\n{tenant}\n{sequence}\n{hash}\n{signed_at}").into_bytes()
}

/// Reads a signing key: 64 hex characters (a 32-byte Ed25519 seed).
pub fn signing_key(hex_seed: &str) -> Result<SigningKey, String> {
    let bytes = hex::decode(hex_seed.trim())
        .map_err(|e| format!("ROLLCALL_AUDIT_SIGNING_KEY is not hex: {e}"))?;
    let seed: [u8; 32] = bytes.try_into().map_err(|_| {
        "ROLLCALL_AUDIT_SIGNING_KEY must be 32 bytes (64 hex characters)".to_owned()
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A new random signing key as hex, with its public key.
pub fn generate() -> (String, String) {
    let mut seed = [0u8; 32];
    seed[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    seed[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let key = SigningKey::from_bytes(&seed);
    (
        hex::encode(seed),
        hex::encode(key.verifying_key().as_bytes()),
    )
}

/// Signs a chain head.
pub fn sign(key: &SigningKey, tenant: &str, sequence: u64, hash: &[u8]) -> SignedCheckpoint {
    let signed_at = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    let hash = hex::encode(hash);
    let signature = key.sign(&message(tenant, sequence, &hash, &signed_at));
    SignedCheckpoint {
        schema: SCHEMA.into(),
        tenant: tenant.to_owned(),
        sequence,
        hash,
        signed_at,
        public_key: hex::encode(key.verifying_key().as_bytes()),
        signature: hex::encode(signature.to_bytes()),
    }
}

impl SignedCheckpoint {
    /// Checks the signature (and, when given, that it was made with the expected public key).
    pub fn check_signature(&self, expected_public_key: Option<&str>) -> Result<(), String> {
        if let Some(expected) = expected_public_key {
            if !expected.trim().eq_ignore_ascii_case(&self.public_key) {
                return Err(
                    "the checkpoint was signed with another key than the one expected".into(),
                );
            }
        }
        let key: [u8; 32] = hex::decode(&self.public_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("public_key is not 32 hex bytes")?;
        let key = VerifyingKey::from_bytes(&key).map_err(|e| format!("public_key: {e}"))?;
        let signature: [u8; 64] = hex::decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("signature is not 64 hex bytes")?;
        key.verify(
            &message(&self.tenant, self.sequence, &self.hash, &self.signed_at),
            &Signature::from_bytes(&signature),
        )
        .map_err(|_| "the signature does not match the checkpoint".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_and_any_change_breaks_it() {
        let (seed, public) = generate();
        let key = signing_key(&seed).unwrap();
        let checkpoint = sign(&key, "acme", 42, &[7; 32]);
        assert_eq!(checkpoint.public_key, public);
        assert!(checkpoint.check_signature(Some(&public)).is_ok());
        let mut forged = checkpoint.clone();
        forged.sequence = 43;
        assert!(forged.check_signature(None).is_err());
        let (_, other) = generate();
        assert!(checkpoint.check_signature(Some(&other)).is_err());
        assert!(signing_key("abcd").is_err());
    }
}
