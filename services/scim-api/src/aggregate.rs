//! The write path: load an aggregate (from a per-process cache, checked by the append's
//! expected sequence), decide, append, retry on conflict. A write's events are appended as one
//! message (a commit), so a write lands whole or not at all; they share its stream sequence,
//! which is what the next append expects. Writes to one aggregate are
//! serialized within the process, so concurrent PATCHes to one group (Entra sends them) queue
//! instead of conflicting; across processes the stream's per-subject sequence check decides.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use rollcall_domain::group::{self, Group, GroupCommand, GroupError, GroupEvent};
use rollcall_domain::user::{self, User, UserCommand, UserError, UserEvent};
use rollcall_domain::EventKind;
use rollcall_eventlog::{Actor, AppendError, Envelope, EventLog};
use rollcall_store::personal_key::Freshness;
use rollcall_store::Store;
use time::OffsetDateTime;
use tokio::sync::Mutex;
use tracing::{instrument, warn};
use uuid::Uuid;

use crate::error::ApiError;

/// How many times a conflicting append is retried before `503`.
pub const MAX_ATTEMPTS: usize = 5;

/// How many aggregates a cache keeps before it drops idle ones.
const CACHE_LIMIT: usize = 50_000;

/// An aggregate type: its state and how events fold into it.
pub trait Aggregate: Send + Sync + 'static {
    /// The state.
    type State: Default + Clone + Send + Sync;
    /// The events.
    type Event: EventKind + Clone + Send + Sync;
    /// The commands.
    type Command: Clone + Send + Sync;
    /// Why a command is refused.
    type Error: Into<ApiError>;
    /// Decides one command against the state.
    fn decide(state: &Self::State, command: Self::Command)
        -> Result<Vec<Self::Event>, Self::Error>;
    /// Folds one event.
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;
}

/// Applies commands in order on an evolving state.
pub fn decide_all<A: Aggregate>(
    state: &A::State,
    commands: Vec<A::Command>,
) -> Result<Vec<A::Event>, ApiError> {
    let mut commands = commands.into_iter();
    let Some(first) = commands.next() else {
        return Ok(Vec::new());
    };
    // The state is copied only for a second command (a group's state may hold 100,000 members).
    let mut events = A::decide(state, first).map_err(Into::into)?;
    let mut rest = commands.peekable();
    if rest.peek().is_none() {
        return Ok(events);
    }
    let mut state = state.clone();
    for event in &events {
        state = A::evolve(state, event);
    }
    for command in rest {
        let decided = A::decide(&state, command).map_err(Into::into)?;
        for event in &decided {
            state = A::evolve(state, event);
        }
        events.extend(decided);
    }
    Ok(events)
}

/// Users.
#[derive(Debug)]
pub struct Users;
impl Aggregate for Users {
    type State = User;
    type Event = UserEvent;
    type Command = UserCommand;
    type Error = UserError;
    fn decide(state: &User, command: UserCommand) -> Result<Vec<UserEvent>, UserError> {
        user::decide(state, command)
    }
    fn evolve(state: User, event: &UserEvent) -> User {
        user::evolve(state, event)
    }
}

/// Groups.
#[derive(Debug)]
pub struct Groups;
impl Aggregate for Groups {
    type State = Group;
    type Event = GroupEvent;
    type Command = GroupCommand;
    type Error = GroupError;
    fn decide(state: &Group, command: GroupCommand) -> Result<Vec<GroupEvent>, GroupError> {
        group::decide(state, command)
    }
    fn evolve(state: Group, event: &GroupEvent) -> Group {
        group::evolve(state, event)
    }
}

/// An aggregate's folded state with what a response needs to say about it.
#[derive(Debug, Clone)]
pub struct Folded<S> {
    /// The state.
    pub state: S,
    /// How many events it has (its `meta.version`).
    pub version: u64,
    /// The stream sequence of its last event (what the next append expects).
    pub sequence: u64,
    /// When its first event happened.
    pub created_at: Option<OffsetDateTime>,
    /// When its last event happened.
    pub updated_at: Option<OffsetDateTime>,
    /// Whether a replica answered for the stream leader (`Loaded::from_replica`): the state may
    /// be behind, so nothing but an append expecting `sequence` may rest on it.
    pub from_replica: bool,
}

impl<S: Default> Default for Folded<S> {
    fn default() -> Self {
        Self {
            state: S::default(),
            version: 0,
            sequence: 0,
            created_at: None,
            updated_at: None,
            from_replica: false,
        }
    }
}

/// The answer when a state a replica gave (the stream leader not answering) would decide a
/// response: retry once the leader answers.
fn leader_silent() -> ApiError {
    ApiError::Unavailable(
        "the event stream's leader is not answering (an election?); retry".to_owned(),
    )
}

/// Who writes, and within which request.
#[derive(Debug, Clone)]
pub struct WriteContext {
    /// The tenant.
    pub tenant: String,
    /// Who.
    pub actor: Actor,
    /// The request.
    pub request_id: String,
}

/// The outcome of a write: the new state and the sequence to wait for.
#[derive(Debug, Clone)]
pub struct Written<S> {
    /// The state after the write (shared with the cache: a large group is not copied per
    /// write).
    pub folded: Arc<Folded<S>>,
    /// The events appended (empty if the command changed nothing).
    pub appended: usize,
}

/// A cached state, shared with the last answer given from it: the next write takes it back
/// without a copy once that answer is gone.
type Slot<S> = Arc<Mutex<Option<Arc<Folded<S>>>>>;

/// The per-process cache and write path of one aggregate type.
pub struct Repository<A: Aggregate> {
    log: EventLog,
    store: Store,
    slots: std::sync::Mutex<HashMap<String, Slot<A::State>>>,
    _aggregate: PhantomData<A>,
}

impl<A: Aggregate> std::fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository").finish_non_exhaustive()
    }
}

impl<A: Aggregate> Repository<A> {
    /// A repository over the event log; `store` holds the users' data keys.
    pub fn new(log: EventLog, store: Store) -> Self {
        Self {
            log,
            store,
            slots: std::sync::Mutex::new(HashMap::new()),
            _aggregate: PhantomData,
        }
    }

    fn subject(&self, tenant: &str, id: Uuid) -> String {
        self.log
            .namespace()
            .aggregate_subject(tenant, A::Event::AGGREGATE, &id)
    }

    fn slot(&self, subject: &str) -> Slot<A::State> {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slots.len() > CACHE_LIMIT {
            slots.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        slots.entry(subject.to_owned()).or_default().clone()
    }

    /// Folds the events after the cached state (all of them on a cache miss).
    async fn refresh(
        &self,
        subject: &str,
        cached: Option<Folded<A::State>>,
    ) -> Result<Folded<A::State>, ApiError> {
        let mut folded = cached.unwrap_or_default();
        let mut loaded = self.log.load(subject, folded.sequence).await?;
        rollcall_personal::open_all(&self.store, &mut loaded.events, Freshness::Cached).await?;
        for envelope in loaded.events {
            let event = A::Event::from_payload(
                &envelope.event_type,
                envelope.schema_version,
                &envelope.payload,
            )
            .map_err(|reason| {
                ApiError::Internal(format!("unreadable event {}: {reason}", envelope.event_id))
            })?;
            folded.state = A::evolve(folded.state, &event);
            folded.version = envelope.version;
            folded.created_at.get_or_insert(envelope.occurred_at);
            folded.updated_at = Some(envelope.occurred_at);
        }
        folded.sequence = loaded.last_sequence;
        folded.from_replica = loaded.from_replica;
        Ok(folded)
    }

    /// The current state (refreshed from the stream). Refused with a retryable error while
    /// only a replica answers: callers decide from it (a name's holder, a rename's old name).
    pub async fn load(&self, tenant: &str, id: Uuid) -> Result<Arc<Folded<A::State>>, ApiError> {
        let subject = self.subject(tenant, id);
        let slot = self.slot(&subject);
        let mut guard = slot.lock().await;
        let cached = guard.take().map(Arc::unwrap_or_clone);
        let folded = Arc::new(self.refresh(&subject, cached).await?);
        if folded.from_replica {
            return Err(leader_silent());
        }
        *guard = Some(folded.clone());
        Ok(folded)
    }

    /// Decides and appends: `plan` turns the current state into events; a conflicting
    /// append reloads and plans again, up to [`MAX_ATTEMPTS`] times.
    pub async fn write<F>(
        &self,
        context: &WriteContext,
        id: Uuid,
        plan: F,
    ) -> Result<Written<A::State>, ApiError>
    where
        F: FnMut(&Folded<A::State>) -> Result<Vec<A::Event>, ApiError>,
    {
        let mut plan = plan;
        self.write_then(
            context,
            id,
            |folded| Ok((plan(folded)?, ())),
            |folded, appended, ()| Written {
                folded: folded.clone(),
                appended,
            },
        )
        .await
    }

    /// [`Repository::write`], answering with what `render` makes of the written state (with
    /// how many events were appended, and what the plan that was appended noted of the state
    /// it decided on) while the state is still the cache's alone: the next write takes it back
    /// without a copy, which for a group of 100,000 members is most of a write's cost.
    #[instrument(skip_all, fields(aggregate = A::Event::AGGREGATE, aggregate.id = %id), err(level = "debug"))]
    pub async fn write_then<F, N, R, T>(
        &self,
        context: &WriteContext,
        id: Uuid,
        mut plan: F,
        render: R,
    ) -> Result<T, ApiError>
    where
        F: FnMut(&Folded<A::State>) -> Result<(Vec<A::Event>, N), ApiError>,
        R: FnOnce(&Arc<Folded<A::State>>, usize, N) -> T,
    {
        let subject = self.subject(&context.tenant, id);
        let slot = self.slot(&subject);
        let mut guard = slot.lock().await;
        let mut folded = match guard.take() {
            Some(cached) => Arc::unwrap_or_clone(cached),
            None => self.refresh(&subject, None).await?,
        };
        for attempt in 1..=MAX_ATTEMPTS {
            let (events, noted) = match plan(&folded) {
                // A refusal or "nothing to change" decided on a state that may be behind is no
                // answer (the user a replica has not yet seen created, or still active there).
                Err(_) if folded.from_replica => return Err(leader_silent()),
                Ok((events, _)) if events.is_empty() && folded.from_replica => {
                    return Err(leader_silent())
                }
                Ok(planned) => planned,
                Err(error) => {
                    *guard = Some(Arc::new(folded));
                    return Err(error);
                }
            };
            if events.is_empty() {
                let folded = Arc::new(folded);
                let rendered = render(&folded, 0, noted);
                *guard = Some(folded);
                return Ok(rendered);
            }
            // Microseconds: what PostgreSQL keeps, so that writes and reads show the same times.
            let now = OffsetDateTime::now_utc();
            let now = now
                .replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
                .unwrap_or(now);
            let traceparent = rollcall_telemetry::traceparent();
            let mut envelopes: Vec<Envelope> = events
                .iter()
                .enumerate()
                .map(|(index, event)| Envelope {
                    event_id: Uuid::now_v7(),
                    tenant: context.tenant.clone(),
                    aggregate_type: A::Event::AGGREGATE.to_owned(),
                    aggregate_id: id,
                    version: folded.version + 1 + index as u64,
                    event_type: event.event_type().to_owned(),
                    schema_version: event.schema_version(),
                    occurred_at: now,
                    actor: context.actor.clone(),
                    request_id: Some(context.request_id.clone()),
                    traceparent: traceparent.clone(),
                    payload: event.to_payload(),
                })
                .collect();
            rollcall_personal::seal_all(&self.store, &mut envelopes).await?;
            match self.log.append(&subject, folded.sequence, &envelopes).await {
                Ok(sequence) => {
                    rollcall_eventlog::fault::point(rollcall_eventlog::fault::WRITE_APPENDED);
                    let mut next = folded;
                    for event in &events {
                        next.state = A::evolve(next.state, event);
                    }
                    next.version += events.len() as u64;
                    next.sequence = sequence;
                    // The leader accepted the append expecting `folded.sequence`: it was current.
                    next.from_replica = false;
                    next.created_at.get_or_insert(now);
                    next.updated_at = Some(now);
                    let next = Arc::new(next);
                    let rendered = render(&next, events.len(), noted);
                    *guard = Some(next);
                    return Ok(rendered);
                }
                Err(AppendError::Conflict { .. }) => {
                    warn!(attempt, "append conflicted; reloading");
                    // Jittered backoff, so that replicas writing one resource take turns.
                    let jitter = (Uuid::new_v4().as_u128() % 4_000) as u64;
                    tokio::time::sleep(std::time::Duration::from_micros(jitter * attempt as u64))
                        .await;
                    folded = self.refresh(&subject, Some(folded)).await?;
                }
                Err(error @ AppendError::TooLarge { .. }) => {
                    // Refused before anything was appended: the cached state still holds.
                    *guard = Some(Arc::new(folded));
                    return Err(error.into());
                }
                Err(error) => {
                    // The write may have landed (whole) unacknowledged: forget the cache.
                    return Err(error.into());
                }
            }
        }
        Err(ApiError::Contended)
    }
}

/// The user and group repositories.
#[derive(Debug)]
pub struct Repositories {
    /// Users.
    pub users: Repository<Users>,
    /// Groups.
    pub groups: Repository<Groups>,
}
