//! What sign-in answers a browser with: plain pages that say what happened and what to do,
//! redirects, and [`Refusal`], the one type for every refused sign-in or sign-out, which
//! renders its page and logs its reason once. Pages cannot be framed by another site.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tracing::warn;
use uuid::Uuid;

use crate::oidc::SignInError;

/// What to do after a refusal about the sign-in's state.
const START_AGAIN: &str = "Go back to the page you wanted and sign in again.";

/// HTML-escapes `text`.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head><body><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
            ),
        ],
        html,
    )
        .into_response()
}

/// The app launcher: who is signed in and the applications they may reach now, linked.
pub fn launcher(user_name: &str, applications: &[(String, Option<String>)]) -> Response {
    let mut body = format!("<p>Signed in as {}.</p>", escape(user_name));
    if applications.is_empty() {
        body.push_str("<p id=\"none\">No application lets you in now.</p>");
    } else {
        body.push_str("<ul id=\"applications\">");
        for (name, url) in applications {
            match url {
                Some(url) => body.push_str(&format!(
                    "<li><a href=\"{}\">{}</a></li>",
                    escape(url),
                    escape(name)
                )),
                None => body.push_str(&format!("<li>{}</li>", escape(name))),
            }
        }
        body.push_str("</ul>");
    }
    html(StatusCode::OK, "Your applications", &body)
}

/// A plain page that says what happened and what to do.
pub fn page(status: StatusCode, title: &str, lines: &[&str]) -> Response {
    let body: String = lines
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| format!("<p>{}</p>", escape(l)))
        .collect();
    html(status, title, &body)
}

/// The page that asks before signing out: a form that POSTs to `action` (relative to
/// `/oauth2/sign_out`).
pub fn confirm_sign_out(action: &str) -> Response {
    let body = format!(
        "<p>Sign out of every application that uses this sign-in?</p><form method=\"post\" action=\"{}\"><button type=\"submit\">Sign out</button></form>",
        escape(action)
    );
    html(StatusCode::OK, "Sign out", &body)
}

/// A `302` to `location` that sets `cookies`.
pub fn redirect(location: &str, cookies: &[String]) -> Response {
    let mut response = StatusCode::FOUND.into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(location) {
        headers.insert(header::LOCATION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for cookie in cookies {
        if let Ok(value) = HeaderValue::from_str(cookie) {
            headers.append(header::SET_COOKIE, value);
        }
    }
    response
}

/// Why a sign-in or sign-out was refused.
#[derive(Debug)]
pub enum Refusal {
    /// No identity provider is configured.
    NotConfigured,
    /// The query string is not readable.
    BadQuery,
    /// The provider could not be reached to start a sign-in.
    CannotStart(SignInError),
    /// The provider answered the callback with an error.
    AtProvider {
        /// The error.
        error: SignInError,
        /// What to change (Entra's usual mistakes).
        advice: Option<String>,
    },
    /// The callback has no code or no state.
    NoCodeOrState,
    /// No sign-in with this state was started in this browser lately.
    UnknownState,
    /// The provider's answer belongs to another sign-in.
    OtherState,
    /// The provider's answer was used already (a replayed code).
    Replayed,
    /// The code exchange or the ID token failed.
    Failed {
        /// The error.
        error: SignInError,
        /// What to change.
        advice: Option<String>,
    },
    /// The ID token lacks the claim that names the user.
    MissingClaim(String),
    /// No SCIM user matches the claim.
    NotProvisioned {
        /// The tenant.
        tenant: String,
        /// The claim.
        claim: String,
        /// Its value when it may be logged, else `<redacted>`.
        shown: String,
    },
    /// The SCIM user is inactive.
    Inactive {
        /// The tenant.
        tenant: String,
        /// The user.
        user: Uuid,
    },
    /// A sign-out posted from another site.
    CrossSiteSignOut,
    /// A session or sign-in state could not be signed.
    Internal,
}

/// Logs a refused sign-in with its reason and answers with a page that explains it.
fn refuse(status: StatusCode, title: &str, reason: &str, advice: Option<&str>) -> Response {
    warn!(reason = %reason, advice = advice.unwrap_or("-"), "sign-in refused");
    page(status, title, &[reason, advice.unwrap_or_default()])
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        const FAILED: &str = "Sign-in failed";
        const NO_ACCESS: &str = "You do not have access";
        match self {
            Refusal::NotConfigured => page(
                StatusCode::NOT_FOUND,
                "Sign-in is not configured",
                &["This Rollcall has no identity provider: set ROLLCALL_OIDC_ISSUER, ROLLCALL_OIDC_CLIENT_ID, ROLLCALL_OIDC_CLIENT_SECRET and ROLLCALL_OIDC_REDIRECT_URL."],
            ),
            Refusal::BadQuery => refuse(
                StatusCode::BAD_REQUEST,
                FAILED,
                "the query of this request is not readable",
                Some(START_AGAIN),
            ),
            Refusal::CannotStart(error) => {
                warn!(error = %error, "sign-in could not start");
                page(
                    StatusCode::BAD_GATEWAY,
                    "The identity provider could not be reached",
                    &[
                        &error.to_string(),
                        "Try again in a moment; if this persists, run `rollcall oidc check`.",
                    ],
                )
            }
            Refusal::AtProvider { error, advice } => refuse(
                StatusCode::BAD_REQUEST,
                "Sign-in failed at the identity provider",
                &error.to_string(),
                advice.as_deref(),
            ),
            Refusal::NoCodeOrState => refuse(
                StatusCode::BAD_REQUEST,
                FAILED,
                "the provider's answer has no code or no state",
                None,
            ),
            Refusal::UnknownState => refuse(
                StatusCode::BAD_REQUEST,
                FAILED,
                "wrong state: no sign-in with this state was started in this browser in the last ten minutes",
                Some(START_AGAIN),
            ),
            Refusal::OtherState => refuse(
                StatusCode::BAD_REQUEST,
                FAILED,
                "wrong state: the provider's answer belongs to another sign-in",
                Some(START_AGAIN),
            ),
            Refusal::Replayed => refuse(
                StatusCode::BAD_REQUEST,
                FAILED,
                "this sign-in answer was already used (a replayed code)",
                Some(START_AGAIN),
            ),
            Refusal::Failed { error, advice } => {
                let status = match error {
                    SignInError::Unreachable(_) => StatusCode::BAD_GATEWAY,
                    _ => StatusCode::UNAUTHORIZED,
                };
                refuse(status, FAILED, &error.to_string(), advice.as_deref())
            }
            Refusal::MissingClaim(claim) => refuse(
                StatusCode::FORBIDDEN,
                "Sign-in refused",
                &SignInError::MissingClaim(claim).to_string(),
                Some("Ask the administrator to check ROLLCALL_OIDC_CLAIM and the token configuration at the provider."),
            ),
            Refusal::NotProvisioned {
                tenant,
                claim,
                shown,
            } => {
                warn!(tenant = %tenant, claim = %claim, value = %shown, reason = "not provisioned", "sign-in refused");
                page(
                    StatusCode::FORBIDDEN,
                    NO_ACCESS,
                    &["Your account is not provisioned to this service.", "Ask your administrator to assign you to the application in Entra ID; provisioning may take a while."],
                )
            }
            Refusal::Inactive { tenant, user } => {
                warn!(tenant = %tenant, user.id = %user, reason = "inactive", "sign-in refused");
                page(
                    StatusCode::FORBIDDEN,
                    NO_ACCESS,
                    &[
                        "Your account is disabled in this service.",
                        "Ask your administrator.",
                    ],
                )
            }
            Refusal::CrossSiteSignOut => {
                warn!(reason = "cross-site request", "sign-out refused");
                page(
                    StatusCode::FORBIDDEN,
                    "Sign-out refused",
                    &[
                        "This sign-out was sent from another site, so nothing was changed.",
                        "To sign out, open the sign-out page of this service and confirm there.",
                    ],
                )
            }
            Refusal::Internal => {
                warn!(reason = "internal error", "sign-in failed");
                page(StatusCode::INTERNAL_SERVER_ERROR, FAILED, &["internal error"])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_what_they_show_and_cannot_be_framed() {
        let response = page(
            StatusCode::BAD_REQUEST,
            "<t>",
            &["<script>alert('x')</script>"],
        );
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[header::X_FRAME_OPTIONS], "DENY");
        assert!(response.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'"));
        assert_eq!(
            escape("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
    }

    #[test]
    fn each_refusal_answers_its_status() {
        for (refusal, status) in [
            (Refusal::NotConfigured, 404),
            (Refusal::BadQuery, 400),
            (
                Refusal::CannotStart(SignInError::Unreachable("down".into())),
                502,
            ),
            (Refusal::UnknownState, 400),
            (Refusal::OtherState, 400),
            (Refusal::Replayed, 400),
            (
                Refusal::Failed {
                    error: SignInError::Unreachable("down".into()),
                    advice: None,
                },
                502,
            ),
            (
                Refusal::Failed {
                    error: SignInError::NoIdToken,
                    advice: None,
                },
                401,
            ),
            (Refusal::MissingClaim("oid".into()), 403),
            (
                Refusal::Inactive {
                    tenant: "t".into(),
                    user: Uuid::nil(),
                },
                403,
            ),
            (Refusal::CrossSiteSignOut, 403),
            (Refusal::Internal, 500),
        ] {
            assert_eq!(refusal.into_response().status().as_u16(), status);
        }
    }

    #[tokio::test]
    async fn the_sign_out_confirmation_is_a_form_that_posts_to_the_escaped_action() {
        let response = confirm_sign_out("sign_out?rd=%2Fa&b=\"x\"");
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            body.contains("<form method=\"post\" action=\"sign_out?rd=%2Fa&amp;b=&quot;x&quot;\">"),
            "{body}"
        );
    }
}
