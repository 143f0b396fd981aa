//! Operator actions on users, through the same write path as SCIM: each is an event on the
//! user's stream, audited like everything else.

use rollcall_domain::user::{self, UserCommand, UserEvent};
use rollcall_domain::EventKind;
use rollcall_eventlog::{Actor, EventLog};
use rollcall_store::personal_key::Freshness;
use rollcall_store::Store;
use uuid::Uuid;

use crate::aggregate::{Repository, Users, WriteContext};
use crate::error::ApiError;

/// Records sign-outs as session revocations on the user's stream (for the access service).
#[derive(Debug, Clone)]
pub struct SignOutRevoker(pub EventLog, pub Store);

impl rollcall_eventlog::access::SessionRevoker for SignOutRevoker {
    fn revoke<'a>(
        &'a self,
        tenant: &'a str,
        user: Uuid,
        session: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            revoke_sessions(
                &self.0,
                &self.1,
                tenant,
                user,
                Some(session.to_owned()),
                "signed out",
                "sign-out",
            )
            .await
            .map(|_| ())
            .map_err(|error| error.to_scim().detail)
        })
    }
}

/// Revokes one session of a user, or every session issued until now; returns the event's
/// stream sequence.
pub async fn revoke_sessions(
    log: &EventLog,
    store: &Store,
    tenant: &str,
    user: Uuid,
    session_id: Option<String>,
    reason: &str,
    operator: &str,
) -> Result<u64, ApiError> {
    let repository: Repository<Users> = Repository::new(log.clone(), store.clone());
    let context = WriteContext {
        tenant: tenant.to_owned(),
        actor: Actor::Operator {
            name: operator.to_owned(),
        },
        request_id: format!("cli-{}", Uuid::now_v7()),
    };
    let command = UserCommand::RevokeSessions {
        session_id,
        reason: reason.to_owned(),
    };
    let written = repository
        .write(&context, user, |folded| {
            Ok(user::decide(&folded.state, command.clone())?)
        })
        .await?;
    Ok(written.folded.sequence)
}

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    /// The stream sequence of the `user.erased` event; `None` if the user was erased before.
    pub sequence: Option<u64>,
    /// SCIM request log entries whose filter, detail or body were cleared.
    pub request_log_entries: u64,
    /// The user's events written before personal fields were sealed: they stay readable in
    /// the stream until `rollcall migrate encrypt-pii` seals them.
    pub clear_events: u64,
}

/// Erases a user's personal data: clears the SCIM request log entries that hold it (while its
/// values can still be read), records `user.erased` (the user is gone: SCIM answers `404`, the
/// projector removes it from the read models and the access state), then destroys its data
/// key, after which no stored copy of its personal fields opens again. Each step is safe to
/// repeat: an erasure stopped halfway is finished by running it again (and the projector
/// destroys the key of every erasure it applies).
#[tracing::instrument(skip_all, fields(tenant, user.id = %user), err)]
pub async fn erase_user(
    log: &EventLog,
    store: &Store,
    claims: &rollcall_eventlog::Claims,
    tenant: &str,
    user: Uuid,
    reason: &str,
    actor: Actor,
) -> Result<Erasure, ApiError> {
    let repository: Repository<Users> = Repository::new(log.clone(), store.clone());
    let subject = log.namespace().aggregate_subject(tenant, "user", &user);
    let mut history = log.load(&subject, 0).await?;
    let clear_events = history
        .events
        .iter()
        .filter(|envelope| {
            !rollcall_personal::sealed(envelope)
                && rollcall_personal::has_personal_fields(&envelope.event_type)
        })
        .count() as u64;
    rollcall_personal::open_all(store, &mut history.events, Freshness::Fresh).await?;
    let mut texts: Vec<String> = history
        .events
        .iter_mut()
        .flat_map(rollcall_personal::personal_texts)
        .collect();
    // The userName it holds now, if any: its claim is given back once the user is gone.
    let user_name = history
        .events
        .iter()
        .filter_map(|envelope| {
            UserEvent::from_payload(
                &envelope.event_type,
                envelope.schema_version,
                &envelope.payload,
            )
            .ok()
        })
        .fold(rollcall_domain::user::User::default(), |state, event| {
            user::evolve(state, &event)
        })
        .user_name()
        .map(str::to_owned);
    texts.sort();
    texts.dedup();
    let request_log_entries = store.scrub_request_log(tenant, user, &texts).await?;
    let context = WriteContext {
        tenant: tenant.to_owned(),
        actor,
        request_id: format!("erase-{}", Uuid::now_v7()),
    };
    let command = UserCommand::Erase {
        reason: reason.to_owned(),
    };
    let written = repository
        .write(&context, user, |folded| {
            Ok(user::decide(&folded.state, command.clone())?)
        })
        .await?;
    if let (Some(name), true) = (&user_name, written.appended > 0) {
        claims.release(tenant, "userName", name, user).await?;
    }
    // The projector destroys it too when it applies the erasure: whichever comes first.
    store.erase_data_key(tenant, user).await?;
    // Entries that were still on their way to the log when it was first cleared.
    let request_log_entries =
        request_log_entries + store.scrub_request_log(tenant, user, &texts).await?;
    Ok(Erasure {
        sequence: (written.appended > 0).then_some(written.folded.sequence),
        request_log_entries,
        clear_events,
    })
}
