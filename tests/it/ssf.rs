//! Shared Signals: Rollcall as an SSF transmitter. Every SET a test receives is checked by a
//! receiver of the test's own, with jsonwebtoken against the transmitter's published JWKS (not
//! Rollcall's signing code): RS256, `typ` `secevent+jwt`, `iss`, `aud`, `sub_id`, one event.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rollcall_access::ssf::signals::uri;
use rollcall_it::{eventually, TestEnv};
use rollcall_store::tenant::Scope;
use serde_json::{json, Value};

const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// How the test receiver answers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Accept,
    /// `503`: the receiver is down.
    Unavailable,
    /// `400 invalid_audience` for the next SET only.
    RefuseNext,
}

#[derive(Debug, Default)]
struct Log {
    /// Verified SETs: (kid, claims), in arrival order.
    sets: Vec<(String, Value)>,
    /// Every POST, verified or not.
    attempts: usize,
    /// SETs that failed verification.
    invalid: Vec<String>,
    /// `Authorization` headers seen.
    authorizations: Vec<String>,
}

/// The test's receiver: verifies each SET against the JWKS at `jwks_uri`.
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    mode: Arc<Mutex<Mode>>,
    issuer: String,
    audience: Arc<Mutex<String>>,
    jwks_uri: String,
    /// The JWKS as last fetched (fetched again for an unknown `kid`).
    keys: Arc<Mutex<Option<JwkSet>>>,
}

impl Receiver {
    async fn start(issuer: &str, jwks_uri: &str) -> Self {
        let listener = rollcall_it::loopback().await;
        let receiver = Self {
            addr: listener.local_addr().unwrap(),
            log: Arc::default(),
            mode: Arc::new(Mutex::new(Mode::Accept)),
            issuer: issuer.to_owned(),
            audience: Arc::new(Mutex::new(String::new())),
            jwks_uri: jwks_uri.to_owned(),
            keys: Arc::new(Mutex::new(Some(jwks(jwks_uri).await))),
        };
        let app = axum::Router::new()
            .fallback(axum::routing::post(receive))
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn sets(&self) -> Vec<(String, Value)> {
        self.log.lock().unwrap().sets.clone()
    }

    fn events(&self) -> Vec<String> {
        self.sets()
            .iter()
            .map(|(_, claims)| event_uri(claims))
            .collect()
    }

    fn assert_valid(&self) {
        let log = self.log.lock().unwrap();
        assert!(
            log.invalid.is_empty(),
            "SETs failed verification: {:?}",
            log.invalid
        );
    }

    /// Waits until `count` SETs arrived.
    async fn wait_for(&self, count: usize) -> Vec<(String, Value)> {
        eventually(
            &format!("the receiver holds {count} SETs"),
            Duration::from_secs(20),
            || async { self.sets().len() >= count },
        )
        .await;
        self.assert_valid();
        self.sets()
    }
}

/// A SET's event type and the email of the person it is about (a complex subject's user).
fn who(claims: &Value) -> (String, String) {
    let subject = &claims["sub_id"];
    let user = if subject["format"] == "complex" {
        &subject["user"]
    } else {
        subject
    };
    (
        event_uri(claims),
        user["email"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The SETs of deactivating users `names` (`…@example.com`), in order.
fn deactivations(names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .flat_map(|name| {
            [uri::ACCOUNT_DISABLED, uri::SESSION_REVOKED]
                .map(|event| (event.to_owned(), format!("{name}@example.com")))
        })
        .collect()
}

fn event_uri(claims: &Value) -> String {
    claims["events"]
        .as_object()
        .and_then(|events| events.keys().next().cloned())
        .unwrap_or_default()
}

/// Verifies a compact SET with jsonwebtoken against `jwks`: the receiver's side.
fn verify(
    token: &str,
    jwks: &JwkSet,
    issuer: &str,
    audience: &str,
) -> Result<(String, Value), String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    if header.typ.as_deref() != Some("secevent+jwt") {
        return Err(format!("typ {:?}", header.typ));
    }
    if header.alg != Algorithm::RS256 {
        return Err(format!("alg {:?}", header.alg));
    }
    let kid = header.kid.ok_or("no kid")?;
    let jwk = jwks
        .find(&kid)
        .ok_or(format!("kid {kid} not in the JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map_err(|e| e.to_string())?
        .claims;
    if claims.get("sub").is_some() || claims.get("exp").is_some() {
        return Err("sub or exp present".into());
    }
    if !claims["sub_id"]["format"].is_string() {
        return Err("no sub_id".into());
    }
    if claims["events"].as_object().map(|e| e.len()) != Some(1) {
        return Err("not exactly one event".into());
    }
    if !claims["jti"].is_string() || !claims["iat"].is_i64() || !claims["txn"].is_string() {
        return Err("jti, iat or txn missing".into());
    }
    Ok((kid, claims))
}

async fn jwks(uri: &str) -> JwkSet {
    reqwest::get(uri).await.unwrap().json().await.unwrap()
}

async fn receive(
    State(receiver): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let mode = *receiver.mode.lock().unwrap();
    {
        let mut log = receiver.log.lock().unwrap();
        log.attempts += 1;
        if let Some(value) = headers.get("authorization") {
            log.authorizations.push(value.to_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/secevent+jwt"
    );
    match mode {
        Mode::Unavailable => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Mode::RefuseNext => {
            receiver.set_mode(Mode::Accept);
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"err": "invalid_audience", "description": "not for us"})),
            )
                .into_response();
        }
        Mode::Accept => {}
    }
    let token = String::from_utf8(body.to_vec()).unwrap();
    let audience = receiver.audience.lock().unwrap().clone();
    let kid = jsonwebtoken::decode_header(&token)
        .ok()
        .and_then(|header| header.kid)
        .unwrap_or_default();
    let cached = receiver.keys.lock().unwrap().clone();
    let keys = match cached {
        Some(keys) if keys.find(&kid).is_some() => keys,
        _ => {
            let keys = jwks(&receiver.jwks_uri).await;
            *receiver.keys.lock().unwrap() = Some(keys.clone());
            keys
        }
    };
    let mut log = receiver.log.lock().unwrap();
    match verify(&token, &keys, &receiver.issuer, &audience) {
        Ok(set) => {
            log.sets.push(set);
            StatusCode::ACCEPTED.into_response()
        }
        Err(error) => {
            log.invalid.push(error);
            (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"err": "invalid_request"})),
            )
                .into_response()
        }
    }
}

/// A test environment whose access service transmits Shared Signals, and an `ssf` token.
struct Ssf {
    env: TestEnv,
    token: String,
    issuer: String,
    endpoints: String,
}

async fn start() -> Ssf {
    start_with(|_| {}).await
}

/// [`start`] with the transmitter's settings as `change` leaves them.
async fn start_with(change: impl FnOnce(&mut rollcall_access::ssf::SsfConfig)) -> Ssf {
    let mut env = TestEnv::start().await;
    env.restart_access_with(|config, addr| {
        config.ssf.public_url = Some(format!("http://{addr}").parse().unwrap());
        // The tests' receivers listen on loopback.
        config.ssf.allow_internal_endpoints = true;
        change(&mut config.ssf);
    })
    .await;
    let token = env
        .store
        .create_token("test", Scope::Ssf, Some("receiver"))
        .await
        .unwrap()
        .token;
    let issuer = format!("{}/test", env.access_base);
    let endpoints = format!("{}/ssf/test", env.access_base);
    Ssf {
        env,
        token,
        issuer,
        endpoints,
    }
}

impl Ssf {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(&self.token, method, path, body).await
    }

    async fn call_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", self.endpoints))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A push stream to `receiver`; sets the receiver's expected audience to the stream's.
    async fn push_stream(&self, receiver: &Receiver, extra: Value) -> String {
        let mut body = json!({"delivery": {"method": rollcall_domain::ssf::PUSH, "endpoint_url": receiver.url()}});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let (status, config) = self
            .call(reqwest::Method::POST, "/streams", Some(body))
            .await;
        assert_eq!(status, 201, "{config}");
        let aud = match &config["aud"] {
            Value::String(aud) => aud.clone(),
            other => other[0].as_str().unwrap().to_owned(),
        };
        *receiver.audience.lock().unwrap() = aud;
        config["stream_id"].as_str().unwrap().to_owned()
    }

    async fn receiver(&self) -> Receiver {
        Receiver::start(&self.issuer, &format!("{}/jwks.json", self.endpoints)).await
    }
}

fn patch(operations: Value) -> Value {
    json!({"schemas": [PATCH_OP], "Operations": operations})
}

fn user(name: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": name,
        "active": true,
        "emails": [{"value": format!("{name}@example.com"), "type": "work", "primary": true}],
    })
}

#[tokio::test]
async fn discovery_names_the_tenants_issuer_and_endpoints_and_the_jwks_holds_an_rsa_key() {
    let ssf = start().await;
    let (status, metadata) = {
        let response = reqwest::get(format!(
            "{}/.well-known/ssf-configuration/test",
            ssf.env.access_base
        ))
        .await
        .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        )
    };
    assert_eq!(status, 200);
    assert_eq!(metadata["spec_version"], "1_0");
    assert_eq!(metadata["issuer"], ssf.issuer);
    assert_eq!(metadata["default_subjects"], "ALL");
    assert_eq!(
        metadata["delivery_methods_supported"],
        json!([rollcall_domain::ssf::PUSH, rollcall_domain::ssf::POLL])
    );
    for endpoint in [
        "configuration_endpoint",
        "status_endpoint",
        "add_subject_endpoint",
        "remove_subject_endpoint",
        "verification_endpoint",
    ] {
        assert!(
            metadata[endpoint]
                .as_str()
                .unwrap()
                .starts_with(&ssf.endpoints),
            "{endpoint}: {metadata}"
        );
    }
    assert!(metadata["authorization_schemes"]
        .as_array()
        .unwrap()
        .contains(&json!({"spec_urn": "urn:ietf:rfc:6749"})));
    let keys = jwks(metadata["jwks_uri"].as_str().unwrap()).await;
    assert_eq!(keys.keys.len(), 1);
    let key: Value = serde_json::to_value(&keys.keys[0]).unwrap();
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["alg"], "RS256");
    let modulus = base64_len(key["n"].as_str().unwrap());
    assert!(
        modulus >= 256,
        "an RSA key of at least 2048 bits, not {} bytes",
        modulus
    );
    // An unknown tenant has no transmitter.
    let unknown = reqwest::get(format!(
        "{}/.well-known/ssf-configuration/nobody",
        ssf.env.access_base
    ))
    .await
    .unwrap();
    assert_eq!(unknown.status(), 404);

    // A rotation: the new key signs, the old one stays published, and a receiver that
    // fetches the JWKS again verifies both.
    let receiver = ssf.receiver().await;
    let stream = ssf.push_stream(&receiver, json!({})).await;
    let verify = |state: &str| json!({"stream_id": stream, "state": state});
    assert_eq!(
        ssf.call(reqwest::Method::POST, "/verify", Some(verify("one")))
            .await
            .0,
        204
    );
    let first = receiver.wait_for(1).await[0].0.clone();
    let kid = ssf
        .env
        .access
        .ssf
        .get()
        .unwrap()
        .keys()
        .rotate(Duration::ZERO)
        .await
        .unwrap();
    assert_ne!(kid, first);
    let published = jwks(metadata["jwks_uri"].as_str().unwrap()).await;
    assert!(published.find(&first).is_some() && published.find(&kid).is_some());
    let stream_id = stream.clone();
    // The verification interval holds for the next request; a new stream verifies at once.
    let receiver2 = ssf.receiver().await;
    let second = ssf.push_stream(&receiver2, json!({})).await;
    assert_ne!(second, stream_id);
    assert_eq!(
        ssf.call(
            reqwest::Method::POST,
            "/verify",
            Some(json!({"stream_id": second}))
        )
        .await
        .0,
        204
    );
    assert_eq!(receiver2.wait_for(1).await[0].0, kid, "the new key signs");
}

fn base64_len(text: &str) -> usize {
    text.len() * 3 / 4
}

#[tokio::test]
async fn a_stream_is_created_read_updated_replaced_paused_and_deleted_and_every_change_is_an_audited_event(
) {
    let ssf = start().await;
    let (status, created) = ssf
        .call(
            reqwest::Method::POST,
            "/streams",
            Some(json!({"events_requested": [uri::ACCOUNT_DISABLED], "description": "SaaS"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["stream_id"].as_str().unwrap().to_owned();
    assert_eq!(created["iss"], ssf.issuer);
    assert_eq!(
        created["delivery"]["method"],
        rollcall_domain::ssf::POLL,
        "poll is the default"
    );
    assert_eq!(
        created["delivery"]["endpoint_url"],
        format!("{}/poll/{id}", ssf.endpoints)
    );
    assert_eq!(created["events_delivered"], json!([uri::ACCOUNT_DISABLED]));
    let query = format!("/streams?stream_id={id}");
    let (status, read) = ssf.call(reqwest::Method::GET, &query, None).await;
    assert_eq!((status, &read), (200, &created));
    let (status, list) = ssf.call(reqwest::Method::GET, "/streams", None).await;
    assert_eq!((status, list.as_array().unwrap().len()), (200, 1));

    let (status, updated) = ssf
        .call(
            reqwest::Method::PATCH,
            "/streams",
            Some(json!({"stream_id": id, "description": "renamed"})),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["description"], "renamed");
    assert_eq!(
        updated["events_requested"],
        json!([uri::ACCOUNT_DISABLED]),
        "PATCH keeps the rest"
    );
    let (status, replaced) = ssf
        .call(
            reqwest::Method::PUT,
            "/streams",
            Some(json!({"stream_id": id, "delivery": {"method": rollcall_domain::ssf::POLL}})),
        )
        .await;
    assert_eq!(status, 200, "{replaced}");
    assert!(
        replaced.get("description").is_none(),
        "PUT resets what it leaves out"
    );
    assert_eq!(replaced["events_requested"], json!([]));

    let status_query = format!("/status?stream_id={id}");
    let (status, current) = ssf.call(reqwest::Method::GET, &status_query, None).await;
    assert_eq!((status, current["status"].as_str()), (200, Some("enabled")));
    let (status, paused) = ssf
        .call(
            reqwest::Method::POST,
            "/status",
            Some(json!({"stream_id": id, "status": "paused", "reason": "maintenance"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        paused,
        json!({"stream_id": id, "status": "paused", "reason": "maintenance"})
    );
    let subject = json!({"format": "email", "email": "Ada@Example.com"});
    let (status, _) = ssf
        .call(
            reqwest::Method::POST,
            "/subjects/remove",
            Some(json!({"stream_id": id, "subject": subject})),
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = ssf
        .call(
            reqwest::Method::POST,
            "/subjects/add",
            Some(json!({"stream_id": id, "subject": subject, "verified": true})),
        )
        .await;
    assert_eq!(status, 200);

    let (status, _) = ssf.call(reqwest::Method::DELETE, &query, None).await;
    assert_eq!(status, 204);
    assert_eq!(ssf.call(reqwest::Method::GET, &query, None).await.0, 404);

    // Every change is an event, audited with the receiver's token as actor.
    let head = ssf.env.head().await;
    eventually(
        "the projector audits the stream",
        Duration::from_secs(10),
        || ssf.env.projected(head),
    )
    .await;
    assert_eq!(
        ssf.env.event_types("test", &id).await,
        [
            "ssf_stream.created",
            "ssf_stream.configured",
            "ssf_stream.configured",
            "ssf_stream.status_changed",
            "ssf_stream.subject_removed",
            "ssf_stream.subject_added",
            "ssf_stream.deleted",
        ]
    );
    let rows = ssf
        .env
        .store
        .audit_events("test", id.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(rows[0].actor.0["kind"], "ssf_receiver");
}

#[tokio::test]
async fn every_lifecycle_change_reaches_a_push_receiver_as_its_caep_or_risc_set_in_order() {
    let ssf = start().await;
    let receiver = ssf.receiver().await;
    let stream = ssf
        .push_stream(
            &receiver,
            json!({"delivery": {"method": rollcall_domain::ssf::PUSH, "endpoint_url": receiver.url(), "authorization_header": "Bearer receiver-secret"}}),
        )
        .await;
    let scim = ssf.env.scim();
    let ada = scim.create_user(&user("ada")).await;
    let path = format!("/Users/{ada}");
    let group = scim
        .create_group(&json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": "Engineering",
            "members": [{"value": ada}],
        }))
        .await;
    let password = scim
        .patch(
            &path,
            &patch(json!([{"op": "replace", "path": "password", "value": "S3cret-pass!"}])),
        )
        .await;
    assert_eq!(password.status, 200, "{:?}", password.body);
    let email = scim
        .patch(
            &path,
            &patch(json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": "augusta@example.com"}])),
        )
        .await;
    assert_eq!(email.status, 200, "{:?}", email.body);
    let removed = scim
        .patch(
            &format!("/Groups/{group}"),
            &patch(json!([{"op": "Remove", "path": "members", "value": [{"value": ada}]}])),
        )
        .await;
    assert_eq!(removed.status / 100, 2, "{:?}", removed.body);
    let off = scim
        .patch(
            &path,
            &patch(json!([{"op": "Replace", "path": "active", "value": "False"}])),
        )
        .await;
    assert_eq!(off.status, 200);
    let on = scim
        .patch(
            &path,
            &patch(json!([{"op": "Replace", "path": "active", "value": "True"}])),
        )
        .await;
    assert_eq!(on.status, 200);
    rollcall_scim_api::operator::revoke_sessions(
        &ssf.env.log,
        &ssf.env.store,
        "test",
        ada.parse().unwrap(),
        Some("session-1".into()),
        "lost laptop",
        "operator",
    )
    .await
    .unwrap();
    assert_eq!(scim.delete(&path).await.status, 204);

    let expected = [
        uri::TOKEN_CLAIMS_CHANGE,
        uri::CREDENTIAL_CHANGE,
        uri::IDENTIFIER_CHANGED,
        uri::TOKEN_CLAIMS_CHANGE,
        uri::ACCOUNT_DISABLED,
        uri::SESSION_REVOKED,
        uri::ACCOUNT_ENABLED,
        uri::SESSION_REVOKED,
        uri::ACCOUNT_PURGED,
    ];
    let sets = receiver.wait_for(expected.len()).await;
    assert_eq!(receiver.events(), expected);
    let claims: Vec<&Value> = sets.iter().map(|(_, claims)| claims).collect();
    let body = |index: usize| &claims[index]["events"][expected[index]];
    assert_eq!(body(0)["claims"]["groups"], json!(["Engineering"]));
    assert_eq!(
        claims[0]["sub_id"],
        json!({"format": "email", "email": "ada@example.com"})
    );
    assert_eq!(body(1)["credential_type"], "password");
    assert!(
        !claims[1].to_string().contains("S3cret"),
        "never the password"
    );
    assert_eq!(body(2)["new-value"], "augusta@example.com");
    assert_eq!(
        claims[2]["sub_id"]["email"], "ada@example.com",
        "the old identifier"
    );
    assert_eq!(body(3)["claims"]["groups"], json!([]));
    assert_eq!(claims[4]["sub_id"]["email"], "augusta@example.com");
    assert_eq!(claims[4]["txn"], claims[5]["txn"], "one cause, one txn");
    assert_ne!(claims[4]["jti"], claims[5]["jti"]);
    assert_eq!(claims[5]["sub_id"]["format"], "complex");
    assert_eq!(
        claims[5]["sub_id"]["tenant"],
        json!({"format": "opaque", "id": "test"})
    );
    assert_eq!(body(4)["initiating_entity"], "admin");
    assert!(body(4)["event_timestamp"].is_i64());
    assert_eq!(
        claims[7]["sub_id"]["session"],
        json!({"format": "opaque", "id": "session-1"})
    );
    assert_eq!(claims[8]["sub_id"]["email"], "augusta@example.com");
    {
        let log = receiver.log.lock().unwrap();
        assert!(log
            .authorizations
            .iter()
            .all(|a| a == "Bearer receiver-secret"));
        assert_eq!(log.authorizations.len(), log.attempts);
    }
    // The receiver's secret is never on the event stream or in the audit log in clear.
    let head = ssf.env.head().await;
    eventually("audited", Duration::from_secs(10), || {
        ssf.env.projected(head)
    })
    .await;
    let created = &ssf
        .env
        .store
        .audit_events("test", stream.parse().unwrap())
        .await
        .unwrap()[0];
    assert!(!created.payload.0.to_string().contains("receiver-secret"));
}

#[tokio::test]
async fn verification_echoes_the_state_and_a_second_request_within_the_interval_is_429() {
    let ssf = start().await;
    let receiver = ssf.receiver().await;
    let stream = ssf.push_stream(&receiver, json!({})).await;
    let (status, _) = ssf
        .call(
            reqwest::Method::POST,
            "/verify",
            Some(json!({"stream_id": stream, "state": "VGhpcyBpcyBhbiBleGFtcGxl"})),
        )
        .await;
    assert_eq!(status, 204);
    let sets = receiver.wait_for(1).await;
    let claims = &sets[0].1;
    assert_eq!(event_uri(claims), uri::VERIFICATION);
    assert_eq!(
        claims["events"][uri::VERIFICATION]["state"],
        "VGhpcyBpcyBhbiBleGFtcGxl"
    );
    assert_eq!(claims["sub_id"], json!({"format": "opaque", "id": stream}));
    let response = reqwest::Client::new()
        .post(format!("{}/verify", ssf.endpoints))
        .bearer_auth(&ssf.token)
        .json(&json!({"stream_id": stream}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().get("retry-after").is_some());
}

#[tokio::test]
async fn a_receiver_down_for_a_while_gets_everything_in_order_and_a_400_is_not_retried() {
    let ssf = start().await;
    let receiver = ssf.receiver().await;
    ssf.push_stream(&receiver, json!({})).await;
    let scim = ssf.env.scim();
    // Refused once with invalid_audience: that SET is dropped, the next ones arrive.
    receiver.set_mode(Mode::RefuseNext);
    let first = scim.create_user(&user("first")).await;
    let deactivate = patch(json!([{"op": "Replace", "path": "active", "value": "False"}]));
    let reactivate = patch(json!([{"op": "Replace", "path": "active", "value": "True"}]));
    scim.patch(&format!("/Users/{first}"), &deactivate).await;
    // account-disabled was refused; session-revoked arrives.
    let sets = receiver.wait_for(1).await;
    assert_eq!(event_uri(&sets[0].1), uri::SESSION_REVOKED);
    assert_eq!(
        receiver.log.lock().unwrap().attempts,
        2,
        "the refused SET is not sent again"
    );

    // Down: every attempt fails; nothing is lost and the order holds when it returns.
    receiver.set_mode(Mode::Unavailable);
    let mut users = Vec::new();
    for index in 0..4 {
        let id = scim.create_user(&user(&format!("user{index}"))).await;
        scim.patch(&format!("/Users/{id}"), &deactivate).await;
        scim.patch(&format!("/Users/{id}"), &reactivate).await;
        users.push(id);
    }
    eventually(
        "the transmitter retries",
        Duration::from_secs(10),
        || async { receiver.log.lock().unwrap().attempts >= 5 },
    )
    .await;
    receiver.set_mode(Mode::Accept);
    let sets = receiver.wait_for(1 + 4 * 3).await;
    let got: Vec<(String, String)> = sets[1..].iter().map(|(_, claims)| who(claims)).collect();
    let mut wanted = Vec::new();
    for index in 0..4 {
        let email = format!("user{index}@example.com");
        for event in [
            uri::ACCOUNT_DISABLED,
            uri::SESSION_REVOKED,
            uri::ACCOUNT_ENABLED,
        ] {
            wanted.push((event.to_owned(), email.clone()));
        }
    }
    assert_eq!(got, wanted);
}

#[tokio::test]
async fn a_poll_receiver_acknowledges_sets_and_a_long_poll_returns_when_an_event_arrives() {
    let ssf = start().await;
    let (status, created) = ssf
        .call(
            reqwest::Method::POST,
            "/streams",
            Some(json!({"aud": "https://receiver.example"})),
        )
        .await;
    assert_eq!(status, 201);
    let id = created["stream_id"].as_str().unwrap().to_owned();
    let poll_url = created["delivery"]["endpoint_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let keys_uri = format!("{}/jwks.json", ssf.endpoints);
    let poll = |body: Value| {
        let (url, token) = (poll_url.clone(), ssf.token.clone());
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let empty = poll(json!({"returnImmediately": true})).await;
    assert_eq!(empty, json!({"sets": {}, "moreAvailable": false}));

    let scim = ssf.env.scim();
    let ada = scim.create_user(&user("ada")).await;
    let off = patch(json!([{"op": "Replace", "path": "active", "value": "False"}]));
    scim.patch(&format!("/Users/{ada}"), &off).await;
    let answer = poll(json!({"returnImmediately": true, "maxEvents": 1})).await;
    let sets = answer["sets"].as_object().unwrap();
    assert_eq!(sets.len(), 1);
    assert_eq!(answer["moreAvailable"], true);
    let keys = jwks(&keys_uri).await;
    let (first_jti, first) = sets.iter().next().unwrap();
    let (_, claims) = verify(
        first.as_str().unwrap(),
        &keys,
        &ssf.issuer,
        "https://receiver.example",
    )
    .unwrap();
    assert_eq!(event_uri(&claims), uri::ACCOUNT_DISABLED);
    assert_eq!(&claims["jti"], first_jti);
    // Not acknowledged: sent again, with the same jti.
    let again = poll(json!({"returnImmediately": true})).await;
    let again = again["sets"].as_object().unwrap();
    assert_eq!(again.len(), 2);
    assert!(again.contains_key(first_jti));
    let second_jti = again.keys().find(|jti| *jti != first_jti).unwrap().clone();
    // Both acknowledged (one as an error): nothing more.
    let done = poll(json!({
        "returnImmediately": true,
        "ack": [first_jti],
        "setErrs": {second_jti.clone(): {"err": "invalid_request", "description": "test"}},
    }))
    .await;
    assert_eq!(done, json!({"sets": {}, "moreAvailable": false}));

    // A long poll waits for the next event.
    let waiting = tokio::spawn(poll(json!({"returnImmediately": false})));
    let on = patch(json!([{"op": "Replace", "path": "active", "value": "True"}]));
    scim.patch(&format!("/Users/{ada}"), &on).await;
    let answer = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the long poll answers when the event arrives")
        .unwrap();
    let sets = answer["sets"].as_object().unwrap();
    assert_eq!(sets.len(), 1);
    let (_, claims) = verify(
        sets.values().next().unwrap().as_str().unwrap(),
        &keys,
        &ssf.issuer,
        "https://receiver.example",
    )
    .unwrap();
    assert_eq!(event_uri(&claims), uri::ACCOUNT_ENABLED);
    // The position moved past the acknowledged events, durably.
    let position = ssf
        .env
        .store
        .ssf_position(id.parse().unwrap())
        .await
        .unwrap();
    assert!(position.is_some_and(|p| p > 0));
    // Paused by the receiver: a poll gets nothing, however much happens; resumed, it all comes.
    let enabled_jti = sets.keys().next().unwrap().clone();
    let status = |status: &str| json!({"stream_id": id, "status": status});
    assert_eq!(
        ssf.call(reqwest::Method::POST, "/status", Some(status("paused")))
            .await
            .0,
        200
    );
    scim.patch(&format!("/Users/{ada}"), &off).await;
    let held = poll(json!({"returnImmediately": true, "ack": [enabled_jti]})).await;
    assert_eq!(held, json!({"sets": {}, "moreAvailable": false}));
    assert_eq!(
        ssf.call(reqwest::Method::POST, "/status", Some(status("enabled")))
            .await
            .0,
        200
    );
    let released = poll(json!({"returnImmediately": true})).await;
    let events: Vec<String> = released["sets"]
        .as_object()
        .unwrap()
        .values()
        .map(|token| {
            let (_, claims) = verify(
                token.as_str().unwrap(),
                &keys,
                &ssf.issuer,
                "https://receiver.example",
            )
            .unwrap();
            event_uri(&claims)
        })
        .collect();
    assert_eq!(events.len(), 2, "{released}");
    assert!(
        events.contains(&uri::ACCOUNT_DISABLED.to_owned())
            && events.contains(&uri::SESSION_REVOKED.to_owned())
    );
}

#[tokio::test]
async fn a_paused_stream_holds_events_and_delivers_them_in_order_when_resumed() {
    let ssf = start().await;
    let held = ssf.receiver().await;
    let held_stream = ssf.push_stream(&held, json!({})).await;
    // A second stream, never paused, shows when the events have been delivered.
    let witness = ssf.receiver().await;
    ssf.push_stream(&witness, json!({})).await;
    let (status, _) = ssf
        .call(
            reqwest::Method::POST,
            "/status",
            Some(json!({"stream_id": held_stream, "status": "paused"})),
        )
        .await;
    assert_eq!(status, 200);
    let scim = ssf.env.scim();
    for index in 0..3 {
        let id = scim.create_user(&user(&format!("held{index}"))).await;
        scim.patch(
            &format!("/Users/{id}"),
            &patch(json!([{"op": "Replace", "path": "active", "value": "False"}])),
        )
        .await;
    }
    witness.wait_for(6).await;
    assert!(held.sets().is_empty(), "a paused stream delivers nothing");
    // Resumed by the receiver: the held events arrive in order.
    let (status, _) = ssf
        .call(
            reqwest::Method::POST,
            "/status",
            Some(json!({"stream_id": held_stream, "status": "enabled"})),
        )
        .await;
    assert_eq!(status, 200);
    let sets = held.wait_for(6).await;
    let subjects: Vec<String> = sets
        .iter()
        .filter(|(_, claims)| event_uri(claims) == uri::ACCOUNT_DISABLED)
        .map(|(_, claims)| claims["sub_id"]["email"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        subjects,
        [
            "held0@example.com",
            "held1@example.com",
            "held2@example.com"
        ]
    );
    assert_eq!(held.events(), witness.events());
}

#[tokio::test]
async fn a_replica_killed_while_delivering_leaves_the_stream_to_another_with_no_gap() {
    let ssf = start().await;
    let receiver = ssf.receiver().await;
    ssf.push_stream(&receiver, json!({})).await;
    // A second access service of the installation, transmitting too.
    let (other, _) = ssf
        .env
        .another_access(|config, _| {
            config.ssf.public_url = Some(ssf.env.access_base.parse().unwrap());
        })
        .await;
    let scim = ssf.env.scim();
    receiver.set_mode(Mode::Unavailable);
    let first = scim.create_user(&user("before")).await;
    scim.patch(
        &format!("/Users/{first}"),
        &patch(json!([{"op": "Replace", "path": "active", "value": "False"}])),
    )
    .await;
    eventually("someone is delivering", Duration::from_secs(10), || async {
        receiver.log.lock().unwrap().attempts >= 1
    })
    .await;
    // Kill both replicas in turn while the receiver is down: whichever holds the stream
    // dies with a SET in flight, and the other (then a new one) takes it over.
    other.abort().await;
    let attempts = receiver.log.lock().unwrap().attempts;
    eventually(
        "the delivery goes on after the kill",
        Duration::from_secs(15),
        || async { receiver.log.lock().unwrap().attempts > attempts },
    )
    .await;
    let base = ssf.env.access_base.clone();
    let mut env = ssf.env;
    env.restart_access_with(|config, _| {
        config.ssf.public_url = Some(base.parse().unwrap());
    })
    .await;
    receiver.set_mode(Mode::Accept);
    let second = env.scim().create_user(&user("after")).await;
    env.scim()
        .patch(
            &format!("/Users/{second}"),
            &patch(json!([{"op": "Replace", "path": "active", "value": "False"}])),
        )
        .await;
    let sets = receiver.wait_for(4).await;
    let got: Vec<(String, String)> = sets.iter().map(|(_, claims)| who(claims)).collect();
    assert_eq!(
        got,
        deactivations(&["before", "after"]),
        "everything, in order, nothing twice"
    );
}

#[tokio::test]
async fn a_receiver_sees_and_manages_only_its_own_tenants_streams() {
    let ssf = start().await;
    ssf.env.store.create_tenant("other").await.unwrap();
    let other_token = ssf
        .env
        .store
        .create_token("other", Scope::Ssf, None)
        .await
        .unwrap()
        .token;
    let (status, created) = ssf
        .call(reqwest::Method::POST, "/streams", Some(json!({})))
        .await;
    assert_eq!(status, 201);
    let id = created["stream_id"].as_str().unwrap();
    // The other tenant's token on this tenant's endpoints: 403.
    let (status, _) = ssf
        .call_as(&other_token, reqwest::Method::GET, "/streams", None)
        .await;
    assert_eq!(status, 403);
    // On its own tenant's endpoints it sees nothing of this tenant's, and cannot touch it.
    let other_base = format!("{}/ssf/other", ssf.env.access_base);
    let client = reqwest::Client::new();
    let list: Value = client
        .get(format!("{other_base}/streams"))
        .bearer_auth(&other_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, json!([]));
    for (method, path) in [
        (reqwest::Method::GET, format!("/streams?stream_id={id}")),
        (reqwest::Method::DELETE, format!("/streams?stream_id={id}")),
        (reqwest::Method::GET, format!("/status?stream_id={id}")),
    ] {
        let response = client
            .request(method, format!("{other_base}{path}"))
            .bearer_auth(&other_token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    // A SCIM token is not an ssf token.
    let (status, _) = ssf
        .call_as(&ssf.env.token, reqwest::Method::GET, "/streams", None)
        .await;
    assert_eq!(status, 401);
    let (status, _) = ssf
        .call(
            reqwest::Method::GET,
            &format!("/streams?stream_id={id}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "untouched");
}

#[tokio::test]
async fn bad_input_to_every_management_endpoint_is_a_clear_400_and_stores_nothing() {
    let ssf = start().await;
    let (_, created) = ssf
        .call(reqwest::Method::POST, "/streams", Some(json!({})))
        .await;
    let id = created["stream_id"].as_str().unwrap().to_owned();
    let head = ssf.env.head().await;
    let cases: Vec<(reqwest::Method, &str, Value)> = vec![
        (reqwest::Method::POST, "/streams", json!([1])),
        (reqwest::Method::POST, "/streams", json!({"bogus": 1})),
        (reqwest::Method::POST, "/streams", json!({"stream_id": id})),
        (
            reqwest::Method::POST,
            "/streams",
            json!({"delivery": {"method": "urn:example:carrier-pigeon"}}),
        ),
        (
            reqwest::Method::POST,
            "/streams",
            json!({"delivery": {"method": rollcall_domain::ssf::PUSH}}),
        ),
        (
            reqwest::Method::POST,
            "/streams",
            json!({"delivery": {"method": rollcall_domain::ssf::PUSH, "endpoint_url": "http://receiver.example/events"}}),
        ),
        (
            reqwest::Method::POST,
            "/streams",
            json!({"delivery": {"method": rollcall_domain::ssf::PUSH, "endpoint_url": "https://user:pw@receiver.example/"}}),
        ),
        (
            reqwest::Method::POST,
            "/streams",
            json!({"delivery": {"method": rollcall_domain::ssf::PUSH, "endpoint_url": "https://r.example/", "authorization_header": "Bearer a\nb"}}),
        ),
        (
            reqwest::Method::POST,
            "/streams",
            json!({"description": "nul \u{0} here"}),
        ),
        (
            reqwest::Method::POST,
            "/streams",
            json!({"description": "x".repeat(5000)}),
        ),
        (
            reqwest::Method::POST,
            "/streams",
            json!({"events_requested": "not-an-array"}),
        ),
        (reqwest::Method::POST, "/streams", json!({"aud": []})),
        (
            reqwest::Method::PATCH,
            "/streams",
            json!({"description": "no id"}),
        ),
        (
            reqwest::Method::PATCH,
            "/streams",
            json!({"stream_id": id, "aud": "https://another.example"}),
        ),
        (
            reqwest::Method::PUT,
            "/streams",
            json!({"stream_id": id, "delivery": "poll"}),
        ),
        (
            reqwest::Method::POST,
            "/status",
            json!({"stream_id": id, "status": "sleeping"}),
        ),
        (
            reqwest::Method::POST,
            "/status",
            json!({"stream_id": id, "status": "paused", "reason": 7}),
        ),
        (
            reqwest::Method::POST,
            "/subjects/add",
            json!({"stream_id": id, "subject": "ada@example.com"}),
        ),
        (
            reqwest::Method::POST,
            "/subjects/add",
            json!({"stream_id": id, "subject": {"email": "ada@example.com"}}),
        ),
        (
            reqwest::Method::POST,
            "/subjects/remove",
            json!({"stream_id": id, "subject": {"format": "email", "email": "\u{1}"}}),
        ),
        (
            reqwest::Method::POST,
            "/subjects/add",
            json!({"stream_id": id, "subject": {"format": "email", "email": "a@b"}, "verified": "yes"}),
        ),
        (
            reqwest::Method::POST,
            "/verify",
            json!({"stream_id": id, "state": {"nested": true}}),
        ),
        (
            reqwest::Method::POST,
            "/verify",
            json!({"stream_id": id, "extra": 1}),
        ),
        (
            reqwest::Method::POST,
            "/subjects/remove",
            json!({"stream_id": id, "subject": {"format": "phone_number", "phone_number": "+12065550100"}}),
        ),
    ];
    for (method, path, body) in cases {
        let (status, answer) = ssf.call(method.clone(), path, Some(body.clone())).await;
        assert_eq!(status, 400, "{method} {path} {body}: {answer}");
        assert!(
            answer["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{method} {path}: a description: {answer}"
        );
    }
    // Not JSON at all.
    let response = reqwest::Client::new()
        .post(format!("{}/streams", ssf.endpoints))
        .bearer_auth(&ssf.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // A poll of a bad shape.
    let response = reqwest::Client::new()
        .post(format!("{}/poll/{id}", ssf.endpoints))
        .bearer_auth(&ssf.token)
        .json(&json!({"maxEvents": "ten"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // An acknowledgement of something Rollcall never sent.
    let response = reqwest::Client::new()
        .post(format!("{}/poll/{id}", ssf.endpoints))
        .bearer_auth(&ssf.token)
        .json(&json!({"returnImmediately": true, "ack": ["bogus\u{0}"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(ssf.env.head().await, head, "nothing was written");
    let (status, list) = ssf.call(reqwest::Method::GET, "/streams", None).await;
    assert_eq!((status, list.as_array().unwrap().len()), (200, 1));
}

#[tokio::test]
async fn rollcall_ssf_receive_prints_verified_sets_and_refuses_another_audience() {
    let ssf = start().await;
    let collected: Arc<Mutex<Vec<Value>>> = Arc::default();
    let issuer: url::Url = ssf.issuer.parse().unwrap();
    // Two receivers: one expecting the stream's audience, one expecting another.
    let mut endpoints = Vec::new();
    for audience in ["https://receiver.example", "https://someone-else.example"] {
        let listener = rollcall_it::loopback().await;
        endpoints.push(format!("http://{}/", listener.local_addr().unwrap()));
        let (issuer, sink) = (issuer.clone(), collected.clone());
        tokio::spawn(rollcall::commands::ssf::serve_receiver(
            listener,
            issuer,
            audience.to_owned(),
            None,
            move |set| sink.lock().unwrap().push(set),
        ));
    }
    let mut streams = Vec::new();
    for endpoint in &endpoints {
        let (status, created) = ssf
            .call(
                reqwest::Method::POST,
                "/streams",
                Some(json!({"aud": "https://receiver.example", "delivery": {"method": rollcall_domain::ssf::PUSH, "endpoint_url": endpoint}})),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        streams.push(uuid::Uuid::parse_str(created["stream_id"].as_str().unwrap()).unwrap());
    }
    let scim = ssf.env.scim();
    let ada = scim.create_user(&user("ada")).await;
    scim.patch(
        &format!("/Users/{ada}"),
        &patch(json!([{"op": "Replace", "path": "active", "value": "False"}])),
    )
    .await;
    let head = ssf.env.head().await;
    // Both streams are past the deactivation: one receiver took its SETs, the other refused
    // them (400 invalid_audience, not retried).
    for stream in &streams {
        eventually(
            "the stream is past the deactivation",
            Duration::from_secs(20),
            || async {
                ssf.env
                    .store
                    .ssf_position(*stream)
                    .await
                    .unwrap()
                    .unwrap_or(0)
                    >= head
            },
        )
        .await;
    }
    let collected = collected.lock().unwrap().clone();
    let events: Vec<String> = collected
        .iter()
        .map(|set| event_uri(&set["claims"]))
        .collect();
    assert_eq!(events, [uri::ACCOUNT_DISABLED, uri::SESSION_REVOKED]);
    assert_eq!(collected[0]["header"]["typ"], "secevent+jwt");
    assert_eq!(collected[0]["claims"]["iss"], ssf.issuer);
}

#[tokio::test]
async fn a_receiver_down_past_the_backlog_bound_gets_its_stream_paused_with_a_reason_and_resumed_by_an_operator(
) {
    let ssf = start_with(|config| config.max_backlog = 3).await;
    let receiver = ssf.receiver().await;
    let stream = ssf.push_stream(&receiver, json!({})).await;
    receiver.set_mode(Mode::Unavailable);
    let scim = ssf.env.scim();
    for index in 0..3 {
        let id = scim.create_user(&user(&format!("late{index}"))).await;
        scim.patch(
            &format!("/Users/{id}"),
            &patch(json!([{"op": "Replace", "path": "active", "value": "False"}])),
        )
        .await;
        if index == 0 {
            // The bound counts what piles up after the first failure.
            eventually("the first SET fails", Duration::from_secs(10), || async {
                receiver.log.lock().unwrap().attempts >= 1
            })
            .await;
        }
    }
    let query = format!("/status?stream_id={stream}");
    eventually(
        "the stream is paused by Rollcall",
        Duration::from_secs(20),
        || async { ssf.call(reqwest::Method::GET, &query, None).await.1["status"] == "paused" },
    )
    .await;
    let status = ssf.call(reqwest::Method::GET, &query, None).await.1;
    assert!(
        status["reason"].as_str().unwrap().contains("unreachable"),
        "{status}"
    );
    // The receiver is back; an operator resumes the stream (rollcall ssf streams resume).
    receiver.set_mode(Mode::Accept);
    let common = rollcall::cli::Common {
        database_url: ssf.env.database_url.clone(),
        nats_url: rollcall_it::nats_url(),
        namespace: ssf.env.namespace.to_string(),
        replicas: 1,
    };
    use rollcall::commands::ssf::{run, SsfCommand, StreamsCommand};
    run(
        common,
        SsfCommand::Streams {
            command: StreamsCommand::Resume {
                id: stream.parse().unwrap(),
            },
        },
    )
    .await
    .unwrap();
    // Every held SET arrives in order, then the two stream-updated SETs.
    let sets = receiver.wait_for(3 * 2 + 2).await;
    let lifecycle: Vec<(String, String)> = sets
        .iter()
        .filter(|(_, claims)| event_uri(claims) != uri::STREAM_UPDATED)
        .map(|(_, claims)| who(claims))
        .collect();
    assert_eq!(lifecycle, deactivations(&["late0", "late1", "late2"]));
    let updates: Vec<&Value> = sets
        .iter()
        .filter(|(_, claims)| event_uri(claims) == uri::STREAM_UPDATED)
        .map(|(_, claims)| &claims["events"][uri::STREAM_UPDATED])
        .collect();
    assert_eq!(updates.len(), 2, "{updates:?}");
    assert_eq!(updates[0]["status"], "paused");
    assert!(updates[0]["reason"]
        .as_str()
        .unwrap()
        .contains("unreachable"));
    assert_eq!(updates[1]["status"], "enabled");
    assert_eq!(
        sets.last().map(|(_, c)| event_uri(c)).as_deref(),
        Some(uri::STREAM_UPDATED)
    );
}

#[tokio::test]
async fn a_disabled_stream_drops_what_happens_meanwhile_and_a_removed_subject_gets_nothing() {
    let ssf = start().await;
    let receiver = ssf.receiver().await;
    let stream = ssf.push_stream(&receiver, json!({})).await;
    // Another tenant's stream, to show that it hears nothing of this tenant.
    ssf.env.store.create_tenant("other").await.unwrap();
    let other_token = ssf
        .env
        .store
        .create_token("other", Scope::Ssf, None)
        .await
        .unwrap()
        .token;
    let stranger = Receiver::start(
        &format!("{}/other", ssf.env.access_base),
        &format!("{}/ssf/other/jwks.json", ssf.env.access_base),
    )
    .await;
    let created: Value = reqwest::Client::new()
        .post(format!("{}/ssf/other/streams", ssf.env.access_base))
        .bearer_auth(&other_token)
        .json(&json!({"delivery": {"method": rollcall_domain::ssf::PUSH, "endpoint_url": stranger.url()}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let other_stream = uuid::Uuid::parse_str(created["stream_id"].as_str().unwrap()).unwrap();

    let scim = ssf.env.scim();
    let off = patch(json!([{"op": "Replace", "path": "active", "value": "False"}]));
    let status = |status: &str| json!({"stream_id": stream, "status": status});
    assert_eq!(
        ssf.call(reqwest::Method::POST, "/status", Some(status("disabled")))
            .await
            .0,
        200
    );
    let dropped = scim.create_user(&user("dropped")).await;
    scim.patch(&format!("/Users/{dropped}"), &off).await;
    assert_eq!(
        ssf.call(reqwest::Method::POST, "/status", Some(status("enabled")))
            .await
            .0,
        200
    );
    // A removed subject: nothing about that person, by email or otherwise.
    let (code, _) = ssf
        .call(
            reqwest::Method::POST,
            "/subjects/remove",
            Some(json!({"stream_id": stream, "subject": {"format": "email", "email": "Hidden@Example.com"}})),
        )
        .await;
    assert_eq!(code, 204);
    let hidden = scim.create_user(&user("hidden")).await;
    scim.patch(&format!("/Users/{hidden}"), &off).await;
    let seen = scim.create_user(&user("seen")).await;
    scim.patch(&format!("/Users/{seen}"), &off).await;
    let sets = receiver.wait_for(2).await;
    let head = ssf.env.head().await;
    let stream_id = uuid::Uuid::parse_str(&stream).unwrap();
    eventually(
        "the stream is past every event",
        Duration::from_secs(20),
        || async {
            ssf.env
                .store
                .ssf_position(stream_id)
                .await
                .unwrap()
                .unwrap_or(0)
                >= head
        },
    )
    .await;
    let emails: Vec<String> = receiver
        .sets()
        .iter()
        .map(|(_, claims)| who(claims).1)
        .collect();
    assert_eq!(emails, ["seen@example.com", "seen@example.com"], "{sets:?}");
    // The other tenant's stream delivers (a verification reaches it), and nothing of this
    // tenant's ever did.
    *stranger.audience.lock().unwrap() = created["aud"].as_str().unwrap().to_owned();
    let verified = reqwest::Client::new()
        .post(format!("{}/ssf/other/verify", ssf.env.access_base))
        .bearer_auth(&other_token)
        .json(&json!({"stream_id": other_stream, "state": "s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(verified.status(), 204);
    stranger.wait_for(1).await;
    assert_eq!(
        stranger.events(),
        [uri::VERIFICATION],
        "another tenant's stream hears nothing else"
    );
}

#[tokio::test]
async fn a_push_endpoint_on_an_internal_address_is_refused_unless_allowed() {
    let ssf = start_with(|config| config.allow_internal_endpoints = false).await;
    let head = ssf.env.head().await;
    for endpoint in [
        "http://127.0.0.1:9/events",
        "https://127.0.0.1/events",
        "https://10.1.2.3/events",
        "https://169.254.169.254/latest",
        "https://[::1]/events",
        "https://[fd00::1]/events",
        "https://localhost/events",
        "http://receiver.example/events",
    ] {
        let (status, answer) = ssf
            .call(
                reqwest::Method::POST,
                "/streams",
                Some(json!({"delivery": {"method": rollcall_domain::ssf::PUSH, "endpoint_url": endpoint}})),
            )
            .await;
        assert_eq!(status, 400, "{endpoint}: {answer}");
    }
    assert_eq!(ssf.env.head().await, head, "nothing was written");
    let (status, _) = ssf
        .call(
            reqwest::Method::POST,
            "/streams",
            Some(json!({"delivery": {"method": rollcall_domain::ssf::PUSH, "endpoint_url": "https://receiver.example/events"}})),
        )
        .await;
    assert_eq!(status, 201, "a public https endpoint is fine");
}

/// The access service of [`a_process_killed_while_delivering_leaves_its_streams_to_another`]:
/// transmits Shared Signals for the installation the parent names, prints its address, and
/// serves until it is killed.
#[tokio::test]
#[ignore = "started by a_process_killed_while_delivering_leaves_its_streams_to_another"]
async fn child_transmitting_access_process() {
    let Ok(spec) = std::env::var("ROLLCALL_IT_CHILD_SSF") else {
        return;
    };
    let mut parts = spec.split('|');
    let (database_url, namespace, policies) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let client = rollcall_eventlog::connect(&rollcall_it::nats_url(), "rollcall-test-child")
        .await
        .unwrap();
    let namespace = rollcall_eventlog::Namespace::new(namespace).unwrap();
    let log = rollcall_eventlog::EventLog::open(client.clone(), namespace.clone())
        .await
        .unwrap();
    let store = rollcall_store::Store::connect(database_url).await.unwrap();
    let listener = rollcall_it::loopback().await;
    let addr = listener.local_addr().unwrap();
    let mut config = rollcall_it::access_config(std::path::Path::new(policies));
    config.ssf.public_url = Some(format!("http://{addr}").parse().unwrap());
    config.ssf.allow_internal_endpoints = true;
    let access = rollcall_access::Access::from_installation(config, &client, &log, Some(&store))
        .await
        .unwrap();
    println!("ADDR {addr}");
    rollcall_access::serve(listener, access, client, namespace, std::future::pending())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_process_killed_while_delivering_leaves_its_streams_to_another() {
    use tokio::io::AsyncBufReadExt;
    let mut env = TestEnv::start().await;
    // Only the child transmits at first: it takes the stream.
    let mut child = tokio::process::Command::from(rollcall_it::child_test(
        "ssf::child_transmitting_access_process",
    ))
    .env(
        "ROLLCALL_IT_CHILD_SSF",
        format!(
            "{}|{}|{}",
            env.database_url,
            env.namespace,
            env.policy_file.display()
        ),
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null())
    .kill_on_drop(true)
    .spawn()
    .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // libtest prints the test's name on the same line first.
            if let Some((_, addr)) = line.split_once("ADDR ") {
                return addr.trim().to_owned();
            }
        }
        panic!("the child process ended without serving");
    })
    .await
    .expect("the child process serves");
    let base = format!("http://{addr}");
    let token = env
        .store
        .create_token("test", Scope::Ssf, None)
        .await
        .unwrap()
        .token;
    let receiver = Receiver::start(
        &format!("{base}/test"),
        &format!("{base}/ssf/test/jwks.json"),
    )
    .await;
    let created: Value = reqwest::Client::new()
        .post(format!("{base}/ssf/test/streams"))
        .bearer_auth(&token)
        .json(&json!({"delivery": {"method": rollcall_domain::ssf::PUSH, "endpoint_url": receiver.url()}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    *receiver.audience.lock().unwrap() = created["aud"].as_str().unwrap().to_owned();
    receiver.set_mode(Mode::Unavailable);
    let scim = env.scim();
    let off = patch(json!([{"op": "Replace", "path": "active", "value": "False"}]));
    let first = scim.create_user(&user("first")).await;
    scim.patch(&format!("/Users/{first}"), &off).await;
    eventually("the child delivers", Duration::from_secs(20), || async {
        receiver.log.lock().unwrap().attempts >= 2
    })
    .await;
    // SIGKILL, with a SET in flight.
    child.kill().await.unwrap();
    // This process transmits now, under the same issuer, and takes the stream over.
    env.restart_access_with(|config, _| {
        config.ssf.public_url = Some(base.parse().unwrap());
        config.ssf.allow_internal_endpoints = true;
    })
    .await;
    let second = scim.create_user(&user("second")).await;
    scim.patch(&format!("/Users/{second}"), &off).await;
    receiver.set_mode(Mode::Accept);
    let sets = receiver.wait_for(4).await;
    let got: Vec<(String, String)> = sets.iter().map(|(_, claims)| who(claims)).collect();
    assert_eq!(
        got,
        deactivations(&["first", "second"]),
        "everything, in order, nothing twice"
    );
}

#[tokio::test]
async fn an_operator_pause_is_announced_at_once_and_holds_what_follows_until_resumed() {
    let ssf = start().await;
    let receiver = ssf.receiver().await;
    let stream: uuid::Uuid = ssf.push_stream(&receiver, json!({})).await.parse().unwrap();
    let common = rollcall::cli::Common {
        database_url: ssf.env.database_url.clone(),
        nats_url: rollcall_it::nats_url(),
        namespace: ssf.env.namespace.to_string(),
        replicas: 1,
    };
    use rollcall::commands::ssf::{run, SsfCommand, StreamsCommand};
    let operator = |command| run(common.clone(), SsfCommand::Streams { command });
    operator(StreamsCommand::Pause {
        id: stream,
        reason: Some("maintenance window".into()),
    })
    .await
    .unwrap();
    // Announced while paused.
    let sets = receiver.wait_for(1).await;
    assert_eq!(event_uri(&sets[0].1), uri::STREAM_UPDATED);
    assert_eq!(
        sets[0].1["events"][uri::STREAM_UPDATED],
        json!({"status": "paused", "reason": "maintenance window"})
    );
    // Held while paused: a witness stream gets the deactivation, this one does not.
    let witness = ssf.receiver().await;
    ssf.push_stream(&witness, json!({})).await;
    let scim = ssf.env.scim();
    let id = scim.create_user(&user("held")).await;
    scim.patch(
        &format!("/Users/{id}"),
        &patch(json!([{"op": "Replace", "path": "active", "value": "False"}])),
    )
    .await;
    witness.wait_for(2).await;
    assert_eq!(
        receiver.sets().len(),
        1,
        "nothing but the announcement while paused"
    );
    operator(StreamsCommand::Resume { id: stream })
        .await
        .unwrap();
    let sets = receiver.wait_for(4).await;
    assert_eq!(
        receiver.events(),
        [
            uri::STREAM_UPDATED,
            uri::ACCOUNT_DISABLED,
            uri::SESSION_REVOKED,
            uri::STREAM_UPDATED
        ]
    );
    assert_eq!(
        sets[3].1["events"][uri::STREAM_UPDATED]["status"],
        "enabled"
    );
}

#[tokio::test]
async fn a_person_who_signed_in_is_named_as_the_provider_names_them() {
    use rollcall_it::signin::{Browser, SignInEnv};
    let signin = SignInEnv::start_transmitting(|config, _| config).await;
    let env = &signin.env;
    // Provisioned without an email: only the provider account can name her.
    let oid = uuid::Uuid::new_v4().to_string();
    let grace = env
        .scim()
        .create_user(&json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "grace", "externalId": oid, "active": true,
        }))
        .await;
    signin
        .provider
        .account(
            "grace-at-the-provider",
            json!({"oid": oid, "preferred_username": "grace"}),
        )
        .await;
    let mut browser = Browser::new();
    let done = signin
        .sign_in(&mut browser, "https://wiki.test/", "grace-at-the-provider")
        .await;
    assert_eq!(done.status, 302, "{}", done.body);
    // A second sign-in records nothing more.
    let again = signin
        .sign_in(
            &mut Browser::new(),
            "https://wiki.test/",
            "grace-at-the-provider",
        )
        .await;
    assert_eq!(again.status, 302, "{}", again.body);

    let token = env
        .store
        .create_token("test", Scope::Ssf, None)
        .await
        .unwrap()
        .token;
    let base = &env.access_base;
    let receiver = Receiver::start(
        &format!("{base}/test"),
        &format!("{base}/ssf/test/jwks.json"),
    )
    .await;
    let created: Value = reqwest::Client::new()
        .post(format!("{base}/ssf/test/streams"))
        .bearer_auth(&token)
        .json(&json!({"delivery": {"method": rollcall_domain::ssf::PUSH, "endpoint_url": receiver.url()}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    *receiver.audience.lock().unwrap() = created["aud"].as_str().unwrap().to_owned();
    env.scim()
        .patch(
            &format!("/Users/{grace}"),
            &patch(json!([{"op": "Replace", "path": "active", "value": "False"}])),
        )
        .await;
    let sets = receiver.wait_for(2).await;
    let provider_account =
        json!({"format": "iss_sub", "iss": signin.provider.issuer, "sub": "grace-at-the-provider"});
    assert_eq!(event_uri(&sets[0].1), uri::ACCOUNT_DISABLED);
    assert_eq!(sets[0].1["sub_id"], provider_account);
    assert_eq!(sets[1].1["sub_id"]["user"], provider_account);
    let head = env.head().await;
    eventually("audited", Duration::from_secs(10), || env.projected(head)).await;
    let linked: Vec<String> = env
        .store
        .audit_events(
            "test",
            rollcall_domain::identity::identity_id(
                "test",
                grace.parse().unwrap(),
                &signin.provider.issuer,
                "grace-at-the-provider",
            ),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.event_type)
        .collect();
    assert_eq!(linked, ["identity.linked"], "recorded once, audited");
}
