//! The setup mistakes people make when federating Entra ID, recognised and explained: a
//! redirect URI that does not match the registration, the client secret's ID sent instead of its
//! value, missing permissions or consent, a multi-tenant issuer. Entra names its errors
//! `AADSTS<number>` in `error_description`.

/// Whether the issuer is Entra ID's.
pub fn is_entra(issuer: &str) -> bool {
    issuer.starts_with("https://login.microsoftonline.com/")
        || issuer.starts_with("https://sts.windows.net/")
}

/// A configured issuer Rollcall cannot use: Entra's multi-tenant endpoints (ID tokens would
/// carry each user's home tenant as issuer) and the v1.0 endpoint.
pub fn issuer_problem(issuer: &str) -> Option<String> {
    let rest = issuer.strip_prefix("https://login.microsoftonline.com/")?;
    let tenant = rest.split('/').next().unwrap_or_default();
    if matches!(tenant, "common" | "organizations" | "consumers") {
        return Some(format!(
            "ROLLCALL_OIDC_ISSUER uses Entra's {tenant:?} endpoint; Rollcall signs in one tenant: use https://login.microsoftonline.com/<your tenant id>/v2.0 (Entra ID → Overview → Tenant ID)"
        ));
    }
    if !rest.trim_end_matches('/').ends_with("/v2.0") {
        return Some(format!(
            "ROLLCALL_OIDC_ISSUER {issuer:?} is not Entra's v2.0 issuer: use https://login.microsoftonline.com/{tenant}/v2.0"
        ));
    }
    None
}

/// A client secret that is surely wrong: Entra's secret IDs are GUIDs, its secret values never
/// are.
pub fn secret_problem(secret: &str) -> Option<String> {
    uuid::Uuid::try_parse(secret.trim()).ok().map(|_| {
        "ROLLCALL_OIDC_CLIENT_SECRET looks like a GUID: that is the secret's ID. In Entra ID → App registrations → your app → Certificates & secrets, copy the secret's Value (shown only when it is created; if it is hidden now, add a new secret)".to_owned()
    })
}

/// What is wrong and what to change, for an error the provider answered with.
pub fn explain(
    error: &str,
    description: Option<&str>,
    redirect_url: &str,
    scopes: &str,
) -> Option<String> {
    let description = description.unwrap_or_default();
    let code = description
        .find("AADSTS")
        .map(|at| {
            description[at + 6..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .unwrap_or_default();
    let advice = match code.as_str() {
        "50011" => format!(
            "The redirect URI does not match the app registration. In Entra ID → App registrations → your app → Authentication, add a Web platform redirect URI of exactly {redirect_url} (scheme, host, port and path must all match)."
        ),
        "7000215" => "Invalid client secret: Rollcall sent something that is not the secret's value, most often the Secret ID. In Certificates & secrets, copy the secret's Value (shown only when it is created; if it is hidden, add a new secret) into ROLLCALL_OIDC_CLIENT_SECRET.".into(),
        "7000222" => "The client secret has expired. Add a new secret in Certificates & secrets and put its Value into ROLLCALL_OIDC_CLIENT_SECRET.".into(),
        "65001" | "65004" | "90094" | "90008" => format!(
            "The app lacks consent for the permissions it asks for ({scopes}). In API permissions, add Microsoft Graph delegated permissions openid, profile, email and User.Read, then press \"Grant admin consent\" (or let users consent)."
        ),
        "700016" => "The application (client) id is not known in this tenant: check ROLLCALL_OIDC_CLIENT_ID (Overview → Application (client) ID) and that ROLLCALL_OIDC_ISSUER names the tenant the app is registered in.".into(),
        "90002" | "900023" => "The tenant in ROLLCALL_OIDC_ISSUER does not exist: use https://login.microsoftonline.com/<Directory (tenant) ID>/v2.0.".into(),
        "50105" => "The user is not assigned to the app and assignment is required. In Enterprise applications → your app → Users and groups, assign the user or one of their groups.".into(),
        "700027" | "700023" | "50012" => "The client assertion did not verify: upload the certificate whose private key is ROLLCALL_OIDC_PRIVATE_KEY under Certificates & secrets → Certificates, and set ROLLCALL_OIDC_CERTIFICATE_THUMBPRINT to its thumbprint.".into(),
        "9002325" => format!(
            "The redirect URI is registered under the Single-page application platform. Register {redirect_url} under the Web platform instead."
        ),
        "50194" => "The app is single-tenant but was asked through a multi-tenant endpoint: use https://login.microsoftonline.com/<tenant id>/v2.0 as ROLLCALL_OIDC_ISSUER.".into(),
        "54005" | "70008" => "The authorization code was already used or has expired: start the sign-in again.".into(),
        _ => match error {
            "invalid_client" => "The provider refused Rollcall's client credentials: check the client id and the secret (its value, not its ID) or the private key.".into(),
            "consent_required" | "interaction_required" => format!(
                "Consent is missing for {scopes}: grant it at the provider (Entra ID: API permissions → Grant admin consent)."
            ),
            "access_denied" => "The sign-in was cancelled or refused at the provider.".into(),
            _ => return None,
        },
    };
    Some(advice)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REDIRECT: &str = "https://auth.example.com/oauth2/callback";

    #[test]
    fn entras_usual_mistakes_are_explained_with_the_fix() {
        let mismatch = explain("invalid_request", Some("AADSTS50011: The redirect URI 'http://x/cb' specified in the request does not match the redirect URIs configured for the application."), REDIRECT, "openid").unwrap();
        assert!(mismatch.contains(REDIRECT), "{mismatch}");
        let secret_id = explain("invalid_client", Some("AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID"), REDIRECT, "openid").unwrap();
        assert!(secret_id.contains("Value"), "{secret_id}");
        let consent = explain(
            "invalid_grant",
            Some("AADSTS65001: The user or administrator has not consented to use the application"),
            REDIRECT,
            "openid profile email",
        )
        .unwrap();
        assert!(
            consent.contains("Grant admin consent") && consent.contains("openid profile email")
        );
        assert!(explain("server_error", Some("something else"), REDIRECT, "openid").is_none());
        assert!(explain(
            "invalid_client",
            Some("client authentication failed"),
            REDIRECT,
            "openid"
        )
        .unwrap()
        .contains("not its ID"));
    }

    #[test]
    fn unusable_issuers_and_secret_ids_are_recognised() {
        assert!(issuer_problem("https://login.microsoftonline.com/common/v2.0").is_some());
        assert!(issuer_problem(
            "https://login.microsoftonline.com/0a1b2c3d-0000-0000-0000-000000000000/"
        )
        .is_some());
        assert!(issuer_problem(
            "https://login.microsoftonline.com/0a1b2c3d-0000-0000-0000-000000000000/v2.0"
        )
        .is_none());
        assert!(issuer_problem("https://idp.example.com").is_none());
        assert!(secret_problem("7f0e8a52-3c1d-4b6e-9a8f-2d5c4b3a1e0f").is_some());
        assert!(secret_problem("Xy8Q~abcdefghijklmnopqrstuvwxyz0123456789").is_none());
        assert!(is_entra("https://login.microsoftonline.com/t/v2.0"));
        assert!(!is_entra("http://127.0.0.1:9/"));
    }
}
