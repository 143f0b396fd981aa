//! Sign-in with an OpenID provider: a real, certified one (panva/oidc-provider on loopback),
//! Rollcall's access service over HTTP, and the SCIM directory deciding who may sign in.

use rollcall_access::oidc::OidcConfig;
use rollcall_it::signin::{Browser, SignInEnv, HS_CLIENT_ID, KEY_CLIENT_ID, THUMBPRINT};
use rollcall_it::{eventually, TestEnv};
use serde_json::json;
use std::time::Duration;

const WIKI: &str = "https://wiki.test/page?x=1";

/// A SCIM user whose externalId is `oid`, as Entra provisions them.
async fn provision(env: &TestEnv, user_name: &str, oid: &str, active: bool) -> String {
    env.scim()
        .create_user(&json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": user_name, "externalId": oid, "active": active,
            "emails": [{"value": user_name, "type": "work", "primary": true}],
        }))
        .await
}

/// An account at the provider with Entra's claims (and a group claim Rollcall must ignore).
async fn account(signin: &SignInEnv, sub: &str, oid: &str, user_name: &str) {
    signin
        .provider
        .account(
            sub,
            json!({"oid": oid, "preferred_username": user_name, "email": user_name,
                   "name": "Test Person", "groups": ["Engineering"]}),
        )
        .await;
}

/// Asserts that one warning logged in this process contains every one of `parts`.
fn logged(parts: &[&str]) {
    let lines = rollcall_telemetry::captured_logs();
    assert!(
        lines.iter().any(|l| parts.iter().all(|p| l.contains(p))),
        "no log line with {parts:?} among {} warnings",
        lines.len()
    );
}

/// Asks `/auth` as nginx does, with the session cookie.
async fn forward_auth(env: &TestEnv, host: &str, session: &str) -> u16 {
    env.forward_auth(host, Some(session)).await.status
}

#[tokio::test]
async fn signing_in_issues_a_session_cookie_and_signing_out_revokes_it() {
    let signin = SignInEnv::start_with(|config, _| rollcall_access::Config {
        cookie_domain: Some(".example.test".into()),
        ..config
    })
    .await;
    let env = &signin.env;
    let oid = uuid::Uuid::new_v4().to_string();
    provision(env, "ada@example.com", &oid, true).await;
    account(&signin, "ada", &oid, "ada@example.com").await;
    let mut browser = Browser::new();
    let done = signin.sign_in(&mut browser, WIKI, "ada").await;
    assert_eq!(done.status, 302, "{}", done.body);
    assert_eq!(done.location().as_deref(), Some(WIKI));
    let cookies = done.set_cookies();
    let session_cookie = cookies
        .iter()
        .find(|c| c.starts_with("rollcall_session="))
        .unwrap();
    for attribute in [
        "Path=/",
        "Domain=.example.test",
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
    ] {
        assert!(session_cookie.contains(attribute), "{session_cookie}");
    }
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("rollcall_session_signin_") && c.contains("Max-Age=0")),
        "the sign-in's own cookie is cleared: {cookies:?}"
    );
    let session = browser
        .cookie(&env.access_base, "rollcall_session")
        .unwrap();
    let allowed = env.forward_auth("wiki.test", Some(&session)).await;
    assert_eq!(allowed.status, 200);
    assert_eq!(
        allowed.header("x-auth-request-user"),
        Some("ada@example.com")
    );
    // The token says Engineering; SCIM says no groups: groups come from SCIM only.
    assert_eq!(forward_auth(env, "eng.test", &session).await, 403);

    // The person's own sign-out: a POST (what the confirmation page's form sends).
    let out = browser
        .post(
            &format!(
                "{}/oauth2/sign_out?rd={}",
                env.access_base,
                rollcall_it::encode("https://wiki.test/")
            ),
            &[],
        )
        .await;
    assert_eq!(out.status, 302);
    assert_eq!(out.location().as_deref(), Some("https://wiki.test/"));
    assert!(out
        .set_cookies()
        .iter()
        .any(|c| c.starts_with("rollcall_session=;")
            && c.contains("Domain=.example.test")
            && c.contains("Max-Age=0")));
    // Even a copy of the cookie is refused now: the sign-out is a recorded revocation, which
    // reaches the access service over NATS.
    eventually(
        "the signed-out session is refused",
        Duration::from_secs(10),
        || async { forward_auth(env, "wiki.test", &session).await == 401 },
    )
    .await;
    let user = env
        .scim()
        .get("/Users?filter=userName%20eq%20%22ada@example.com%22")
        .await
        .ids()[0]
        .clone();
    let events = env.event_types("test", &user).await;
    assert!(
        events.iter().any(|e| e == "user.sessions_revoked"),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_wrong_state_and_a_replayed_code_are_refused() {
    let signin = SignInEnv::start().await;
    let oid = uuid::Uuid::new_v4().to_string();
    provision(&signin.env, "bea@example.com", &oid, true).await;
    account(&signin, "bea", &oid, "bea@example.com").await;
    let mut browser = Browser::new();
    let callback = signin.authorize(&mut browser, WIKI, "bea", |u| u).await;
    let url = url::Url::parse(&callback).unwrap();
    let state: String = url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into();
    let forged = callback.replace(&state, "forged-state-forged-state");
    let refused = browser.get(&forged).await;
    assert_eq!(refused.status, 400);
    assert!(refused.body.contains("wrong state"), "{}", refused.body);
    let mut last = state.clone();
    last.pop();
    last.push(if state.ends_with('A') { 'B' } else { 'A' });
    let refused = browser.get(&callback.replace(&state, &last)).await;
    assert_eq!(refused.status, 400);
    assert!(refused.body.contains("wrong state"), "{}", refused.body);

    // Someone copies the callback URL and the sign-in cookie, and replays them afterwards.
    let copied = browser.cookies(&callback);
    let signed_in = browser.get(&callback).await;
    assert_eq!(signed_in.status, 302, "{}", signed_in.body);
    let mut replayer = Browser::new();
    for (name, value) in &copied {
        replayer.set_cookie(&callback, name, value);
    }
    let replayed = replayer.get(&callback).await;
    assert_eq!(replayed.status, 400);
    assert!(replayed.body.contains("already used"), "{}", replayed.body);
    // Without the cookie, the replay does not even name a sign-in.
    let replayed = browser.get(&callback).await;
    assert_eq!(replayed.status, 400);
    assert!(replayed.body.contains("wrong state"), "{}", replayed.body);
    assert!(!replayed
        .set_cookies()
        .iter()
        .any(|c| c.starts_with("rollcall_session=") && !c.contains("Max-Age=0")));
}

#[tokio::test]
async fn a_wrong_nonce_is_refused() {
    let signin = SignInEnv::start().await;
    let oid = uuid::Uuid::new_v4().to_string();
    provision(&signin.env, "cy@example.com", &oid, true).await;
    account(&signin, "cy", &oid, "cy@example.com").await;
    let mut browser = Browser::new();
    // Someone swaps the nonce on the way to the provider: the ID token carries theirs.
    let callback = signin
        .authorize(&mut browser, WIKI, "cy", |authorize| {
            let mut url = url::Url::parse(&authorize).unwrap();
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k == "nonce" {
                        "attacker-nonce".into()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
            url.to_string()
        })
        .await;
    let refused = browser.get(&callback).await;
    assert_eq!(refused.status, 401);
    assert!(refused.body.contains("nonce"), "{}", refused.body);
}

#[tokio::test]
async fn an_expired_id_token_is_refused_beyond_a_small_leeway() {
    let signin = SignInEnv::start().await;
    let oid = uuid::Uuid::new_v4().to_string();
    provision(&signin.env, "di@example.com", &oid, true).await;
    account(&signin, "di", &oid, "di@example.com").await;
    // The provider's one-hour ID tokens, issued by a clock that is behind: 3,630 s behind, the
    // token expired 30 s ago (inside the 60 s leeway); 3,700 s behind, 100 s ago (outside).
    let mut browser = Browser::new();
    let callback = signin.authorize(&mut browser, WIKI, "di", |u| u).await;
    signin.provider.shift_clock(-3630).await;
    let accepted = browser.get(&callback).await;
    assert_eq!(accepted.status, 302, "{}", accepted.body);

    let mut browser = Browser::new();
    let callback = signin.authorize(&mut browser, WIKI, "di", |u| u).await;
    signin.provider.shift_clock(-3700).await;
    let refused = browser.get(&callback).await;
    assert_eq!(refused.status, 401);
    assert!(refused.body.contains("expired"), "{}", refused.body);
}

#[tokio::test]
async fn a_token_signed_by_a_key_the_provider_does_not_publish_is_refused() {
    let signin = SignInEnv::start().await;
    let oid = uuid::Uuid::new_v4().to_string();
    provision(&signin.env, "ed@example.com", &oid, true).await;
    account(&signin, "ed", &oid, "ed@example.com").await;
    // The provider signs with a new key but publishes a decoy set: Rollcall fetches the keys
    // again on the unknown key id, and still does not find it.
    signin.provider.rotate_keys().await;
    signin.provider.hide_keys().await;
    let mut browser = Browser::new();
    let refused = signin.sign_in(&mut browser, WIKI, "ed").await;
    assert_eq!(refused.status, 401);
    assert!(
        refused.body.contains("a key the provider does not publish"),
        "{}",
        refused.body
    );
    assert!(browser
        .cookie(&signin.env.access_base, "rollcall_session")
        .is_none());
}

#[tokio::test]
async fn keys_rotated_at_the_provider_are_fetched_and_rd_cannot_leave_the_allowed_domains() {
    let signin = SignInEnv::start().await;
    let oid = uuid::Uuid::new_v4().to_string();
    provision(&signin.env, "flo@example.com", &oid, true).await;
    account(&signin, "flo", &oid, "flo@example.com").await;
    let mut browser = Browser::new();
    let first = signin
        .sign_in(&mut browser, "https://evil.test/phish", "flo")
        .await;
    assert_eq!(first.status, 302, "{}", first.body);
    assert_eq!(
        first.headers.get("location").unwrap(),
        "/",
        "no open redirect"
    );
    let kid = signin.provider.rotate_keys().await;
    let mut browser = Browser::new();
    let callback = signin.authorize(&mut browser, WIKI, "flo", |u| u).await;
    let second = browser.get(&callback).await;
    assert_eq!(
        second.status, 302,
        "signed with the new key {kid}: {}",
        second.body
    );
    assert_eq!(second.location().as_deref(), Some(WIKI));
}

#[tokio::test]
async fn people_not_provisioned_or_inactive_are_refused_with_a_clear_page() {
    let signin = SignInEnv::start().await;
    let env = &signin.env;
    let stranger = uuid::Uuid::new_v4().to_string();
    account(&signin, "gus", &stranger, "gus@example.com").await;
    let refused = signin.sign_in(&mut Browser::new(), WIKI, "gus").await;
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("not provisioned"), "{}", refused.body);
    logged(&[
        "sign-in refused",
        "reason=not provisioned",
        "claim=oid",
        &stranger,
    ]);

    let oid = uuid::Uuid::new_v4().to_string();
    let hal = provision(env, "hal@example.com", &oid, false).await;
    account(&signin, "hal", &oid, "hal@example.com").await;
    let mut browser = Browser::new();
    let refused = signin.sign_in(&mut browser, WIKI, "hal").await;
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("disabled"), "{}", refused.body);
    logged(&["sign-in refused", "reason=inactive", &hal]);
    assert!(browser
        .cookie(&env.access_base, "rollcall_session")
        .is_none());
}

#[tokio::test]
async fn private_key_jwt_client_authentication_and_a_user_name_mapping_sign_in() {
    let signin = SignInEnv::start_with(|config, provider| rollcall_access::Config {
        oidc: OidcConfig {
            client_id: Some(KEY_CLIENT_ID.into()),
            client_secret: None,
            private_key: Some(provider.client_key.clone()),
            certificate_thumbprint: Some(THUMBPRINT.into()),
            claim: "preferred_username=userName".into(),
            ..config.oidc
        },
        ..config
    })
    .await;
    provision(&signin.env, "Ivy@Example.com", "not-the-oid", true).await;
    account(
        &signin,
        "ivy",
        &uuid::Uuid::new_v4().to_string(),
        "ivy@example.com",
    )
    .await;
    let mut browser = Browser::new();
    let done = signin.sign_in(&mut browser, WIKI, "ivy").await;
    assert_eq!(done.status, 302, "{}", done.body);
    let session = browser
        .cookie(&signin.env.access_base, "rollcall_session")
        .unwrap();
    assert_eq!(forward_auth(&signin.env, "wiki.test", &session).await, 200);
}

#[tokio::test]
async fn id_tokens_signed_with_a_shared_secret_are_refused() {
    let signin = SignInEnv::start_with(|config, _| rollcall_access::Config {
        oidc: OidcConfig {
            client_id: Some(HS_CLIENT_ID.into()),
            ..config.oidc
        },
        ..config
    })
    .await;
    let oid = uuid::Uuid::new_v4().to_string();
    provision(&signin.env, "jo@example.com", &oid, true).await;
    account(&signin, "jo", &oid, "jo@example.com").await;
    let refused = signin.sign_in(&mut Browser::new(), WIKI, "jo").await;
    assert_eq!(refused.status, 401);
    assert!(
        refused.body.contains("refused algorithm"),
        "{}",
        refused.body
    );
}

#[tokio::test]
async fn auth_sends_traefik_browsers_to_sign_in_and_gives_nginx_a_401() {
    let mut signin = SignInEnv::start_with(|config, _| rollcall_access::Config {
        trusted_proxy: Some(rollcall_access::proxy::TrustedProxy::Traefik),
        ..config
    })
    .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let auth = format!("{}/auth", signin.env.access_base);
    let traefik = http
        .get(&auth)
        .header("accept", "text/html,application/xhtml+xml")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "wiki.test")
        .header("x-forwarded-uri", "/page?x=1")
        .send()
        .await
        .unwrap();
    assert_eq!(traefik.status(), 302);
    let location = traefik.headers()["location"].to_str().unwrap();
    assert_eq!(
        location,
        format!(
            "{}/oauth2/start?rd=https%3A%2F%2Fwiki.test%2Fpage%3Fx%3D1",
            signin.env.access_base
        )
    );
    let api = http
        .get(&auth)
        .header("accept", "application/json")
        .header("x-forwarded-host", "wiki.test")
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    // The same sign-in behind nginx.
    let nginx_config = rollcall_access::Config {
        trusted_proxy: Some(rollcall_access::proxy::TrustedProxy::Nginx),
        ..signin.env.access.config.clone()
    };
    signin
        .env
        .start_access(rollcall_access::Access::new(nginx_config).unwrap())
        .await;
    let nginx = http
        .get(format!("{}/auth", signin.env.access_base))
        .header("accept", "text/html")
        .header("x-original-url", "https://wiki.test/page")
        .send()
        .await
        .unwrap();
    assert_eq!(nginx.status(), 401);
}

#[tokio::test]
async fn entra_setup_errors_at_the_callback_are_explained() {
    let signin = SignInEnv::start().await;
    let mut browser = Browser::new();
    let callback = |error: &str, description: &str| {
        format!(
            "{}?error={error}&error_description={}",
            signin.callback,
            rollcall_it::encode(description)
        )
    };
    let mismatch = browser
        .get(&callback("invalid_request", "AADSTS50011: The redirect URI 'https://wrong/cb' specified in the request does not match the redirect URIs configured for the application."))
        .await;
    assert_eq!(mismatch.status, 400);
    assert!(
        mismatch.body.contains(&signin.callback) && mismatch.body.contains("Authentication"),
        "{}",
        mismatch.body
    );
    // The log says the same, for the operator.
    logged(&["sign-in refused", "AADSTS50011", &signin.callback]);
    let consent = browser
        .get(&callback(
            "consent_required",
            "AADSTS65001: The user or administrator has not consented to use the application.",
        ))
        .await;
    assert!(
        consent.body.contains("Grant admin consent"),
        "{}",
        consent.body
    );
}

#[tokio::test]
async fn oidc_check_proves_the_client_credentials_and_explains_a_wrong_secret() {
    let signin = SignInEnv::start().await;
    let config = |secret: &str| rollcall_access::oidc::OidcConfig {
        issuer: Some(signin.provider.issuer.clone()),
        client_id: Some(rollcall_it::signin::CLIENT_ID.into()),
        client_secret: Some(secret.to_owned().into()),
        redirect_url: Some(signin.callback.clone()),
        ..Default::default()
    };
    let good = rollcall_access::oidc::RelyingParty::from_config(
        &config(rollcall_it::signin::CLIENT_SECRET),
        None,
    )
    .unwrap()
    .unwrap();
    let lines = good.check().await;
    assert!(lines.iter().all(|(ok, _)| *ok), "{lines:#?}");
    assert!(lines
        .iter()
        .any(|(_, l)| l.contains("client-credentials round trip")));
    assert!(lines.iter().any(|(_, l)| l.contains(&signin.callback)));

    let wrong = rollcall_access::oidc::RelyingParty::from_config(&config("not-the-secret"), None)
        .unwrap()
        .unwrap();
    let lines = wrong.check().await;
    let failure = lines.iter().find(|(ok, _)| !ok).expect("a failed line");
    assert!(
        failure.1.contains("invalid_client") && failure.1.contains("not its ID"),
        "{failure:?}"
    );
}

#[tokio::test]
async fn a_provider_whose_issuer_is_not_the_configured_one_is_refused() {
    // The same provider, reached under another name: its discovery document and its tokens
    // name a different issuer.
    let signin = SignInEnv::start_with(|config, provider| rollcall_access::Config {
        oidc: OidcConfig {
            issuer: Some(provider.issuer.replace("127.0.0.1", "localhost")),
            ..config.oidc
        },
        ..config
    })
    .await;
    let refused = Browser::new().get(&signin.start_url(WIKI)).await;
    assert_eq!(refused.status, 502);
    assert!(refused.body.contains("issuer"), "{}", refused.body);
}
