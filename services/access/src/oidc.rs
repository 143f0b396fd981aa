//! The OpenID Connect relying party (via `openidconnect`): discovery, the authorization code flow
//! with PKCE, `state` and `nonce`, the code exchange with a client secret or a private-key JWT,
//! and ID-token validation (issuer, audience, expiry with a small leeway, nonce, asymmetric
//! algorithms only) against the provider's JWKS, which is cached and fetched again when a token
//! names a key it does not hold (the provider rotated its keys).
//!
//! Works with Entra ID's v2.0 endpoints for one tenant
//! (`https://login.microsoftonline.com/<tenant-id>/v2.0`) and with any OpenID provider.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdToken, CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AuthType, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl, JsonWebKeySet, Nonce,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope,
    SignatureVerificationError, TokenResponse,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};
use url::Url;
use uuid::Uuid;

use crate::entra;

/// ID tokens signed with anything else (HS*, `none`) are refused.
const ALLOWED_ALGORITHMS: [CoreJwsSigningAlgorithm; 6] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
];

/// A token naming an unknown key fetches the JWKS again at most this often.
const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// The cached discovery document (with its JWKS) is fetched again after this long.
const METADATA_LIFETIME: Duration = Duration::from_secs(24 * 3600);

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

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
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (claim, attribute) = spec.split_once('=').ok_or_else(|| {
            format!(
                "ROLLCALL_OIDC_CLAIM {spec:?} is not claim=attribute (for example oid=externalId)"
            )
        })?;
        let attribute = match attribute.trim() {
            "externalId" => Attribute::ExternalId,
            "userName" => Attribute::UserName,
            "email" | "emails" => Attribute::Email,
            other => {
                return Err(format!(
                    "ROLLCALL_OIDC_CLAIM: {other:?} is not externalId, userName or email"
                ))
            }
        };
        let claim = claim.trim();
        if claim.is_empty() {
            return Err("ROLLCALL_OIDC_CLAIM names no claim".into());
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
enum ClientAuth {
    Secret(ClientSecret),
    PrivateKey {
        key: EncodingKey,
        thumbprint: String,
    },
}

/// Why a sign-in failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignInError {
    /// The provider could not be reached or answered nonsense (discovery, JWKS, token).
    #[error("the identity provider could not be reached: {0}")]
    Unreachable(String),
    /// The provider answered with an OAuth error (at the callback or the token endpoint).
    #[error("the identity provider refused: {error}{}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Provider {
        /// The OAuth error code.
        error: String,
        /// Its description (Entra: `AADSTS…`).
        description: Option<String>,
    },
    /// The token response had no ID token.
    #[error("the identity provider returned no ID token (is the openid scope granted?)")]
    NoIdToken,
    /// The ID token did not verify.
    #[error("the ID token was refused: {0}")]
    IdToken(String),
    /// The ID token lacks the claim that names the user.
    #[error("the ID token has no {0:?} claim")]
    MissingClaim(String),
}

impl SignInError {
    /// What to tell the person and the operator, beyond the error itself: Entra's usual setup
    /// mistakes explained.
    pub fn advice(&self, config: &RelyingParty) -> Option<String> {
        match self {
            SignInError::Provider { error, description } => entra::explain(
                error,
                description.as_deref(),
                config.redirect_url(),
                &config.scopes.join(" "),
            ),
            _ => None,
        }
    }
}

/// A started sign-in: what the callback needs to finish it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// The `state` sent to the provider.
    pub state: String,
    /// The `nonce` the ID token must carry.
    pub nonce: String,
    /// The PKCE code verifier.
    pub verifier: String,
}

/// The verified ID token's claims.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// Every claim of the verified token.
    pub claims: Map<String, Value>,
}

struct Cached {
    metadata: CoreProviderMetadata,
    fetched: Instant,
}

/// The relying party: configuration, an HTTP client that never follows redirects, and the
/// cached discovery document.
pub struct RelyingParty {
    issuer: IssuerUrl,
    client_id: ClientId,
    auth: ClientAuth,
    redirect: RedirectUrl,
    scopes: Vec<String>,
    leeway: Duration,
    /// Which claim names the user.
    pub mapping: ClaimMapping,
    /// The Rollcall tenant signing in here.
    pub tenant: String,
    /// Hosts `rd` may point at.
    pub allowed_redirects: Vec<String>,
    http: openidconnect::reqwest::Client,
    cached: tokio::sync::RwLock<Option<Cached>>,
    refetched: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RelyingParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelyingParty")
            .field("issuer", &self.issuer.as_str())
            .field("client_id", &self.client_id.as_str())
            .field("redirect", &self.redirect.as_str())
            .finish_non_exhaustive()
    }
}

impl RelyingParty {
    /// Checks the configuration (no network). `Ok(None)` when sign-in is not configured.
    pub fn from_config(
        config: &OidcConfig,
        cookie_domain: Option<&str>,
    ) -> Result<Option<Self>, String> {
        let Some(issuer) = config.issuer.as_deref().filter(|i| !i.is_empty()) else {
            return Ok(None);
        };
        let issuer = IssuerUrl::new(issuer.trim_end_matches('/').to_owned())
            .map_err(|e| format!("ROLLCALL_OIDC_ISSUER {issuer:?}: {e}"))?;
        if let Some(problem) = entra::issuer_problem(issuer.as_str()) {
            return Err(problem);
        }
        let client_id = config
            .client_id
            .clone()
            .filter(|c| !c.is_empty())
            .ok_or("ROLLCALL_OIDC_CLIENT_ID is required with ROLLCALL_OIDC_ISSUER")?;
        let redirect_url = config
            .redirect_url
            .clone()
            .ok_or("ROLLCALL_OIDC_REDIRECT_URL is required with ROLLCALL_OIDC_ISSUER (https://<host>/oauth2/callback, registered at the provider)")?;
        let redirect = RedirectUrl::new(redirect_url.clone())
            .map_err(|e| format!("ROLLCALL_OIDC_REDIRECT_URL {redirect_url:?}: {e}"))?;
        if !redirect.url().path().ends_with("/oauth2/callback") {
            return Err(format!(
                "ROLLCALL_OIDC_REDIRECT_URL {redirect_url:?} must end in /oauth2/callback, where Rollcall answers the provider"
            ));
        }
        let auth = match (&config.client_secret, &config.private_key) {
            (Some(_), Some(_)) => {
                return Err("set either ROLLCALL_OIDC_CLIENT_SECRET or ROLLCALL_OIDC_PRIVATE_KEY, not both".into())
            }
            (None, None) => {
                return Err("sign-in needs ROLLCALL_OIDC_CLIENT_SECRET (the secret's Value) or ROLLCALL_OIDC_PRIVATE_KEY".into())
            }
            (Some(secret), None) => {
                if let Some(problem) = entra::secret_problem(secret.expose_secret()) {
                    return Err(problem);
                }
                ClientAuth::Secret(ClientSecret::new(secret.expose_secret().to_owned()))
            }
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    format!("ROLLCALL_OIDC_PRIVATE_KEY: reading {}: {e}", path.display())
                })?;
                let key = EncodingKey::from_rsa_pem(&pem).map_err(|e| {
                    format!("ROLLCALL_OIDC_PRIVATE_KEY {}: not a PEM RSA private key ({e})", path.display())
                })?;
                let thumbprint = config
                    .certificate_thumbprint
                    .clone()
                    .map(|t| t.replace([':', ' '], ""))
                    .filter(|t| {
                        (t.len() == 40 || t.len() == 64) && hex::decode(t).is_ok()
                    })
                    .ok_or("ROLLCALL_OIDC_CERTIFICATE_THUMBPRINT must be the certificate's thumbprint in hex (40 digits, as Entra ID shows it) with ROLLCALL_OIDC_PRIVATE_KEY")?;
                ClientAuth::PrivateKey { key, thumbprint }
            }
        };
        let mapping = ClaimMapping::parse(&config.claim)?;
        let scopes: Vec<String> = config
            .scopes
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if !scopes.iter().any(|s| s == "openid") {
            return Err("ROLLCALL_OIDC_SCOPES must include openid".into());
        }
        let mut allowed_redirects: Vec<String> = config
            .allowed_redirects
            .iter()
            .map(|d| d.trim().trim_start_matches('.').to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .collect();
        allowed_redirects
            .extend(cookie_domain.map(|d| d.trim_start_matches('.').to_ascii_lowercase()));
        allowed_redirects.extend(redirect.url().host_str().map(str::to_ascii_lowercase));
        let http = openidconnect::reqwest::Client::builder()
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Some(Self {
            issuer,
            client_id: ClientId::new(client_id),
            auth,
            redirect,
            scopes,
            leeway: Duration::from_secs(config.leeway_seconds),
            mapping,
            tenant: config.tenant.clone(),
            allowed_redirects,
            http,
            cached: tokio::sync::RwLock::default(),
            refetched: tokio::sync::Mutex::default(),
        }))
    }

    /// The redirect URI to register at the provider.
    pub fn redirect_url(&self) -> &str {
        self.redirect.as_str()
    }

    /// The issuer.
    pub fn issuer(&self) -> &str {
        self.issuer.as_str()
    }

    /// The discovery document, fetched once and again after a day.
    #[tracing::instrument(name = "oidc.discovery", skip_all, fields(issuer = %self.issuer.as_str()))]
    pub async fn metadata(&self) -> Result<CoreProviderMetadata, SignInError> {
        if let Some(cached) = self.cached.read().await.as_ref() {
            if cached.fetched.elapsed() < METADATA_LIFETIME {
                return Ok(cached.metadata.clone());
            }
        }
        let mut cached = self.cached.write().await;
        if let Some(current) = cached.as_ref() {
            if current.fetched.elapsed() < METADATA_LIFETIME {
                return Ok(current.metadata.clone());
            }
        }
        let metadata = match CoreProviderMetadata::discover_async(self.issuer.clone(), &self.http)
            .await
        {
            Ok(metadata) => metadata,
            Err(error) => {
                let error = SignInError::Unreachable(format!(
                    "discovery at {}/.well-known/openid-configuration: {}",
                    self.issuer.as_str(),
                    error_chain(&error)
                ));
                // A day-old document still serves while the provider cannot be reached;
                // the next attempt is in five minutes.
                if let Some(current) = cached.as_mut() {
                    tracing::warn!(error = %error, "keeping the provider's previous discovery document");
                    current.fetched = Instant::now()
                        .checked_sub(METADATA_LIFETIME - Duration::from_secs(300))
                        .unwrap_or_else(Instant::now);
                    return Ok(current.metadata.clone());
                }
                return Err(error);
            }
        };
        *cached = Some(Cached {
            metadata: metadata.clone(),
            fetched: Instant::now(),
        });
        Ok(metadata)
    }

    async fn client(&self) -> Result<(Client, CoreProviderMetadata), SignInError> {
        let metadata = self.metadata().await?;
        let secret = match &self.auth {
            ClientAuth::Secret(secret) => Some(secret.clone()),
            ClientAuth::PrivateKey { .. } => None,
        };
        let client =
            CoreClient::from_provider_metadata(metadata.clone(), self.client_id.clone(), secret)
                .set_redirect_uri(self.redirect.clone())
                .set_auth_type(AuthType::RequestBody);
        Ok((client, metadata))
    }

    /// Starts a sign-in: the provider's authorization URL (code flow, PKCE S256, fresh `state`
    /// and `nonce`) and what the callback will need.
    pub async fn begin(&self) -> Result<(Url, Flow), SignInError> {
        let (client, _) = self.client().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in self.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        Ok((
            url,
            Flow {
                state: state.secret().clone(),
                nonce: nonce.secret().clone(),
                verifier: verifier.secret().clone(),
            },
        ))
    }

    /// The private-key JWT that authenticates Rollcall at `audience` (the token endpoint).
    fn client_assertion(&self, audience: &str) -> Result<Option<String>, SignInError> {
        let ClientAuth::PrivateKey { key, thumbprint } = &self.auth else {
            return Ok(None);
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = json!({
            "aud": audience, "iss": self.client_id.as_str(), "sub": self.client_id.as_str(),
            "jti": Uuid::new_v4().to_string(), "iat": now, "nbf": now, "exp": now + 300,
        });
        let digest = hex::decode(thumbprint).unwrap_or_default();
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(thumbprint.clone());
        if thumbprint.len() == 64 {
            header.x5t_s256 = Some(encoded);
        } else {
            header.x5t = Some(encoded);
        }
        jsonwebtoken::encode(&header, &claims, key)
            .map(Some)
            .map_err(|e| SignInError::IdToken(format!("signing the client assertion: {e}")))
    }

    /// Finishes a sign-in: exchanges the code (with the PKCE verifier) and verifies the ID token
    /// (signature by a provider key, issuer, audience, expiry with leeway, nonce).
    #[tracing::instrument(name = "oidc.code_exchange", skip_all, fields(issuer = %self.issuer.as_str()))]
    pub async fn finish(&self, code: &str, flow: &Flow) -> Result<SignedIn, SignInError> {
        let (client, metadata) = self.client().await?;
        let token_url = metadata
            .token_endpoint()
            .map(|u| u.as_str().to_owned())
            .ok_or_else(|| SignInError::Unreachable("the provider has no token endpoint".into()))?;
        let assertion = self.client_assertion(&token_url)?;
        let mut request = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| SignInError::Unreachable(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(flow.verifier.clone()));
        if let Some(assertion) = assertion {
            request = request
                .add_extra_param("client_assertion_type", JWT_BEARER)
                .add_extra_param("client_assertion", assertion);
        }
        let response = request
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        let id_token = response.id_token().ok_or(SignInError::NoIdToken)?;
        let nonce = Nonce::new(flow.nonce.clone());
        match self.verify(&client, id_token, &nonce) {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) if self.refetch_keys().await? => {
                let (client, _) = self.client().await?;
                self.verify(&client, id_token, &nonce)
            }
            other => other,
        }
        .map_err(|e| SignInError::IdToken(verification_reason(&e)))?;
        Ok(SignedIn {
            claims: payload(id_token)?,
        })
    }

    fn verify(
        &self,
        client: &Client,
        id_token: &CoreIdToken,
        nonce: &Nonce,
    ) -> Result<(), ClaimsVerificationError> {
        let leeway = chrono::Duration::from_std(self.leeway).unwrap_or_default();
        let verifier = client
            .id_token_verifier()
            .set_allowed_algs(ALLOWED_ALGORITHMS)
            .set_time_fn(move || chrono::Utc::now() - leeway);
        id_token.claims(&verifier, nonce).map(|_| ())
    }

    /// Fetches the JWKS again (a token named a key we do not hold); `false` when that happened
    /// less than [`JWKS_REFETCH_INTERVAL`] ago.
    #[tracing::instrument(name = "oidc.jwks_refetch", skip_all, fields(issuer = %self.issuer.as_str()))]
    async fn refetch_keys(&self) -> Result<bool, SignInError> {
        let mut last = self.refetched.lock().await;
        if last.is_some_and(|at| at.elapsed() < JWKS_REFETCH_INTERVAL) {
            return Ok(false);
        }
        *last = Some(Instant::now());
        let mut cached = self.cached.write().await;
        let Some(current) = cached.as_mut() else {
            return Ok(false);
        };
        let jwks = JsonWebKeySet::fetch_async(current.metadata.jwks_uri(), &self.http)
            .await
            .map_err(|e| SignInError::Unreachable(format!("JWKS: {}", error_chain(&e))))?;
        tracing::info!(
            keys = jwks.keys().len(),
            "the ID token named an unknown key: fetched the provider's keys again"
        );
        current.metadata = current.metadata.clone().set_jwks(jwks);
        Ok(true)
    }

    /// `rollcall oidc check`: the configuration against the provider's discovery document and a
    /// client-credentials round trip. Each line is `(ok, what)`.
    #[tracing::instrument(name = "oidc.check", skip_all, fields(issuer = %self.issuer.as_str()))]
    pub async fn check(&self) -> Vec<(bool, String)> {
        let mut lines = vec![(
            true,
            format!(
                "register this redirect URI at the provider (Entra ID: Authentication → Web → Redirect URIs): {}",
                self.redirect.as_str()
            ),
        )];
        let url = format!("{}/.well-known/openid-configuration", self.issuer.as_str());
        let document: Value = match self.http.get(&url).send().await {
            Ok(response) if response.status().is_success() => {
                response.json().await.unwrap_or(Value::Null)
            }
            Ok(response) => {
                lines.push((
                    false,
                    format!("discovery: {url} answered {}", response.status()),
                ));
                return lines;
            }
            Err(error) => {
                lines.push((false, format!("discovery: {url}: {}", error_chain(&error))));
                return lines;
            }
        };
        lines.extend(discovery_lines(
            &document,
            self.issuer.as_str(),
            matches!(self.auth, ClientAuth::Secret(_)),
        ));
        match self.metadata().await {
            Ok(metadata) => lines.push((
                true,
                format!(
                    "signing keys: {} published at {}",
                    metadata.jwks().keys().len(),
                    metadata.jwks_uri().as_str()
                ),
            )),
            Err(error) => {
                lines.push((false, error.to_string()));
                return lines;
            }
        }
        lines.push(self.client_credentials().await);
        lines
    }

    async fn client_credentials(&self) -> (bool, String) {
        let (client, metadata) = match self.client().await {
            Ok(client) => client,
            Err(error) => return (false, error.to_string()),
        };
        let token_url = metadata
            .token_endpoint()
            .map(|u| u.as_str().to_owned())
            .unwrap_or_default();
        let assertion = match self.client_assertion(&token_url) {
            Ok(assertion) => assertion,
            Err(error) => return (false, error.to_string()),
        };
        let mut request = match client.exchange_client_credentials() {
            Ok(request) => request,
            Err(error) => return (false, error.to_string()),
        };
        if entra::is_entra(self.issuer.as_str()) {
            request = request.add_scope(Scope::new("https://graph.microsoft.com/.default".into()));
        }
        if let Some(assertion) = assertion {
            request = request
                .add_extra_param("client_assertion_type", JWT_BEARER)
                .add_extra_param("client_assertion", assertion);
        }
        match request.request_async(&self.http).await {
            Ok(_) => (true, "client authentication: the token endpoint accepted Rollcall's credentials (client-credentials round trip)".into()),
            Err(error) => {
                let error = token_error(error);
                let advice = error.advice(self).map(|a| format!("\n    → {a}")).unwrap_or_default();
                (false, format!("client authentication: {error}{advice}"))
            }
        }
    }
}

/// Checks a discovery document: issuer, endpoints, the code flow, PKCE, algorithms and the
/// client authentication method.
fn discovery_lines(document: &Value, issuer: &str, secret: bool) -> Vec<(bool, String)> {
    let strings = |name: &str| -> Vec<String> {
        document[name]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut lines = Vec::new();
    let published = document["issuer"].as_str().unwrap_or_default();
    lines.push(if published == issuer {
        (true, format!("discovery: issuer {issuer}"))
    } else {
        (false, format!("discovery: the provider says its issuer is {published:?}, not {issuer:?}; set ROLLCALL_OIDC_ISSUER to exactly the provider's issuer"))
    });
    for endpoint in ["authorization_endpoint", "token_endpoint", "jwks_uri"] {
        if document[endpoint].as_str().is_none() {
            lines.push((false, format!("discovery: no {endpoint}")));
        }
    }
    let response_types = strings("response_types_supported");
    lines.push(if response_types.iter().any(|t| t == "code") {
        (
            true,
            "discovery: the authorization code flow is supported".into(),
        )
    } else {
        (
            false,
            format!("discovery: response type \"code\" is not supported ({response_types:?})"),
        )
    });
    let pkce = strings("code_challenge_methods_supported");
    if !pkce.is_empty() && !pkce.iter().any(|m| m == "S256") {
        lines.push((
            false,
            format!("discovery: PKCE S256 is not supported ({pkce:?})"),
        ));
    }
    let algorithms = strings("id_token_signing_alg_values_supported");
    let usable: Vec<&String> = algorithms
        .iter()
        .filter(|a| {
            ALLOWED_ALGORITHMS.iter().any(|allowed| {
                serde_json::to_value(allowed)
                    .ok()
                    .as_ref()
                    .and_then(Value::as_str)
                    == Some(a.as_str())
            })
        })
        .collect();
    lines.push(if usable.is_empty() {
        (
            false,
            format!("discovery: no ID-token signing algorithm Rollcall accepts ({algorithms:?})"),
        )
    } else {
        (true, format!("discovery: ID tokens signed with {usable:?}"))
    });
    let method = if secret {
        "client_secret_post"
    } else {
        "private_key_jwt"
    };
    let methods = strings("token_endpoint_auth_methods_supported");
    if !methods.is_empty() && !methods.iter().any(|m| m == method) {
        lines.push((
            false,
            format!("discovery: the token endpoint does not accept {method} ({methods:?})"),
        ));
    }
    lines
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn token_error<RE: std::error::Error + 'static>(
    error: RequestTokenError<
        RE,
        openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    >,
) -> SignInError {
    match error {
        RequestTokenError::ServerResponse(response) => SignInError::Provider {
            error: response.error().as_ref().to_owned(),
            description: response.error_description().cloned(),
        },
        RequestTokenError::Request(error) => {
            SignInError::Unreachable(format!("token endpoint: {}", error_chain(&error)))
        }
        RequestTokenError::Parse(error, _) => {
            SignInError::Unreachable(format!("token endpoint: unreadable answer: {error}"))
        }
        RequestTokenError::Other(error) => {
            SignInError::Unreachable(format!("token endpoint: {error}"))
        }
    }
}

/// Why an ID token was refused, in words an operator can act on.
fn verification_reason(error: &ClaimsVerificationError) -> String {
    match error {
        ClaimsVerificationError::Expired(detail) => format!("expired ({detail})"),
        ClaimsVerificationError::InvalidNonce(_) => "the nonce does not match this sign-in".into(),
        ClaimsVerificationError::InvalidIssuer(detail) => format!("wrong issuer ({detail})"),
        ClaimsVerificationError::InvalidAudience(detail) => format!("wrong audience ({detail})"),
        ClaimsVerificationError::SignatureVerification(
            SignatureVerificationError::NoMatchingKey,
        ) => "signed by a key the provider does not publish".into(),
        ClaimsVerificationError::SignatureVerification(
            SignatureVerificationError::DisallowedAlg(alg),
        ) => {
            format!("signed with a refused algorithm ({alg})")
        }
        other => error_chain(other),
    }
}

/// The claims of a token that has already been verified.
fn payload(id_token: &CoreIdToken) -> Result<Map<String, Value>, SignInError> {
    let compact = id_token.to_string();
    let part = compact.split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| SignInError::IdToken(format!("payload: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| SignInError::IdToken(format!("payload: {e}")))
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

    #[test]
    fn configuration_mistakes_are_refused_with_the_fix() {
        assert!(RelyingParty::from_config(&OidcConfig::default(), None)
            .unwrap()
            .is_none());
        let rp = RelyingParty::from_config(&config(), Some(".example.com"))
            .unwrap()
            .unwrap();
        assert_eq!(
            rp.allowed_redirects,
            vec!["example.com", "auth.example.com"]
        );
        let secret_id = OidcConfig {
            client_secret: Some(SecretString::from("7f0e8a52-3c1d-4b6e-9a8f-2d5c4b3a1e0f")),
            ..config()
        };
        let error = RelyingParty::from_config(&secret_id, None).unwrap_err();
        assert!(error.contains("Value"), "{error}");
        let common = OidcConfig {
            issuer: Some("https://login.microsoftonline.com/common/v2.0".into()),
            ..config()
        };
        assert!(RelyingParty::from_config(&common, None)
            .unwrap_err()
            .contains("tenant"));
        let wrong_path = OidcConfig {
            redirect_url: Some("https://auth.example.com/callback".into()),
            ..config()
        };
        assert!(RelyingParty::from_config(&wrong_path, None)
            .unwrap_err()
            .contains("/oauth2/callback"));
        let nothing = OidcConfig {
            client_secret: None,
            ..config()
        };
        assert!(RelyingParty::from_config(&nothing, None).is_err());
    }

    #[test]
    fn a_discovery_document_is_checked_for_what_sign_in_needs() {
        let good = json!({
            "issuer": "https://idp.test", "authorization_endpoint": "https://idp.test/a",
            "token_endpoint": "https://idp.test/t", "jwks_uri": "https://idp.test/k",
            "response_types_supported": ["code", "id_token"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
        });
        assert!(discovery_lines(&good, "https://idp.test", true)
            .iter()
            .all(|(ok, _)| *ok));
        let bad = json!({
            "issuer": "https://other.test", "authorization_endpoint": "https://idp.test/a",
            "response_types_supported": ["id_token"], "code_challenge_methods_supported": ["plain"],
            "id_token_signing_alg_values_supported": ["HS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        });
        let failures: Vec<String> = discovery_lines(&bad, "https://idp.test", true)
            .into_iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, line)| line)
            .collect();
        assert_eq!(failures.len(), 7, "{failures:#?}");
    }
}
