//! A real browser end to end: headless Chromium (driven over WebDriver by chromedriver) asks
//! nginx for a protected page; nginx asks Rollcall's `/auth` (`auth_request`), sends the
//! unauthenticated browser to sign in, the browser signs in at the OpenID provider and sees the
//! page; then Entra's `PATCH active "False"` arrives at the SCIM API and the browser's next page
//! load is denied.
//!
//! Needs `chromium`, `chromium-driver` and `nginx` (scripts/test.sh installs them).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use futures::FutureExt;
use rollcall_it::signin::SignInEnv;
use rollcall_it::{eventually, POLICIES};
use serde_json::json;
use tokio::process::{Child, Command};

fn require(binary: &str) -> PathBuf {
    let path = PathBuf::from(binary);
    assert!(
        path.exists(),
        "{binary} is missing: scripts/test.sh installs chromium, chromium-driver and nginx"
    );
    path
}

async fn free_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// A process of the test's own, stopped on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

fn nginx_conf(dir: &Path, port: u16, access: &str) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    root {d}/site;
    location / {{
      auth_request /rollcall-auth;
      error_page 401 = @sign_in;
      auth_request_set $user $upstream_http_x_auth_request_user;
      add_header X-User $user;
      # A protected page is never served from the browser's cache: each load asks Rollcall.
      add_header Cache-Control "no-store" always;
      try_files /index.html =404;
    }}
    location = /rollcall-auth {{
      internal;
      proxy_pass {access}/auth;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URL $scheme://$http_host$request_uri;
    }}
    location /oauth2/ {{
      proxy_pass {access};
      proxy_set_header Host $http_host;
    }}
    location @sign_in {{
      return 302 /oauth2/start?rd=$scheme://$http_host$request_uri;
    }}
  }}
}}
"#
    )
}

#[tokio::test]
async fn a_browser_signs_in_through_nginx_and_is_denied_after_entra_disables_the_user() {
    let nginx = require("/usr/sbin/nginx");
    let chromium = require("/usr/bin/chromium");
    let chromedriver = require("/usr/bin/chromedriver");

    let port = free_port().await;
    let site = format!("http://localhost:{port}");
    let signin = SignInEnv::start_behind(Some(format!("{site}/oauth2/callback")), |c, _| c).await;
    let env = &signin.env;
    // The application nginx serves, for everyone of the tenant.
    std::fs::write(
        &env.policy_file,
        format!("{POLICIES}\n[[application]]\nname = \"intranet\"\ntenant = \"test\"\nhosts = [\"localhost\"]\nurl = \"{site}/\"\n[[application.policy]]\nname = \"everyone\"\naction = \"allow\"\ninclude = [{{ everyone = true }}]\n"),
    )
    .unwrap();
    env.access.reload_policies().await.unwrap();

    let oid = uuid::Uuid::new_v4().to_string();
    let user = env
        .scim()
        .create_user(&json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "kim@example.com", "externalId": oid, "active": true,
        }))
        .await;
    signin
        .provider
        .account(
            "kim",
            json!({"oid": oid, "preferred_username": "kim@example.com"}),
        )
        .await;

    let dir = std::env::temp_dir().join(format!("rollcall-nginx-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("site")).unwrap();
    std::fs::write(
        dir.join("site/index.html"),
        "<!doctype html><html><body><h1 id=\"protected\">Protected page</h1></body></html>",
    )
    .unwrap();
    std::fs::write(
        dir.join("nginx.conf"),
        nginx_conf(&dir, port, &env.access_base),
    )
    .unwrap();
    let _nginx = Process(
        Command::new(&nginx)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap(),
    );
    let driver_port = free_port().await;
    let _driver = Process(
        Command::new(&chromedriver)
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap(),
    );
    let driver = format!("http://127.0.0.1:{driver_port}");
    let probe = |url: String| async move { reqwest::get(url).await.is_ok() };
    eventually(
        "nginx and chromedriver listen",
        Duration::from_secs(20),
        || async {
            probe(format!("{site}/oauth2/sign_out")).await
                && probe(format!("{driver}/status")).await
        },
    )
    .await;

    let profile = dir.join("chromium-profile");
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-dev-shm-usage", "--disable-component-update", "--disable-sync",
                     "--no-first-run", format!("--user-data-dir={}", profile.display())],
        }),
    );
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver)
        .await
        .expect("chromedriver starts headless Chromium");

    let outcome = async {
        // No session: nginx sends the browser to sign in, and the provider asks who it is.
        browser.goto(&format!("{site}/")).await.unwrap();
        let login = browser
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Id("login"))
            .await
            .unwrap();
        assert!(browser
            .current_url()
            .await
            .unwrap()
            .as_str()
            .starts_with(&signin.provider.issuer));
        login.send_keys("kim").await.unwrap();
        browser
            .find(Locator::Id("submit"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        // Back through Rollcall's callback to the page first asked for.
        let heading = browser
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Id("protected"))
            .await
            .unwrap();
        assert_eq!(heading.text().await.unwrap(), "Protected page");
        assert_eq!(
            browser.current_url().await.unwrap().as_str(),
            format!("{site}/")
        );
        let cookie = browser.get_named_cookie("rollcall_session").await.unwrap();
        assert_eq!(
            (cookie.http_only(), cookie.secure()),
            (Some(true), Some(true))
        );

        // The app launcher on the access service (the cookie is the host's, whatever the port)
        // lists what kim may reach now: not `engineering` (kim is not an engineer).
        let launcher = format!("{}/", env.access_base.replace("127.0.0.1", "localhost"));
        browser.goto(&launcher).await.unwrap();
        let list = browser
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Id("applications"))
            .await
            .unwrap();
        let mut links = Vec::new();
        for link in list.find_all(Locator::Css("a")).await.unwrap() {
            links.push((
                link.text().await.unwrap(),
                link.attr("href").await.unwrap().unwrap_or_default(),
            ));
        }
        assert_eq!(
            links,
            [
                ("intranet".to_owned(), format!("{site}/")),
                ("wiki".to_owned(), "https://wiki.test/".to_owned())
            ]
        );
        // Its link leads to the application.
        list.find(Locator::LinkText("intranet"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        browser
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Id("protected"))
            .await
            .unwrap();

        // Entra disables the user.
        let disabled = env
            .scim()
            .patch(
                &format!("/Users/{user}"),
                &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                        "Operations": [{"op": "Replace", "path": "active", "value": "False"}]}),
            )
            .await;
        assert_eq!(disabled.status, 200);
        // The very next page load is denied.
        browser.goto(&format!("{site}/")).await.unwrap();
        let page = browser.source().await.unwrap();
        assert!(!page.contains("Protected page"), "{page}");
        assert!(page.contains("403 Forbidden"), "{page}");
        // And the launcher lists nothing.
        browser.goto(&launcher).await.unwrap();
        let page = browser.source().await.unwrap();
        assert!(
            page.contains("is deactivated") && !page.contains("intranet"),
            "{page}"
        );
    };
    let result = tokio::time::timeout(
        Duration::from_secs(90),
        std::panic::AssertUnwindSafe(outcome).catch_unwind(),
    )
    .await;
    // Close the browser (and its processes) before reporting.
    let _ = browser.close().await;
    let _ = reqwest::get(format!("{driver}/shutdown")).await;
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(panic) = result.expect("the browser test finishes within 90 s") {
        std::panic::resume_unwind(panic);
    }
}
