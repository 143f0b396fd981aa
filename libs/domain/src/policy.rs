//! What an application's policies say of a person: the one definition of a rule match, used by
//! the access service's live decisions, its policy tester and app launcher, and the audit API's
//! access as of an instant (which must answer exactly as the live decision did).
//!
//! A policy matches when any include rule, every require rule and no exclude rule matches.
//! Policies are tried in order; a `bypass` policy lets anyone in; for everyone else the person
//! must be active, and the first matching policy decides (`allow` or `deny`).

use std::fmt;

use uuid::Uuid;

use crate::application::{Action, PolicySpec, RuleSpec};

/// One of a person's groups, as much as is known of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRef<'a> {
    /// The group's id.
    pub id: Uuid,
    /// Its displayName, when the group is known.
    pub display_name: Option<&'a str>,
    /// Its externalId, when it has one.
    pub external_id: Option<&'a str>,
}

/// Whom policies are about: what their rules read of a user.
pub trait Person {
    /// The userName.
    fn user_name(&self) -> &str;
    /// The email addresses.
    fn emails(&self) -> impl Iterator<Item = &str>;
    /// The groups the user is a member of.
    fn groups(&self) -> impl Iterator<Item = GroupRef<'_>>;
    /// Whether the user is active.
    fn active(&self) -> bool;
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Member of a group, by id, externalId or displayName.
    Group(String),
    /// This userName.
    UserName(String),
    /// This email address.
    Email(String),
    /// An email address in this domain.
    EmailDomain(String),
    /// Anyone.
    Everyone,
}

impl Rule {
    /// The rule a spec writes (`at` says where, in errors).
    pub fn from_spec(spec: &RuleSpec, at: &str) -> Result<Rule, String> {
        let rules: Vec<Rule> = [
            spec.group.clone().map(Rule::Group),
            spec.user_name.clone().map(Rule::UserName),
            spec.email.clone().map(Rule::Email),
            spec.email_domain
                .as_ref()
                .map(|d| Rule::EmailDomain(d.trim_start_matches('@').to_owned())),
            match spec.everyone {
                Some(true) => Some(Rule::Everyone),
                Some(false) => return Err(format!("{at}: everyone must be true (or left out)")),
                None => None,
            },
        ]
        .into_iter()
        .flatten()
        .collect();
        match <[Rule; 1]>::try_from(rules) {
            Ok([rule]) => Ok(rule),
            Err(rules) if rules.is_empty() => Err(format!("{at}: a rule needs one of group, user_name, email, email_domain, everyone")),
            Err(_) => Err(format!("{at}: a rule has exactly one of group, user_name, email, email_domain, everyone; write several rules for several conditions")),
        }
    }

    /// Whether the person satisfies the rule.
    pub fn matches(&self, person: &impl Person) -> bool {
        match self {
            Rule::Group(_) => !self.groups(person).is_empty(),
            Rule::Everyone => true,
            Rule::UserName(name) => person.user_name().eq_ignore_ascii_case(name),
            Rule::Email(email) => person.emails().any(|e| e.eq_ignore_ascii_case(email)),
            Rule::EmailDomain(domain) => person.emails().any(|e| {
                e.rsplit_once('@')
                    .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain))
            }),
        }
    }

    /// The person's groups that satisfy a group rule (none for other rules).
    pub fn groups(&self, person: &impl Person) -> Vec<Uuid> {
        let Rule::Group(reference) = self else {
            return Vec::new();
        };
        person
            .groups()
            .filter(|group| {
                let mut buffer = Uuid::encode_buffer();
                group
                    .id
                    .hyphenated()
                    .encode_lower(&mut buffer)
                    .eq_ignore_ascii_case(reference)
                    || group
                        .display_name
                        .is_some_and(|name| name.eq_ignore_ascii_case(reference))
                    || group
                        .external_id
                        .is_some_and(|x| x.eq_ignore_ascii_case(reference))
            })
            .map(|group| group.id)
            .collect()
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Group(group) => write!(f, "group {group:?}"),
            Rule::UserName(name) => write!(f, "user_name {name:?}"),
            Rule::Email(email) => write!(f, "email {email:?}"),
            Rule::EmailDomain(domain) => write!(f, "email_domain {domain:?}"),
            Rule::Everyone => write!(f, "everyone"),
        }
    }
}

/// A policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Its name (reported in decisions).
    pub name: String,
    /// What it does.
    pub action: Action,
    /// Any of these must match.
    pub include: Vec<Rule>,
    /// All of these must match.
    pub require: Vec<Rule>,
    /// None of these may match.
    pub exclude: Vec<Rule>,
}

impl Policy {
    /// Checks and compiles an application's policies (`at` names the application, in errors).
    pub fn compile_all(specs: &[PolicySpec], at: &str) -> Result<Vec<Policy>, String> {
        if specs.is_empty() {
            return Err(format!(
                "{at}: no policy; add [[application.policy]] (without one, everyone is denied)"
            ));
        }
        let mut policies = Vec::new();
        for (p, policy) in specs.iter().enumerate() {
            let pat = format!("{at}, policy {:?} (#{})", policy.name, p + 1);
            let convert = |rules: &[RuleSpec], kind: &str| -> Result<Vec<Rule>, String> {
                rules
                    .iter()
                    .enumerate()
                    .map(|(r, spec)| Rule::from_spec(spec, &format!("{pat}, {kind} #{}", r + 1)))
                    .collect()
            };
            let include = convert(&policy.include, "include")?;
            let require = convert(&policy.require, "require")?;
            let exclude = convert(&policy.exclude, "exclude")?;
            if include.is_empty() {
                return Err(format!("{pat}: include needs at least one rule"));
            }
            if policy.action == Action::Bypass
                && (include != [Rule::Everyone] || !require.is_empty() || !exclude.is_empty())
            {
                return Err(format!("{pat}: bypass lets requests through without a session, so it can only include everyone"));
            }
            policies.push(Policy {
                name: policy.name.clone(),
                action: policy.action,
                include,
                require,
                exclude,
            });
        }
        Ok(policies)
    }

    /// Whether the policy applies to the person: any include, every require, no exclude.
    pub fn matches(&self, person: &impl Person) -> bool {
        self.include.iter().any(|r| r.matches(person))
            && self.require.iter().all(|r| r.matches(person))
            && !self.exclude.iter().any(|r| r.matches(person))
    }

    /// The person's groups through which the policy applies: those of the first include rule
    /// that matches and of every require rule (none where no group rule did it).
    pub fn via(&self, person: &impl Person) -> Vec<Uuid> {
        let mut via: Vec<Uuid> = self
            .include
            .iter()
            .find(|r| r.matches(person))
            .map(|r| r.groups(person))
            .unwrap_or_default();
        for rule in &self.require {
            via.extend(rule.groups(person));
        }
        via.sort();
        via.dedup();
        via
    }

    /// Whether the policy applies to the person, and why (the policy tester): the include
    /// rule that matched or that none did, the require rules that failed, the exclude rule that
    /// matched. The same answer as [`Policy::matches`].
    pub fn explain(&self, person: &impl Person) -> (bool, String) {
        let list = |rules: &[&Rule]| {
            rules
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(include) = self.include.iter().find(|r| r.matches(person)) else {
            let all: Vec<&Rule> = self.include.iter().collect();
            return (false, format!("no include rule matches ({})", list(&all)));
        };
        let failed: Vec<&Rule> = self.require.iter().filter(|r| !r.matches(person)).collect();
        if !failed.is_empty() {
            return (
                false,
                format!(
                    "include {include} matches; require fails: {}",
                    list(&failed)
                ),
            );
        }
        let excluded: Vec<&Rule> = self.exclude.iter().filter(|r| r.matches(person)).collect();
        if !excluded.is_empty() {
            return (
                false,
                format!(
                    "include {include} matches; exclude matches: {}",
                    list(&excluded)
                ),
            );
        }
        let required = match self.require.is_empty() {
            true => String::new(),
            false => "; every require rule matches".to_owned(),
        };
        (true, format!("include {include} matches{required}"))
    }
}

/// What an application's policies decide for a person whose session is good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'p> {
    /// A bypass policy lets anyone in.
    Bypass(&'p Policy),
    /// The person is not active.
    Inactive,
    /// This policy matched first and allows.
    Allowed(&'p Policy),
    /// This policy matched first and denies.
    Denied(&'p Policy),
    /// No policy matches.
    NoPolicy,
}

impl Verdict<'_> {
    /// Whether the person gets in.
    pub fn allows(&self) -> bool {
        matches!(self, Verdict::Bypass(_) | Verdict::Allowed(_))
    }
}

/// What `policies`, tried in order, decide for `person`.
pub fn verdict<'p>(policies: &'p [Policy], person: &impl Person) -> Verdict<'p> {
    if let Some(bypass) = policies.iter().find(|p| p.action == Action::Bypass) {
        return Verdict::Bypass(bypass);
    }
    if !person.active() {
        return Verdict::Inactive;
    }
    match policies
        .iter()
        .filter(|p| p.action != Action::Bypass)
        .find(|policy| policy.matches(person))
    {
        Some(policy) if policy.action == Action::Allow => Verdict::Allowed(policy),
        Some(policy) => Verdict::Denied(policy),
        None => Verdict::NoPolicy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Someone {
        user_name: &'static str,
        emails: Vec<&'static str>,
        groups: Vec<(Uuid, Option<&'static str>, Option<&'static str>)>,
        active: bool,
    }

    impl Person for Someone {
        fn user_name(&self) -> &str {
            self.user_name
        }
        fn emails(&self) -> impl Iterator<Item = &str> {
            self.emails.iter().copied()
        }
        fn groups(&self) -> impl Iterator<Item = GroupRef<'_>> {
            self.groups.iter().map(|(id, name, external)| GroupRef {
                id: *id,
                display_name: *name,
                external_id: *external,
            })
        }
        fn active(&self) -> bool {
            self.active
        }
    }

    fn spec(name: &str, action: Action, include: RuleSpec, require: Vec<RuleSpec>) -> PolicySpec {
        PolicySpec {
            name: name.into(),
            action,
            include: vec![include],
            require,
            exclude: Vec::new(),
        }
    }

    fn group(name: &str) -> RuleSpec {
        RuleSpec {
            group: Some(name.into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_first_matching_policy_decides_and_says_through_which_groups() {
        let finance = Uuid::from_u128(1);
        let ada = Someone {
            user_name: "ada@example.com",
            emails: vec!["ada@example.com"],
            groups: vec![
                (finance, Some("Finance"), Some("fin-x")),
                (Uuid::from_u128(2), None, None),
            ],
            active: true,
        };
        let domain = RuleSpec {
            email_domain: Some("@EXAMPLE.com".into()),
            ..Default::default()
        };
        let policies = Policy::compile_all(
            &[
                spec("nobody", Action::Deny, group("Contractors"), Vec::new()),
                spec("finance", Action::Allow, group("FIN-X"), vec![domain]),
            ],
            "app",
        )
        .unwrap();
        match verdict(&policies, &ada) {
            Verdict::Allowed(policy) => {
                assert_eq!(policy.name, "finance");
                assert_eq!(policy.via(&ada), [finance]);
            }
            other => panic!("{other:?}"),
        }
        let inactive = Someone {
            active: false,
            ..ada
        };
        assert_eq!(verdict(&policies, &inactive), Verdict::Inactive);
        let bypass = Policy::compile_all(
            &[spec(
                "open",
                Action::Bypass,
                RuleSpec {
                    everyone: Some(true),
                    ..Default::default()
                },
                Vec::new(),
            )],
            "app",
        )
        .unwrap();
        assert!(
            verdict(&bypass, &inactive).allows(),
            "bypass asks nothing of anyone"
        );
    }

    #[test]
    fn bad_policies_are_refused_with_where() {
        let bypass = spec("b", Action::Bypass, group("g"), Vec::new());
        let error = Policy::compile_all(&[bypass], "application \"a\"").unwrap_err();
        assert!(
            error.contains("only include everyone") && error.contains("\"a\""),
            "{error}"
        );
        let two = RuleSpec {
            group: Some("g".into()),
            email: Some("e".into()),
            ..Default::default()
        };
        let error =
            Policy::compile_all(&[spec("p", Action::Allow, two, Vec::new())], "a").unwrap_err();
        assert!(error.contains("exactly one"), "{error}");
        assert!(Policy::compile_all(&[], "a")
            .unwrap_err()
            .contains("no policy"));
    }
}
