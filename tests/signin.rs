//! Sign-in test kit: a real OpenID provider (panva/oidc-provider, certified, run by Node.js on
//! loopback), a Rollcall access service configured to sign in with it, and a cookie-keeping
//! HTTP client that walks the browser's part of the code flow one redirect at a time, so that a
//! test can tamper with any step.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use url::Url;

use crate::TestEnv;

/// The client id Rollcall is registered with at the test provider.
pub const CLIENT_ID: &str = "rollcall";
/// Its client secret.
pub const CLIENT_SECRET: &str = "rollcall-test-secret-value-0123456789";
/// A client that authenticates with a private-key JWT.
pub const KEY_CLIENT_ID: &str = "rollcall-key";
/// A client whose ID tokens are signed with HS256 (a shared secret): refused by Rollcall.
pub const HS_CLIENT_ID: &str = "rollcall-hs";
/// The thumbprint (hex) the private-key client's key is registered under.
pub const THUMBPRINT: &str = "0123456789abcdef0123456789abcdef01234567";

fn provider_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc-provider")
}

/// Installs the provider's npm packages once (the test command does it too).
fn install_provider() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let dir = provider_dir();
        if dir.join("node_modules/oidc-provider").exists() {
            return;
        }
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm must be installed (Node.js 20)");
        assert!(status.success(), "npm ci in {} failed", dir.display());
    });
}

/// A running test provider; stopped on drop.
#[allow(missing_debug_implementations)]
pub struct TestProvider {
    /// Its issuer URL.
    pub issuer: String,
    /// Where the private-key client's PEM key was written.
    pub client_key: PathBuf,
    child: Child,
}

impl TestProvider {
    /// Starts a provider whose clients redirect to `redirect_uri`.
    pub async fn start(redirect_uri: &str) -> Self {
        install_provider();
        let client_key =
            std::env::temp_dir().join(format!("rollcall-client-{}.pem", uuid::Uuid::new_v4()));
        let client = |id: &str, extra: Value| {
            let mut client = json!({
                "client_id": id, "client_secret": CLIENT_SECRET, "redirect_uris": [redirect_uri],
                "token_endpoint_auth_method": "client_secret_post",
                "grant_types": ["authorization_code", "client_credentials"], "response_types": ["code"],
            });
            if let (Some(client), Some(extra)) = (client.as_object_mut(), extra.as_object()) {
                client.extend(extra.clone());
            }
            client
        };
        let clients = json!([
            client(CLIENT_ID, json!({})),
            client(
                KEY_CLIENT_ID,
                json!({"token_endpoint_auth_method": "private_key_jwt"})
            ),
            client(
                HS_CLIENT_ID,
                json!({"id_token_signed_response_alg": "HS256"})
            ),
        ]);
        let mut child = Command::new("node")
            .arg(provider_dir().join("provider.mjs"))
            .arg("--clients")
            .arg(clients.to_string())
            .arg("--client-key-out")
            .arg(&client_key)
            .arg("--client-key-id")
            .arg(THUMBPRINT)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node must be installed (Node.js 20)");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let issuer = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Ok(ready) = serde_json::from_str::<Value>(&line) {
                    return ready["issuer"].as_str().unwrap().to_owned();
                }
            }
            panic!("the test provider stopped before it listened");
        })
        .await
        .expect("the test provider did not start within 30 s");
        // Keep reading what it prints, so that it never writes to a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            issuer,
            client_key,
            child,
        }
    }

    async fn control(&self, name: &str, body: Value) -> Value {
        let response = reqwest::Client::new()
            .post(format!("{}/__test/{name}", self.issuer))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "provider control {name}");
        response.json().await.unwrap()
    }

    /// Registers an account (its id is the `sub`) with its claims.
    pub async fn account(&self, sub: &str, claims: Value) {
        self.control("accounts", json!({"sub": sub, "claims": claims}))
            .await;
    }

    /// Signs with a new key from now on; returns its key id.
    pub async fn rotate_keys(&self) -> String {
        self.control("rotate", json!({})).await["kid"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Moves the provider's clock.
    pub async fn shift_clock(&self, seconds: i64) {
        self.control("clock", json!({"offset_seconds": seconds}))
            .await;
    }

    /// Publishes a decoy key set instead of the keys the provider signs with.
    pub async fn hide_keys(&self) {
        self.control("hide-keys", json!({"hide": true})).await;
    }
}

impl Drop for TestProvider {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.client_key);
    }
}

/// A response as a browser sees it.
#[derive(Debug, Clone)]
pub struct Page {
    /// The URL asked for.
    pub url: String,
    /// Its status.
    pub status: u16,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: String,
}

impl Page {
    /// The `Location` header, resolved against the URL.
    pub fn location(&self) -> Option<String> {
        let location = self.headers.get(LOCATION)?.to_str().ok()?;
        Url::parse(&self.url)
            .ok()?
            .join(location)
            .ok()
            .map(String::from)
    }

    /// The `Set-Cookie` headers.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }
}

/// An HTTP client that keeps cookies per host and port (ignoring `Secure`, as browsers do on
/// loopback) and follows no redirect by itself.
#[derive(Debug)]
pub struct Browser {
    http: reqwest::Client,
    cookies: HashMap<String, HashMap<String, String>>,
}

fn origin(url: &str) -> String {
    let url = Url::parse(url).unwrap();
    format!(
        "{}:{}",
        url.host_str().unwrap(),
        url.port_or_known_default().unwrap()
    )
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    /// A browser with no cookies.
    pub fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: HashMap::new(),
        }
    }

    /// The cookie `name` held for `url`'s host.
    pub fn cookie(&self, url: &str, name: &str) -> Option<String> {
        self.cookies.get(&origin(url))?.get(name).cloned()
    }

    /// Sets cookie `name` for `url`'s host (as a copied cookie would be).
    pub fn set_cookie(&mut self, url: &str, name: &str, value: &str) {
        self.cookies
            .entry(origin(url))
            .or_default()
            .insert(name.to_owned(), value.to_owned());
    }

    /// The cookies held for `url`'s host.
    pub fn cookies(&self, url: &str) -> HashMap<String, String> {
        self.cookies.get(&origin(url)).cloned().unwrap_or_default()
    }

    async fn send(&mut self, url: &str, form: Option<&[(&str, &str)]>) -> Page {
        let jar = self.cookies.entry(origin(url)).or_default();
        let cookie: Vec<String> = jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut request = match form {
            Some(form) => self.http.post(url).form(form),
            None => self.http.get(url),
        }
        .header("accept", "text/html");
        if !cookie.is_empty() {
            request = request.header("cookie", cookie.join("; "));
        }
        let response = request.send().await.unwrap();
        let page = Page {
            url: url.to_owned(),
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: String::new(),
        };
        for set in page.set_cookies() {
            let pair = set.split(';').next().unwrap_or_default();
            if let Some((name, value)) = pair.split_once('=') {
                let expired = set.contains("Max-Age=0") || value.is_empty();
                if expired {
                    jar.remove(name.trim());
                } else {
                    jar.insert(name.trim().to_owned(), value.to_owned());
                }
            }
        }
        Page {
            body: response.text().await.unwrap(),
            ..page
        }
    }

    /// GETs `url`.
    pub async fn get(&mut self, url: &str) -> Page {
        self.send(url, None).await
    }

    /// POSTs a form to `url`.
    pub async fn post(&mut self, url: &str, form: &[(&str, &str)]) -> Page {
        self.send(url, Some(form)).await
    }

    /// Follows redirects from `url` until a page that is not a redirect, or until a redirect to
    /// a URL starting with `stop` (returned unvisited as the last page's location).
    pub async fn follow(&mut self, url: &str, stop: &str) -> Page {
        let mut page = self.get(url).await;
        for _ in 0..20 {
            match page.location() {
                Some(next) if (300..400).contains(&page.status) && !next.starts_with(stop) => {
                    page = self.get(&next).await;
                }
                _ => return page,
            }
        }
        panic!("too many redirects from {url}");
    }
}

/// A test environment whose access service signs in with a test provider.
#[allow(missing_debug_implementations)]
pub struct SignInEnv {
    /// Rollcall.
    pub env: TestEnv,
    /// The provider.
    pub provider: TestProvider,
    /// The redirect URI (the access service's `/oauth2/callback`).
    pub callback: String,
}

impl SignInEnv {
    /// Rollcall with sign-in through a fresh provider, as client [`CLIENT_ID`] with its secret.
    pub async fn start() -> Self {
        Self::start_with(|config, _| config).await
    }

    /// Rollcall with sign-in through a fresh provider; `adjust` changes the access service's
    /// configuration (given the provider, for its key file).
    pub async fn start_with(
        adjust: impl FnOnce(rollcall_access::Config, &TestProvider) -> rollcall_access::Config,
    ) -> Self {
        Self::start_behind(None, adjust).await
    }

    /// Like [`SignInEnv::start_with`], with the provider sending browsers back to `callback`
    /// (a reverse proxy's `/oauth2/callback`) instead of the access service's own.
    pub async fn start_behind(
        callback: Option<String>,
        adjust: impl FnOnce(rollcall_access::Config, &TestProvider) -> rollcall_access::Config,
    ) -> Self {
        Self::start_as(callback, adjust, false).await
    }

    /// Like [`SignInEnv::start_with`], with the access service of the installation (as
    /// `rollcall serve` builds it: sign-ins are recorded on the event stream) transmitting
    /// Shared Signals at its own address (receivers on loopback allowed).
    pub async fn start_transmitting(
        adjust: impl FnOnce(rollcall_access::Config, &TestProvider) -> rollcall_access::Config,
    ) -> Self {
        Self::start_as(None, adjust, true).await
    }

    async fn start_as(
        callback: Option<String>,
        adjust: impl FnOnce(rollcall_access::Config, &TestProvider) -> rollcall_access::Config,
        transmitting: bool,
    ) -> Self {
        let mut env = TestEnv::start().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let callback = callback.unwrap_or_else(|| {
            format!("http://{}/oauth2/callback", listener.local_addr().unwrap())
        });
        let provider = TestProvider::start(&callback).await;
        let oidc = rollcall_access::oidc::OidcConfig {
            issuer: Some(provider.issuer.clone()),
            client_id: Some(CLIENT_ID.into()),
            client_secret: Some(CLIENT_SECRET.to_owned().into()),
            redirect_url: Some(callback.clone()),
            tenant: env.tenant.clone(),
            allowed_redirects: vec!["wiki.test".into(), "eng.test".into()],
            ..Default::default()
        };
        let config = adjust(
            rollcall_access::Config {
                oidc,
                ..crate::access_config(&env.policy_file)
            },
            &provider,
        );
        let access = if transmitting {
            let mut config = config;
            config.ssf.public_url = Some(
                format!("http://{}", listener.local_addr().unwrap())
                    .parse()
                    .unwrap(),
            );
            config.ssf.allow_internal_endpoints = true;
            env.installation_access(config).await
        } else {
            rollcall_access::Access::new(config).unwrap()
        }
        .with_revoker(Arc::new(rollcall_scim_api::operator::SignOutRevoker(
            env.log.clone(),
            env.store.clone(),
        )));
        env.serve_access(listener, access).await;
        env.wait_for_access().await;
        Self {
            env,
            provider,
            callback,
        }
    }

    /// `/oauth2/start?rd=<rd>` of the access service.
    pub fn start_url(&self, rd: &str) -> String {
        format!(
            "{}/oauth2/start?rd={}",
            self.env.access_base,
            crate::encode(rd)
        )
    }

    /// Walks the browser from `/oauth2/start` through the provider's login (as `account`) to
    /// the redirect back to Rollcall; returns that callback URL, not yet visited.
    /// `tamper` may change the authorization URL before the browser goes there.
    pub async fn authorize(
        &self,
        browser: &mut Browser,
        rd: &str,
        account: &str,
        tamper: impl FnOnce(String) -> String,
    ) -> String {
        let start = browser.get(&self.start_url(rd)).await;
        assert_eq!(start.status, 302, "{}", start.body);
        let authorize = tamper(start.location().unwrap());
        assert!(authorize.starts_with(&self.provider.issuer), "{authorize}");
        let login = browser.follow(&authorize, &self.callback).await;
        assert_eq!(
            login.status, 200,
            "the provider's login page: {}",
            login.body
        );
        let action = format!(
            "{}{}",
            self.provider.issuer,
            login
                .body
                .split("action=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap()
        );
        let submitted = browser.post(&action, &[("login", account)]).await;
        let next = submitted.location().unwrap();
        let back = browser.follow(&next, &self.callback).await;
        let callback = back.location().unwrap_or_default();
        assert!(
            callback.starts_with(&self.callback),
            "the provider sends the browser back to Rollcall, not {} ({})",
            back.status,
            back.body
        );
        callback
    }

    /// A whole sign-in as `account`; returns the callback's answer.
    pub async fn sign_in(&self, browser: &mut Browser, rd: &str, account: &str) -> Page {
        let callback = self.authorize(browser, rd, account, |url| url).await;
        browser.get(&callback).await
    }
}
