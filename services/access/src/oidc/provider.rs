//! The provider client (via `openidconnect`): discovery, the authorization code flow with
//! PKCE, `state` and `nonce`, the code exchange with a client secret or a private-key JWT, and
//! ID-token validation (issuer, audience, expiry with a small leeway, nonce, asymmetric
//! algorithms only) against the provider's JWKS, which is cached and fetched again when a token
//! names a key it does not hold (the provider rotated its keys).

use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::{Algorithm, Header};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdToken, CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AuthType, AuthorizationCode, ClaimsVerificationError, ClientId, CsrfToken, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, IssuerUrl, JsonWebKeySet, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, SignatureVerificationError,
    TokenResponse,
};
use serde_json::{json, Map, Value};
use url::Url;
use uuid::Uuid;

use super::config::{self, ClaimMapping, ClientAuth, ConfigError, OidcConfig};
use crate::entra;

/// ID tokens signed with anything else (HS*, `none`) are refused.
pub(super) const ALLOWED_ALGORITHMS: [CoreJwsSigningAlgorithm; 6] = [
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

pub(super) const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

pub(super) type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

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
    pub(super) issuer: IssuerUrl,
    client_id: ClientId,
    pub(super) auth: ClientAuth,
    pub(super) redirect: RedirectUrl,
    scopes: Vec<String>,
    leeway: Duration,
    /// Which claim names the user.
    pub mapping: ClaimMapping,
    /// The Rollcall tenant signing in here.
    pub tenant: String,
    /// Hosts `rd` may point at.
    pub allowed_redirects: Vec<String>,
    pub(super) http: openidconnect::reqwest::Client,
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
    ) -> Result<Option<Self>, ConfigError> {
        let Some(settings) = config::settings(config, cookie_domain)? else {
            return Ok(None);
        };
        let http = openidconnect::reqwest::Client::builder()
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ConfigError::HttpClient(e.to_string()))?;
        Ok(Some(Self {
            issuer: settings.issuer,
            client_id: ClientId::new(settings.client_id),
            auth: settings.auth,
            redirect: settings.redirect,
            scopes: settings.scopes,
            leeway: settings.leeway,
            mapping: settings.mapping,
            tenant: settings.tenant,
            allowed_redirects: settings.allowed_redirects,
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

    pub(super) async fn client(&self) -> Result<(Client, CoreProviderMetadata), SignInError> {
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
    pub(super) fn client_assertion(&self, audience: &str) -> Result<Option<String>, SignInError> {
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
}

pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pub(super) fn token_error<RE: std::error::Error + 'static>(
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
