//! The connection to NATS: one server or a comma-separated list of the servers of a cluster
//! (`NATS_URL=nats://a:4222,nats://b:4222,nats://c:4222`), a connection name the servers show
//! in their monitoring, reconnection forever with backoff once connected, and a bounded retry
//! of the first connection (a NATS that starts next to Rollcall, as in docker-compose).

use std::time::{Duration, Instant};

use async_nats::{ConnectErrorKind, ConnectOptions, ServerAddr};
use tracing::{info, warn};

/// How long the first connection is retried before giving up.
pub const INITIAL_CONNECT_DEADLINE: Duration = Duration::from_secs(15);

/// The longest pause between two reconnection attempts.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// Why Rollcall could not connect to NATS.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The list names no server.
    #[error("NATS_URL names no server: give a server URL or a comma-separated list of the servers of a cluster (nats://a:4222,nats://b:4222,nats://c:4222)")]
    NoServers,
    /// An entry of the list is not a NATS server URL.
    #[error("NATS_URL entry {entry:?} is not a NATS server URL ({reason}); NATS_URL is a server URL or a comma-separated list of them (nats://a:4222,nats://b:4222)")]
    InvalidServer {
        /// The entry, its password hidden.
        entry: String,
        /// Why.
        reason: String,
    },
    /// No server of the list answered within [`INITIAL_CONNECT_DEADLINE`], or one refused
    /// the connection.
    #[error("connecting to NATS at {servers}: {reason} (start it with: nats-server -js)")]
    Unreachable {
        /// The servers tried, passwords hidden.
        servers: String,
        /// The last failure.
        reason: String,
    },
}

/// Hides the secret of a URL (`nats://user:***@host`, a token as `nats://***@host`), for
/// messages and logs.
fn redact(entry: &str) -> String {
    let Some(at) = entry.rfind('@') else {
        return entry.to_owned();
    };
    let start = entry.find("://").map_or(0, |scheme| scheme + 3);
    let kept = entry[start..at]
        .find(':')
        .map_or(start, |colon| start + colon + 1);
    format!("{}***{}", &entry[..kept], &entry[at..])
}

/// Reads `NATS_URL`: one server URL or a comma-separated list (`nats://` and port 4222 are
/// assumed where missing; blanks around entries are ignored).
pub fn servers(list: &str) -> Result<Vec<ServerAddr>, ConnectError> {
    if list.trim().is_empty() {
        return Err(ConnectError::NoServers);
    }
    list.split(',')
        .map(str::trim)
        .map(|entry| {
            let invalid = |reason: String| ConnectError::InvalidServer {
                entry: redact(entry),
                reason,
            };
            if entry.is_empty() {
                return Err(invalid("an empty entry".into()));
            }
            let server = entry
                .parse::<ServerAddr>()
                .map_err(|error| invalid(error.to_string()))?;
            if server.host().is_empty() {
                return Err(invalid("no host".into()));
            }
            Ok(server)
        })
        .collect()
}

/// Pause before reconnection attempt `attempt` (counted from 1 for each server tried):
/// at once, then doubling from 100 ms up to [`MAX_RECONNECT_DELAY`].
fn reconnect_delay(attempt: usize) -> Duration {
    if attempt <= 1 {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(attempt - 2).unwrap_or(u32::MAX).min(16);
    (Duration::from_millis(100) * 2u32.pow(doublings)).min(MAX_RECONNECT_DELAY)
}

/// Connects to the NATS server or cluster at `servers` (see [`servers`]) as `name` (shown by
/// the servers' monitoring, e.g. `rollcall-scim`). Once connected the client reconnects forever,
/// to any server of the list or of the cluster, with backoff; the first connection is retried
/// for [`INITIAL_CONNECT_DEADLINE`], except when a server refuses the credentials or TLS.
pub async fn connect(servers: &str, name: &str) -> Result<async_nats::Client, ConnectError> {
    let addresses = self::servers(servers)?;
    let shown = || {
        addresses
            .iter()
            .map(|server| redact(server.as_url_str()))
            .collect::<Vec<_>>()
            .join(",")
    };
    // Connection events (reconnections among them) are counted in the process's metrics.
    let options = rollcall_telemetry::metrics::observe_nats(
        ConnectOptions::new()
            .name(name)
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay),
    );
    let started = Instant::now();
    let mut pause = Duration::from_millis(250);
    loop {
        match options.clone().connect(addresses.clone()).await {
            Ok(client) => {
                let server = client.server_info();
                info!(
                    server = %server.server_name,
                    cluster = server.cluster.as_deref().unwrap_or(""),
                    version = %server.version,
                    "connected to NATS"
                );
                return Ok(client);
            }
            Err(error) => {
                let fatal = matches!(
                    error.kind(),
                    ConnectErrorKind::Authentication
                        | ConnectErrorKind::AuthorizationViolation
                        | ConnectErrorKind::Tls
                        | ConnectErrorKind::ServerParse
                );
                if fatal || started.elapsed() + pause > INITIAL_CONNECT_DEADLINE {
                    return Err(ConnectError::Unreachable {
                        servers: shown(),
                        reason: error.to_string(),
                    });
                }
                warn!(error = %error, retry_in_ms = pause.as_millis() as u64, "NATS is not reachable yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_separated_list_names_every_server() {
        let list = servers("nats://a:4222, nats://b:4223 ,c").unwrap();
        let hosts: Vec<_> = list.iter().map(|s| (s.host(), s.port())).collect();
        assert_eq!(hosts, [("a", 4222), ("b", 4223), ("c", 4222)]);
        assert_eq!(servers("nats://127.0.0.1:4222").unwrap().len(), 1);
    }

    #[test]
    fn a_bad_entry_is_named_without_its_password() {
        let error = servers("nats://a:4222,http://b:4222").unwrap_err();
        assert!(
            matches!(&error, ConnectError::InvalidServer { entry, .. } if entry == "http://b:4222"),
            "{error}"
        );
        assert!(error.to_string().contains("NATS_URL"), "{error}");
        let error = servers("nats://a:4222,,nats://c:4222").unwrap_err();
        assert!(
            matches!(error, ConnectError::InvalidServer { .. }),
            "{error}"
        );
        let error = servers("nats://user:secret@a:4222,tls://user:secret@:1").unwrap_err();
        assert!(!error.to_string().contains("secret"), "{error}");
        assert!(matches!(servers(" "), Err(ConnectError::NoServers)));
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(redact("nats://u:p@h:4222"), "nats://u:***@h:4222");
        assert_eq!(redact("u:p@h"), "u:***@h");
        assert_eq!(redact("nats://token@h"), "nats://***@h");
        assert_eq!(redact("nats://h:4222"), "nats://h:4222");
    }

    #[test]
    fn reconnection_backs_off_up_to_a_bound() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(100));
        assert_eq!(reconnect_delay(3), Duration::from_millis(200));
        assert_eq!(reconnect_delay(100), MAX_RECONNECT_DELAY);
    }
}
