//! The `audit_event` table: every event with its stream sequence and position (the events of
//! one write share a sequence), tenant, aggregate, type, actor, time, request, trace and
//! payload. Stream order is `(sequence, position)`.

use serde_json::Value;
use sqlx::types::Json;
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use rollcall_scim::case::fold;

use crate::{Store, StoreError};

/// One audited event.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AuditRow {
    /// Its stream sequence.
    pub sequence: i64,
    /// Its place in its message (0 unless the message is a commit of several events).
    pub position: i32,
    /// The event's id.
    pub event_id: Uuid,
    /// The tenant.
    pub tenant: String,
    /// `user` or `group`.
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: Uuid,
    /// The aggregate's version after the event.
    pub version: i64,
    /// The event's wire name.
    pub event_type: String,
    /// The payload's schema version.
    pub schema_version: i32,
    /// Who caused it.
    pub actor: Json<Value>,
    /// The request that caused it.
    pub request_id: Option<String>,
    /// The trace it belongs to.
    pub trace_id: Option<String>,
    /// The full W3C trace context.
    pub traceparent: Option<String>,
    /// When it happened.
    pub occurred_at: OffsetDateTime,
    /// The event.
    pub payload: Json<Value>,
    /// The previous link of the tenant's chain.
    pub prev_hash: Vec<u8>,
    /// SHA-256(prev_hash ‖ canonical bytes of the event).
    pub hash: Vec<u8>,
}

/// The columns of an audit row, in `AuditRow` order.
pub const COLUMNS: &str = "sequence, position, event_id, tenant, aggregate_type, aggregate_id, version, event_type, schema_version, actor, request_id, trace_id, traceparent, occurred_at, payload, prev_hash, hash";

/// Records an event.
pub async fn insert(connection: &mut PgConnection, row: &AuditRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_event (sequence, position, event_id, tenant, aggregate_type, aggregate_id, version, event_type,
                                  schema_version, actor, request_id, trace_id, traceparent, occurred_at, payload, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
    )
    .bind(row.sequence)
    .bind(row.position)
    .bind(row.event_id)
    .bind(&row.tenant)
    .bind(&row.aggregate_type)
    .bind(row.aggregate_id)
    .bind(row.version)
    .bind(&row.event_type)
    .bind(row.schema_version)
    .bind(&row.actor)
    .bind(&row.request_id)
    .bind(&row.trace_id)
    .bind(&row.traceparent)
    .bind(row.occurred_at)
    .bind(&row.payload)
    .bind(&row.prev_hash)
    .bind(&row.hash)
    .execute(connection)
    .await?;
    Ok(())
}

/// The head of a tenant's chain (sequence and hash), locked until the transaction ends.
pub async fn lock_chain_head(
    connection: &mut PgConnection,
    tenant: &str,
) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
    Ok(
        sqlx::query_as("SELECT sequence, hash FROM audit_chain WHERE tenant = $1 FOR UPDATE")
            .bind(tenant)
            .fetch_optional(connection)
            .await?,
    )
}

/// Moves a tenant's chain head.
pub async fn set_chain_head(
    connection: &mut PgConnection,
    tenant: &str,
    sequence: i64,
    hash: &[u8],
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_chain (tenant, sequence, hash) VALUES ($1, $2, $3)
         ON CONFLICT (tenant) DO UPDATE SET sequence = EXCLUDED.sequence, hash = EXCLUDED.hash",
    )
    .bind(tenant)
    .bind(sequence)
    .bind(hash)
    .execute(connection)
    .await?;
    Ok(())
}

impl Store {
    /// Every audited event of one aggregate, in stream order.
    pub async fn audit_events(
        &self,
        tenant: &str,
        aggregate_id: Uuid,
    ) -> Result<Vec<AuditRow>, StoreError> {
        Ok(sqlx::query_as::<_, AuditRow>(&format!("SELECT {COLUMNS} FROM audit_event WHERE tenant = $1 AND aggregate_id = $2 ORDER BY sequence, position"))
        .bind(tenant)
        .bind(aggregate_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// A tenant's user events whose personal fields are sealed (provisionings and attribute
    /// changes): what a lookup by userName or externalId opens and compares, since PostgreSQL
    /// cannot look into them.
    pub async fn audit_sealed_user_events(
        &self,
        tenant: &str,
    ) -> Result<Vec<AuditRow>, StoreError> {
        Ok(sqlx::query_as::<_, AuditRow>(&format!(
            "SELECT {COLUMNS} FROM audit_event WHERE tenant = $1 AND aggregate_type = 'user'
               AND schema_version = 2
               AND event_type IN ('user.provisioned', 'user.attributes_changed')
             ORDER BY sequence, position"
        ))
        .bind(tenant)
        .fetch_all(self.pool())
        .await?)
    }

    /// Users deleted before `cutoff` and not erased yet (tenant, id), oldest deletion first, at
    /// most `limit`.
    pub async fn users_deleted_before(
        &self,
        cutoff: OffsetDateTime,
        limit: i64,
    ) -> Result<Vec<(String, Uuid)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT d.tenant, d.aggregate_id FROM audit_event d
              WHERE d.event_type = 'user.deleted' AND d.occurred_at < $1
                AND NOT EXISTS (SELECT 1 FROM audit_event e
                                 WHERE e.tenant = d.tenant AND e.aggregate_id = d.aggregate_id
                                   AND e.event_type = 'user.erased')
                AND NOT EXISTS (SELECT 1 FROM public.personal_data_key k
                                 WHERE k.tenant = d.tenant AND k.user_id = d.aggregate_id
                                   AND k.erased_at IS NOT NULL)
              ORDER BY d.sequence LIMIT $2",
        )
        .bind(cutoff)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// The identity links (`identity.linked`) of a user, in stream order.
    pub async fn audit_identity_links(
        &self,
        tenant: &str,
        user: Uuid,
    ) -> Result<Vec<AuditRow>, StoreError> {
        Ok(sqlx::query_as::<_, AuditRow>(&format!(
            "SELECT {COLUMNS} FROM audit_event WHERE tenant = $1 AND aggregate_type = 'identity'
               AND payload->>'user_id' = $2 ORDER BY sequence, position"
        ))
        .bind(tenant)
        .bind(user.to_string())
        .fetch_all(self.pool())
        .await?)
    }

    /// The head of a tenant's chain (sequence and hash), if it has events.
    pub async fn chain_head(&self, tenant: &str) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT sequence, hash FROM audit_chain WHERE tenant = $1")
                .bind(tenant)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// How many events are audited in all.
    pub async fn audit_count(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_event")
            .fetch_one(self.pool())
            .await?;
        Ok(count as u64)
    }
}

/// A search over audited events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only these event types.
    pub event_type: Option<String>,
    /// Only events by this actor (a token id or an operator name).
    pub actor: Option<String>,
    /// Only events of this aggregate.
    pub aggregate: Option<Uuid>,
    /// Only events at or after this instant.
    pub from: Option<OffsetDateTime>,
    /// Only events before this instant.
    pub to: Option<OffsetDateTime>,
    /// Only events after this stream sequence (keyset pagination: a page ends with a whole
    /// message, so that the next one starts after it).
    pub after: Option<i64>,
    /// Only events before this stream sequence.
    pub before: Option<i64>,
    /// At most this many.
    pub limit: i64,
}

impl Store {
    /// Events of a tenant matching a query, in stream order: `query.limit` of them, and more
    /// when the last one's message (a commit) has more that match, so that a page never ends
    /// within a message and the next page may start after its sequence.
    pub async fn audit_search(
        &self,
        tenant: &str,
        query: &AuditQuery,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let mut rows = self.audit_search_page(tenant, query, None).await?;
        if rows.len() as i64 >= query.limit {
            if let Some(last) = rows.last() {
                let rest = (last.sequence, last.position);
                rows.extend(self.audit_search_page(tenant, query, Some(rest)).await?);
            }
        }
        Ok(rows)
    }

    /// A page of [`Store::audit_search`]; with `rest`, the events of that message after that
    /// position instead.
    async fn audit_search_page(
        &self,
        tenant: &str,
        query: &AuditQuery,
        rest: Option<(i64, i32)>,
    ) -> Result<Vec<AuditRow>, StoreError> {
        Ok(sqlx::query_as::<_, AuditRow>(&format!(
            "SELECT {COLUMNS} FROM audit_event
             WHERE tenant = $1
               AND ($2::text IS NULL OR event_type = $2)
               AND ($3::text IS NULL OR actor->>'token_id' = $3 OR actor->>'name' = $3)
               AND ($4::uuid IS NULL OR aggregate_id = $4)
               AND ($5::timestamptz IS NULL OR occurred_at >= $5)
               AND ($6::timestamptz IS NULL OR occurred_at < $6)
               AND ($7::bigint IS NULL OR sequence > $7)
               AND ($9::bigint IS NULL OR (sequence = $9 AND position > $10))
               AND ($11::bigint IS NULL OR sequence < $11)
             ORDER BY sequence, position LIMIT $8"
        ))
        .bind(tenant)
        .bind(&query.event_type)
        .bind(&query.actor)
        .bind(query.aggregate)
        .bind(query.from)
        .bind(query.to)
        .bind(query.after)
        // LIMIT NULL is no limit: the rest of one message.
        .bind(rest.is_none().then_some(query.limit))
        .bind(rest.map(|(sequence, _)| sequence))
        .bind(rest.map_or(0, |(_, position)| position))
        .bind(query.before)
        .fetch_all(self.pool())
        .await?)
    }

    /// The stream sequence of the tenant's first event stamped after `at`, if any: where the
    /// stream prefix of what had occurred by `at` ends.
    pub async fn audit_first_after(
        &self,
        tenant: &str,
        at: OffsetDateTime,
    ) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT min(sequence) FROM audit_event WHERE tenant = $1 AND occurred_at > $2",
        )
        .bind(tenant)
        .bind(at)
        .fetch_one(self.pool())
        .await?)
    }

    /// Ids of users that were ever provisioned with, or renamed to, this userName or
    /// externalId (compared without case, by [`rollcall_scim::case::fold`]), deleted ones
    /// included.
    pub async fn audit_find_users(
        &self,
        tenant: &str,
        user_name: Option<&str>,
        external_id: Option<&str>,
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut ids = Vec::new();
        for (path, value) in [("userName", user_name), ("externalId", external_id)] {
            if let Some(value) = value {
                ids.extend(self.audit_find(tenant, "user", path, value).await?);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Ids of groups that were ever created with, or renamed to, this displayName (without
    /// case, by [`rollcall_scim::case::fold`]).
    pub async fn audit_find_groups(
        &self,
        tenant: &str,
        display_name: &str,
    ) -> Result<Vec<Uuid>, StoreError> {
        self.audit_find(tenant, "group", "displayName", display_name)
            .await
    }

    /// Aggregates of a type that ever had `value` at the top-level attribute `path`: created
    /// with it, or changed or renamed to it.
    ///
    /// PostgreSQL cannot fold case as Rollcall does, so it only narrows the events down: to
    /// values equal to the folded one in ASCII case (`lower()` under the `C` collation changes
    /// ASCII letters only) and to every value beyond ASCII; the folds are compared here.
    async fn audit_find(
        &self,
        tenant: &str,
        aggregate_type: &str,
        path: &str,
        value: &str,
    ) -> Result<Vec<Uuid>, StoreError> {
        let folded = fold(value);
        let candidates: Vec<(Uuid, String)> = sqlx::query_as(
            "WITH named AS (
                 SELECT aggregate_id, payload->'attributes'->>$3 AS value FROM audit_event
                 WHERE tenant = $1 AND aggregate_type = $2
               UNION ALL
                 SELECT aggregate_id, c->>'after' FROM audit_event,
                     jsonb_array_elements(CASE WHEN jsonb_typeof(payload->'changes') = 'array'
                                               THEN payload->'changes' ELSE '[]' END) c
                 WHERE tenant = $1 AND aggregate_type = $2 AND c->>'path' = $3
               UNION ALL
                 SELECT aggregate_id, payload->>'after' FROM audit_event
                 WHERE tenant = $1 AND aggregate_type = $2 AND event_type = 'group.renamed'
                   AND $3 = 'displayName'
             )
             SELECT DISTINCT aggregate_id, value FROM named
             WHERE value IS NOT NULL
               AND (lower(value COLLATE \"C\") = $4 OR octet_length(value) <> char_length(value))",
        )
        .bind(tenant)
        .bind(aggregate_type)
        .bind(path)
        .bind(folded.as_ref())
        .fetch_all(self.pool())
        .await?;
        let mut ids: Vec<Uuid> = candidates
            .into_iter()
            .filter(|(_, candidate)| fold(candidate) == folded)
            .map(|(id, _)| id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}

impl Store {
    /// Group events that added or removed this user, in stream order (for a user's timeline).
    pub async fn audit_memberships(
        &self,
        tenant: &str,
        user: Uuid,
    ) -> Result<Vec<AuditRow>, StoreError> {
        Ok(sqlx::query_as::<_, AuditRow>(&format!(
            "SELECT {COLUMNS} FROM audit_event
             WHERE tenant = $1 AND aggregate_type = 'group' AND (
                 (event_type IN ('group.created', 'group.members_added')
                     AND payload->'members' @> jsonb_build_array(jsonb_build_object('value', $2::text)))
              OR (event_type = 'group.members_removed' AND payload->'members' ? $2::text))
             ORDER BY sequence, position"
        ))
        .bind(tenant)
        .bind(user.to_string())
        .fetch_all(self.pool())
        .await?)
    }
}

/// Records many events with `COPY … FROM STDIN` in PostgreSQL's binary format, each value
/// encoded by sqlx as it would bind it. For large batches (the rebuild's): measured on 50,000
/// sealed records, PostgreSQL spent 0.6 s of CPU taking them this way and 1.5 s through the
/// `unnest` statement of [`insert_many`], whose arrays it takes apart row by row.
///
/// Await it to its end, never under a `select!` or a timeout: dropped once the data is sent
/// and before the server's answer is read, it leaves that answer on the connection (sqlx does
/// not count it), where the connection's next statement would read it as its own. The
/// rebuild's writer joins it with its other writes for that reason.
pub async fn copy_many(connection: &mut PgConnection, rows: &[AuditRow]) -> Result<(), StoreError> {
    use sqlx::postgres::PgArgumentBuffer;
    if rows.is_empty() {
        return Ok(());
    }
    // The binary COPY format: a signature, flags and header extension length, then per row
    // its field count and each field as its length (-1: NULL) and bytes, then -1.
    let mut data = PgArgumentBuffer::default();
    data.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    data.extend_from_slice(&0i32.to_be_bytes());
    data.extend_from_slice(&0i32.to_be_bytes());
    // Every column of `COLUMNS`, in its order.
    let fields = i16::try_from(COLUMNS.split(',').count()).unwrap_or(i16::MAX);
    for row in rows {
        data.extend_from_slice(&fields.to_be_bytes());
        copy_field(&mut data, &row.sequence)?;
        copy_field(&mut data, &row.position)?;
        copy_field(&mut data, &row.event_id)?;
        copy_field(&mut data, &row.tenant)?;
        copy_field(&mut data, &row.aggregate_type)?;
        copy_field(&mut data, &row.aggregate_id)?;
        copy_field(&mut data, &row.version)?;
        copy_field(&mut data, &row.event_type)?;
        copy_field(&mut data, &row.schema_version)?;
        copy_field(&mut data, &Json(&row.actor.0))?;
        copy_field(&mut data, &row.request_id)?;
        copy_field(&mut data, &row.trace_id)?;
        copy_field(&mut data, &row.traceparent)?;
        copy_field(&mut data, &row.occurred_at)?;
        copy_field(&mut data, &Json(&row.payload.0))?;
        copy_field(&mut data, &row.prev_hash)?;
        copy_field(&mut data, &row.hash)?;
    }
    data.extend_from_slice(&(-1i16).to_be_bytes());
    let mut copy = connection
        .copy_in_raw(&format!(
            "COPY audit_event ({COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    if let Err(error) = copy.send(data.as_slice()).await {
        let _ = copy.abort("sending the records failed").await;
        return Err(error.into());
    }
    copy.finish().await?;
    Ok(())
}

/// Appends one field of a binary `COPY` row: its length and its value as sqlx encodes it for a
/// parameter (`jsonb` with its version byte; a patch sqlx records for `json` is never applied).
fn copy_field<'q, T: sqlx::Encode<'q, sqlx::Postgres>>(
    data: &mut sqlx::postgres::PgArgumentBuffer,
    value: &T,
) -> Result<(), StoreError> {
    let invalid = |error: String| StoreError::Invalid(format!("an audit record for COPY: {error}"));
    let start = data.len();
    data.extend_from_slice(&0i32.to_be_bytes());
    let length = match value
        .encode_by_ref(data)
        .map_err(|e| invalid(e.to_string()))?
    {
        sqlx::encode::IsNull::Yes => -1,
        sqlx::encode::IsNull::No => {
            i32::try_from(data.len() - start - 4).map_err(|e| invalid(e.to_string()))?
        }
    };
    data[start..start + 4].copy_from_slice(&length.to_be_bytes());
    Ok(())
}

/// Records many events with one statement per 2,000 rows.
pub async fn insert_many(
    connection: &mut PgConnection,
    rows: &[AuditRow],
) -> Result<(), StoreError> {
    // One array per column (a statement of 17 parameters whatever the rows): PostgreSQL plans
    // it at once, where a VALUES list of thousands of rows costs more to parse than to insert.
    for chunk in rows.chunks(5_000) {
        sqlx::query(&format!(
            "INSERT INTO audit_event ({COLUMNS})
             SELECT * FROM unnest($1::int8[], $2::int4[], $3::uuid[], $4::text[], $5::text[],
                                  $6::uuid[], $7::int8[], $8::text[], $9::int4[], $10::jsonb[],
                                  $11::text[], $12::text[], $13::text[], $14::timestamptz[],
                                  $15::jsonb[], $16::bytea[], $17::bytea[])"
        ))
        .bind(chunk.iter().map(|r| r.sequence).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.position).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.event_id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.tenant.as_str()).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|r| r.aggregate_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(chunk.iter().map(|r| r.aggregate_id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|r| r.event_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(chunk.iter().map(|r| r.schema_version).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| Json(&r.actor.0)).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|r| r.request_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|r| r.trace_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|r| r.traceparent.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(chunk.iter().map(|r| r.occurred_at).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| Json(&r.payload.0)).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|r| r.prev_hash.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(chunk.iter().map(|r| r.hash.as_slice()).collect::<Vec<_>>())
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}
