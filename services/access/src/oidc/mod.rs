//! Sign-in with OpenID Connect, by job: the settings and their checks ([`config`]), the
//! provider client that runs the authorization code flow and verifies ID tokens
//! ([`provider`]), and `rollcall oidc check` ([`check`]).
//!
//! Works with Entra ID's v2.0 endpoints for one tenant
//! (`https://login.microsoftonline.com/<tenant-id>/v2.0`) and with any OpenID provider.

pub mod check;
pub mod config;
pub mod provider;

pub use config::{Attribute, ClaimMapping, ConfigError, OidcConfig};
pub use provider::{Flow, RelyingParty, SignInError, SignedIn};
