//! Hostile requests to the access service: spoofed proxy headers, path variants, redirect
//! variants, cross-site sign-outs, forged identity headers and malformed API requests. Each
//! test asserts the refusal and that another tenant is unaffected.

use std::sync::Arc;

use reqwest::header::HeaderMap;
use rollcall_access::proxy::TrustedProxy;
use rollcall_it::{TestEnv, POLICIES};
use serde_json::{json, Value};

/// An answer of the access service.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a JSON error with this status; returns its message.
    fn json_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{}",
            self.body
        );
        let body: Value = serde_json::from_str(&self.body).unwrap();
        assert_eq!(body["status"], status, "{body}");
        body["error"].as_str().unwrap().to_owned()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn answer(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.unwrap();
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap(),
    }
}

/// `GET <access>/<path>` with `headers` and, when given, the session cookie.
async fn ask(env: &TestEnv, path: &str, headers: &[(&str, &str)], session: Option<&str>) -> Answer {
    let mut request = client().get(format!("{}{path}", env.access_base));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(session) = session {
        request = request.header("cookie", format!("rollcall_session={session}"));
    }
    answer(request).await
}

/// Declares `extra` applications beside the test environment's own and reloads them.
async fn declare(env: &TestEnv, extra: &str) {
    std::fs::write(&env.policy_file, format!("{POLICIES}\n{extra}")).unwrap();
    env.access.reload_policies().await.unwrap();
}

/// Replaces the access service with one that trusts `proxy` (`None`: not configured).
async fn behind(env: &mut TestEnv, proxy: Option<TrustedProxy>) {
    let config = rollcall_access::Config {
        trusted_proxy: proxy,
        ..rollcall_it::access_config(&env.policy_file)
    };
    env.start_access(rollcall_access::Access::new(config).unwrap())
        .await;
}

/// A user of tenant `test` in no group, with a session.
async fn person(env: &TestEnv, user_name: &str) -> (String, String) {
    let user = env
        .scim()
        .create_user(
            &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                             "userName": user_name, "active": true}),
        )
        .await;
    let session = env.session(&user);
    (user, session)
}

const PUBLIC_BYPASS: &str = r#"
[[application]]
name = "public"
tenant = "test"
hosts = ["public.test"]
[[application.policy]]
name = "anyone"
action = "bypass"
include = [{ everyone = true }]
"#;

#[tokio::test]
async fn spoofed_proxy_headers_cannot_name_a_bypass_host() {
    let mut env = TestEnv::start().await;
    declare(&env, PUBLIC_BYPASS).await;
    let (_, session) = person(&env, "outsider@example.com").await;

    // Behind Traefik, which sets X-Forwarded-* itself and passes the client's other headers on.
    behind(&mut env, Some(TrustedProxy::Traefik)).await;
    let traefik = |host: &'static str| {
        [
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", host),
            ("x-forwarded-uri", "/"),
        ]
    };
    // The bypass host is open to anyone, so naming it would be a way in.
    assert_eq!(
        ask(&env, "/auth", &traefik("public.test"), None)
            .await
            .status,
        200
    );
    let mut spoofed = traefik("eng.test").to_vec();
    spoofed.push(("x-original-url", "https://public.test/"));
    assert_eq!(ask(&env, "/auth", &spoofed, None).await.status, 401);
    assert_eq!(
        ask(&env, "/auth", &spoofed, Some(&session)).await.status,
        403
    );
    // Two hosts at once are refused, whichever way they are sent.
    for conflicting in [
        vec![
            ("x-forwarded-host", "eng.test"),
            ("x-forwarded-host", "public.test"),
        ],
        vec![("x-forwarded-host", "eng.test, public.test")],
        vec![("x-forwarded-host", "public.test, eng.test")],
        vec![
            ("x-forwarded-host", "eng.test"),
            ("x-forwarded-proto", "https, http"),
        ],
    ] {
        let refused = ask(&env, "/auth", &conflicting, Some(&session)).await;
        let error = refused.json_error(400);
        assert!(error.contains("X-Forwarded"), "{error}");
    }
    // Without X-Forwarded-Host, X-Original-URL alone names nothing.
    let refused = ask(
        &env,
        "/auth",
        &[("x-original-url", "https://public.test/")],
        None,
    )
    .await;
    assert!(refused
        .json_error(400)
        .contains("X-Forwarded-Host is missing"));

    // Caddy reads the same headers.
    behind(&mut env, Some(TrustedProxy::Caddy)).await;
    assert_eq!(ask(&env, "/auth", &spoofed, None).await.status, 401);

    // Behind Envoy, the Host and route decide; other headers must agree or are refused.
    behind(&mut env, Some(TrustedProxy::Envoy)).await;
    let envoy = ask(
        &env,
        "/auth/",
        &[
            ("host", "eng.test"),
            ("x-original-url", "https://public.test/"),
        ],
        None,
    )
    .await;
    assert_eq!(envoy.status, 401);
    let disagreeing = ask(
        &env,
        "/auth/",
        &[("host", "eng.test"), ("x-forwarded-host", "public.test")],
        None,
    )
    .await;
    disagreeing.json_error(400);

    // Without the setting, nothing is trusted and the operator is told.
    behind(&mut env, None).await;
    let unconfigured = ask(&env, "/auth", &traefik("public.test"), None).await;
    assert!(unconfigured
        .json_error(500)
        .contains("ROLLCALL_TRUSTED_PROXY is not set"));

    // Behind nginx, which sets X-Original-URL, a client's X-Forwarded-Host is ignored.
    behind(&mut env, Some(TrustedProxy::Nginx)).await;
    let nginx = ask(
        &env,
        "/auth",
        &[
            ("x-original-url", "https://eng.test/"),
            ("x-forwarded-host", "public.test"),
            ("host", "public.test"),
        ],
        None,
    )
    .await;
    assert_eq!(nginx.status, 401);
    let twice = ask(
        &env,
        "/auth",
        &[
            ("x-original-url", "https://eng.test/"),
            ("x-original-url", "https://public.test/"),
        ],
        None,
    )
    .await;
    twice.json_error(400);
    env.assert_other_tenant_unaffected().await;
}

const PROTECTED_ADMIN: &str = r#"
[[application]]
name = "site"
tenant = "test"
hosts = ["site.test"]
[[application.policy]]
name = "everyone"
action = "allow"
include = [{ everyone = true }]

[[application]]
name = "site admin"
tenant = "test"
hosts = ["site.test"]
paths = ["/admin"]
[[application.policy]]
name = "admins"
action = "allow"
include = [{ group = "Admins" }]
"#;

#[tokio::test]
async fn path_variants_of_a_protected_prefix_never_fall_through_to_the_allow_all_rule() {
    let mut env = TestEnv::start().await;
    declare(&env, PROTECTED_ADMIN).await;
    let (_, session) = person(&env, "visitor@example.com").await;
    let nginx = |path: &str| format!("https://site.test{path}");
    for open in [
        "/",
        "/public",
        "/administrator",
        "/public/admin",
        "/admins?x=/admin",
    ] {
        let url = nginx(open);
        let allowed = ask(
            &env,
            "/auth",
            &[("x-original-url", url.as_str())],
            Some(&session),
        )
        .await;
        assert_eq!(allowed.status, 200, "{open}: {}", allowed.body);
    }
    for variant in [
        "/admin",
        "/admin/",
        "/admin/users?x=1",
        "/ADMIN",
        "/Admin/Users",
        "/%61dmin",
        "/%41%44%4D%49%4E/x",
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/.%2E/admin/x",
        "/./admin",
        "/../admin",
        "//admin",
        "/admin//x",
        "///ADMIN/",
        "/public/./../%61dmin",
    ] {
        let url = nginx(variant);
        let denied = ask(
            &env,
            "/auth",
            &[("x-original-url", url.as_str())],
            Some(&session),
        )
        .await;
        // `site` would allow anyone: a 403 is the admin application's answer.
        assert_eq!(denied.status, 403, "{variant}: {}", denied.body);
    }
    for ambiguous in [
        "/admin%2Fx",
        "/public%2F..%2Fadmin",
        "/public/..%5Cadmin",
        "/public\\..\\admin",
        "/admin%00",
        "/admin%09",
        "/admin;jsessionid=x",
        "/admin%3Bx/secret",
        "/%252e%252e/admin",
        "/public//../admin",
        "/ad%zzmin",
        "/admin%",
    ] {
        let url = nginx(ambiguous);
        let refused = ask(
            &env,
            "/auth",
            &[("x-original-url", url.as_str())],
            Some(&session),
        )
        .await;
        refused.json_error(400);
    }
    // The decision API normalizes the same way.
    let decide = |path: &'static str| {
        let session = session.clone();
        let base = env.access_base.clone();
        async move {
            answer(
                client()
                    .post(format!("{base}/v1/decisions"))
                    .json(&json!({"session": session, "host": "SITE.test", "path": path})),
            )
            .await
        }
    };
    for (path, allow) in [
        ("/public", true),
        ("/public/%2e%2e/ADMIN", false),
        ("//admin", false),
    ] {
        let decided = decide(path).await;
        assert_eq!(decided.status, 200, "{}", decided.body);
        let body: Value = serde_json::from_str(&decided.body).unwrap();
        assert_eq!(body["allow"], allow, "{path}: {body}");
    }
    decide("/admin%2F..").await.json_error(400);
    // Envoy's route is read raw, before any decoding.
    behind(&mut env, Some(TrustedProxy::Envoy)).await;
    for variant in [
        "/auth/admin",
        "/auth/%61dmin",
        "/auth//admin",
        "/auth/ADMIN/x",
    ] {
        let denied = ask(&env, variant, &[("host", "site.test")], Some(&session)).await;
        assert_eq!(denied.status, 403, "{variant}: {}", denied.body);
    }
    let refused = ask(
        &env,
        "/auth/admin%2Fx",
        &[("host", "site.test")],
        Some(&session),
    )
    .await;
    refused.json_error(400);
    env.restart_access().await;
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn redirect_variants_after_sign_out_never_leave_the_site() {
    let env = TestEnv::start().await;
    let sign_out = |rd: &str| {
        let url = format!(
            "{}/oauth2/sign_out?rd={}",
            env.access_base,
            rollcall_it::encode(rd)
        );
        async move {
            // The person's own navigation: the browser says `same-origin`.
            answer(client().get(url).header("sec-fetch-site", "same-origin")).await
        }
    };
    for rd in [
        "/\t/evil.test",
        "/\n/evil.test",
        "/\r\n/evil.test",
        "/\\evil.test",
        "//evil.test",
        "///evil.test",
        "/.//evil.test",
        "/%2e//evil.test",
        " //evil.test",
        "https://evil.test/",
        "https:evil.test",
        "https://user@evil.test/",
        "javascript:alert(1)",
        "java\tscript:alert(1)",
    ] {
        let out = sign_out(rd).await;
        assert_eq!(out.status, 302, "{rd:?}: {}", out.body);
        assert_eq!(out.header("location"), Some("/"), "{rd:?}");
    }
    // Relative targets come back re-serialized from the parsed URL, never as sent.
    for (rd, location) in [
        ("/wiki?page=1", "/wiki?page=1"),
        ("/a b", "/a%20b"),
        ("/x/../y", "/y"),
    ] {
        let out = sign_out(rd).await;
        assert_eq!(out.header("location"), Some(location), "{rd:?}");
    }
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn a_cross_site_sign_out_link_or_form_revokes_nothing() {
    let mut env = TestEnv::start().await;
    let access = rollcall_access::Access::new(rollcall_it::access_config(&env.policy_file))
        .unwrap()
        .with_revoker(Arc::new(rollcall_scim_api::operator::SignOutRevoker(
            env.log.clone(),
            env.store.clone(),
        )));
    env.start_access(access).await;
    let (user, linked) = person(&env, "clicker@example.com").await;
    let own = env.session(&user);
    let sign_out = format!("{}/oauth2/sign_out?rd=%2F", env.access_base);
    let cookie = |session: &str| format!("rollcall_session={session}");
    // A link on another site, and a browser that says nothing about where it comes from: a page
    // that asks, with a form that POSTs; nothing revoked, no cookie cleared.
    for site in [Some("cross-site"), Some("same-site"), None] {
        let mut request = client().get(&sign_out).header("cookie", cookie(&linked));
        if let Some(site) = site {
            request = request.header("sec-fetch-site", site);
        }
        let asked = answer(request).await;
        assert_eq!(asked.status, 200, "{site:?}: {}", asked.body);
        assert!(
            asked
                .body
                .contains("<form method=\"post\" action=\"sign_out?rd=%2F\">"),
            "{}",
            asked.body
        );
        assert!(asked.header("set-cookie").is_none(), "{site:?}");
    }
    // A form on another site that posts here.
    for (site, origin) in [
        (Some("cross-site"), "https://evil.test"),
        (None, "https://evil.test"),
        (None, "null"),
    ] {
        let mut request = client()
            .post(&sign_out)
            .header("cookie", cookie(&linked))
            .header("origin", origin);
        if let Some(site) = site {
            request = request.header("sec-fetch-site", site);
        }
        let refused = answer(request).await;
        assert_eq!(refused.status, 403, "{origin}: {}", refused.body);
        assert!(refused.header("set-cookie").is_none());
    }
    // The person's own sign-out of their other session is recorded and applied; it comes after
    // every attempt above in the user's history, so once it denies, they would have too.
    let signed_out = answer(
        client()
            .post(&sign_out)
            .header("cookie", cookie(&own))
            .header("sec-fetch-site", "same-origin")
            .header("origin", env.access_base.clone()),
    )
    .await;
    assert_eq!(signed_out.status, 302, "{}", signed_out.body);
    assert!(signed_out
        .header("set-cookie")
        .is_some_and(|c| c.starts_with("rollcall_session=;") && c.contains("Max-Age=0")));
    rollcall_it::eventually(
        "the signed-out session is refused",
        std::time::Duration::from_secs(5),
        || async { env.forward_auth("wiki.test", Some(&own)).await.status == 401 },
    )
    .await;
    assert_eq!(
        env.forward_auth("wiki.test", Some(&linked)).await.status,
        200
    );
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn a_group_named_with_a_comma_cannot_forge_an_entry_in_the_groups_header() {
    let env = TestEnv::start().await;
    declare(
        &env,
        r#"
[[application]]
name = "evil wiki"
tenant = "evil"
hosts = ["evil.test"]
[[application.policy]]
name = "everyone"
action = "allow"
include = [{ everyone = true }]
"#,
    )
    .await;
    let evil = env.tenant("evil").await;
    let user = evil
        .create_user(
            &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                             "userName": "mallory@evil.test", "active": true}),
        )
        .await;
    for name in ["Engineering,Admins", "Ops, Admins"] {
        evil.create_group(
            &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                                  "displayName": name, "members": [{"value": user}]}),
        )
        .await;
    }
    let session = env
        .access
        .issue_session("evil", uuid::Uuid::parse_str(&user).unwrap())
        .unwrap();
    // Both memberships have reached the access service (the decision API names groups raw).
    let decisions = format!("{}/v1/decisions", env.access_base);
    rollcall_it::eventually(
        "both groups are known to the access service",
        std::time::Duration::from_secs(5),
        || async {
            let decided = answer(
                client()
                    .post(&decisions)
                    .json(&json!({"session": session, "host": "evil.test"})),
            )
            .await;
            let body: Value = serde_json::from_str(&decided.body).unwrap_or_default();
            body["decision"]["identity"]["groups"]
                .as_array()
                .is_some_and(|groups| groups.len() == 2)
        },
    )
    .await;
    let allowed = env.forward_auth("evil.test", Some(&session)).await;
    assert_eq!(allowed.status, 200, "{:?}", allowed.body);
    for header in ["x-auth-request-groups", "remote-groups"] {
        let groups = allowed.header(header).unwrap();
        let mut entries: Vec<&str> = groups.split(',').map(str::trim).collect();
        entries.sort_unstable();
        assert!(!entries.contains(&"Admins"), "{header}: {groups}");
        assert_eq!(
            entries,
            vec!["Engineering%2CAdmins", "Ops%2C Admins"],
            "{header}: {groups}"
        );
    }
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn malformed_requests_to_the_access_api_answer_json_errors() {
    let env = TestEnv::start().await;
    let decisions = format!("{}/v1/decisions", env.access_base);
    let not_json = answer(
        client()
            .post(&decisions)
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    not_json.json_error(400);
    let no_host = answer(client().post(&decisions).json(&json!({"path": "/"}))).await;
    no_host.json_error(400);
    let bad_host = answer(
        client()
            .post(&decisions)
            .json(&json!({"host": "eng.test/x"})),
    )
    .await;
    bad_host.json_error(400);
    let wrong_type = answer(
        client()
            .post(&decisions)
            .json(&json!({"host": "eng.test", "session": ["token"]})),
    )
    .await;
    wrong_type.json_error(400);
    answer(client().get(&decisions)).await.json_error(405);
    answer(client().get(format!("{}/no-such-endpoint", env.access_base)))
        .await
        .json_error(404);
    let readyz = answer(client().get(format!("{}/readyz", env.access_base))).await;
    assert_eq!(readyz.header("content-type"), Some("application/json"));
    env.assert_other_tenant_unaffected().await;
}
