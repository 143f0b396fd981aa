//! Applications and their policies on the event stream: read, followed and changed.
//!
//! The stream is the record. `rollcall policies apply` and the policy file's mode (at start
//! and on SIGHUP) append the difference between a file and the stream's current state as
//! application events (`application.configured`, `application.routes_changed`,
//! `application.policy_changed`, `application.removed`), with actor and request id. Every
//! access service folds those events into the policies it decides with, so every replica
//! applies the same version: the stream sequence of the last application event folded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use rollcall_domain::application::{
    self, application_id, Application, ApplicationCommand, ApplicationEvent, ApplicationSpec,
};
use rollcall_domain::EventKind;
use rollcall_eventlog::consumer::Delivered;
use rollcall_eventlog::{Actor, AppendError, Envelope, EventLog};
use time::OffsetDateTime;
use tracing::{error, instrument, warn};
use uuid::Uuid;

use crate::folded::{self, Folded};
use crate::policy::{Declared, Policies};

/// One application's place on the stream.
#[derive(Debug, Clone, Default)]
struct Entry {
    state: Application,
    /// Its subject's last stream sequence (what its next append expects).
    sequence: u64,
    /// Its version (events so far).
    version: u64,
}

/// Every application of the namespace as its events say, by tenant and name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    entries: BTreeMap<(String, String), Entry>,
    version: u64,
}

impl Catalog {
    fn name_of(&self, tenant: &str, id: Uuid) -> Option<String> {
        self.entries
            .keys()
            .find(|(t, name)| t == tenant && application_id(t, name) == id)
            .map(|(_, name)| name.clone())
    }

    /// The applications configured now, by tenant and name.
    pub fn declared(&self) -> Declared {
        self.entries
            .iter()
            .filter_map(|((tenant, _), entry)| Some((tenant.clone(), entry.state.spec()?.clone())))
            .collect()
    }

    /// The policies these applications compile to. An application that does not compile, or
    /// clashes with one before it (written to the stream by something other than Rollcall's
    /// checks, or between two appends of one change), is left out, loudly: its requests are
    /// denied.
    pub fn policies(&self) -> Policies {
        let (policies, refused) = Policies::compile_each(&self.declared(), self.version);
        for error in refused {
            error!(error = %error, "an application on the stream is left out; its requests are denied");
        }
        policies
    }

    /// What makes the stream hold exactly `desired`: every application of the file
    /// configured as declared, every other one removed.
    pub fn plan(&self, desired: &[(String, ApplicationSpec)]) -> Plan {
        let mut changes = Vec::new();
        let mut wanted = BTreeMap::new();
        for (tenant, spec) in desired {
            wanted.insert((tenant.clone(), spec.name.clone()), spec);
        }
        let mut keys: Vec<&(String, String)> = wanted.keys().collect();
        keys.extend(self.entries.keys().filter(|key| !wanted.contains_key(*key)));
        keys.sort();
        for key in keys {
            let entry = self.entries.get(key).cloned().unwrap_or_default();
            let command = match wanted.get(key) {
                Some(spec) => ApplicationCommand::Configure((*spec).clone()),
                None if entry.state.spec().is_some() => ApplicationCommand::Remove,
                None => continue,
            };
            // Neither command can be refused here: names match their keys and only
            // configured applications are removed.
            let events = application::decide(&entry.state, command).unwrap_or_default();
            if !events.is_empty() {
                changes.push(ApplicationChange {
                    tenant: key.0.clone(),
                    name: key.1.clone(),
                    expected: entry.sequence,
                    version: entry.version,
                    events,
                });
            }
        }
        // Changes that take routes away first (removals, and routes changed to lose a host
        // another change of the plan takes): a host moving from one application to another is
        // never claimed by both between the two writes (which would leave the second
        // application out of the policies in force until its write).
        let taken: Vec<String> = changes
            .iter()
            .flat_map(ApplicationChange::takes)
            .cloned()
            .collect();
        changes.sort_by_key(|change| {
            !(change.removes() || change.gives_up().into_iter().any(|h| taken.contains(h)))
        });
        Plan { changes }
    }
}

impl Folded for Catalog {
    const AGGREGATE: &'static str = ApplicationEvent::AGGREGATE;
    const EVENT: &'static str = "an application event";

    fn version(&self) -> u64 {
        self.version
    }

    fn apply(&mut self, events: &[Delivered]) -> Result<(), String> {
        let mut read = Vec::with_capacity(events.len());
        for delivered in events {
            let envelope = &delivered.envelope;
            if envelope.aggregate_type != ApplicationEvent::AGGREGATE {
                continue;
            }
            let event = ApplicationEvent::from_payload(
                &envelope.event_type,
                envelope.schema_version,
                &envelope.payload,
            )?;
            let name = match &event {
                ApplicationEvent::Configured { application } => application.name.clone(),
                ApplicationEvent::Removed { before } => before.name.clone(),
                _ => match self.name_of(&envelope.tenant, envelope.aggregate_id) {
                    Some(name) => name,
                    None => {
                        return Err(format!(
                            "{} of application {} that was never configured",
                            envelope.event_type, envelope.aggregate_id
                        ))
                    }
                },
            };
            read.push((delivered, name, event));
        }
        for (delivered, name, event) in read {
            let key = (delivered.envelope.tenant.clone(), name);
            let entry = self.entries.entry(key).or_default();
            entry.state = application::evolve(std::mem::take(&mut entry.state), &event);
            entry.sequence = delivered.sequence;
            entry.version = delivered.envelope.version;
            self.version = self.version.max(delivered.sequence);
        }
        Ok(())
    }

    fn skip(&mut self, sequence: u64) {
        self.version = self.version.max(sequence);
    }
}

/// One application's change.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplicationChange {
    /// Its tenant.
    pub tenant: String,
    /// Its name.
    pub name: String,
    /// Its subject's last sequence when planned (the append expects it).
    expected: u64,
    /// Its version when planned.
    version: u64,
    /// What happens to it.
    pub events: Vec<ApplicationEvent>,
}

impl ApplicationChange {
    /// Whether it removes the application.
    pub fn removes(&self) -> bool {
        self.events
            .iter()
            .any(|event| matches!(event, ApplicationEvent::Removed { .. }))
    }

    /// The hosts it takes away from the application.
    fn gives_up(&self) -> Vec<&String> {
        self.events
            .iter()
            .flat_map(|event| match event {
                ApplicationEvent::RoutesChanged { before, after } => before
                    .hosts
                    .iter()
                    .filter(|h| !after.hosts.contains(h))
                    .collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    /// The hosts it gives the application.
    fn takes(&self) -> Vec<&String> {
        self.events
            .iter()
            .flat_map(|event| match event {
                ApplicationEvent::Configured { application } => {
                    application.routes.hosts.iter().collect()
                }
                ApplicationEvent::RoutesChanged { before, after } => after
                    .hosts
                    .iter()
                    .filter(|h| !before.hosts.contains(h))
                    .collect(),
                _ => Vec::new(),
            })
            .collect()
    }
}

/// The changes that make the stream hold a policy file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Per application: removals first, then in tenant and name order.
    pub changes: Vec<ApplicationChange>,
}

impl Plan {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The changes as a person reads them: one line per application (`+` configured, `~`
    /// changed, `-` removed), then what changed, before and after.
    pub fn describe(&self) -> String {
        let mut text = String::new();
        for change in &self.changes {
            let what = format!(
                "application {:?} of tenant {:?}",
                change.name, change.tenant
            );
            for event in &change.events {
                let _ = match event {
                    ApplicationEvent::Configured { application } => writeln!(
                        text,
                        "+ {what}: hosts {:?}, paths {:?}, policies {:?}",
                        application.routes.hosts,
                        application.routes.paths,
                        names(&application.policies)
                    ),
                    ApplicationEvent::RoutesChanged { before, after } => writeln!(
                        text,
                        "~ {what}: hosts {:?} -> {:?}, paths {:?} -> {:?}",
                        before.hosts, after.hosts, before.paths, after.paths
                    ),
                    ApplicationEvent::PolicyChanged { before, after } => writeln!(
                        text,
                        "~ {what}: policies\n    before: {}\n    after:  {}",
                        serde_json::to_string(before).unwrap_or_default(),
                        serde_json::to_string(after).unwrap_or_default()
                    ),
                    ApplicationEvent::Removed { .. } => writeln!(text, "- {what}"),
                };
            }
        }
        text
    }
}

fn names(policies: &[application::PolicySpec]) -> Vec<&str> {
    policies.iter().map(|p| p.name.as_str()).collect()
}

/// Appends a plan, each application's change as one write expecting the sequence it was
/// planned on: a change that another writer overtook is refused (nothing of it is written),
/// and the caller plans again. Returns the last sequence written (0: nothing to write).
///
/// A failure says how many changes were appended before it.
#[instrument(skip_all, fields(changes = plan.changes.len()), err(Debug))]
pub async fn append(
    log: &EventLog,
    plan: &Plan,
    actor: &Actor,
    request_id: &str,
) -> Result<u64, (usize, AppendError)> {
    let now = OffsetDateTime::now_utc();
    let now = now
        .replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now);
    let traceparent = rollcall_telemetry::traceparent();
    let mut last = 0;
    for (done, change) in plan.changes.iter().enumerate() {
        let id = application_id(&change.tenant, &change.name);
        let envelopes: Vec<Envelope> = change
            .events
            .iter()
            .enumerate()
            .map(|(index, event)| Envelope {
                event_id: Uuid::now_v7(),
                tenant: change.tenant.clone(),
                aggregate_type: ApplicationEvent::AGGREGATE.to_owned(),
                aggregate_id: id,
                version: change.version + 1 + index as u64,
                event_type: event.event_type().to_owned(),
                schema_version: event.schema_version(),
                occurred_at: now,
                actor: actor.clone(),
                request_id: Some(request_id.to_owned()),
                traceparent: traceparent.clone(),
                payload: event.to_payload(),
            })
            .collect();
        let subject =
            log.namespace()
                .aggregate_subject(&change.tenant, ApplicationEvent::AGGREGATE, &id);
        last = log
            .append(&subject, change.expected, &envelopes)
            .await
            .map_err(|error| (done, error))?;
    }
    Ok(last)
}

/// How often a plan is made again when another writer came first.
const ATTEMPTS: u32 = 3;

/// Makes the stream hold `desired`: reads the applications, plans, appends; planned again
/// when another writer came first. Returns what was written (over every attempt) and the
/// sequence up to which the stream holds `desired`.
#[instrument(skip_all, err)]
pub async fn apply_declared(
    log: &EventLog,
    desired: &[(String, ApplicationSpec)],
    actor: &Actor,
    request_id: &str,
) -> Result<(Plan, u64), String> {
    let mut catalog = Catalog::default();
    let mut written = Plan::default();
    for attempt in 1..=ATTEMPTS {
        folded::catch_up(log, &mut catalog)
            .await
            .map_err(|e| e.to_string())?;
        let plan = catalog.plan(desired);
        let outcome = append(log, &plan, actor, request_id).await;
        // What was appended before a conflict stays appended.
        written.changes.extend(
            plan.changes.into_iter().take(
                outcome
                    .as_ref()
                    .map_or_else(|(done, _)| *done, |_| usize::MAX),
            ),
        );
        match outcome {
            // The catalog was read after every earlier attempt's appends: its version covers
            // them.
            Ok(sequence) => return Ok((written, sequence.max(catalog.version()))),
            Err((_, AppendError::Conflict { .. })) if attempt < ATTEMPTS => {
                warn!(
                    attempt,
                    "another writer changed the applications first; planning again"
                );
                let pause = 20 + u64::from(jitter() % 80);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            Err((_, error)) => return Err(error.to_string()),
        }
    }
    Err("the applications kept changing while they were written; try again".into())
}

/// A random byte, for spreading retries.
fn jitter() -> u8 {
    let mut byte = [0u8];
    let _ = getrandom::fill(&mut byte);
    byte[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollcall_domain::application::{Action, PolicySpec, Routes, RuleSpec};

    fn spec(name: &str, host: &str) -> ApplicationSpec {
        ApplicationSpec {
            name: name.into(),
            routes: Routes {
                hosts: vec![host.into()],
                paths: Vec::new(),
                url: None,
            },
            policies: vec![PolicySpec {
                name: "everyone".into(),
                action: Action::Allow,
                include: vec![RuleSpec {
                    everyone: Some(true),
                    ..Default::default()
                }],
                require: Vec::new(),
                exclude: Vec::new(),
            }],
        }
    }

    /// The message a plan's change would be, at stream sequence `sequence`.
    fn delivered(change: &ApplicationChange, sequence: u64) -> Vec<Delivered> {
        change
            .events
            .iter()
            .enumerate()
            .map(|(position, event)| Delivered {
                sequence,
                position: position as u32,
                envelope: Envelope {
                    event_id: Uuid::now_v7(),
                    tenant: change.tenant.clone(),
                    aggregate_type: ApplicationEvent::AGGREGATE.into(),
                    aggregate_id: application_id(&change.tenant, &change.name),
                    version: change.version + 1 + position as u64,
                    event_type: event.event_type().into(),
                    schema_version: 1,
                    occurred_at: OffsetDateTime::UNIX_EPOCH,
                    actor: Actor::Operator { name: "t".into() },
                    request_id: None,
                    traceparent: None,
                    payload: event.to_payload(),
                },
            })
            .collect()
    }

    /// Applies a plan as the stream would, from sequence `next`; returns the next sequence.
    fn write(catalog: &mut Catalog, plan: &Plan, mut next: u64) -> u64 {
        for change in &plan.changes {
            catalog.apply(&delivered(change, next)).unwrap();
            next += 1;
        }
        next
    }

    #[test]
    fn a_host_moving_between_two_applications_is_given_up_before_it_is_taken() {
        let mut catalog = Catalog::default();
        let first = vec![
            ("t".to_owned(), spec("alpha", "alpha.test")),
            ("t".to_owned(), spec("beta", "beta.test")),
        ];
        let plan = catalog.plan(&first);
        write(&mut catalog, &plan, 5);
        // beta.test moves from beta to alpha: alpha sorts first, beta's change goes first.
        let mut alpha = spec("alpha", "alpha.test");
        alpha.routes.hosts.push("beta.test".into());
        let second = vec![
            ("t".to_owned(), alpha),
            ("t".to_owned(), spec("beta", "beta2.test")),
        ];
        let plan = catalog.plan(&second);
        let names: Vec<&str> = plan.changes.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["beta", "alpha"]);
    }

    #[test]
    fn a_plan_removes_first_expects_each_applications_last_sequence_and_converges() {
        let mut catalog = Catalog::default();
        let first = vec![
            ("t".to_owned(), spec("wiki", "wiki.test")),
            ("t".to_owned(), spec("old", "old.test")),
        ];
        let plan = catalog.plan(&first);
        assert_eq!(plan.changes.len(), 2);
        assert!(plan
            .changes
            .iter()
            .all(|c| c.expected == 0 && c.version == 0));
        let next = write(&mut catalog, &plan, 5);
        assert_eq!(
            (catalog.version(), catalog.plan(&first)),
            (6, Plan::default())
        );

        // `old` goes, `wiki` moves to another host, `new` comes: the removal is planned first.
        let mut moved = spec("wiki", "wiki2.test");
        moved.policies[0].name = "all".into();
        let second = vec![
            ("t".to_owned(), moved),
            ("t".to_owned(), spec("new", "old.test")),
        ];
        let plan = catalog.plan(&second);
        let kinds: Vec<(&str, Vec<&str>)> = plan
            .changes
            .iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    c.events.iter().map(|e| e.event_type()).collect(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("old", vec!["application.removed"]),
                ("new", vec!["application.configured"]),
                (
                    "wiki",
                    vec!["application.routes_changed", "application.policy_changed"]
                )
            ]
        );
        let wiki = plan.changes.iter().find(|c| c.name == "wiki").unwrap();
        assert_eq!((wiki.expected, wiki.version), (6, 1));
        let next = write(&mut catalog, &plan, next);
        assert_eq!(catalog.plan(&second), Plan::default());
        let names: Vec<String> = catalog
            .declared()
            .into_iter()
            .map(|(_, s)| s.name)
            .collect();
        assert_eq!(names, ["new", "wiki"]);

        // A removed application configured again expects its removal's sequence.
        let plan = catalog.plan(&first);
        let old = plan.changes.iter().find(|c| c.name == "old").unwrap();
        assert_eq!((old.expected, old.version), (7, 2));
        write(&mut catalog, &plan, next);
        assert_eq!(catalog.plan(&first), Plan::default());
        assert_eq!(catalog.policies().applications.len(), 2);
    }

    #[test]
    fn a_change_to_an_application_never_configured_is_refused_and_changes_nothing() {
        let mut catalog = Catalog::default();
        // A removal or configuration names its application; a policy change of an id never
        // configured cannot be placed.
        let orphan = ApplicationChange {
            tenant: "t".into(),
            name: "ghost".into(),
            expected: 0,
            version: 0,
            events: vec![ApplicationEvent::PolicyChanged {
                before: Vec::new(),
                after: Vec::new(),
            }],
        };
        assert!(catalog.apply(&delivered(&orphan, 3)).is_err());
        assert_eq!(catalog.version(), 0);
        assert!(catalog.declared().is_empty());
    }
}
