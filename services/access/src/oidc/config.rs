//! Sign-in configuration: the settings (`ROLLCALL_OIDC_*`), which claim names the SCIM user,
//! and their checks before anything is asked of the network, each refusal a [`ConfigError`]
//! that says what to change.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::EncodingKey;
use openidconnect::{ClientSecret, IssuerUrl, RedirectUrl};
use secrecy::{ExposeSecret, SecretString};

use crate::entra;

fn secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value.to_owned()))
}

/// Sign-in configuration. Setting the issuer turns sign-in on.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "oidc")]
pub struct OidcConfig {
    /// The OpenID provider's issuer; turns sign-in on. Entra ID:
    /// `https://login.microsoftonline.com/<tenant-id>/v2.0`.
    #[arg(long = "oidc-issuer", env = "ROLLCALL_OIDC_ISSUER")]
    pub issuer: Option<String>,
    /// The application (client) id registered at the provider.
    #[arg(long = "oidc-client-id", env = "ROLLCALL_OIDC_CLIENT_ID")]
    pub client_id: Option<String>,
    /// The client secret: in Entra ID its *Value* (shown once when created), not its Secret ID.
    #[arg(long = "oidc-client-secret", env = "ROLLCALL_OIDC_CLIENT_SECRET", hide_env_values = true, value_parser = secret)]
    pub client_secret: Option<SecretString>,
    /// Instead of a secret: a PEM RSA private key for private-key JWT client authentication.
    #[arg(long = "oidc-private-key", env = "ROLLCALL_OIDC_PRIVATE_KEY")]
    pub private_key: Option<PathBuf>,
    /// With --oidc-private-key: the certificate's thumbprint, in hex as Entra ID shows it
    /// (SHA-1, 40 digits; or SHA-256, 64 digits).
    #[arg(
        long = "oidc-certificate-thumbprint",
        env = "ROLLCALL_OIDC_CERTIFICATE_THUMBPRINT"
    )]
    pub certificate_thumbprint: Option<String>,
    /// The redirect URI registered at the provider, ending in `/oauth2/callback`.
    #[arg(long = "oidc-redirect-url", env = "ROLLCALL_OIDC_REDIRECT_URL")]
    pub redirect_url: Option<String>,
    /// The Rollcall tenant whose SCIM users sign in here.
    #[arg(
        long = "oidc-tenant",
        env = "ROLLCALL_OIDC_TENANT",
        default_value = "default"
    )]
    pub tenant: String,
    /// Which ID-token claim names the SCIM user, `claim=attribute`: `oid=externalId` (Entra's
    /// default SCIM mapping), `preferred_username=userName`, `upn=userName` or `email=email`.
    #[arg(
        long = "oidc-claim",
        env = "ROLLCALL_OIDC_CLAIM",
        default_value = "oid=externalId"
    )]
    pub claim: String,
    /// The scopes asked for.
    #[arg(
        long = "oidc-scopes",
        env = "ROLLCALL_OIDC_SCOPES",
        default_value = "openid profile email"
    )]
    pub scopes: String,
    /// Clock leeway for the ID token's expiry, in seconds.
    #[arg(
        long = "oidc-leeway",
        env = "ROLLCALL_OIDC_LEEWAY",
        default_value_t = 60
    )]
    pub leeway_seconds: u64,
    /// Hosts that `rd` may send the browser back to after sign-in, comma-separated; a domain
    /// allows its subdomains. The cookie domain and the redirect URL's host are always allowed.
    #[arg(
        long = "oidc-allowed-redirects",
        env = "ROLLCALL_OIDC_ALLOWED_REDIRECTS",
        value_delimiter = ','
    )]
    pub allowed_redirects: Vec<String>,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            client_id: None,
            client_secret: None,
            private_key: None,
            certificate_thumbprint: None,
            redirect_url: None,
            tenant: "default".into(),
            claim: "oid=externalId".into(),
            scopes: "openid profile email".into(),
            leeway_seconds: 60,
            allowed_redirects: Vec::new(),
        }
    }
}

/// Why the sign-in configuration was refused, with what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The issuer is not a URL.
    #[error("ROLLCALL_OIDC_ISSUER {issuer:?}: {problem}")]
    Issuer {
        /// What was configured.
        issuer: String,
        /// Why it is no URL.
        problem: String,
    },
    /// An issuer Rollcall cannot use (Entra's multi-tenant or v1.0 endpoints).
    #[error("{0}")]
    UnusableIssuer(String),
    /// No client id.
    #[error("ROLLCALL_OIDC_CLIENT_ID is required with ROLLCALL_OIDC_ISSUER")]
    MissingClientId,
    /// No redirect URL.
    #[error("ROLLCALL_OIDC_REDIRECT_URL is required with ROLLCALL_OIDC_ISSUER (https://<host>/oauth2/callback, registered at the provider)")]
    MissingRedirectUrl,
    /// The redirect URL is not a URL.
    #[error("ROLLCALL_OIDC_REDIRECT_URL {url:?}: {problem}")]
    RedirectUrl {
        /// What was configured.
        url: String,
        /// Why it is no URL.
        problem: String,
    },
    /// The redirect URL does not end in `/oauth2/callback`.
    #[error("ROLLCALL_OIDC_REDIRECT_URL {0:?} must end in /oauth2/callback, where Rollcall answers the provider")]
    RedirectPath(String),
    /// Both a secret and a private key.
    #[error("set either ROLLCALL_OIDC_CLIENT_SECRET or ROLLCALL_OIDC_PRIVATE_KEY, not both")]
    BothCredentials,
    /// Neither a secret nor a private key.
    #[error("sign-in needs ROLLCALL_OIDC_CLIENT_SECRET (the secret's Value) or ROLLCALL_OIDC_PRIVATE_KEY")]
    NoCredentials,
    /// A secret that is surely wrong (Entra's secret ID instead of its value).
    #[error("{0}")]
    Secret(String),
    /// The private key file could not be read.
    #[error("ROLLCALL_OIDC_PRIVATE_KEY: reading {path}: {problem}")]
    PrivateKeyUnreadable {
        /// The file.
        path: String,
        /// The IO error.
        problem: String,
    },
    /// The private key file is not a PEM RSA key.
    #[error("ROLLCALL_OIDC_PRIVATE_KEY {path}: not a PEM RSA private key ({problem})")]
    PrivateKeyInvalid {
        /// The file.
        path: String,
        /// Why.
        problem: String,
    },
    /// The certificate thumbprint is missing or not hex of the right length.
    #[error("ROLLCALL_OIDC_CERTIFICATE_THUMBPRINT must be the certificate's thumbprint in hex (40 digits, as Entra ID shows it) with ROLLCALL_OIDC_PRIVATE_KEY")]
    Thumbprint,
    /// `ROLLCALL_OIDC_CLAIM` is not `claim=attribute`.
    #[error("ROLLCALL_OIDC_CLAIM {0:?} is not claim=attribute (for example oid=externalId)")]
    ClaimSyntax(String),
    /// The attribute is none Rollcall matches.
    #[error("ROLLCALL_OIDC_CLAIM: {0:?} is not externalId, userName or email")]
    ClaimAttribute(String),
    /// No claim named.
    #[error("ROLLCALL_OIDC_CLAIM names no claim")]
    NoClaim,
    /// The scopes lack `openid`.
    #[error("ROLLCALL_OIDC_SCOPES must include openid")]
    NoOpenIdScope,
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    HttpClient(String),
}

/// The SCIM attribute a claim is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute {
    /// `externalId`, exactly.
    ExternalId,
    /// `userName`, ignoring case.
    UserName,
    /// Any of the user's emails, ignoring case.
    Email,
}

/// Which claim names which SCIM user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMapping {
    /// The ID-token claim.
    pub claim: String,
    /// The SCIM attribute.
    pub attribute: Attribute,
}

impl ClaimMapping {
    /// Parses `claim=attribute`.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let (claim, attribute) = spec
            .split_once('=')
            .ok_or_else(|| ConfigError::ClaimSyntax(spec.to_owned()))?;
        let attribute = match attribute.trim() {
            "externalId" => Attribute::ExternalId,
            "userName" => Attribute::UserName,
            "email" | "emails" => Attribute::Email,
            other => return Err(ConfigError::ClaimAttribute(other.to_owned())),
        };
        let claim = claim.trim();
        if claim.is_empty() {
            return Err(ConfigError::NoClaim);
        }
        Ok(Self {
            claim: claim.to_owned(),
            attribute,
        })
    }

    /// Whether the claim's value may appear in logs (opaque ids yes; names and emails no).
    pub fn loggable(&self) -> bool {
        matches!(self.claim.as_str(), "oid" | "sub")
    }
}

/// How Rollcall authenticates to the token endpoint.
pub(super) enum ClientAuth {
    Secret(ClientSecret),
    PrivateKey {
        key: EncodingKey,
        thumbprint: String,
    },
}

/// A checked configuration.
pub(super) struct Settings {
    pub(super) issuer: IssuerUrl,
    pub(super) client_id: String,
    pub(super) auth: ClientAuth,
    pub(super) redirect: RedirectUrl,
    pub(super) scopes: Vec<String>,
    pub(super) leeway: Duration,
    pub(super) mapping: ClaimMapping,
    pub(super) tenant: String,
    pub(super) allowed_redirects: Vec<String>,
}

fn credentials(config: &OidcConfig) -> Result<ClientAuth, ConfigError> {
    match (&config.client_secret, &config.private_key) {
        (Some(_), Some(_)) => Err(ConfigError::BothCredentials),
        (None, None) => Err(ConfigError::NoCredentials),
        (Some(secret), None) => {
            if let Some(problem) = entra::secret_problem(secret.expose_secret()) {
                return Err(ConfigError::Secret(problem));
            }
            Ok(ClientAuth::Secret(ClientSecret::new(
                secret.expose_secret().to_owned(),
            )))
        }
        (None, Some(path)) => {
            let pem = std::fs::read(path).map_err(|e| ConfigError::PrivateKeyUnreadable {
                path: path.display().to_string(),
                problem: e.to_string(),
            })?;
            let key =
                EncodingKey::from_rsa_pem(&pem).map_err(|e| ConfigError::PrivateKeyInvalid {
                    path: path.display().to_string(),
                    problem: e.to_string(),
                })?;
            let thumbprint = config
                .certificate_thumbprint
                .clone()
                .map(|t| t.replace([':', ' '], ""))
                .filter(|t| (t.len() == 40 || t.len() == 64) && hex::decode(t).is_ok())
                .ok_or(ConfigError::Thumbprint)?;
            Ok(ClientAuth::PrivateKey { key, thumbprint })
        }
    }
}

/// Checks the configuration (no network). `Ok(None)` when sign-in is not configured.
pub(super) fn settings(
    config: &OidcConfig,
    cookie_domain: Option<&str>,
) -> Result<Option<Settings>, ConfigError> {
    let Some(issuer) = config.issuer.as_deref().filter(|i| !i.is_empty()) else {
        return Ok(None);
    };
    let issuer_url = IssuerUrl::new(issuer.trim_end_matches('/').to_owned()).map_err(|e| {
        ConfigError::Issuer {
            issuer: issuer.to_owned(),
            problem: e.to_string(),
        }
    })?;
    if let Some(problem) = entra::issuer_problem(issuer_url.as_str()) {
        return Err(ConfigError::UnusableIssuer(problem));
    }
    let client_id = config
        .client_id
        .clone()
        .filter(|c| !c.is_empty())
        .ok_or(ConfigError::MissingClientId)?;
    let redirect_url = config
        .redirect_url
        .clone()
        .ok_or(ConfigError::MissingRedirectUrl)?;
    let redirect =
        RedirectUrl::new(redirect_url.clone()).map_err(|e| ConfigError::RedirectUrl {
            url: redirect_url.clone(),
            problem: e.to_string(),
        })?;
    if !redirect.url().path().ends_with("/oauth2/callback") {
        return Err(ConfigError::RedirectPath(redirect_url));
    }
    let auth = credentials(config)?;
    let mapping = ClaimMapping::parse(&config.claim)?;
    let scopes: Vec<String> = config
        .scopes
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if !scopes.iter().any(|s| s == "openid") {
        return Err(ConfigError::NoOpenIdScope);
    }
    let mut allowed_redirects: Vec<String> = config
        .allowed_redirects
        .iter()
        .map(|d| d.trim().trim_start_matches('.').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .collect();
    allowed_redirects.extend(cookie_domain.map(|d| d.trim_start_matches('.').to_ascii_lowercase()));
    allowed_redirects.extend(redirect.url().host_str().map(str::to_ascii_lowercase));
    Ok(Some(Settings {
        issuer: issuer_url,
        client_id,
        auth,
        redirect,
        scopes,
        leeway: Duration::from_secs(config.leeway_seconds),
        mapping,
        tenant: config.tenant.clone(),
        allowed_redirects,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_mappings_parse_and_refuse_nonsense() {
        assert_eq!(
            ClaimMapping::parse("oid=externalId"),
            Ok(ClaimMapping {
                claim: "oid".into(),
                attribute: Attribute::ExternalId
            })
        );
        assert_eq!(
            ClaimMapping::parse("preferred_username=userName").map(|m| m.attribute),
            Ok(Attribute::UserName)
        );
        assert_eq!(
            ClaimMapping::parse("email=email").map(|m| m.attribute),
            Ok(Attribute::Email)
        );
        assert!(ClaimMapping::parse("oid").is_err());
        assert!(ClaimMapping::parse("oid=displayName").is_err());
        assert!(ClaimMapping::parse("=userName").is_err());
        assert!(ClaimMapping::parse("oid=externalId").unwrap().loggable());
        assert!(!ClaimMapping::parse("upn=userName").unwrap().loggable());
    }

    fn config() -> OidcConfig {
        OidcConfig {
            issuer: Some(
                "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0"
                    .into(),
            ),
            client_id: Some("app".into()),
            client_secret: Some(SecretString::from(
                "abc8Q~not-a-guid-value-0123456789abcdefgh",
            )),
            redirect_url: Some("https://auth.example.com/oauth2/callback".into()),
            ..OidcConfig::default()
        }
    }

    fn refused(config: &OidcConfig) -> ConfigError {
        match settings(config, None) {
            Err(error) => error,
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn configuration_mistakes_are_refused_with_the_fix() {
        assert!(settings(&OidcConfig::default(), None).unwrap().is_none());
        let settings = settings(&config(), Some(".example.com")).unwrap().unwrap();
        assert_eq!(
            settings.allowed_redirects,
            vec!["example.com", "auth.example.com"]
        );
        let secret_id = OidcConfig {
            client_secret: Some(SecretString::from("7f0e8a52-3c1d-4b6e-9a8f-2d5c4b3a1e0f")),
            ..config()
        };
        let error = refused(&secret_id);
        assert!(matches!(error, ConfigError::Secret(_)));
        assert!(error.to_string().contains("Value"), "{error}");
        let common = OidcConfig {
            issuer: Some("https://login.microsoftonline.com/common/v2.0".into()),
            ..config()
        };
        assert!(refused(&common).to_string().contains("tenant"));
        let wrong_path = OidcConfig {
            redirect_url: Some("https://auth.example.com/callback".into()),
            ..config()
        };
        assert_eq!(
            refused(&wrong_path).to_string(),
            "ROLLCALL_OIDC_REDIRECT_URL \"https://auth.example.com/callback\" must end in /oauth2/callback, where Rollcall answers the provider"
        );
        let nothing = OidcConfig {
            client_secret: None,
            ..config()
        };
        assert_eq!(refused(&nothing), ConfigError::NoCredentials);
        let no_openid = OidcConfig {
            scopes: "profile email".into(),
            ..config()
        };
        assert_eq!(refused(&no_openid), ConfigError::NoOpenIdScope);
    }
}
