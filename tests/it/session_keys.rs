//! Session keys of the installation: access replicas on one namespace without configured keys
//! share one key set (sealed in NATS under a KEK), accept each other's sessions, follow a
//! rotation without a restart, agree when they start together, and refuse to start under a
//! wrong KEK without changing anything.

use std::time::Duration;

use async_nats::jetstream::kv;
use rollcall_access::keys::{self, KekConfig, KeyState, Rotation};
use rollcall_access::{Access, AccessError};
use rollcall_it::{eventually, TestEnv};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// An access service of the test's namespace, serving on its own port.
struct Replica {
    access: Access,
    base: String,
    task: JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Deletes the namespace's secrets bucket when the test ends (the harness does not know it).
struct SecretsBucket {
    nats_url: String,
    stream: String,
}

impl SecretsBucket {
    fn of(env: &TestEnv) -> Self {
        Self {
            nats_url: env.nats_url.clone(),
            stream: format!("KV_{}", keys::secrets_bucket(&env.namespace)),
        }
    }
}

impl Drop for SecretsBucket {
    fn drop(&mut self) {
        let (nats_url, stream) = (self.nats_url.clone(), self.stream.clone());
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(client) = async_nats::connect(&nats_url).await {
                    let _ = async_nats::jetstream::new(client)
                        .delete_stream(&stream)
                        .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// The access configuration of a replica: no configured session keys; `kek` as ROLLCALL_KEK.
fn config(env: &TestEnv, kek: Option<&str>) -> rollcall_access::Config {
    rollcall_access::Config {
        session_keys: None,
        kek: KekConfig {
            kek: kek.map(|k| k.to_owned().into()),
            kek_file: None,
            kek_previous: None,
        },
        ..rollcall_it::access_config(&env.policy_file)
    }
}

async fn build(env: &TestEnv, kek: Option<&str>) -> Result<Access, AccessError> {
    Access::from_installation(config(env, kek), &env.client, &env.log, Some(&env.store)).await
}

/// Starts an access replica and waits until it is ready.
async fn replica(env: &TestEnv, kek: Option<&str>) -> Replica {
    let access = build(env, kek).await.unwrap();
    serve(env, access).await
}

async fn serve(env: &TestEnv, access: Access) -> Replica {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (client, namespace, served) = (env.client.clone(), env.namespace.clone(), access.clone());
    let task = tokio::spawn(async move {
        let _ = rollcall_access::serve(listener, served, client, namespace, std::future::pending())
            .await;
    });
    let ready = format!("{base}/readyz");
    eventually("the replica is ready", Duration::from_secs(10), || {
        let ready = ready.clone();
        async move { reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    Replica { access, base, task }
}

/// `/auth` of a replica for `wiki.test` (everyone of tenant `test`), as nginx asks.
async fn auth(replica: &Replica, session: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/auth", replica.base))
        .header("X-Original-URL", "https://wiki.test/")
        .header("Cookie", format!("rollcall_session={session}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A user of tenant `test`, known to every replica of the namespace.
async fn user(env: &TestEnv, name: &str) -> uuid::Uuid {
    let id = env
        .scim()
        .create_user(
            &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                             "userName": name, "active": true}),
        )
        .await;
    uuid::Uuid::parse_str(&id).unwrap()
}

fn session(replica: &Replica, user: uuid::Uuid) -> String {
    replica.access.issue_session("test", user).unwrap()
}

fn kid(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let header = decode_base64url(header);
    let header: Value = serde_json::from_slice(&header).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

fn decode_base64url(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let values: Vec<u32> = text
        .bytes()
        .map(|b| ALPHABET.iter().position(|&a| a == b).unwrap() as u32)
        .collect();
    let mut out = Vec::new();
    for chunk in values.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, v)| n | (v << (18 - 6 * i)));
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

async fn secrets(env: &TestEnv) -> kv::Store {
    async_nats::jetstream::new(env.client.clone())
        .get_key_value(keys::secrets_bucket(&env.namespace))
        .await
        .unwrap()
}

/// The stored session key set as it is in NATS: its raw value and revision.
async fn raw_key_set(env: &TestEnv) -> (Vec<u8>, u64) {
    let entry = secrets(env)
        .await
        .entry(keys::SESSION_KEYS)
        .await
        .unwrap()
        .expect("a stored session key set");
    (entry.value.to_vec(), entry.revision)
}

async fn kek_rows(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM public.installation_secret WHERE name = 'kek'")
        .fetch_one(env.store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn replicas_without_configured_keys_accept_each_others_sessions() {
    let env = TestEnv::start().await;
    let _bucket = SecretsBucket::of(&env);
    let ada = user(&env, "ada@example.com").await;
    let (a, b) = (replica(&env, None).await, replica(&env, None).await);
    let (from_a, from_b) = (session(&a, ada), session(&b, ada));
    assert_eq!(kid(&from_a), kid(&from_b));
    for (replica, token) in [(&a, &from_b), (&b, &from_a), (&a, &from_a), (&b, &from_b)] {
        let expected = 200;
        let replica_ref = replica;
        eventually(
            "a replica accepts the other's session",
            Duration::from_secs(5),
            || async move { auth(replica_ref, token).await == expected },
        )
        .await;
    }
    // A session signed by a key of no replica is refused by both (the check can fail).
    let stranger = Access::new(config(&env, None)).unwrap();
    let foreign = stranger.issue_session("test", ada).unwrap();
    assert_eq!(auth(&a, &foreign).await, 401);
    assert_eq!(auth(&b, &foreign).await, 401);
    // The KEK was kept in PostgreSQL, once.
    assert_eq!(kek_rows(&env).await, 1);
}

#[tokio::test]
async fn a_rotation_reaches_every_replica_without_restart_and_old_sessions_stay_valid() {
    let env = TestEnv::start().await;
    let _bucket = SecretsBucket::of(&env);
    let ada = user(&env, "ada@example.com").await;
    let (a, b) = (replica(&env, None).await, replica(&env, None).await);
    let old = session(&a, ada);
    eventually("b accepts a's session", Duration::from_secs(5), || async {
        auth(&b, &old).await == 200
    })
    .await;
    let at_once = Rotation {
        activate_in: Duration::ZERO,
        drop_previous: false,
    };
    let after = keys::rotate(
        &env.client,
        &env.namespace,
        &KekConfig::default(),
        Some(&env.store),
        at_once,
    )
    .await
    .unwrap();
    assert_eq!(after.len(), 2);
    assert_eq!(after[0].state, KeyState::Signing);
    assert_eq!(after[1].id, kid(&old));
    assert!(matches!(after[1].state, KeyState::Verifying { .. }));
    let newest = after[0].id.clone();
    for replica in [&a, &b] {
        eventually(
            "the replica signs with the rotated key",
            Duration::from_secs(5),
            || async { kid(&session(replica, ada)) == newest },
        )
        .await;
    }
    let (new_a, new_b) = (session(&a, ada), session(&b, ada));
    for (replica, token) in [(&a, &new_b), (&b, &new_a), (&a, &old), (&b, &old)] {
        assert_eq!(auth(replica, token).await, 200);
    }
    // The listing shows ids, times and states, never key material.
    let listed = keys::list(
        &env.client,
        &env.namespace,
        &KekConfig::default(),
        Some(&env.store),
    )
    .await
    .unwrap();
    assert_eq!(
        listed.iter().map(|k| k.id.clone()).collect::<Vec<_>>(),
        vec![newest.clone(), kid(&old)]
    );
    // A rotation with the default delay adds a pending key: the replicas hold it (they verify
    // with it) and go on signing with the current one.
    let pending = keys::rotate(
        &env.client,
        &env.namespace,
        &KekConfig::default(),
        Some(&env.store),
        Rotation::default(),
    )
    .await
    .unwrap();
    assert_eq!(pending[0].state, KeyState::Pending);
    for replica in [&a, &b] {
        eventually(
            "the replica holds the pending key",
            Duration::from_secs(5),
            || async { replica.access.session_keys().verifies_with(&pending[0].id) },
        )
        .await;
        assert_eq!(kid(&session(replica, ada)), newest);
    }
}

#[tokio::test]
async fn concurrent_rotations_lose_no_key() {
    let env = TestEnv::start().await;
    let _bucket = SecretsBucket::of(&env);
    let first = build(&env, None).await.unwrap();
    let kek = KekConfig::default();
    let rotate = || {
        keys::rotate(
            &env.client,
            &env.namespace,
            &kek,
            Some(&env.store),
            Rotation::default(),
        )
    };
    let (one, two) = tokio::join!(rotate(), rotate());
    let (one, two) = (one.unwrap(), two.unwrap());
    let listed = keys::list(
        &env.client,
        &env.namespace,
        &KekConfig::default(),
        Some(&env.store),
    )
    .await
    .unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    for added in [&one[0].id, &two[0].id] {
        assert!(listed.iter().any(|k| &k.id == added), "{added} lost");
    }
    let original = first
        .session_keys()
        .signing_kid(time::OffsetDateTime::now_utc())
        .unwrap()
        .to_owned();
    assert!(listed.iter().any(|k| k.id == original));
}

#[tokio::test]
async fn replicas_starting_together_agree_on_one_key_set() {
    let env = TestEnv::start().await;
    let _bucket = SecretsBucket::of(&env);
    let started = futures::future::join_all((0..4).map(|_| build(&env, None))).await;
    let replicas: Vec<Access> = started.into_iter().map(Result::unwrap).collect();
    let ada = uuid::Uuid::now_v7();
    for issuer in &replicas {
        let token = issuer.issue_session("test", ada).unwrap();
        for verifier in &replicas {
            assert!(verifier.session_keys().verify(&token).is_ok());
        }
    }
    assert_eq!(kek_rows(&env).await, 1);
    let (_, revision) = raw_key_set(&env).await;
    assert_eq!(revision, 1, "the key set was written once");
}

#[tokio::test]
async fn a_wrong_kek_is_a_clear_error_at_start_and_changes_nothing() {
    let env = TestEnv::start().await;
    let _bucket = SecretsBucket::of(&env);
    let right = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let wrong = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
    let ada = user(&env, "ada@example.com").await;
    let a = replica(&env, Some(right)).await;
    let before = raw_key_set(&env).await;
    let error = build(&env, Some(wrong)).await.unwrap_err().to_string();
    assert!(
        error.contains("sealed under KEK") && error.contains("ROLLCALL_KEK"),
        "{error}"
    );
    assert!(!error.contains(right) && !error.contains(wrong));
    // No KEK from PostgreSQL either: the set was sealed under the configured one.
    let error = build(&env, None).await.unwrap_err().to_string();
    assert!(error.contains("sealed under KEK"), "{error}");
    let wrong_config = KekConfig {
        kek: Some(wrong.to_owned().into()),
        kek_file: None,
        kek_previous: None,
    };
    assert!(keys::rotate(
        &env.client,
        &env.namespace,
        &wrong_config,
        None,
        Rotation::default()
    )
    .await
    .is_err());
    assert_eq!(raw_key_set(&env).await, before, "nothing was overwritten");
    // The right KEK still opens it, and sessions go on.
    let b = replica(&env, Some(right)).await;
    assert_eq!(auth(&b, &session(&a, ada)).await, 200);
    // Only the start without ROLLCALL_KEK kept a KEK in PostgreSQL; the configured one never.
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT value FROM public.installation_secret")
        .fetch_all(env.store.pool())
        .await
        .unwrap();
    assert!(stored.len() <= 1);
    assert!(!stored
        .iter()
        .any(|v| v.as_slice() == b"0123456789abcdef0123456789abcdef"));
}

#[tokio::test]
async fn the_stored_key_set_holds_no_key_material_in_clear() {
    let env = TestEnv::start().await;
    let _bucket = SecretsBucket::of(&env);
    let a = replica(&env, None).await;
    let (raw, _) = raw_key_set(&env).await;
    let text = String::from_utf8(raw.clone()).unwrap();
    let sealed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(sealed["format"], "rollcall.sealed.v1");
    assert_eq!(sealed["algorithm"], "XChaCha20-Poly1305");
    // Open it as only a holder of both NATS and the KEK can, to know what must not show.
    let kek = keys::Kek::existing(&KekConfig::default(), Some(&env.store))
        .await
        .unwrap();
    let plaintext = keys::open(&kek, &env.namespace, keys::SESSION_KEYS, &raw).unwrap();
    let set: Value = serde_json::from_slice(&plaintext).unwrap();
    let secrets: Vec<&str> = set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["secret"].as_str().unwrap())
        .collect();
    assert!(!secrets.is_empty());
    for secret in secrets {
        assert!(secret.len() >= 43);
        assert!(!text.contains(secret), "a session key is stored in clear");
    }
    assert!(!text.contains("signs_from") && !text.contains("\"keys\""));
    let signing = a
        .access
        .session_keys()
        .signing_kid(time::OffsetDateTime::now_utc())
        .unwrap()
        .to_owned();
    assert!(!text.contains(&signing), "key ids are sealed too");
}

#[tokio::test]
async fn resealing_moves_the_key_set_to_a_new_kek_and_keeps_sessions() {
    let env = TestEnv::start().await;
    let _bucket = SecretsBucket::of(&env);
    let first = build(&env, None).await.unwrap();
    let token = first.issue_session("test", uuid::Uuid::now_v7()).unwrap();
    let new = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
    let old = keys::Kek::existing(&KekConfig::default(), Some(&env.store))
        .await
        .unwrap();
    keys::InstallationKeys::open(&env.client, &env.namespace, old)
        .await
        .unwrap()
        .reseal(&keys::Kek::from_base64(new, "the new KEK".into()).unwrap())
        .await
        .unwrap();
    let moved = build(&env, Some(new)).await.unwrap();
    assert!(moved.session_keys().verify(&token).is_ok());
    let error = build(&env, None).await.unwrap_err().to_string();
    assert!(error.contains("sealed under KEK"), "{error}");
}
