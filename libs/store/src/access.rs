//! What access decisions need, kept by the projector: session revocations, and an outbox of
//! access state to publish to NATS, written in the projection transaction.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::types::Json;
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::user::UserRow;
use crate::{Store, StoreError};

/// One revocation.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RevocationRow {
    /// The event's stream sequence.
    pub sequence: i64,
    /// The event's place in its message (0 unless the message is a commit of several events).
    pub position: i32,
    /// The event.
    pub event_id: Uuid,
    /// The tenant.
    pub tenant: String,
    /// The user.
    pub user_id: Uuid,
    /// One session, or none for every session issued before `not_before`.
    pub session_id: Option<String>,
    /// Sessions issued before this are void.
    pub not_before: Option<OffsetDateTime>,
    /// Why.
    pub reason: String,
    /// When.
    pub created_at: OffsetDateTime,
}

/// What the outbox holds for publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    /// A user's access state changed.
    User,
    /// A group's name or existence changed.
    Group,
    /// A revocation happened (the payload is the message).
    Revocation,
}

impl OutboxKind {
    fn as_str(self) -> &'static str {
        match self {
            OutboxKind::User => "user",
            OutboxKind::Group => "group",
            OutboxKind::Revocation => "revocation",
        }
    }
}

/// One outbox entry.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct OutboxRow {
    /// Its position.
    pub id: i64,
    /// The event sequence that caused it.
    pub sequence: i64,
    /// `user`, `group` or `revocation`.
    pub kind: String,
    /// The tenant.
    pub tenant: String,
    /// The user or group.
    pub subject_id: Uuid,
    /// The revocation message.
    pub payload: Option<Json<Value>>,
}

/// A user's access facts as the read models hold them.
#[derive(Debug, Clone, PartialEq)]
pub struct UserAccessRow {
    /// The user.
    pub user: UserRow,
    /// The latest instant before which sessions are void.
    pub not_before: Option<OffsetDateTime>,
    /// Revoked sessions and when.
    pub revoked_sessions: Vec<(String, OffsetDateTime)>,
    /// Groups the user is a direct member of.
    pub groups: Vec<Uuid>,
}

/// A revocation as the access publisher reads it: tenant, user, session (none: every
/// session), not before, and when.
type RevocationFacts = (
    String,
    Uuid,
    Option<String>,
    Option<OffsetDateTime>,
    OffsetDateTime,
);

/// Records a revocation.
pub async fn record(connection: &mut PgConnection, row: &RevocationRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO revocation (sequence, position, event_id, tenant, user_id, session_id, not_before, reason, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(row.sequence)
    .bind(row.position)
    .bind(row.event_id)
    .bind(&row.tenant)
    .bind(row.user_id)
    .bind(&row.session_id)
    .bind(row.not_before)
    .bind(&row.reason)
    .bind(row.created_at)
    .execute(connection)
    .await?;
    Ok(())
}

/// Adds an entry to the outbox.
pub async fn enqueue(
    connection: &mut PgConnection,
    sequence: u64,
    kind: OutboxKind,
    tenant: &str,
    subject: Uuid,
    payload: Option<Value>,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO access_outbox (sequence, kind, tenant, subject_id, payload) VALUES ($1, $2, $3, $4, $5)")
        .bind(sequence as i64)
        .bind(kind.as_str())
        .bind(tenant)
        .bind(subject)
        .bind(payload.map(Json))
        .execute(connection)
        .await?;
    Ok(())
}

impl Store {
    /// The oldest outbox entries of partition `index` of `partitions` (every entry when the
    /// installation has one partition), with how many events are quarantined and unresolved,
    /// read in the same statement: as of the same commits, so that an entry is never published
    /// as if nothing were quarantined while a quarantine committed with or before it is.
    pub async fn outbox_and_quarantine(
        &self,
        index: u16,
        partitions: u16,
        limit: usize,
    ) -> Result<(Vec<OutboxRow>, i64), StoreError> {
        type Counted = (i64, i64, String, String, Uuid, Option<Json<Value>>, i64);
        let rows: Vec<Counted> = sqlx::query_as(
            "SELECT id, sequence, kind, tenant, subject_id, payload,
                    (SELECT count(*) FROM projection_quarantine WHERE resolved_at IS NULL)
             FROM access_outbox
             WHERE $2 <= 1 OR rollcall_partition(tenant, $2) = $3 ORDER BY id LIMIT $1",
        )
        .bind(limit as i64)
        .bind(i32::from(partitions))
        .bind(i32::from(index))
        .fetch_all(self.pool())
        .await?;
        let quarantined = rows.first().map_or(0, |row| row.6);
        let rows = rows
            .into_iter()
            .map(
                |(id, sequence, kind, tenant, subject_id, payload, _)| OutboxRow {
                    id,
                    sequence,
                    kind,
                    tenant,
                    subject_id,
                    payload,
                },
            )
            .collect();
        Ok((rows, quarantined))
    }

    /// Removes published outbox entries.
    pub async fn clear_outbox(&self, up_to: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM access_outbox WHERE id <= $1")
            .bind(up_to)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Removes these published outbox entries.
    pub async fn clear_outbox_entries(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query("DELETE FROM access_outbox WHERE id = ANY ($1)")
            .bind(ids)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The access facts of the users of these (tenant, id) keys that exist, read in three
    /// statements whatever their number (the access publisher reads a round's users at once).
    pub async fn users_access(
        &self,
        keys: &[(&str, Uuid)],
    ) -> Result<HashMap<(String, Uuid), UserAccessRow>, StoreError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let (tenants, ids): (Vec<&str>, Vec<Uuid>) = keys.iter().copied().unzip();
        let members: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        // Three statements on three connections at once.
        let users = crate::user::many(self.pool(), &tenants, &ids);
        let revocations = sqlx::query_as::<_, RevocationFacts>(
            "SELECT tenant, user_id, session_id, not_before, created_at FROM revocation
             WHERE (tenant, user_id) IN (SELECT * FROM unnest($1::text[], $2::uuid[]))
             ORDER BY tenant, user_id, sequence, position",
        )
        .bind(&tenants)
        .bind(&ids)
        .fetch_all(self.pool());
        let groups = sqlx::query_as::<_, (String, String, Uuid)>(
            "SELECT tenant, member_key, group_id FROM group_member
             WHERE (tenant, member_key) IN (SELECT * FROM unnest($1::text[], $2::text[]))
             ORDER BY tenant, member_key, group_id",
        )
        .bind(&tenants)
        .bind(&members)
        .fetch_all(self.pool());
        let (users, revocations, groups) = futures::try_join!(
            users,
            async { revocations.await.map_err(StoreError::from) },
            async { groups.await.map_err(StoreError::from) },
        )?;
        let mut access: HashMap<(String, Uuid), UserAccessRow> = users
            .into_iter()
            .map(|user| {
                let key = (user.tenant.clone(), user.id);
                let row = UserAccessRow {
                    user,
                    not_before: None,
                    revoked_sessions: Vec::new(),
                    groups: Vec::new(),
                };
                (key, row)
            })
            .collect();
        for (tenant, user, session, not_before, at) in revocations {
            if let Some(row) = access.get_mut(&(tenant, user)) {
                row.not_before = row.not_before.max(not_before);
                if let Some(session) = session {
                    row.revoked_sessions.push((session, at));
                }
            }
        }
        for (tenant, member, group) in groups {
            let Ok(user) = Uuid::parse_str(&member) else {
                continue;
            };
            if let Some(row) = access.get_mut(&(tenant, user)) {
                row.groups.push(group);
            }
        }
        Ok(access)
    }

    /// Every revocation of a user, in order.
    pub async fn revocations(
        &self,
        tenant: &str,
        user: Uuid,
    ) -> Result<Vec<RevocationRow>, StoreError> {
        Ok(sqlx::query_as::<_, RevocationRow>(
            "SELECT sequence, position, event_id, tenant, user_id, session_id, not_before, reason, created_at
             FROM revocation WHERE tenant = $1 AND user_id = $2 ORDER BY sequence, position",
        )
        .bind(tenant)
        .bind(user)
        .fetch_all(self.pool())
        .await?)
    }
}

/// One outbox entry to write.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// The event sequence that caused it.
    pub sequence: u64,
    /// What changed.
    pub kind: OutboxKind,
    /// The tenant.
    pub tenant: String,
    /// The user or group.
    pub subject: Uuid,
    /// The revocation message, for revocations.
    pub payload: Option<Value>,
}

/// Adds many entries to the outbox with one statement per 5,000 entries.
pub async fn enqueue_many(
    connection: &mut PgConnection,
    entries: &[OutboxEntry],
) -> Result<(), StoreError> {
    for chunk in entries.chunks(5_000) {
        let mut builder = sqlx::QueryBuilder::new(
            "INSERT INTO access_outbox (sequence, kind, tenant, subject_id, payload) ",
        );
        builder.push_values(chunk, |mut b, entry| {
            b.push_bind(entry.sequence as i64)
                .push_bind(entry.kind.as_str())
                .push_bind(&entry.tenant)
                .push_bind(entry.subject)
                .push_bind(entry.payload.clone().map(Json));
        });
        builder.build().execute(&mut *connection).await?;
    }
    Ok(())
}

/// Records many revocations, in one statement per 5,000.
pub async fn record_many(
    connection: &mut PgConnection,
    rows: &[RevocationRow],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(5_000) {
        let mut builder = sqlx::QueryBuilder::new(
            "INSERT INTO revocation (sequence, position, event_id, tenant, user_id, session_id, not_before, reason, created_at) ",
        );
        builder.push_values(chunk, |mut b, row| {
            b.push_bind(row.sequence)
                .push_bind(row.position)
                .push_bind(row.event_id)
                .push_bind(&row.tenant)
                .push_bind(row.user_id)
                .push_bind(&row.session_id)
                .push_bind(row.not_before)
                .push_bind(&row.reason)
                .push_bind(row.created_at);
        });
        builder.build().execute(&mut *connection).await?;
    }
    Ok(())
}
