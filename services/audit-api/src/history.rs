//! Reconstructions from the audited events: a user or group as of an instant, and a group's
//! membership intervals.

use std::collections::BTreeMap;

use rollcall_domain::group::{self, Group, GroupEvent};
use rollcall_domain::user::{self, User, UserEvent};
use rollcall_domain::EventKind;
use rollcall_scim::resource::tidy;
use rollcall_scim::{GROUP_RESOURCE, USER_RESOURCE};
use rollcall_store::audit::AuditRow;
use serde::Serialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

/// What an event looks like to an auditor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditedEvent {
    /// Stream sequence.
    pub sequence: i64,
    /// Event id.
    pub event_id: Uuid,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// When.
    pub occurred_at: String,
    /// `user` or `group`.
    pub aggregate_type: String,
    /// Which user or group.
    pub aggregate_id: Uuid,
    /// The aggregate's version after it.
    pub version: i64,
    /// Who: the SCIM token's id, or an operator.
    pub actor: Value,
    /// The request that caused it.
    pub request_id: Option<String>,
    /// The trace it belongs to.
    pub trace_id: Option<String>,
    /// The event (attribute changes carry each path with its value before and after).
    pub payload: Value,
    /// Its link in the tenant's hash chain (hex).
    pub hash: String,
}

/// Formats an instant as RFC 3339.
pub fn timestamp(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

impl From<&AuditRow> for AuditedEvent {
    fn from(row: &AuditRow) -> Self {
        Self {
            sequence: row.sequence,
            event_id: row.event_id,
            event_type: row.event_type.clone(),
            occurred_at: timestamp(row.occurred_at),
            aggregate_type: row.aggregate_type.clone(),
            aggregate_id: row.aggregate_id,
            version: row.version,
            actor: row.actor.0.clone(),
            request_id: row.request_id.clone(),
            trace_id: row.trace_id.clone(),
            payload: row.payload.0.clone(),
            hash: hex::encode(&row.hash),
        }
    }
}

/// The state of an aggregate at an instant.
#[derive(Debug, Clone, PartialEq)]
pub enum AsOf {
    /// It did not exist yet.
    NotYet,
    /// It had been deleted.
    Deleted(OffsetDateTime),
    /// Its SCIM representation then.
    Resource(Value),
}

fn meta(resource_type: &str, rows: &[&AuditRow]) -> Value {
    let first = rows.first().map(|r| timestamp(r.occurred_at));
    let last = rows.last().map(|r| timestamp(r.occurred_at));
    json!({"resourceType": resource_type, "created": first, "lastModified": last, "version": format!("W/\"{}\"", rows.len())})
}

/// A user as of `at`, from its events (in stream order).
pub fn user_as_of(id: Uuid, rows: &[AuditRow], at: OffsetDateTime) -> Result<AsOf, String> {
    let until: Vec<&AuditRow> = rows.iter().filter(|r| r.occurred_at <= at).collect();
    let mut state = User::default();
    for row in &until {
        let event =
            UserEvent::from_payload(&row.event_type, row.schema_version as u32, &row.payload.0)?;
        state = user::evolve(state, &event);
    }
    Ok(match state {
        User::Absent => AsOf::NotYet,
        User::Deleted | User::Erased => AsOf::Deleted(until.last().map_or(at, |r| r.occurred_at)),
        User::Active(attributes) | User::Inactive(attributes) => {
            let mut document = attributes;
            document.insert("id".into(), Value::String(id.to_string()));
            document.insert("meta".into(), meta("User", &until));
            let mut document = Value::Object(document);
            tidy(&USER_RESOURCE, &mut document);
            AsOf::Resource(document)
        }
    })
}

/// A group, with its members, as of `at`.
pub fn group_as_of(id: Uuid, rows: &[AuditRow], at: OffsetDateTime) -> Result<AsOf, String> {
    let until: Vec<&AuditRow> = rows.iter().filter(|r| r.occurred_at <= at).collect();
    let mut state = Group::default();
    for row in &until {
        let event =
            GroupEvent::from_payload(&row.event_type, row.schema_version as u32, &row.payload.0)?;
        state = group::evolve(state, &event);
    }
    Ok(match state {
        Group::Absent => AsOf::NotYet,
        Group::Deleted => AsOf::Deleted(until.last().map_or(at, |r| r.occurred_at)),
        Group::Active(state) => {
            let mut document = state.attributes.clone();
            document.insert("id".into(), Value::String(id.to_string()));
            let members: Vec<Value> = state
                .members
                .values()
                .map(|m| json!({"value": m.value, "type": m.kind.as_deref().unwrap_or("User")}))
                .collect();
            if !members.is_empty() {
                document.insert("members".into(), Value::Array(members));
            }
            document.insert("meta".into(), meta("Group", &until));
            let mut document = Value::Object(document);
            tidy(&GROUP_RESOURCE, &mut document);
            AsOf::Resource(document)
        }
    })
}

/// The event that opened or closed an interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cause {
    /// When.
    pub at: String,
    /// Which event.
    pub event_id: Uuid,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The request that caused it.
    pub request_id: Option<String>,
    /// Who.
    pub actor: Value,
}

/// One stretch of membership.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Interval {
    /// When it began.
    pub from: String,
    /// When it ended (absent: still a member).
    pub to: Option<String>,
    /// What added the member.
    pub added_by: Cause,
    /// What removed the member (absent: still a member).
    pub removed_by: Option<Cause>,
}

/// A member's intervals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberIntervals {
    /// The member's id.
    pub member: String,
    /// Its intervals overlapping the range, in order.
    pub intervals: Vec<Interval>,
}

fn cause(row: &AuditRow) -> Cause {
    Cause {
        at: timestamp(row.occurred_at),
        event_id: row.event_id,
        event_type: row.event_type.clone(),
        request_id: row.request_id.clone(),
        actor: row.actor.0.clone(),
    }
}

/// A finished or open stretch: member id, start, end, what opened it, what closed it.
type Stretch = (
    String,
    OffsetDateTime,
    Option<OffsetDateTime>,
    Cause,
    Option<Cause>,
);

/// Each member's intervals that overlap `[from, to)`, from the group's events.
pub fn intervals(
    rows: &[AuditRow],
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<Vec<MemberIntervals>, String> {
    // Open intervals by member key: (display id, start instant, cause).
    let mut open: BTreeMap<String, (String, OffsetDateTime, Cause)> = BTreeMap::new();
    let mut closed: Vec<Stretch> = Vec::new();
    for row in rows {
        let event =
            GroupEvent::from_payload(&row.event_type, row.schema_version as u32, &row.payload.0)?;
        match &event {
            GroupEvent::Created { members, .. } | GroupEvent::MembersAdded { members } => {
                for member in members {
                    open.entry(member.key())
                        .or_insert_with(|| (member.value.clone(), row.occurred_at, cause(row)));
                }
            }
            GroupEvent::MembersRemoved { members } => {
                for member in members {
                    if let Some((value, start, added)) = open.remove(&member.to_lowercase()) {
                        closed.push((value, start, Some(row.occurred_at), added, Some(cause(row))));
                    }
                }
            }
            GroupEvent::Deleted => {
                for (_, (value, start, added)) in std::mem::take(&mut open) {
                    closed.push((value, start, Some(row.occurred_at), added, Some(cause(row))));
                }
            }
            _ => {}
        }
    }
    for (_, (value, start, added)) in open {
        closed.push((value, start, None, added, None));
    }
    let mut by_member: BTreeMap<String, MemberIntervals> = BTreeMap::new();
    closed.sort_by_key(|(_, start, ..)| *start);
    for (value, start, end, added_by, removed_by) in closed {
        let overlaps = start < to && end.is_none_or(|end| end > from);
        if !overlaps {
            continue;
        }
        let entry = by_member
            .entry(value.to_lowercase())
            .or_insert_with(|| MemberIntervals {
                member: value.clone(),
                intervals: Vec::new(),
            });
        entry.intervals.push(Interval {
            from: timestamp(start),
            to: end.map(timestamp),
            added_by,
            removed_by,
        });
    }
    Ok(by_member.into_values().collect())
}
