//! Applications and their policies, declared in a TOML file (Cloudflare Access style):
//!
//! ```toml
//! [[application]]
//! name = "finance"
//! tenant = "default"
//! hosts = ["finance.example.com"]
//! paths = ["/"]                          # path prefixes, default "/"
//!
//! [[application.policy]]
//! name = "finance admins"
//! action = "allow"                       # allow | deny | bypass
//! include = [{ group = "Finance-Admins" }, { email_domain = "example.com" }]   # any
//! require = [{ group = "MFA-Enrolled" }]                                        # all
//! exclude = [{ user_name = "contractor@example.com" }]                          # none
//! ```
//!
//! Rules: `group` (id, externalId or displayName), `user_name`, `email`, `email_domain`,
//! `everyone = true`. Policies are tried in order; the first whose rules match decides. A
//! `bypass` policy lets a request through without a session and may only include everyone.
//! A request no application matches, or no policy allows, is denied.
//!
//! Matching: the request's host and path arrive normalized ([`crate::target`]). Hosts compare
//! without case (`*.example.com` matches any subdomain, not `example.com` itself); path
//! prefixes compare without ASCII case, a prefix matches itself with or without a trailing
//! slash and every path below it, and the longest matching prefix over all applications of
//! the host wins, then an exact host over a wildcard. No two applications may serve one host
//! with one prefix, so the order of applications never decides. A prefix in the file must be
//! in normal form (`/admin`, not `/x/../admin`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use rollcall_domain::application::Action;
use rollcall_domain::application::{ApplicationSpec, PolicySpec, Routes};
pub use rollcall_domain::policy::{Policy, Rule};

/// An application as the policy file declares it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApplication {
    name: String,
    tenant: String,
    hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(default, rename = "policy")]
    policies: Vec<PolicySpec>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default, rename = "application")]
    applications: Vec<FileApplication>,
}

/// Applications as configured, with their tenant (what a policy file declares, and what the
/// event stream holds).
pub type Declared = Vec<(String, ApplicationSpec)>;

/// An application: hosts and path prefixes, and its policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    /// Its name.
    pub name: String,
    /// The tenant whose users and groups its policies name.
    pub tenant: String,
    /// Hosts, lowercase; `*.example.com` matches any subdomain.
    pub hosts: Vec<String>,
    /// Path prefixes, in normal form and lower case.
    pub paths: Vec<String>,
    /// Policies, in order.
    pub policies: Vec<Policy>,
    /// The app launcher's link (none: served on wildcard hosts only, without a `url`).
    pub url: Option<String>,
}

/// Every application.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policies {
    /// The applications.
    pub applications: Vec<Application>,
    /// The version: the stream sequence of the last application event these policies include
    /// (0 for policies read from a file without the stream, or before any was configured).
    pub version: u64,
}

/// Why a policy file was refused, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy file: {0}")]
pub struct PolicyError(pub String);

impl Policies {
    /// Parses and checks a policy file.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        Self::compile(&Self::read_file(text)?, 0)
    }

    /// Reads and checks a policy file: its applications with their tenants, in its order.
    pub fn read_file(text: &str) -> Result<Declared, PolicyError> {
        let spec: FileSpec = toml::from_str(text).map_err(|e| PolicyError(e.to_string()))?;
        let declared: Declared = spec
            .applications
            .into_iter()
            .map(|app| {
                let spec = ApplicationSpec {
                    name: app.name,
                    routes: Routes {
                        hosts: app.hosts,
                        paths: app.paths,
                        url: app.url,
                    },
                    policies: app.policies,
                };
                (app.tenant, spec)
            })
            .collect();
        if let Err(error) = Self::compile(&declared, 0) {
            // Said at the line of the first application that does not check (the others
            // before it do).
            let bad = (0..declared.len())
                .find(|&i| Self::compile(&declared[..=i], 0).is_err())
                .unwrap_or(0);
            let line = text
                .lines()
                .enumerate()
                .filter(|(_, line)| line.replace(' ', "").starts_with("[[application]]"))
                .nth(bad)
                .map_or(0, |(number, _)| number + 1);
            return Err(PolicyError(format!("line {line}: {}", error.0)));
        }
        Ok(declared)
    }

    /// The policy file that declares `declared` ([`Policies::read_file`] reads it back).
    pub fn write_file(declared: &[(String, ApplicationSpec)]) -> Result<String, PolicyError> {
        let file = FileSpec {
            applications: declared
                .iter()
                .map(|(tenant, spec)| FileApplication {
                    name: spec.name.clone(),
                    tenant: tenant.clone(),
                    hosts: spec.routes.hosts.clone(),
                    paths: spec.routes.paths.clone(),
                    url: spec.routes.url.clone(),
                    policies: spec.policies.clone(),
                })
                .collect(),
        };
        toml::to_string(&file).map_err(|e| PolicyError(format!("writing TOML: {e}")))
    }

    /// Checks applications as configured and compiles them into policies of `version`.
    pub fn compile(
        declared: &[(String, ApplicationSpec)],
        version: u64,
    ) -> Result<Self, PolicyError> {
        let (policies, mut refused) = Self::compile_each(declared, version);
        match refused.is_empty() {
            true => Ok(policies),
            false => Err(refused.swap_remove(0)),
        }
    }

    /// Compiles every application that checks and does not clash with an earlier one (the
    /// same name in its tenant, or a host and path prefix another one serves); says why each
    /// other one was left out.
    pub fn compile_each(
        declared: &[(String, ApplicationSpec)],
        version: u64,
    ) -> (Self, Vec<PolicyError>) {
        let mut applications: Vec<Application> = Vec::new();
        let mut refused = Vec::new();
        let mut names = HashMap::new();
        let mut routes: HashMap<(String, String), String> = HashMap::new();
        for (index, (tenant, app)) in declared.iter().enumerate() {
            let at = format!("application {:?} (#{})", app.name, index + 1);
            if names.contains_key(&(tenant, &app.name)) {
                refused.push(PolicyError(format!(
                    "{at}: the name is used twice in tenant {tenant:?}"
                )));
                continue;
            }
            let compiled = match compile_one(tenant, app, &at) {
                Ok(compiled) => compiled,
                Err(error) => {
                    refused.push(error);
                    continue;
                }
            };
            let served: Vec<(String, String)> = compiled
                .hosts
                .iter()
                .flat_map(|host| {
                    compiled
                        .paths
                        .iter()
                        .map(|path| (host.clone(), path.trim_end_matches('/').to_owned()))
                })
                .collect();
            if let Some(((host, path), other)) = served
                .iter()
                .find_map(|route| routes.get(route).map(|other| (route, other)))
            {
                let path = if path.is_empty() { "/" } else { path };
                refused.push(PolicyError(format!(
                    "{at}: host {host:?} with path {path:?} is served by application {other:?} already"
                )));
                continue;
            }
            for route in served {
                routes.insert(route, app.name.clone());
            }
            names.insert((tenant, &app.name), ());
            applications.push(compiled);
        }
        let policies = Self {
            applications,
            version,
        };
        (policies, refused)
    }

    /// The application serving `host` and `path` (a normalized path, see [`crate::target`]):
    /// the longest matching path prefix wins, then an exact host over a wildcard (a longer
    /// wildcard over a shorter one). Hosts and path prefixes are compared without
    /// ASCII case; a prefix matches itself with or without a trailing slash and every path
    /// below it (`/admin` and `/admin/` both match `/admin`, `/admin/`, `/Admin/x`, never
    /// `/administrator`).
    pub fn application(&self, host: &str, path: &str) -> Option<&Application> {
        let host = host
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let path = path.to_ascii_lowercase();
        self.applications
            .iter()
            .filter_map(|app| {
                // An exact host is more specific than any wildcard, a longer wildcard more
                // than a shorter one.
                let host_rank = app
                    .hosts
                    .iter()
                    .filter(|pattern| host_matches(pattern, &host))
                    .map(|pattern| match pattern.starts_with("*.") {
                        true => pattern.len(),
                        false => usize::MAX,
                    })
                    .max()?;
                let longest = app
                    .paths
                    .iter()
                    .map(|prefix| prefix.trim_end_matches('/'))
                    .filter(|prefix| path_matches(prefix, &path))
                    .map(str::len)
                    .max()?;
                Some(((longest, host_rank), app))
            })
            // No two applications serve one host pattern and prefix (`compile_each`), so the
            // most specific is one application whatever their order.
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, app)| app)
    }
}

/// Checks and compiles one application (`at` says which, in errors).
fn compile_one(tenant: &str, app: &ApplicationSpec, at: &str) -> Result<Application, PolicyError> {
    rollcall_eventlog::namespace::check_name(tenant)
        .map_err(|e| PolicyError(format!("{at}: tenant {e}")))?;
    // Names and rules go into events (PostgreSQL stores no NUL), logs, pages and headers (a
    // line break could forge one): no control character anywhere.
    if let Some(bad) = control_character(&serde_json::to_value(app).unwrap_or_default()) {
        return Err(PolicyError(format!(
            "{at}: {bad:?} holds a control character"
        )));
    }
    if app.routes.hosts.is_empty() {
        return Err(PolicyError(format!("{at}: hosts is empty")));
    }
    let paths = if app.routes.paths.is_empty() {
        vec!["/".to_owned()]
    } else {
        app.routes.paths.clone()
    };
    if let Some(bad) = paths.iter().find(|p| !p.starts_with('/')) {
        return Err(PolicyError(format!("{at}: path {bad:?} must start with /")));
    }
    // Hosts as requests are matched: normalized (no port, no trailing dot, lower case); a
    // host that is not would never match, and the launcher would link to it.
    for host in &app.routes.hosts {
        let name = host.strip_prefix("*.").unwrap_or(host);
        match crate::target::normalize_host(name) {
            // Upper case is accepted: hosts are compared in lower case.
            Ok(normal) if normal == name.to_ascii_lowercase() => {}
            Ok(normal) => {
                return Err(PolicyError(format!(
                    "{at}: host {host:?} is not in normal form; write {:?}",
                    host.replace(name, &normal)
                )))
            }
            Err(error) => return Err(PolicyError(format!("{at}: host {host:?}: {error}"))),
        }
    }
    for path in &paths {
        match crate::target::normalize_path(path) {
            Ok(normal) if normal == *path => {}
            Ok(normal) => {
                return Err(PolicyError(format!(
                    "{at}: path {path:?} is not in normal form; write {normal:?}"
                )))
            }
            Err(error) => return Err(PolicyError(format!("{at}: path {path:?}: {error}"))),
        }
    }
    let url = match &app.routes.url {
        Some(url) => match url::Url::parse(url) {
            Ok(parsed) if matches!(parsed.scheme(), "https" | "http") => {
                Some(parsed.as_str().to_owned())
            }
            _ => {
                return Err(PolicyError(format!(
                    "{at}: url {url:?} is not an http(s) URL"
                )))
            }
        },
        None => app
            .routes
            .hosts
            .iter()
            .find(|host| !host.starts_with("*."))
            .map(|host| format!("https://{}{}", host.to_ascii_lowercase(), paths[0])),
    };
    // Prefixes are compared without ASCII case: see `Policies::application`.
    let paths = paths.iter().map(|p| p.to_ascii_lowercase()).collect();
    let policies = Policy::compile_all(&app.policies, at).map_err(PolicyError)?;
    let hosts = app
        .routes
        .hosts
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    Ok(Application {
        name: app.name.clone(),
        tenant: tenant.to_owned(),
        url,
        hosts,
        paths,
        policies,
    })
}

/// The first string in `value` that holds a control character (Unicode category Cc).
fn control_character(value: &serde_json::Value) -> Option<&str> {
    match value {
        serde_json::Value::String(text) => text.chars().any(char::is_control).then_some(text),
        serde_json::Value::Array(values) => values.iter().find_map(control_character),
        serde_json::Value::Object(fields) => fields.values().find_map(control_character),
        _ => None,
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(domain) => {
            host.len() > domain.len() + 1
                && host.ends_with(domain)
                && host[..host.len() - domain.len()].ends_with('.')
        }
        None => pattern == host,
    }
}

/// Whether `path` is `prefix` (given without its trailing slash; `""` is the root) or below it.
fn path_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::Directory;
    use rollcall_eventlog::access::{group_key, user_key, GroupAccess, UserAccess, USER_SCHEMA};
    use uuid::Uuid;

    const FILE: &str = r#"
        [[application]]
        name = "finance"
        tenant = "default"
        hosts = ["finance.example.com"]
        paths = ["/", "/admin"]
        [[application.policy]]
        name = "contractors out"
        action = "deny"
        include = [{ email_domain = "contractor.example" }]
        [[application.policy]]
        name = "finance admins"
        action = "allow"
        include = [{ group = "Finance-Admins" }]
        require = [{ email_domain = "example.com" }]

        [[application]]
        name = "status"
        tenant = "default"
        hosts = ["*.example.com"]
        paths = ["/health"]
        [[application.policy]]
        name = "public"
        action = "bypass"
        include = [{ everyone = true }]
    "#;

    /// A directory holding `groups` and one user (`ada@example.com`) with `emails`, in them.
    fn user(groups: &[GroupAccess], emails: &[&str], member_of: &[Uuid]) -> (Directory, Uuid) {
        let user = UserAccess {
            schema: USER_SCHEMA.into(),
            tenant: "default".into(),
            id: Uuid::now_v7(),
            user_name: "ada@example.com".into(),
            external_id: None,
            emails: emails.iter().map(|e| e.to_string()).collect(),
            active: true,
            not_before: None,
            revoked_sessions: vec![],
            groups: member_of.to_vec(),
            sequence: 1,
            withheld: None,
        };
        let mut directory = Directory::default();
        for group in groups {
            let value = serde_json::to_vec(group).unwrap();
            directory
                .apply(&group_key(&group.tenant, &group.id), Some(&value))
                .unwrap();
        }
        let value = serde_json::to_vec(&user).unwrap();
        directory
            .apply(&user_key("default", &user.id), Some(&value))
            .unwrap();
        (directory, user.id)
    }

    fn matches(policy: &Policy, (directory, id): &(Directory, Uuid)) -> bool {
        policy.matches(&directory.user("default", id).unwrap())
    }

    fn rule_matches(rule: Rule, (directory, id): &(Directory, Uuid)) -> bool {
        rule.matches(&directory.user("default", id).unwrap())
    }

    #[test]
    fn applications_match_by_host_and_longest_path_prefix() {
        let policies = Policies::parse(FILE).unwrap();
        assert_eq!(
            policies
                .application("Finance.Example.com:443", "/reports")
                .unwrap()
                .name,
            "finance"
        );
        assert_eq!(
            policies
                .application("finance.example.com", "/health/live")
                .unwrap()
                .name,
            "status"
        );
        assert_eq!(
            policies
                .application("api.example.com", "/health")
                .unwrap()
                .name,
            "status"
        );
        assert!(policies.application("example.com", "/health").is_none());
        assert!(policies.application("other.org", "/").is_none());
        assert!(policies
            .application("api.example.com", "/healthz")
            .is_none());
    }

    #[test]
    fn groups_match_by_display_name_external_id_or_id_and_require_and_exclude_apply() {
        let policies = Policies::parse(FILE).unwrap();
        let finance = &policies.applications[0];
        let gid = Uuid::now_v7();
        let groups = [GroupAccess {
            schema: String::new(),
            tenant: "default".into(),
            id: gid,
            display_name: "finance-admins".into(),
            external_id: Some("0db508eb".into()),
            sequence: 1,
        }];
        let admin = user(&groups, &["ada@example.com"], &[gid]);
        assert!(matches(&finance.policies[1], &admin));
        assert!(
            !matches(
                &finance.policies[1],
                &user(&groups, &["ada@example.com"], &[])
            ),
            "not in the group"
        );
        assert!(
            !matches(
                &finance.policies[1],
                &user(&groups, &["ada@other.org"], &[gid])
            ),
            "require fails"
        );
        assert!(rule_matches(Rule::Group("0DB508EB".into()), &admin));
        assert!(rule_matches(Rule::Group(gid.to_string()), &admin));
        assert!(rule_matches(
            Rule::Group(gid.to_string().to_uppercase()),
            &admin
        ));
        assert!(
            !rule_matches(
                Rule::Group("finance-admins".into()),
                &user(&[], &[], &[gid])
            ),
            "a group that is not held matches by id only"
        );
        assert!(matches(
            &finance.policies[0],
            &user(&groups, &["x@contractor.example"], &[])
        ));
    }

    const PROTECTED_ADMIN: &str = r#"
        [[application]]
        name = "site"
        tenant = "default"
        hosts = ["site.example.com"]
        [[application.policy]]
        name = "everyone"
        action = "allow"
        include = [{ everyone = true }]

        [[application]]
        name = "admin"
        tenant = "default"
        hosts = ["site.example.com"]
        paths = ["/Admin/"]
        [[application.policy]]
        name = "admins"
        action = "allow"
        include = [{ group = "Admins" }]
    "#;

    #[test]
    fn no_spelling_of_a_protected_prefix_falls_through_to_a_broader_rule() {
        let policies = Policies::parse(PROTECTED_ADMIN).unwrap();
        for variant in [
            "/admin",
            "/admin/",
            "/ADMIN",
            "/aDmIn/users",
            "/%61dmin",
            "/%41DMIN/x",
            "/public/../admin",
            "/public/%2e%2e/admin",
            "//admin",
            "/./admin//settings",
        ] {
            let path = crate::target::normalize_path(variant).unwrap();
            let app = policies.application("site.example.com", &path).unwrap();
            assert_eq!(app.name, "admin", "{variant} ({path})");
        }
        for elsewhere in ["/", "/administrator", "/public/admin", "/admins"] {
            let app = policies.application("site.example.com", elsewhere).unwrap();
            assert_eq!(app.name, "site", "{elsewhere}");
        }
    }

    #[test]
    fn prefixes_not_in_normal_form_are_refused_with_the_normal_form() {
        let file = |path: &str| {
            format!("[[application]]\nname = \"a\"\ntenant = \"t\"\nhosts = [\"h\"]\npaths = [{path:?}]\n[[application.policy]]\nname = \"p\"\naction = \"allow\"\ninclude = [{{ everyone = true }}]\n")
        };
        assert!(Policies::parse(&file("/admin/")).is_ok());
        let error = Policies::parse(&file("/x/../admin"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("write \"/admin\""), "{error}");
        let error = Policies::parse(&file("/a%2Fb")).unwrap_err().to_string();
        assert!(error.contains("encoded slash"), "{error}");
    }

    #[test]
    fn bad_files_are_refused_with_where_and_why() {
        for (file, expected) in [
            ("[[application]]\nname = \"a\"\ntenant = \"t\"\nhosts = []\n", "hosts is empty"),
            ("[[application]]\nname = \"a\"\ntenant = \"t\"\nhosts = [\"h\"]\n", "no policy"),
            ("[[application]]\nname = \"a\"\ntenant = \"t\"\nhosts = [\"h\"]\n[[application.policy]]\nname = \"p\"\naction = \"allow\"\ninclude = [{ group = \"g\", email = \"e\" }]\n", "exactly one"),
            ("[[application]]\nname = \"a\"\ntenant = \"t\"\nhosts = [\"h\"]\n[[application.policy]]\nname = \"p\"\naction = \"bypass\"\ninclude = [{ group = \"g\" }]\n", "only include everyone"),
            ("[[application]]\nname = \"a\"\ntenant = \"t\"\nhosts = [\"h\"]\n[[application.policy]]\nname = \"p\"\naction = \"allow\"\n", "include needs"),
            ("[[application]]\nname = \"a\"\ntenant = \"t\"\nhosts = [\"h\"]\nport = 3\n", "unknown field"),
            ("[[application]]\nname = \"a\"\ntenant = \"T!\"\nhosts = [\"h\"]\n", "tenant"),
        ] {
            let error = Policies::parse(file).unwrap_err().to_string();
            assert!(error.contains(expected), "{error} should say {expected}");
        }
    }

    /// An application `name` of `tenant` on `host` and `path`, open to everyone.
    fn app(name: &str, tenant: &str, host: &str, path: &str) -> String {
        format!("[[application]]\nname = \"{name}\"\ntenant = \"{tenant}\"\nhosts = [\"{host}\"]\npaths = [\"{path}\"]\n[[application.policy]]\nname = \"p\"\naction = \"allow\"\ninclude = [{{ everyone = true }}]\n")
    }

    #[test]
    fn a_host_that_no_request_could_name_is_refused() {
        for (bad, why) in [
            ("h.test:8080", "normal form"),
            ("h.test.", "normal form"),
            (" h.test", "h.test"),
            ("h\u{e9}.test", "h"),
            ("*.", "*."),
        ] {
            let error = Policies::parse(&app("a", "t", bad, "/"))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("host") && error.contains(why),
                "{bad:?}: {error}"
            );
        }
        assert!(Policies::parse(&app("a", "t", "*.Example.com", "/")).is_ok());
    }

    #[test]
    fn an_exact_host_wins_over_a_wildcard_whatever_the_order_of_the_applications() {
        for file in [
            app("portal", "t", "*.example.com", "/") + &app("admin", "t", "admin.example.com", "/"),
            app("admin", "t", "admin.example.com", "/") + &app("portal", "t", "*.example.com", "/"),
        ] {
            let policies = Policies::parse(&file).unwrap();
            let serving = |host: &str| policies.application(host, "/x").unwrap().name.clone();
            assert_eq!(serving("admin.example.com"), "admin", "{file}");
            assert_eq!(serving("www.example.com"), "portal", "{file}");
        }
        // A longer wildcard is more specific; a longer prefix still wins first.
        let file = app("broad", "t", "*.example.com", "/")
            + &app("narrow", "t", "*.eu.example.com", "/")
            + &app("api", "t", "*.example.com", "/api");
        let policies = Policies::parse(&file).unwrap();
        assert_eq!(
            policies.application("a.eu.example.com", "/").unwrap().name,
            "narrow"
        );
        assert_eq!(
            policies
                .application("a.eu.example.com", "/api/v1")
                .unwrap()
                .name,
            "api"
        );
    }

    #[test]
    fn two_applications_may_not_serve_one_host_and_prefix_and_names_are_unique_per_tenant() {
        let clash = app("a", "t", "h.test", "/x") + &app("b", "t", "H.test", "/x/");
        let error = Policies::parse(&clash).unwrap_err().to_string();
        assert!(
            error.contains("served by application \"a\" already"),
            "{error}"
        );
        let twice = app("a", "t", "h.test", "/") + &app("a", "t", "i.test", "/");
        let error = Policies::parse(&twice).unwrap_err().to_string();
        assert!(error.contains("used twice in tenant"), "{error}");
        // One name in two tenants is two applications.
        let tenants = app("wiki", "t1", "wiki.one", "/") + &app("wiki", "t2", "wiki.two", "/");
        assert_eq!(Policies::parse(&tenants).unwrap().applications.len(), 2);
        // Applications from the stream: those that clash are left out, the others stay.
        let declared =
            Policies::read_file(&(app("a", "t", "h.test", "/") + &app("c", "t", "c.test", "/")))
                .unwrap();
        let mut clashing = declared.clone();
        clashing.insert(
            1,
            Policies::read_file(&app("b", "t", "h.test", "/"))
                .unwrap()
                .remove(0),
        );
        let (policies, refused) = Policies::compile_each(&clashing, 7);
        let names: Vec<&str> = policies
            .applications
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(
            (names, policies.version, refused.len()),
            (vec!["a", "c"], 7, 1)
        );
    }

    #[test]
    fn the_testers_explanation_agrees_with_the_decision_and_says_which_rule() {
        let policies = Policies::parse(FILE).unwrap();
        let finance = &policies.applications[0];
        let gid = Uuid::now_v7();
        let groups = [GroupAccess {
            schema: String::new(),
            tenant: "default".into(),
            id: gid,
            display_name: "Finance-Admins".into(),
            external_id: None,
            sequence: 1,
        }];
        let people = [
            user(&groups, &["ada@example.com"], &[gid]),
            user(&groups, &["ada@example.com"], &[]),
            user(&groups, &["eve@contractor.example"], &[gid]),
            user(&groups, &["bob@elsewhere.org"], &[gid]),
        ];
        for person in &people {
            for policy in &finance.policies {
                let found = person.0.user("default", &person.1).unwrap();
                assert_eq!(policy.explain(&found).0, matches(policy, person));
            }
        }
        let explain = |person: &(Directory, Uuid), policy: usize| {
            finance.policies[policy]
                .explain(&person.0.user("default", &person.1).unwrap())
                .1
        };
        assert_eq!(
            explain(&people[0], 1),
            "include group \"Finance-Admins\" matches; every require rule matches"
        );
        assert_eq!(
            explain(&people[1], 1),
            "no include rule matches (group \"Finance-Admins\")"
        );
        assert_eq!(
            explain(&people[3], 1),
            "include group \"Finance-Admins\" matches; require fails: email_domain \"example.com\""
        );
        assert_eq!(
            explain(&people[2], 0),
            "include email_domain \"contractor.example\" matches"
        );
    }

    #[test]
    fn a_launcher_link_is_an_http_url_or_made_from_the_first_exact_host() {
        let with_url = |url: &str| {
            app("a", "t", "*.example.com", "/x").replace("paths", &format!("url = {url:?}\npaths"))
        };
        for bad in [
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "ftp://example.com/",
            "/relative",
        ] {
            let error = Policies::parse(&with_url(bad)).unwrap_err().to_string();
            assert!(error.contains("is not an http(s) URL"), "{bad}: {error}");
        }
        let policies = Policies::parse(&with_url("https://a.example.com/x")).unwrap();
        assert_eq!(
            policies.applications[0].url.as_deref(),
            Some("https://a.example.com/x")
        );
        let wildcard = Policies::parse(&app("a", "t", "*.example.com", "/x")).unwrap();
        assert_eq!(wildcard.applications[0].url, None);
        let exact = Policies::parse(&app("a", "t", "A.example.com", "/X")).unwrap();
        assert_eq!(
            exact.applications[0].url.as_deref(),
            Some("https://a.example.com/X")
        );
    }

    #[test]
    fn a_file_that_does_not_check_is_refused_at_the_line_of_the_application_at_fault() {
        let good = app("a", "t", "a.test", "/");
        let lines = good.lines().count();
        let bad = app("b", "t", "b.test", "/").replace("everyone = true", "group = \"g\"");
        let file = format!(
            "# applications\n\n{good}{}",
            bad.replace("\"allow\"", "\"bypass\"")
        );
        let error = Policies::read_file(&file).unwrap_err().to_string();
        assert!(error.contains(&format!("line {}: ", lines + 3)), "{error}");
        assert!(error.contains("application \"b\" (#2)"), "{error}");
        // A clash names the second application, at its line.
        let clash = format!("{good}{}", app("c", "t", "a.test", "/"));
        let error = Policies::read_file(&clash).unwrap_err().to_string();
        assert!(error.contains(&format!("line {}: ", lines + 1)), "{error}");
    }

    #[test]
    fn control_characters_are_refused_wherever_they_are() {
        for (from, to) in [
            ("name = \"a\"", "name = \"a\\u0000\""),
            ("name = \"p\"", "name = \"p\\nX-Forged: 1\""),
            ("everyone = true", "group = \"g\\r\""),
        ] {
            let file = app("a", "t", "a.test", "/").replacen(from, to, 1);
            let error = Policies::parse(&file).unwrap_err().to_string();
            assert!(
                error.contains("holds a control character"),
                "{file}: {error}"
            );
        }
    }

    #[test]
    fn a_written_file_reads_back_as_the_same_applications() {
        let declared = Policies::read_file(FILE).unwrap();
        let written = Policies::write_file(&declared).unwrap();
        assert_eq!(
            Policies::read_file(&written).unwrap(),
            declared,
            "{written}"
        );
    }
}
