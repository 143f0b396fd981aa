//! Operator actions on users, through the same write path as SCIM: each is an event on the
//! user's stream, audited like everything else.

use rollcall_domain::user::{self, UserCommand};
use rollcall_eventlog::{Actor, EventLog};
use uuid::Uuid;

use crate::aggregate::{Repository, Users, WriteContext};
use crate::error::ApiError;

/// Records sign-outs as session revocations on the user's stream (for the access service).
#[derive(Debug, Clone)]
pub struct SignOutRevoker(pub EventLog);

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
    tenant: &str,
    user: Uuid,
    session_id: Option<String>,
    reason: &str,
    operator: &str,
) -> Result<u64, ApiError> {
    let repository: Repository<Users> = Repository::new(log.clone());
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
