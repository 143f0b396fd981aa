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

use futures::StreamExt;
use rollcall_domain::application::{
    self, application_id, Application, ApplicationCommand, ApplicationEvent, ApplicationSpec,
};
use rollcall_domain::EventKind;
use rollcall_eventlog::consumer::{decode, Delivered};
use rollcall_eventlog::{Actor, AppendError, Envelope, EventLog, LoadError};
use time::OffsetDateTime;
use tracing::{error, warn};
use uuid::Uuid;

use crate::policy::{Declared, Policies};

/// How long reading the application events up to the stream's head may take.
const READ_WAIT: Duration = Duration::from_secs(30);

/// The subjects of every application's events in the namespace of `log`.
fn subjects(log: &EventLog) -> String {
    format!(
        "{}.events.*.{}.*",
        log.namespace().as_str(),
        ApplicationEvent::AGGREGATE
    )
}

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
    /// The stream sequence of the last application event folded (0: none).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Folds the events of one message. An event that cannot be read is an error (the
    /// catalog keeps what it had).
    pub fn apply(&mut self, events: &[Delivered]) -> Result<(), String> {
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

    /// The policies these applications compile to. An application that does not compile
    /// (written to the stream by something other than Rollcall) is left out, loudly: its
    /// requests are denied.
    pub fn policies(&self) -> Policies {
        let mut declared = self.declared();
        loop {
            match Policies::compile(&declared, self.version) {
                Ok(policies) => return policies,
                Err(error) => {
                    let Some(bad) = declared
                        .iter()
                        .position(|one| Policies::compile(std::slice::from_ref(one), 0).is_err())
                    else {
                        error!(error = %error, "the applications on the stream do not compile; every request is denied");
                        return Policies {
                            applications: Vec::new(),
                            version: self.version,
                        };
                    };
                    let (tenant, spec) = declared.remove(bad);
                    error!(tenant, application = spec.name, error = %error, "an application on the stream does not compile; its requests are denied");
                }
            }
        }
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
                changes.push(Change {
                    tenant: key.0.clone(),
                    name: key.1.clone(),
                    expected: entry.sequence,
                    version: entry.version,
                    events,
                });
            }
        }
        Plan { changes }
    }
}

/// One application's change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
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

/// The changes that make the stream hold a policy file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Per application, in tenant and name order.
    pub changes: Vec<Change>,
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

/// Reads every application event up to the stream's head.
pub async fn read(log: &EventLog) -> Result<Catalog, LoadError> {
    let mut catalog = Catalog::default();
    catch_up(log, &mut catalog).await?;
    Ok(catalog)
}

/// Folds the application events after `catalog`'s version up to the stream's head.
pub async fn catch_up(log: &EventLog, catalog: &mut Catalog) -> Result<(), LoadError> {
    let nats = |error: &dyn std::fmt::Display| LoadError::Nats(error.to_string());
    let read = async {
        let consumer = log
            .stream()
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: subjects(log),
                deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: catalog.version + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| nats(&e))?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(());
        }
        let mut messages = consumer.messages().await.map_err(|e| nats(&e))?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| nats(&e))?;
            let pending = message.info().map_err(|e| nats(&e))?.pending;
            let events = decode(&message)?;
            catalog
                .apply(&events)
                .map_err(|reason| LoadError::Corrupt {
                    sequence: events.first().map_or(0, |e| e.sequence),
                    reason,
                })?;
            if pending == 0 {
                return Ok(());
            }
        }
        Err(LoadError::Nats("the stream's messages ended".into()))
    };
    tokio::time::timeout(READ_WAIT, read)
        .await
        .map_err(|_| LoadError::Nats("reading the applications timed out".into()))?
}

/// Appends a plan, each application's change as one write expecting the sequence it was
/// planned on: a change that another writer overtook is refused (nothing of it is written),
/// and the caller plans again. Returns the last sequence written (0: nothing to write).
pub async fn append(
    log: &EventLog,
    plan: &Plan,
    actor: &Actor,
    request_id: &str,
) -> Result<u64, AppendError> {
    let now = OffsetDateTime::now_utc();
    let now = now
        .replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now);
    let traceparent = rollcall_telemetry::traceparent();
    let mut last = 0;
    for change in &plan.changes {
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
        last = log.append(&subject, change.expected, &envelopes).await?;
    }
    Ok(last)
}

/// Makes the stream hold `desired`: reads the applications, plans, appends; planned again
/// when another writer came first (a few times). Returns the plan that was written and the
/// sequence of its last write.
pub async fn apply_declared(
    log: &EventLog,
    desired: &[(String, ApplicationSpec)],
    actor: &Actor,
    request_id: &str,
) -> Result<(Plan, u64), String> {
    let mut catalog = Catalog::default();
    for attempt in 1..=5 {
        catch_up(log, &mut catalog)
            .await
            .map_err(|e| e.to_string())?;
        let plan = catalog.plan(desired);
        match append(log, &plan, actor, request_id).await {
            Ok(sequence) => return Ok((plan, sequence)),
            Err(AppendError::Conflict { .. }) if attempt < 5 => {
                warn!(
                    attempt,
                    "another writer changed the applications first; planning again"
                );
            }
            Err(error) => return Err(error.to_string()),
        }
    }
    Err("the applications kept changing while they were written; try again".into())
}

/// The application events after stream sequence `after`, as they are appended.
pub async fn follow(
    log: &EventLog,
    after: u64,
) -> Result<async_nats::jetstream::consumer::pull::Ordered, String> {
    log.stream()
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: subjects(log),
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?
        .messages()
        .await
        .map_err(|e| e.to_string())
}
