//! The Application aggregate: an application behind the access service (its hosts, path
//! prefixes and policies), configured by an operator. Policies decide who gets in, so every
//! change to them is an event with what it was before and after, like a change to a user.
//!
//! An application is known by its name within its tenant; its id is derived from both
//! ([`application_id`]), so that two operators configuring the same name write to one
//! aggregate (and the stream's expected sequence settles who was first).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::EventKind;

/// What a policy does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the user in.
    Allow,
    /// Keep the user out.
    Deny,
    /// Let anyone in without a session.
    Bypass,
}

/// One rule as written: exactly one of its fields is set (checked by the access service).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Member of a group, by id, externalId or displayName.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// This userName.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// This email address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// An email address in this domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_domain: Option<String>,
    /// Anyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub everyone: Option<bool>,
}

/// One policy as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Its name (reported in decisions).
    pub name: String,
    /// What it does.
    pub action: Action,
    /// Any of these must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<RuleSpec>,
    /// All of these must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require: Vec<RuleSpec>,
    /// None of these may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<RuleSpec>,
}

/// Where an application is served: its hosts and path prefixes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routes {
    /// Hosts (`*.example.com` for any subdomain).
    pub hosts: Vec<String>,
    /// Path prefixes (none: `/`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// The app launcher's link to it (none: `https://` its first exact host and first path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// An application as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplicationSpec {
    /// Its name, unique in its tenant.
    pub name: String,
    /// Where it is served.
    #[serde(flatten)]
    pub routes: Routes,
    /// Its policies, in the order they are tried.
    pub policies: Vec<PolicySpec>,
}

/// An application's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Application {
    /// Never configured.
    #[default]
    Absent,
    /// Configured.
    Configured(ApplicationSpec),
    /// Removed (it may be configured again under the same name).
    Removed,
}

impl Application {
    /// The configuration, unless absent or removed.
    pub fn spec(&self) -> Option<&ApplicationSpec> {
        match self {
            Application::Configured(spec) => Some(spec),
            Application::Absent | Application::Removed => None,
        }
    }
}

/// What may be asked of an application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplicationCommand {
    /// Make the application be exactly this (configure it, or change what differs).
    Configure(ApplicationSpec),
    /// Remove it.
    Remove,
}

/// What happened to an application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ApplicationEvent {
    /// The application was configured (for the first time, or again after its removal).
    #[serde(rename = "application.configured")]
    Configured {
        /// What it is.
        application: ApplicationSpec,
    },
    /// Its hosts or path prefixes changed.
    #[serde(rename = "application.routes_changed")]
    RoutesChanged {
        /// The routes before.
        before: Routes,
        /// The routes after.
        after: Routes,
    },
    /// Its policies changed (added, removed, edited or reordered).
    #[serde(rename = "application.policy_changed")]
    PolicyChanged {
        /// The policies before.
        before: Vec<PolicySpec>,
        /// The policies after.
        after: Vec<PolicySpec>,
    },
    /// The application was removed: no request reaches it any more.
    #[serde(rename = "application.removed")]
    Removed {
        /// What it was.
        before: ApplicationSpec,
    },
}

impl EventKind for ApplicationEvent {
    const AGGREGATE: &'static str = "application";

    fn event_type(&self) -> &'static str {
        match self {
            ApplicationEvent::Configured { .. } => "application.configured",
            ApplicationEvent::RoutesChanged { .. } => "application.routes_changed",
            ApplicationEvent::PolicyChanged { .. } => "application.policy_changed",
            ApplicationEvent::Removed { .. } => "application.removed",
        }
    }
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplicationError {
    /// The application is not configured.
    #[error("the application is not configured")]
    NotFound,
    /// A configuration may not rename the application (its name is its identity).
    #[error("the application is {current:?}; a new name is a new application")]
    Renamed {
        /// Its name.
        current: String,
    },
}

/// The namespace of application ids (UUIDv5 of the tenant's length, the tenant and the name).
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x5f0c_2d6e_8a41_4c3b_9e57_3b1d_7a20_c4e9);

/// The id of application `name` in `tenant`: the same wherever and whenever it is computed.
pub fn application_id(tenant: &str, name: &str) -> Uuid {
    Uuid::new_v5(
        &ID_NAMESPACE,
        format!("{}:{tenant}/{name}", tenant.len()).as_bytes(),
    )
}

/// Decides what a command means for an application.
pub fn decide(
    state: &Application,
    command: ApplicationCommand,
) -> Result<Vec<ApplicationEvent>, ApplicationError> {
    match (state, command) {
        (Application::Absent | Application::Removed, ApplicationCommand::Configure(spec)) => {
            Ok(vec![ApplicationEvent::Configured { application: spec }])
        }
        (Application::Configured(current), ApplicationCommand::Configure(spec)) => {
            if current.name != spec.name {
                return Err(ApplicationError::Renamed {
                    current: current.name.clone(),
                });
            }
            let mut events = Vec::new();
            if current.routes != spec.routes {
                events.push(ApplicationEvent::RoutesChanged {
                    before: current.routes.clone(),
                    after: spec.routes,
                });
            }
            if current.policies != spec.policies {
                events.push(ApplicationEvent::PolicyChanged {
                    before: current.policies.clone(),
                    after: spec.policies,
                });
            }
            Ok(events)
        }
        (Application::Configured(current), ApplicationCommand::Remove) => {
            Ok(vec![ApplicationEvent::Removed {
                before: current.clone(),
            }])
        }
        (Application::Absent | Application::Removed, ApplicationCommand::Remove) => {
            Err(ApplicationError::NotFound)
        }
    }
}

/// Folds an event into the state. An event that does not fit the state (a change to an
/// application that is not configured) leaves it as it is.
pub fn evolve(state: Application, event: &ApplicationEvent) -> Application {
    match (state, event) {
        (_, ApplicationEvent::Configured { application }) => {
            Application::Configured(application.clone())
        }
        (Application::Configured(mut spec), ApplicationEvent::RoutesChanged { after, .. }) => {
            spec.routes = after.clone();
            Application::Configured(spec)
        }
        (Application::Configured(mut spec), ApplicationEvent::PolicyChanged { after, .. }) => {
            spec.policies = after.clone();
            Application::Configured(spec)
        }
        (_, ApplicationEvent::Removed { .. }) => Application::Removed,
        (state, _) => state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, group: &str) -> PolicySpec {
        PolicySpec {
            name: name.into(),
            action: Action::Allow,
            include: vec![RuleSpec {
                group: Some(group.into()),
                ..Default::default()
            }],
            require: Vec::new(),
            exclude: Vec::new(),
        }
    }

    fn finance() -> ApplicationSpec {
        ApplicationSpec {
            name: "finance".into(),
            routes: Routes {
                hosts: vec!["finance.example.com".into()],
                paths: Vec::new(),
                url: None,
            },
            policies: vec![policy("admins", "Finance-Admins")],
        }
    }

    fn replay(events: &[ApplicationEvent]) -> Application {
        events.iter().fold(Application::Absent, evolve)
    }

    #[test]
    fn configuring_twice_the_same_is_no_event_and_a_change_says_what_it_was() {
        let configured = decide(
            &Application::Absent,
            ApplicationCommand::Configure(finance()),
        )
        .unwrap();
        let state = replay(&configured);
        assert_eq!(state.spec(), Some(&finance()));
        assert_eq!(
            decide(&state, ApplicationCommand::Configure(finance())).unwrap(),
            Vec::new()
        );

        let mut changed = finance();
        changed.routes.paths = vec!["/ledger".into()];
        changed.policies.push(policy("auditors", "Auditors"));
        let events = decide(&state, ApplicationCommand::Configure(changed.clone())).unwrap();
        assert_eq!(
            events.iter().map(EventKind::event_type).collect::<Vec<_>>(),
            ["application.routes_changed", "application.policy_changed"]
        );
        match &events[1] {
            ApplicationEvent::PolicyChanged { before, after } => {
                assert_eq!(before, &finance().policies);
                assert_eq!(after, &changed.policies);
            }
            other => panic!("{other:?}"),
        }
        let state = events.iter().fold(state, evolve);
        assert_eq!(state.spec(), Some(&changed));
    }

    #[test]
    fn a_removed_application_may_be_configured_again_and_removing_nothing_is_refused() {
        let state = replay(&[ApplicationEvent::Configured {
            application: finance(),
        }]);
        let removed = decide(&state, ApplicationCommand::Remove).unwrap();
        let state = removed.iter().fold(state, evolve);
        assert_eq!(state, Application::Removed);
        assert_eq!(
            decide(&state, ApplicationCommand::Remove),
            Err(ApplicationError::NotFound)
        );
        let again = decide(&state, ApplicationCommand::Configure(finance())).unwrap();
        assert_eq!(again[0].event_type(), "application.configured");
    }

    #[test]
    fn a_configuration_cannot_rename_and_ids_depend_on_tenant_and_name_only() {
        let state = Application::Configured(finance());
        let mut renamed = finance();
        renamed.name = "payroll".into();
        assert!(matches!(
            decide(&state, ApplicationCommand::Configure(renamed)),
            Err(ApplicationError::Renamed { .. })
        ));
        assert_eq!(
            application_id("default", "finance"),
            application_id("default", "finance")
        );
        assert_ne!(
            application_id("default", "finance"),
            application_id("other", "finance")
        );
        assert_ne!(
            application_id("a/b", "c"),
            application_id("a", "b/c"),
            "ids must not depend on tenant names never holding a slash"
        );
    }

    #[test]
    fn events_keep_their_wire_shape() {
        let event = ApplicationEvent::Configured {
            application: finance(),
        };
        let payload = event.to_payload();
        assert_eq!(payload["type"], "application.configured");
        assert_eq!(
            payload["application"]["hosts"],
            serde_json::json!(["finance.example.com"])
        );
        assert_eq!(
            payload["application"]["policies"][0]["include"][0]["group"],
            "Finance-Admins"
        );
        assert_eq!(
            ApplicationEvent::from_payload("application.configured", 1, &payload).unwrap(),
            event
        );
    }
}
