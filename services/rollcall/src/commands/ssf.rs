//! `rollcall ssf`: the Shared Signals transmitter's streams and keys, and a small receiver for
//! operators to see what Rollcall sends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use clap::Subcommand;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rollcall_access::ssf::streams::{self, Catalog, Entry};
use rollcall_domain::ssf::{Delivery, Initiator, Status, StreamCommand};
use rollcall_eventlog::Actor;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::cli::Common;
use crate::connection::{connect_nats, connect_store};

/// The Shared Signals commands.
#[derive(Debug, Subcommand)]
pub enum SsfCommand {
    /// The receivers' streams.
    Streams {
        #[command(subcommand)]
        command: StreamsCommand,
    },
    /// The signing keys.
    Keys {
        #[command(subcommand)]
        command: SsfKeysCommand,
    },
    /// Receives SETs pushed by Rollcall (RFC 8935) and prints each one as JSON, after checking
    /// its signature against the issuer's JWKS, its `typ`, `iss`, `aud` and `sub_id`. Answers
    /// `202`, or `400` with an RFC 8935 error code. For trying a stream out, not for production.
    Receive {
        /// Where to listen (the stream's `endpoint_url` points here).
        #[arg(long, default_value = "127.0.0.1:8990")]
        listen: SocketAddr,
        /// The stream's issuer (`<ROLLCALL_SSF_PUBLIC_URL>/<tenant>`); its JWKS is discovered.
        #[arg(long)]
        issuer: url::Url,
        /// The audience the stream's SETs carry (its `aud`).
        #[arg(long)]
        audience: String,
        /// The `Authorization` header the stream was given; SETs without it are refused.
        #[arg(
            long,
            env = "ROLLCALL_SSF_RECEIVER_AUTHORIZATION",
            hide_env_values = true
        )]
        authorization: Option<String>,
    },
}

/// `rollcall ssf streams …`
#[derive(Debug, Subcommand)]
pub enum StreamsCommand {
    /// Every live stream: id, tenant, delivery, status and position.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// One stream as JSON: its configuration, status and delivery position.
    Show {
        /// The stream id.
        id: Uuid,
    },
    /// Holds the stream's events (delivered, in order, once resumed).
    Pause {
        /// The stream id.
        id: Uuid,
        /// Why (sent to the receiver in a stream-updated SET and kept in the audit).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Delivers again, starting with what was held.
    Resume {
        /// The stream id.
        id: Uuid,
    },
    /// Deletes the stream: nothing more is delivered.
    Delete {
        /// The stream id.
        id: Uuid,
    },
}

/// `rollcall ssf keys …`
#[derive(Debug, Subcommand)]
pub enum SsfKeysCommand {
    /// Adds a signing key: published in the JWKS at once, signing after --activate-in (so that
    /// receivers' cached JWKS hold it first); the previous key stays published for a day after.
    Rotate {
        /// Seconds until the new key signs.
        #[arg(long, default_value_t = 120)]
        activate_in: u64,
        #[command(flatten)]
        kek: rollcall_access::keys::KekConfig,
    },
}

/// Runs an ssf command.
pub async fn run(common: Common, command: SsfCommand) -> anyhow::Result<()> {
    match command {
        SsfCommand::Streams { command } => run_streams(common, command).await,
        SsfCommand::Keys {
            command: SsfKeysCommand::Rotate { kek, activate_in },
        } => {
            let (client, log) = connect_nats(&common).await?;
            let store = if kek.is_configured() {
                None
            } else {
                Some(connect_store(&common).await?)
            };
            let kek = rollcall_access::keys::Kek::existing(&kek, store.as_ref()).await?;
            let keys = rollcall_access::ssf::keys::SigningKeys::load(&client, log.namespace(), kek)
                .await?;
            let kid = keys
                .rotate(std::time::Duration::from_secs(activate_in))
                .await?;
            println!("rotated: key {kid} is published now and signs in {activate_in} s; every access replica follows within moments");
            Ok(())
        }
        SsfCommand::Receive {
            listen,
            issuer,
            audience,
            authorization,
        } => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            eprintln!("receiving SETs on http://{}/", listener.local_addr()?);
            serve_receiver(listener, issuer, audience, authorization, |set| {
                println!("{set}");
            })
            .await
        }
    }
}

async fn run_streams(common: Common, command: StreamsCommand) -> anyhow::Result<()> {
    let (_, log) = connect_nats(&common).await?;
    let store = connect_store(&common).await?;
    let mut catalog = Catalog::default();
    rollcall_access::folded::catch_up(&log, &mut catalog)
        .await
        .context("reading the SSF streams")?;
    let find = |catalog: &Catalog, id: Uuid| -> anyhow::Result<Entry> {
        catalog
            .get(id)
            .filter(|entry| entry.state.live().is_some())
            .cloned()
            .with_context(|| format!("no live stream {id}"))
    };
    let operator = std::env::var("USER").unwrap_or_else(|_| "operator".into());
    let actor = Actor::Operator { name: operator };
    let request = format!("ssf-cli-{}", Uuid::now_v7());
    let (id, command) = match command {
        StreamsCommand::List { tenant } => {
            println!(
                "{:<36}  {:<16} {:<6} {:<9} {:>9}  ENDPOINT",
                "STREAM", "TENANT", "METHOD", "STATUS", "POSITION"
            );
            for (id, entry) in catalog.live(tenant.as_deref()) {
                let Some(live) = entry.state.live() else {
                    continue;
                };
                let position = store.ssf_position(id).await?.unwrap_or(entry.created);
                let (method, endpoint) = match &live.spec.delivery {
                    Delivery::Push { endpoint_url, .. } => ("push", endpoint_url.as_str()),
                    Delivery::Poll => ("poll", "-"),
                };
                println!(
                    "{id}  {:<16} {method:<6} {:<9} {position:>9}  {endpoint}",
                    entry.tenant,
                    live.status.as_str()
                );
            }
            return Ok(());
        }
        StreamsCommand::Show { id } => {
            let entry = find(&catalog, id)?;
            let Some(live) = entry.state.live() else {
                bail!("no live stream {id}");
            };
            let position = store.ssf_position(id).await?.unwrap_or(entry.created);
            let endpoint = match &live.spec.delivery {
                Delivery::Push { endpoint_url, .. } => json!(endpoint_url),
                Delivery::Poll => Value::Null,
            };
            let shown = json!({
                "stream_id": id,
                "tenant": entry.tenant,
                "aud": live.spec.aud,
                "events_requested": live.spec.events_requested,
                "delivery": {"method": live.spec.delivery.method(), "endpoint_url": endpoint},
                "description": live.spec.description,
                "status": live.status.as_str(),
                "reason": live.reason,
                "subjects_removed": live.removed,
                "created_at_sequence": entry.created,
                "position": position,
            });
            println!("{}", serde_json::to_string_pretty(&shown)?);
            return Ok(());
        }
        StreamsCommand::Pause { id, reason } => (
            id,
            StreamCommand::SetStatus {
                status: Status::Paused,
                reason,
                by: Initiator::Operator,
            },
        ),
        StreamsCommand::Resume { id } => (
            id,
            StreamCommand::SetStatus {
                status: Status::Enabled,
                reason: None,
                by: Initiator::Operator,
            },
        ),
        StreamsCommand::Delete { id } => (id, StreamCommand::Delete),
    };
    let entry = find(&catalog, id)?;
    let (events, sequence) = streams::change(
        &log,
        &entry.tenant.clone(),
        id,
        Some(&entry),
        command,
        &actor,
        &request,
    )
    .await?;
    if events
        .iter()
        .any(|event| matches!(event, rollcall_domain::ssf::StreamEvent::Deleted))
    {
        store.forget_ssf_stream(id).await?;
    }
    if events.is_empty() {
        println!("stream {id}: nothing to change");
    } else {
        println!("stream {id}: changed (event at stream sequence {sequence})");
    }
    Ok(())
}

/// What the receiver checks SETs against, and where verified SETs go.
struct Receiver {
    out: Box<dyn Fn(Value) + Send + Sync>,
    issuer: String,
    audience: String,
    jwks_uri: String,
    keys: RwLock<HashMap<String, DecodingKey>>,
    authorization: Option<String>,
    http: reqwest::Client,
}

/// Serves `rollcall ssf receive` on `listener`: discovers `issuer`'s JWKS, then verifies every
/// SET posted and hands each verified one (`{"header", "claims"}`) to `out`; refused ones are
/// answered `400` with their RFC 8935 code and written to standard error.
pub async fn serve_receiver(
    listener: tokio::net::TcpListener,
    issuer: url::Url,
    audience: String,
    authorization: Option<String>,
    out: impl Fn(Value) + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let issuer_text = issuer.as_str().trim_end_matches('/').to_owned();
    let mut discovery = issuer.clone();
    discovery.set_path(&format!(
        "/.well-known/ssf-configuration{}",
        issuer.path().trim_end_matches('/')
    ));
    let metadata: Value = http
        .get(discovery.clone())
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("discovering the transmitter at {discovery}"))?
        .json()
        .await?;
    if metadata["issuer"].as_str() != Some(issuer_text.as_str()) {
        bail!(
            "{discovery} names issuer {}, not {issuer_text}",
            metadata["issuer"]
        );
    }
    let jwks_uri = metadata["jwks_uri"]
        .as_str()
        .context("the transmitter's metadata has no jwks_uri")?
        .to_owned();
    let receiver = Arc::new(Receiver {
        out: Box::new(out),
        issuer: issuer_text,
        audience,
        jwks_uri,
        keys: RwLock::default(),
        authorization,
        http,
    });
    refresh(&receiver).await?;
    let app = axum::Router::new()
        .fallback(axum::routing::post(accept))
        .with_state(receiver);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn refresh(receiver: &Receiver) -> anyhow::Result<()> {
    let set: JwkSet = receiver
        .http
        .get(&receiver.jwks_uri)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("fetching {}", receiver.jwks_uri))?
        .json()
        .await?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        if let (Some(kid), Ok(key)) = (&jwk.common.key_id, DecodingKey::from_jwk(jwk)) {
            keys.insert(kid.clone(), key);
        }
    }
    if let Ok(mut current) = receiver.keys.write() {
        *current = keys;
    }
    Ok(())
}

fn refuse(code: &str, description: impl Into<String>) -> Response {
    let description = description.into();
    eprintln!("refused: {code}: {description}");
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"err": code, "description": description})),
    )
        .into_response()
}

async fn accept(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(expected) = &receiver.authorization {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !constant_time_eq(given, expected.as_bytes()) {
            return refuse(
                "authentication_failed",
                "the Authorization header is not the stream's",
            );
        }
    }
    let Ok(token) = std::str::from_utf8(&body) else {
        return refuse("invalid_request", "the body is not a compact JWS");
    };
    match check(&receiver, token.trim()).await {
        Ok(set) => {
            (receiver.out)(set);
            StatusCode::ACCEPTED.into_response()
        }
        Err((code, description)) => refuse(code, description),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks a SET as SSF profiles it; the header and claims as JSON, or an RFC 8935 error.
async fn check(receiver: &Receiver, token: &str) -> Result<Value, (&'static str, String)> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|e| ("invalid_request", format!("not a JWS: {e}")))?;
    if header.typ.as_deref() != Some("secevent+jwt") {
        return Err((
            "invalid_request",
            format!("typ is {:?}, not secevent+jwt", header.typ),
        ));
    }
    if header.alg != Algorithm::RS256 {
        return Err(("invalid_key", format!("alg is {:?}, not RS256", header.alg)));
    }
    let kid = header
        .kid
        .clone()
        .ok_or(("invalid_key", "no kid".to_owned()))?;
    let known = |receiver: &Receiver| {
        receiver
            .keys
            .read()
            .ok()
            .and_then(|keys| keys.get(&kid).cloned())
    };
    let key = match known(receiver) {
        Some(key) => key,
        None => {
            // A rotation: fetch the JWKS again once.
            let _ = refresh(receiver).await;
            known(receiver).ok_or(("invalid_key", format!("no key {kid} in the JWKS")))?
        }
    };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.set_audience(&[&receiver.audience]);
    validation.set_issuer(&[&receiver.issuer]);
    let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidAudience => ("invalid_audience", e.to_string()),
            jsonwebtoken::errors::ErrorKind::InvalidIssuer => ("invalid_issuer", e.to_string()),
            jsonwebtoken::errors::ErrorKind::InvalidSignature => ("invalid_key", e.to_string()),
            _ => ("invalid_request", e.to_string()),
        })?
        .claims;
    if claims.get("sub").is_some() || claims.get("exp").is_some() {
        return Err((
            "invalid_request",
            "a SET carries neither sub nor exp".into(),
        ));
    }
    if !claims["sub_id"]["format"].is_string() {
        return Err(("invalid_request", "sub_id with a format is required".into()));
    }
    if claims["events"].as_object().map(serde_json::Map::len) != Some(1) {
        return Err((
            "invalid_request",
            "events must hold exactly one event".into(),
        ));
    }
    Ok(json!({"header": {"typ": header.typ, "alg": "RS256", "kid": kid}, "claims": claims}))
}
