//! One access decision, from memory only: no database query and no network call. A request is
//! allowed when its session is valid (signature, expiry), its user is known and active, the
//! session was issued after the user's not-before and is not revoked, and the application's
//! policies, tried in order, allow the user's groups at this moment.

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::directory::{Directory, User};
use crate::policy::{Action, Application, Policies};
use crate::session::{SessionError, SessionKeys};
use crate::target::Target;
use rollcall_domain::policy::{verdict, Verdict};

/// What was asked.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The host and path the user asked for, normalized.
    pub target: &'a Target,
    /// The session token, if any.
    pub session: Option<&'a str>,
}

/// The answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Let it through (`200`).
    Allow,
    /// No valid session: sign in (`401`).
    Unauthenticated,
    /// Known, and not allowed (`403`).
    Deny,
}

impl Outcome {
    /// The forward-auth status code.
    pub fn status(self) -> u16 {
        match self {
            Outcome::Allow => 200,
            Outcome::Unauthenticated => 401,
            Outcome::Deny => 403,
        }
    }
}

/// Who the decision was about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// The tenant.
    pub tenant: String,
    /// The user's id.
    pub id: Uuid,
    /// The userName.
    pub user_name: String,
    /// The primary email, if any.
    pub email: Option<String>,
    /// The displayNames of the user's groups.
    pub groups: Vec<String>,
    /// The session id.
    pub session: String,
}

impl Identity {
    /// Who `user` is, in session `session` (empty: the policy tester's, without one).
    fn of(user: &User<'_>, session: &str) -> Self {
        Identity {
            tenant: user.tenant().to_owned(),
            id: user.id(),
            user_name: user.user_name().to_owned(),
            email: user.emails().next().map(str::to_owned),
            groups: user
                .groups()
                .filter_map(|(_, group)| group.map(|g| g.display_name.clone()))
                .collect(),
            session: session.to_owned(),
        }
    }
}

/// A decision with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The answer.
    pub outcome: Outcome,
    /// Why, for logs and the decision API.
    pub reason: String,
    /// Why, as a keyword (the `reason` label of the decision metrics).
    pub code: ReasonCode,
    /// The application, if one matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    /// The policy that decided, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Who, if the session named a known user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// The version of the policies it was decided with: the stream sequence of their last
    /// application event (0: none, or policies from a file without the stream).
    pub policy_version: u64,
}

impl Decision {
    /// The denial when the decision state cannot be read.
    pub fn internal(version: u64) -> Self {
        decision(Outcome::Deny, ReasonCode::Internal, "internal error").with_policy_version(version)
    }

    /// The decision, made with the policies of `version`.
    pub fn with_policy_version(self, version: u64) -> Self {
        Self {
            policy_version: version,
            ..self
        }
    }
}

/// Whether the state may be too old to trust, and what to do then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Following NATS.
    Fresh,
    /// Lost NATS for longer than the bound; deny everything.
    StaleFailClosed,
    /// Lost NATS for longer than the bound; decide from what is known.
    StaleFailOpen,
}

/// Why a decision was taken, as a stable keyword: the message in [`Decision::reason`] names
/// hosts, users and sessions; this names only the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// No application serves the host.
    NoApplication,
    /// The application lets everyone through.
    Bypass,
    /// NATS was lost past the staleness bound; failing closed.
    StaleState,
    /// No session was presented.
    NoSession,
    /// The session expired.
    SessionExpired,
    /// The session is not valid (signature, shape, subject).
    InvalidSession,
    /// The session is another tenant's.
    WrongTenant,
    /// The user is not provisioned (or was deleted).
    UnknownUser,
    /// The user is deactivated.
    UserDeactivated,
    /// The user's sessions issued before a time are void.
    SessionsRevoked,
    /// This session was revoked.
    SessionRevoked,
    /// A policy allows the user.
    PolicyAllows,
    /// A policy denies the user.
    PolicyDenies,
    /// No policy allows the user.
    NoPolicy,
    /// The decision state could not be read.
    Internal,
}

impl ReasonCode {
    /// The keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::NoApplication => "no_application",
            ReasonCode::Bypass => "bypass",
            ReasonCode::StaleState => "stale_state",
            ReasonCode::NoSession => "no_session",
            ReasonCode::SessionExpired => "session_expired",
            ReasonCode::InvalidSession => "invalid_session",
            ReasonCode::WrongTenant => "wrong_tenant",
            ReasonCode::UnknownUser => "unknown_user",
            ReasonCode::UserDeactivated => "user_deactivated",
            ReasonCode::SessionsRevoked => "sessions_revoked",
            ReasonCode::SessionRevoked => "session_revoked",
            ReasonCode::PolicyAllows => "policy_allows",
            ReasonCode::PolicyDenies => "policy_denies",
            ReasonCode::NoPolicy => "no_policy",
            ReasonCode::Internal => "internal",
        }
    }
}

fn decision(outcome: Outcome, code: ReasonCode, reason: impl Into<String>) -> Decision {
    Decision {
        outcome,
        reason: reason.into(),
        code,
        application: None,
        policy: None,
        identity: None,
        policy_version: 0,
    }
}

/// Decides one request.
pub fn decide(
    directory: &Directory,
    policies: &Policies,
    keys: &SessionKeys,
    freshness: Freshness,
    request: Request<'_>,
) -> Decision {
    let (host, path) = (request.target.host(), request.target.path());
    let Some(application) = policies.application(host, path) else {
        // The host only: a path can carry a secret (`/reset/<token>`), and reasons are logged.
        return decision(
            Outcome::Deny,
            ReasonCode::NoApplication,
            format!("no application serves {host}"),
        );
    };
    let with_app = |mut d: Decision| {
        d.application = Some(application.name.clone());
        d
    };
    if let Some(bypass) = application
        .policies
        .iter()
        .find(|p| p.action == Action::Bypass)
    {
        let mut d = with_app(decision(Outcome::Allow, ReasonCode::Bypass, "bypass"));
        d.policy = Some(bypass.name.clone());
        return d;
    }
    if freshness == Freshness::StaleFailClosed {
        return with_app(decision(
            Outcome::Deny,
            ReasonCode::StaleState,
            "decision state is stale (NATS unreachable); failing closed",
        ));
    }
    let Some(token) = request.session else {
        return with_app(decision(
            Outcome::Unauthenticated,
            ReasonCode::NoSession,
            "no session",
        ));
    };
    match signed_in(directory, keys, token, Some(&application.tenant)) {
        Ok((user, identity)) => with_app(Decision {
            identity: Some(identity),
            ..by_policies(application, &user)
        }),
        Err(refused) => with_app(*refused),
    }
}

/// The user a session token is of, when the session is good now: valid (signature, expiry),
/// of `tenant` when one is asked for, of a known and active user, issued after the user's
/// not-before and not revoked. Otherwise the decision that refuses it (its identity set once
/// the user is known).
fn signed_in<'d>(
    directory: &'d Directory,
    keys: &SessionKeys,
    token: &str,
    tenant: Option<&str>,
) -> Result<(User<'d>, Identity), Box<Decision>> {
    let claims = match keys.verify(token) {
        Ok(claims) => claims,
        Err(SessionError::Expired) => {
            return Err(Box::new(decision(
                Outcome::Unauthenticated,
                ReasonCode::SessionExpired,
                "session expired",
            )))
        }
        Err(SessionError::Invalid(why)) => {
            return Err(Box::new(decision(
                Outcome::Unauthenticated,
                ReasonCode::InvalidSession,
                format!("invalid session: {why}"),
            )))
        }
    };
    if let Some(tenant) = tenant.filter(|&tenant| tenant != claims.tid) {
        return Err(Box::new(decision(
            Outcome::Deny,
            ReasonCode::WrongTenant,
            format!(
                "session of tenant {} for an application of tenant {tenant}",
                claims.tid
            ),
        )));
    }
    let Ok(user_id) = Uuid::parse_str(&claims.sub) else {
        return Err(Box::new(decision(
            Outcome::Unauthenticated,
            ReasonCode::InvalidSession,
            "invalid session: subject is no user id",
        )));
    };
    let Some(user) = directory.user(&claims.tid, &user_id) else {
        return Err(Box::new(decision(
            Outcome::Deny,
            ReasonCode::UnknownUser,
            format!("user {user_id} is not provisioned (or was deleted)"),
        )));
    };
    let identity = Identity::of(&user, &claims.sid);
    let with_identity = |d: Decision| {
        Err(Box::new(Decision {
            identity: Some(identity.clone()),
            ..d
        }))
    };
    if !user.active() {
        return with_identity(decision(
            Outcome::Deny,
            ReasonCode::UserDeactivated,
            format!("user {user_id} is deactivated"),
        ));
    }
    if let Some(not_before) = user.not_before() {
        if claims.issued_at() < not_before {
            let when = not_before
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            return with_identity(decision(
                Outcome::Unauthenticated,
                ReasonCode::SessionsRevoked,
                format!("session revoked: sessions issued before {when} are void"),
            ));
        }
    }
    if user.session_revoked(&claims.sid) {
        return with_identity(decision(
            Outcome::Unauthenticated,
            ReasonCode::SessionRevoked,
            format!("session {} was revoked", claims.sid),
        ));
    }
    Ok((user, identity))
}

/// The app launcher: the applications of the session's tenant that its user may reach now,
/// by name, each with its link (none for an application served on wildcard hosts only,
/// without a `url`). A session that is not good now gets the decision refusing it.
pub fn launcher<'p>(
    directory: &Directory,
    policies: &'p Policies,
    keys: &SessionKeys,
    token: &str,
) -> Result<(Identity, Vec<&'p Application>), Box<Decision>> {
    let (user, identity) = signed_in(directory, keys, token, None)?;
    let mut reachable: Vec<&Application> = policies
        .applications
        .iter()
        .filter(|application| application.tenant == identity.tenant)
        .filter(|application| allowed_by(application, &user).is_some())
        .collect();
    reachable.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((identity, reachable))
}

/// What an application's policies, tried in order, say of an active user (bypass policies
/// aside: they were tried first).
fn by_policies(application: &Application, user: &User<'_>) -> Decision {
    let (outcome, code, policy) = match verdict(&application.policies, user) {
        Verdict::Allowed(policy) => (Outcome::Allow, ReasonCode::PolicyAllows, policy),
        Verdict::Denied(policy) => (Outcome::Deny, ReasonCode::PolicyDenies, policy),
        // Bypass and inactive users are decided before the policies are asked.
        Verdict::Bypass(_) | Verdict::Inactive | Verdict::NoPolicy => {
            return decision(
                Outcome::Deny,
                ReasonCode::NoPolicy,
                "no policy allows this user",
            )
        }
    };
    let verb = if outcome == Outcome::Allow {
        "allows"
    } else {
        "denies"
    };
    let mut d = decision(outcome, code, format!("policy {:?} {verb}", policy.name));
    d.policy = Some(policy.name.clone());
    d
}

/// The policy that lets `user` into `application` now (a session of theirs aside), if one
/// does: what [`decide_for_user`] allows, for listing who may get in.
pub fn allowed_by<'p>(application: &'p Application, user: &User<'_>) -> Option<&'p str> {
    match verdict(&application.policies, user) {
        Verdict::Bypass(policy) | Verdict::Allowed(policy) => Some(&policy.name),
        Verdict::Inactive | Verdict::Denied(_) | Verdict::NoPolicy => None,
    }
}

/// One policy as the policy tester tried it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trial {
    /// The policy.
    pub policy: String,
    /// What it does when it matches.
    pub action: Action,
    /// Whether it matches the user.
    pub matched: bool,
    /// Why (or why not).
    pub why: String,
}

/// The policy tester: whether `user` (an id, userName or externalId of the application's
/// tenant) may reach `target` now, as a session of theirs would be decided (without the
/// session's own checks), with every policy of the application tried and why it matched or
/// not. `tenant`, when given, is the only tenant whose applications may be asked about.
pub fn decide_for_user(
    directory: &Directory,
    policies: &Policies,
    target: &Target,
    tenant: Option<&str>,
    user: &str,
) -> (Decision, Vec<Trial>) {
    let (host, path) = (target.host(), target.path());
    // Another tenant's application is answered as if there were none.
    let Some(application) = policies
        .application(host, path)
        .filter(|application| tenant.is_none_or(|tenant| tenant == application.tenant))
    else {
        return (
            decision(
                Outcome::Deny,
                ReasonCode::NoApplication,
                format!("no application serves {host}"),
            ),
            Vec::new(),
        );
    };
    let with_app = |mut d: Decision| {
        d.application = Some(application.name.clone());
        d
    };
    // An id, else a userName or externalId (Entra's default externalId is a GUID too).
    let guid = Uuid::parse_str(user).ok();
    let found = guid
        .and_then(|id| directory.user(&application.tenant, &id))
        .or_else(|| {
            let guid = guid.map(|g| g.hyphenated().to_string());
            directory.find_user(&application.tenant, |u| {
                u.user_name().eq_ignore_ascii_case(user)
                    || u.external_id_is(user)
                    || guid.as_deref().is_some_and(|g| u.external_id_is(g))
            })
        });
    let Some(found) = found else {
        return (
            with_app(decision(
                Outcome::Deny,
                ReasonCode::UnknownUser,
                "no such user in the application's tenant",
            )),
            Vec::new(),
        );
    };
    let trials = application
        .policies
        .iter()
        .map(|policy| {
            let (matched, why) = match policy.action {
                Action::Bypass => (true, "bypass: anyone, without a session".to_owned()),
                _ => policy.explain(&found),
            };
            Trial {
                policy: policy.name.clone(),
                action: policy.action,
                matched,
                why,
            }
        })
        .collect();
    let identity = Identity::of(&found, "");
    let decided = if let Some(bypass) = application
        .policies
        .iter()
        .find(|p| p.action == Action::Bypass)
    {
        let mut d = decision(Outcome::Allow, ReasonCode::Bypass, "bypass");
        d.policy = Some(bypass.name.clone());
        d
    } else if !found.active() {
        decision(
            Outcome::Deny,
            ReasonCode::UserDeactivated,
            format!("user {} is deactivated", found.id()),
        )
    } else {
        by_policies(application, &found)
    };
    let decided = Decision {
        identity: Some(identity),
        ..with_app(decided)
    };
    (decided, trials)
}

/// The current time, for issuing sessions.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollcall_eventlog::access::{group_key, user_key, GroupAccess, RevokedSession, UserAccess};
    use std::time::Duration;

    const POLICIES: &str = r#"
        [[application]]
        name = "finance"
        tenant = "acme"
        hosts = ["finance.example.com"]
        [[application.policy]]
        name = "finance admins"
        action = "allow"
        include = [{ group = "Finance" }]
        [[application]]
        name = "wiki"
        tenant = "acme"
        hosts = ["wiki.example.com"]
        [[application.policy]]
        name = "everyone"
        action = "allow"
        include = [{ everyone = true }]
    "#;

    struct World {
        directory: Directory,
        policies: Policies,
        keys: SessionKeys,
        user: UserAccess,
        group: Uuid,
    }

    fn world() -> World {
        let group = Uuid::now_v7();
        let user = UserAccess {
            schema: String::new(),
            tenant: "acme".into(),
            id: Uuid::now_v7(),
            user_name: "ada".into(),
            external_id: None,
            emails: vec!["ada@example.com".into()],
            active: true,
            not_before: None,
            revoked_sessions: vec![],
            groups: vec![group],
            sequence: 1,
            withheld: None,
        };
        let mut directory = Directory::default();
        let g = GroupAccess {
            schema: String::new(),
            tenant: "acme".into(),
            id: group,
            display_name: "Finance".into(),
            external_id: None,
            sequence: 1,
        };
        directory
            .apply(
                &group_key("acme", &group),
                Some(&serde_json::to_vec(&g).unwrap()),
            )
            .unwrap();
        directory
            .apply(
                &user_key("acme", &user.id),
                Some(&serde_json::to_vec(&user).unwrap()),
            )
            .unwrap();
        World {
            directory,
            policies: Policies::parse(POLICIES).unwrap(),
            keys: SessionKeys::ephemeral(Duration::from_secs(3600)),
            user,
            group,
        }
    }

    impl World {
        fn set(&mut self, change: impl FnOnce(&mut UserAccess)) {
            change(&mut self.user);
            self.directory
                .apply(
                    &user_key("acme", &self.user.id),
                    Some(&serde_json::to_vec(&self.user).unwrap()),
                )
                .unwrap();
        }
        fn ask(&self, host: &str, token: &str, freshness: Freshness) -> Decision {
            decide(
                &self.directory,
                &self.policies,
                &self.keys,
                freshness,
                Request {
                    target: &Target::new(host, "/").unwrap(),
                    session: Some(token),
                },
            )
        }
    }

    #[test]
    fn a_member_is_allowed_with_identity_and_the_deciding_policy() {
        let w = world();
        let (token, _) = w.keys.issue("acme", w.user.id, now()).unwrap();
        let d = w.ask("finance.example.com", &token, Freshness::Fresh);
        assert_eq!(d.outcome, Outcome::Allow, "{}", d.reason);
        assert_eq!(d.policy.as_deref(), Some("finance admins"));
        assert_eq!(d.identity.unwrap().groups, vec!["Finance".to_owned()]);
    }

    #[test]
    fn deactivation_revocation_and_removal_from_the_group_deny() {
        let mut w = world();
        let (token, claims) = w.keys.issue("acme", w.user.id, now()).unwrap();
        w.set(|u| u.groups.clear());
        assert_eq!(
            w.ask("finance.example.com", &token, Freshness::Fresh)
                .outcome,
            Outcome::Deny
        );
        assert_eq!(
            w.ask("wiki.example.com", &token, Freshness::Fresh).outcome,
            Outcome::Allow
        );
        let group = w.group;
        w.set(|u| u.groups.push(group));
        w.set(|u| {
            u.revoked_sessions.push(RevokedSession {
                id: claims.sid.clone(),
                at: now(),
            })
        });
        assert_eq!(
            w.ask("wiki.example.com", &token, Freshness::Fresh).outcome,
            Outcome::Unauthenticated
        );
        let (other, _) = w.keys.issue("acme", w.user.id, now()).unwrap();
        assert_eq!(
            w.ask("wiki.example.com", &other, Freshness::Fresh).outcome,
            Outcome::Allow
        );
        w.set(|u| u.active = false);
        assert_eq!(
            w.ask("wiki.example.com", &other, Freshness::Fresh).outcome,
            Outcome::Deny
        );
        w.set(|u| {
            u.active = true;
            u.not_before = Some(now() + time::Duration::milliseconds(5));
        });
        assert_eq!(
            w.ask("wiki.example.com", &other, Freshness::Fresh).outcome,
            Outcome::Unauthenticated,
            "issued before not-before"
        );
    }

    #[test]
    fn stale_state_fails_closed_unless_configured_open() {
        let w = world();
        let (token, _) = w.keys.issue("acme", w.user.id, now()).unwrap();
        assert_eq!(
            w.ask("wiki.example.com", &token, Freshness::StaleFailClosed)
                .outcome,
            Outcome::Deny
        );
        assert_eq!(
            w.ask("wiki.example.com", &token, Freshness::StaleFailOpen)
                .outcome,
            Outcome::Allow
        );
    }

    #[test]
    fn unknown_applications_users_and_tenants_are_denied() {
        let w = world();
        let (token, _) = w.keys.issue("acme", w.user.id, now()).unwrap();
        assert_eq!(
            w.ask("elsewhere.example.com", &token, Freshness::Fresh)
                .outcome,
            Outcome::Deny
        );
        let (stranger, _) = w.keys.issue("acme", Uuid::now_v7(), now()).unwrap();
        assert_eq!(
            w.ask("wiki.example.com", &stranger, Freshness::Fresh)
                .outcome,
            Outcome::Deny
        );
        let (other_tenant, _) = w.keys.issue("globex", w.user.id, now()).unwrap();
        assert_eq!(
            w.ask("wiki.example.com", &other_tenant, Freshness::Fresh)
                .outcome,
            Outcome::Deny
        );
        let none = decide(
            &w.directory,
            &w.policies,
            &w.keys,
            Freshness::Fresh,
            Request {
                target: &Target::new("wiki.example.com", "/").unwrap(),
                session: None,
            },
        );
        assert_eq!(none.outcome, Outcome::Unauthenticated);
    }

    #[test]
    fn each_decision_names_its_rule_as_a_keyword_without_hosts_or_ids() {
        let mut w = world();
        let (token, _) = w.keys.issue("acme", w.user.id, now()).unwrap();
        let code =
            |w: &World, host: &str, token: &str, freshness| w.ask(host, token, freshness).code;
        assert_eq!(
            code(&w, "finance.example.com", &token, Freshness::Fresh),
            ReasonCode::PolicyAllows
        );
        assert_eq!(
            code(&w, "elsewhere.example.com", &token, Freshness::Fresh),
            ReasonCode::NoApplication
        );
        assert_eq!(
            code(&w, "wiki.example.com", &token, Freshness::StaleFailClosed),
            ReasonCode::StaleState
        );
        assert_eq!(
            code(&w, "wiki.example.com", "garbage", Freshness::Fresh),
            ReasonCode::InvalidSession
        );
        let (stranger, _) = w.keys.issue("acme", Uuid::now_v7(), now()).unwrap();
        assert_eq!(
            code(&w, "wiki.example.com", &stranger, Freshness::Fresh),
            ReasonCode::UnknownUser
        );
        let (other_tenant, _) = w.keys.issue("globex", w.user.id, now()).unwrap();
        assert_eq!(
            code(&w, "wiki.example.com", &other_tenant, Freshness::Fresh),
            ReasonCode::WrongTenant
        );
        w.set(|u| u.active = false);
        let deactivated = w.ask("wiki.example.com", &token, Freshness::Fresh);
        assert_eq!(deactivated.code, ReasonCode::UserDeactivated);
        assert_eq!(deactivated.code.as_str(), "user_deactivated");
        assert!(
            deactivated.reason.contains(&w.user.id.to_string()),
            "the message names the user; the keyword never does"
        );
    }

    #[test]
    fn the_tester_answers_as_a_session_would_be_decided_and_finds_users_by_guid_external_id() {
        let mut w = world();
        let guid = Uuid::now_v7();
        w.set(|u| u.external_id = Some(guid.to_string()));
        let target = Target::new("finance.example.com", "/").unwrap();
        let ask = |w: &World, user: &str, tenant: &str| {
            decide_for_user(&w.directory, &w.policies, &target, Some(tenant), user)
        };
        let (token, _) = w.keys.issue("acme", w.user.id, now()).unwrap();
        let live = w.ask("finance.example.com", &token, Freshness::Fresh);
        for by in [
            w.user.id.to_string(),
            "ADA".to_owned(),
            guid.to_string().to_uppercase(),
        ] {
            let (tested, trials) = ask(&w, &by, "acme");
            assert_eq!(
                (tested.outcome, tested.code, &tested.policy),
                (live.outcome, live.code, &live.policy),
                "{by}"
            );
            assert_eq!(trials.len(), 1);
            assert!(trials[0].matched);
        }
        // Another tenant's application is answered as if there were none.
        let (other, trials) = ask(&w, "ada", "other");
        let (none, _) = decide_for_user(
            &w.directory,
            &w.policies,
            &Target::new("nothing.example.com", "/").unwrap(),
            Some("other"),
            "ada",
        );
        assert_eq!(other.reason.replace("finance", "nothing"), none.reason);
        assert!(trials.is_empty() && other.application.is_none());
        // A deactivated user: denied as forward-auth denies, every policy still tried.
        w.set(|u| u.active = false);
        let (tested, trials) = ask(&w, "ada", "acme");
        assert_eq!(tested.code, ReasonCode::UserDeactivated);
        assert_eq!(trials.len(), 1);
        let live = w.ask("finance.example.com", &token, Freshness::Fresh);
        assert_eq!(live.code, ReasonCode::UserDeactivated);
    }

    #[test]
    fn the_launcher_lists_the_sessions_tenants_applications_its_user_may_reach() {
        let mut w = world();
        w.policies = Policies::parse(&format!(
            "{POLICIES}\n[[application]]\nname = \"theirs\"\ntenant = \"other\"\nhosts = [\"theirs.example.com\"]\n[[application.policy]]\nname = \"everyone\"\naction = \"allow\"\ninclude = [{{ everyone = true }}]\n"
        ))
        .unwrap();
        let (token, _) = w.keys.issue("acme", w.user.id, now()).unwrap();
        let names = |w: &World| -> Vec<String> {
            launcher(&w.directory, &w.policies, &w.keys, &token)
                .map(|(_, apps)| apps.iter().map(|a| a.name.clone()).collect())
                .unwrap_or_default()
        };
        assert_eq!(names(&w), ["finance", "wiki"]);
        let group = w.group;
        w.set(|u| u.groups.retain(|g| *g != group));
        assert_eq!(names(&w), ["wiki"]);
        w.set(|u| u.active = false);
        let refused = launcher(&w.directory, &w.policies, &w.keys, &token).unwrap_err();
        assert_eq!(refused.code, ReasonCode::UserDeactivated);
    }
}
