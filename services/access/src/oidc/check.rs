//! `rollcall oidc check`: the configuration against the provider's discovery document and
//! keys, and a client-credentials round trip that proves the client id and secret (or private
//! key), each result a line that says what to change.

use serde_json::Value;

use super::config::ClientAuth;
use super::provider::{error_chain, token_error, RelyingParty, ALLOWED_ALGORITHMS, JWT_BEARER};
use crate::entra;
use openidconnect::Scope;

impl RelyingParty {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
