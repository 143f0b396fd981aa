//! What the reverse proxy says the original request was, read only from the headers that the
//! configured proxy sets itself (`ROLLCALL_TRUSTED_PROXY`). Every proxy passes the client's own
//! headers on to `/auth` as well, so a header the proxy does not overwrite is the client's
//! word: trusting it lets anyone name the host and path they are judged for.
//!
//! | setting | read | ignored |
//! | --- | --- | --- |
//! | `nginx` | `X-Original-URL`, `X-Original-Method` | `X-Forwarded-*`, `Host` |
//! | `traefik`, `caddy` | `X-Forwarded-Proto`, `-Host`, `-Uri`, `-Method` | `X-Original-*`, `Host` |
//! | `envoy` | `GET /auth/<path>` (`path_prefix: /auth`), `Host`, `X-Forwarded-Proto` | `X-Original-*` |
//!
//! Refused with `400`: a header that is read but missing, sent twice with different values,
//! holding a list (`X-Forwarded-Host: a, b`) or not what it should be; a host or path that
//! [`crate::target`] refuses; with `envoy`, an `X-Forwarded-Host` or `-Uri` that disagrees with
//! the `Host` and path; the Envoy route under any other setting, and `/auth` without a path
//! suffix is `/` under `envoy`. Without the setting, every `/auth` request is refused (`500`):
//! Rollcall cannot know which headers the proxy in front of it controls.

use axum::http::HeaderMap;

use crate::target::{self, Target, TargetError};

/// The reverse proxy in front of `/auth`, which decides the headers that are trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TrustedProxy {
    /// nginx `auth_request`: `X-Original-URL` (and `X-Original-Method`), set by
    /// `proxy_set_header`.
    Nginx,
    /// Traefik `forwardAuth`: `X-Forwarded-Proto`, `-Host`, `-Uri`, `-Method`.
    Traefik,
    /// Caddy `forward_auth`: `X-Forwarded-Proto`, `-Host`, `-Uri`, `-Method`.
    Caddy,
    /// Envoy `ext_authz` (HTTP service, `path_prefix: /auth`): the path after `/auth` and `Host`.
    Envoy,
}

impl TrustedProxy {
    /// The setting's value.
    pub fn name(self) -> &'static str {
        match self {
            TrustedProxy::Nginx => "nginx",
            TrustedProxy::Traefik => "traefik",
            TrustedProxy::Caddy => "caddy",
            TrustedProxy::Envoy => "envoy",
        }
    }

    /// Whether the proxy returns `/auth`'s answer to the browser as it is (so that a `302` to
    /// sign in reaches it); nginx only understands 2xx, 401 and 403, and Envoy's route carries
    /// no query to return to.
    pub fn passes_redirects(self) -> bool {
        matches!(self, TrustedProxy::Traefik | TrustedProxy::Caddy)
    }
}

/// Why the original request could not be known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// `ROLLCALL_TRUSTED_PROXY` is not set.
    #[error("ROLLCALL_TRUSTED_PROXY is not set: name the reverse proxy in front of /auth (nginx, traefik, caddy or envoy) so that only the headers it sets are trusted")]
    NotConfigured,
    /// A header the proxy must send is missing.
    #[error("{header} is missing; with ROLLCALL_TRUSTED_PROXY={proxy} the proxy must send it")]
    Missing {
        /// The header.
        header: &'static str,
        /// The setting.
        proxy: &'static str,
    },
    /// A header was sent more than once with different values, or holds a list.
    #[error("{header} holds more than one value")]
    Conflicting {
        /// The header.
        header: &'static str,
    },
    /// Two headers name different requests.
    #[error("{header} disagrees with {other}")]
    Disagreeing {
        /// The header.
        header: &'static str,
        /// The header (or route) it disagrees with.
        other: &'static str,
    },
    /// A header is not what it should be.
    #[error("{header} is not valid: {why}")]
    Invalid {
        /// The header.
        header: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// The host or path is refused.
    #[error("{header}: {error}")]
    Target {
        /// The header that carried it.
        header: &'static str,
        /// Why it is refused.
        error: TargetError,
    },
    /// The Envoy route under another setting.
    #[error("/auth/<path> is the route for ROLLCALL_TRUSTED_PROXY=envoy; {proxy} asks GET /auth")]
    EnvoyRoute {
        /// The setting.
        proxy: &'static str,
    },
}

impl ProxyError {
    /// Whether the fault is the operator's (the service is not configured), not the request's.
    pub fn is_configuration(&self) -> bool {
        matches!(self, ProxyError::NotConfigured)
    }
}

/// The original request, as the trusted proxy reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The host (and port) as the proxy sent it, validated.
    pub authority: String,
    /// The path and query as the proxy sent them, validated (for sending the browser back).
    pub uri: String,
    /// The normalized host and path the decision is about.
    pub target: Target,
    /// The method, when the proxy says it.
    pub method: Option<String>,
}

impl Original {
    /// The original URL, to come back to after sign-in.
    pub fn url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.authority, self.uri)
    }
}

/// The one value of `name` (looked up without case), if sent: refused when sent twice with
/// different values, or when it is not visible ASCII. Empty values count as not sent.
fn single<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, ProxyError> {
    let mut found: Option<&str> = None;
    for value in headers.get_all(name) {
        let value = value.to_str().map_err(|_| ProxyError::Invalid {
            header: name,
            why: "not visible ASCII",
        })?;
        if value.is_empty() {
            continue;
        }
        match found {
            Some(previous) if previous != value => {
                return Err(ProxyError::Conflicting { header: name })
            }
            _ => found = Some(value),
        }
    }
    Ok(found)
}

/// The one value of a header that may not hold a list (`X-Forwarded-Host: a, b` is two hosts).
fn single_item<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> Result<Option<&'a str>, ProxyError> {
    let value = single(headers, name)?;
    if value.is_some_and(|v| v.contains(',')) {
        return Err(ProxyError::Conflicting { header: name });
    }
    Ok(value)
}

fn scheme(value: &str, header: &'static str) -> Result<&'static str, ProxyError> {
    if value.eq_ignore_ascii_case("https") {
        Ok("https")
    } else if value.eq_ignore_ascii_case("http") {
        Ok("http")
    } else {
        Err(ProxyError::Invalid {
            header,
            why: "the scheme is not http or https",
        })
    }
}

fn method(headers: &HeaderMap, name: &'static str) -> Result<Option<String>, ProxyError> {
    let Some(value) = single_item(headers, name)? else {
        return Ok(None);
    };
    // RFC 9110 §9.1: a method is a token.
    let token = value.len() <= 32
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(ProxyError::Invalid {
            header: name,
            why: "not an HTTP method",
        });
    }
    Ok(Some(value.to_owned()))
}

fn target(host: &str, path: &str, header: &'static str) -> Result<Target, ProxyError> {
    Target::new(host, target::without_query(path))
        .map_err(|error| ProxyError::Target { header, error })
}

/// nginx: `X-Original-URL: https://host[:port]/path?query`.
fn nginx(headers: &HeaderMap) -> Result<Original, ProxyError> {
    const HEADER: &str = "X-Original-URL";
    let url = single(headers, "X-Original-URL")?.ok_or(ProxyError::Missing {
        header: HEADER,
        proxy: "nginx",
    })?;
    let (scheme_part, rest) = url.split_once("://").ok_or(ProxyError::Invalid {
        header: HEADER,
        why: "not an absolute http(s) URL",
    })?;
    let scheme = scheme(scheme_part, HEADER)?;
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, uri) = rest.split_at(split);
    if authority.contains('@') {
        return Err(ProxyError::Invalid {
            header: HEADER,
            why: "the URL holds user information",
        });
    }
    let uri = match uri.chars().next() {
        None => "/".to_owned(),
        Some('/') => uri.to_owned(),
        Some(_) => format!("/{uri}"),
    };
    Ok(Original {
        scheme,
        authority: authority.to_owned(),
        target: target(authority, &uri, HEADER)?,
        uri,
        method: method(headers, "X-Original-Method")?,
    })
}

/// Traefik and Caddy: `X-Forwarded-Proto`, `-Host`, `-Uri` (default `/`), `-Method`.
fn forwarded(headers: &HeaderMap, proxy: TrustedProxy) -> Result<Original, ProxyError> {
    let host = single_item(headers, "X-Forwarded-Host")?.ok_or(ProxyError::Missing {
        header: "X-Forwarded-Host",
        proxy: proxy.name(),
    })?;
    let scheme = match single_item(headers, "X-Forwarded-Proto")? {
        Some(proto) => scheme(proto, "X-Forwarded-Proto")?,
        None => "https",
    };
    let uri = single(headers, "X-Forwarded-Uri")?.unwrap_or("/");
    if !uri.starts_with('/') {
        return Err(ProxyError::Target {
            header: "X-Forwarded-Uri",
            error: TargetError::NotAbsolutePath,
        });
    }
    let target = Target::new(host, target::without_query(uri)).map_err(|error| {
        let header = match error {
            TargetError::EmptyHost | TargetError::InvalidHost | TargetError::InvalidPort => {
                "X-Forwarded-Host"
            }
            _ => "X-Forwarded-Uri",
        };
        ProxyError::Target { header, error }
    })?;
    Ok(Original {
        scheme,
        authority: host.to_owned(),
        uri: uri.to_owned(),
        target,
        method: method(headers, "X-Forwarded-Method")?,
    })
}

/// Envoy: the path after `/auth` (raw, as sent) and `Host`; `X-Forwarded-Host` and `-Uri`, when
/// present, must name the same request.
fn envoy(headers: &HeaderMap, path: &str) -> Result<Original, ProxyError> {
    let host = single_item(headers, "Host")?.ok_or(ProxyError::Missing {
        header: "Host",
        proxy: "envoy",
    })?;
    let target = target(host, path, "the path after /auth")?;
    if let Some(forwarded) = single_item(headers, "X-Forwarded-Host")? {
        let same = target::normalize_host(forwarded).is_ok_and(|h| h == target.host());
        if !same {
            return Err(ProxyError::Disagreeing {
                header: "X-Forwarded-Host",
                other: "Host",
            });
        }
    }
    if let Some(forwarded) = single(headers, "X-Forwarded-Uri")? {
        let same = target::normalize_path(target::without_query(forwarded))
            .is_ok_and(|p| p == target.path());
        if !same {
            return Err(ProxyError::Disagreeing {
                header: "X-Forwarded-Uri",
                other: "the path after /auth",
            });
        }
    }
    let scheme = match single_item(headers, "X-Forwarded-Proto")? {
        Some(proto) => scheme(proto, "X-Forwarded-Proto")?,
        None => "https",
    };
    Ok(Original {
        scheme,
        authority: host.to_owned(),
        uri: path.to_owned(),
        target,
        method: None,
    })
}

/// The original request. `envoy_path` is the raw path after `/auth` when Envoy's route was
/// asked (`/auth/<path>`), with its leading `/`.
pub fn original(
    proxy: Option<TrustedProxy>,
    headers: &HeaderMap,
    envoy_path: Option<&str>,
) -> Result<Original, ProxyError> {
    let proxy = proxy.ok_or(ProxyError::NotConfigured)?;
    match (proxy, envoy_path) {
        (TrustedProxy::Envoy, path) => envoy(headers, path.unwrap_or("/")),
        (proxy, Some(_)) => Err(ProxyError::EnvoyRoute {
            proxy: proxy.name(),
        }),
        (TrustedProxy::Nginx, None) => nginx(headers),
        (proxy @ (TrustedProxy::Traefik | TrustedProxy::Caddy), None) => forwarded(headers, proxy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn ask(proxy: TrustedProxy, pairs: &[(&'static str, &str)]) -> Result<Original, ProxyError> {
        original(Some(proxy), &headers(pairs), None)
    }

    fn host_and_path(result: Result<Original, ProxyError>) -> (String, String) {
        let original = result.unwrap();
        (
            original.target.host().to_owned(),
            original.target.path().to_owned(),
        )
    }

    const TRAEFIK_FROM_CLIENT: [(&str, &str); 4] = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "eng.test"),
        ("x-forwarded-uri", "/admin?x=1"),
        // The client's own header, passed through by Traefik.
        ("x-original-url", "https://public.test/"),
    ];

    #[test]
    fn behind_traefik_or_caddy_a_client_x_original_url_is_ignored() {
        for proxy in [TrustedProxy::Traefik, TrustedProxy::Caddy] {
            let original = ask(proxy, &TRAEFIK_FROM_CLIENT).unwrap();
            assert_eq!(
                (original.target.host(), original.target.path()),
                ("eng.test", "/admin")
            );
            assert_eq!(original.url(), "https://eng.test/admin?x=1");
        }
    }

    #[test]
    fn behind_nginx_client_x_forwarded_headers_are_ignored() {
        let original = ask(
            TrustedProxy::Nginx,
            &[
                ("x-original-url", "https://Eng.Test:8443/a/../admin?q=/x"),
                ("x-original-method", "POST"),
                ("x-forwarded-host", "public.test"),
                ("x-forwarded-uri", "/"),
                ("host", "public.test"),
            ],
        )
        .unwrap();
        assert_eq!(
            (original.target.host(), original.target.path()),
            ("eng.test", "/admin")
        );
        assert_eq!(original.method.as_deref(), Some("POST"));
        assert_eq!(
            host_and_path(ask(
                TrustedProxy::Nginx,
                &[("x-original-url", "http://eng.test")]
            )),
            ("eng.test".into(), "/".into())
        );
        assert_eq!(
            host_and_path(ask(
                TrustedProxy::Nginx,
                &[("x-original-url", "http://eng.test?x=1")]
            )),
            ("eng.test".into(), "/".into())
        );
    }

    #[test]
    fn without_the_setting_nothing_is_trusted() {
        assert_eq!(
            original(None, &headers(&TRAEFIK_FROM_CLIENT), None),
            Err(ProxyError::NotConfigured)
        );
        assert!(ProxyError::NotConfigured.is_configuration());
    }

    #[test]
    fn missing_duplicated_and_listed_headers_are_refused() {
        assert!(matches!(
            ask(TrustedProxy::Nginx, &[("x-forwarded-host", "eng.test")]),
            Err(ProxyError::Missing {
                header: "X-Original-URL",
                ..
            })
        ));
        assert!(matches!(
            ask(
                TrustedProxy::Traefik,
                &[("x-original-url", "https://eng.test/")]
            ),
            Err(ProxyError::Missing {
                header: "X-Forwarded-Host",
                ..
            })
        ));
        for (proxy, pairs) in [
            (
                TrustedProxy::Nginx,
                vec![
                    ("x-original-url", "https://eng.test/"),
                    ("x-original-url", "https://public.test/"),
                ],
            ),
            (
                TrustedProxy::Traefik,
                vec![
                    ("x-forwarded-host", "eng.test"),
                    ("x-forwarded-host", "public.test"),
                ],
            ),
            (
                TrustedProxy::Traefik,
                vec![("x-forwarded-host", "public.test, eng.test")],
            ),
            (
                TrustedProxy::Caddy,
                vec![
                    ("x-forwarded-host", "eng.test"),
                    ("x-forwarded-uri", "/"),
                    ("x-forwarded-uri", "/admin"),
                ],
            ),
            (
                TrustedProxy::Traefik,
                vec![
                    ("x-forwarded-host", "eng.test"),
                    ("x-forwarded-proto", "https, http"),
                ],
            ),
        ] {
            assert!(
                matches!(ask(proxy, &pairs), Err(ProxyError::Conflicting { .. })),
                "{pairs:?}"
            );
        }
        let listed = ask(
            TrustedProxy::Traefik,
            &[("x-forwarded-host", "public.test, eng.test")],
        )
        .unwrap_err();
        assert_eq!(
            listed.to_string(),
            "X-Forwarded-Host holds more than one value"
        );
        // The same value twice is one value.
        assert!(ask(
            TrustedProxy::Traefik,
            &[
                ("x-forwarded-host", "eng.test"),
                ("x-forwarded-host", "eng.test")
            ]
        )
        .is_ok());
    }

    #[test]
    fn malformed_urls_hosts_schemes_and_methods_are_refused() {
        for url in [
            "/admin",
            "eng.test/admin",
            "ftp://eng.test/",
            "https://user@eng.test/",
            "https://eng.test%2F@public.test/",
            "https:///admin",
            "https://eng.test/a%2Fb",
            "https://eng.test/public/..\\admin",
        ] {
            assert!(
                ask(TrustedProxy::Nginx, &[("x-original-url", url)]).is_err(),
                "{url}"
            );
        }
        for pairs in [
            vec![
                ("x-forwarded-host", "eng.test"),
                ("x-forwarded-proto", "gopher"),
            ],
            vec![("x-forwarded-host", "eng.test/x")],
            vec![
                ("x-forwarded-host", "eng.test"),
                ("x-forwarded-uri", "admin"),
            ],
            vec![
                ("x-forwarded-host", "eng.test"),
                ("x-forwarded-uri", "/%61%2Fb"),
            ],
            vec![
                ("x-forwarded-host", "eng.test"),
                ("x-forwarded-method", "GET /x"),
            ],
        ] {
            assert!(ask(TrustedProxy::Traefik, &pairs).is_err(), "{pairs:?}");
        }
        let mut invalid = HeaderMap::new();
        invalid.insert(
            "x-forwarded-host",
            HeaderValue::from_bytes(b"eng.test\xff").unwrap(),
        );
        assert!(matches!(
            original(Some(TrustedProxy::Traefik), &invalid, None),
            Err(ProxyError::Invalid { .. })
        ));
    }

    #[test]
    fn envoy_reads_the_route_and_host_and_refuses_disagreeing_forwarded_headers() {
        let envoy = |pairs: &[(&'static str, &str)], path: &str| {
            original(Some(TrustedProxy::Envoy), &headers(pairs), Some(path))
        };
        assert_eq!(
            host_and_path(envoy(&[("host", "eng.test")], "/reports/%2e%2e/q3")),
            ("eng.test".into(), "/q3".into())
        );
        assert_eq!(
            host_and_path(original(
                Some(TrustedProxy::Envoy),
                &headers(&[
                    ("host", "eng.test"),
                    ("x-original-url", "https://public.test/")
                ]),
                None
            )),
            ("eng.test".into(), "/".into())
        );
        assert!(envoy(
            &[("host", "eng.test"), ("x-forwarded-host", "ENG.test:443")],
            "/x"
        )
        .is_ok());
        assert!(matches!(
            envoy(
                &[("host", "eng.test"), ("x-forwarded-host", "public.test")],
                "/x"
            ),
            Err(ProxyError::Disagreeing { .. })
        ));
        assert!(matches!(
            envoy(
                &[("host", "eng.test"), ("x-forwarded-uri", "/public")],
                "/admin"
            ),
            Err(ProxyError::Disagreeing { .. })
        ));
        assert!(matches!(
            envoy(&[], "/admin"),
            Err(ProxyError::Missing { header: "Host", .. })
        ));
        assert!(matches!(
            original(
                Some(TrustedProxy::Traefik),
                &headers(&[("x-forwarded-host", "eng.test")]),
                Some("/admin")
            ),
            Err(ProxyError::EnvoyRoute { .. })
        ));
    }
}
