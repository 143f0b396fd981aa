//! A person's identity at the OpenID provider they sign in with (issuer and subject of the ID
//! token), recorded the first time they sign in with it: an auditor sees which account at the
//! provider a SCIM user signed in as, and Shared Signals name the person as the provider does
//! (`iss_sub`). One aggregate per link, so recording it again changes nothing.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::EventKind;

/// What happened to an identity link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum IdentityEvent {
    /// The user signed in as `subject` at `issuer` for the first time.
    #[serde(rename = "identity.linked")]
    Linked {
        /// The SCIM user.
        user_id: Uuid,
        /// The ID token's `iss`.
        issuer: String,
        /// The ID token's `sub`.
        subject: String,
    },
}

impl EventKind for IdentityEvent {
    const AGGREGATE: &'static str = "identity";

    fn event_type(&self) -> &'static str {
        match self {
            IdentityEvent::Linked { .. } => "identity.linked",
        }
    }
}

/// The namespace of identity link ids.
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x7c1e_5a90_3b2d_4f61_8e04_9d7a_2c6b_1f38);

/// The id of the link of `user` to `subject` at `issuer` in `tenant`: the same wherever it is
/// computed, so a second sign-in finds the link recorded.
pub fn identity_id(tenant: &str, user: Uuid, issuer: &str, subject: &str) -> Uuid {
    Uuid::new_v5(
        &ID_NAMESPACE,
        format!(
            "{}:{tenant}/{user}/{}:{issuer}/{subject}",
            tenant.len(),
            issuer.len()
        )
        .as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_has_one_id_and_its_payload_names_the_provider_account() {
        let user = Uuid::from_u128(7);
        let a = identity_id("acme", user, "https://idp.example/", "abc");
        assert_eq!(a, identity_id("acme", user, "https://idp.example/", "abc"));
        assert_ne!(a, identity_id("acme", user, "https://idp.example/a", "bc"));
        let event = IdentityEvent::Linked {
            user_id: user,
            issuer: "https://idp.example/".into(),
            subject: "abc".into(),
        };
        let payload = event.to_payload();
        assert_eq!(payload["type"], "identity.linked");
        assert_eq!(
            IdentityEvent::from_payload("identity.linked", 1, &payload),
            Ok(event)
        );
    }
}
