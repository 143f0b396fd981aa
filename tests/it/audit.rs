//! Audit: tamper evidence, history, as-of state, membership intervals, exports, the SCIM request
//! log, the OpenAPI document and the auditors' page.

use rollcall_audit_api::checkpoint;
use rollcall_audit_api::verify::verify;
use rollcall_it::TestEnv;
use serde_json::{json, Value};

fn patch(operations: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations})
}

async fn some_history(env: &TestEnv) -> Vec<String> {
    let scim = env.scim();
    let mut users = Vec::new();
    for n in 0..4 {
        users.push(scim.create_user(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("h{n}@x"), "title": "t"})).await);
    }
    scim.patch(
        &format!("/Users/{}", users[0]),
        &patch(json!([{"op": "Replace", "path": "active", "value": "False"}])),
    )
    .await;
    scim.patch(
        &format!("/Users/{}", users[1]),
        &patch(json!([{"op": "Replace", "path": "title", "value": "Dr"}])),
    )
    .await;
    let other = env.tenant("other").await;
    other
        .create_user(
            &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "o@x"}),
        )
        .await;
    users
}

#[tokio::test]
async fn verify_finds_exactly_the_row_altered_with_plain_sql() {
    let env = TestEnv::start().await;
    some_history(&env).await;
    let clean = verify(&env.log, &env.store, None, None, |_, _| {})
        .await
        .unwrap();
    assert_eq!(clean.mismatch, None);
    assert_eq!(clean.events, env.head().await);
    assert_eq!(clean.heads.len(), 2, "one chain per tenant");
    // An insider edits one record: the title change becomes something else.
    let altered: i64 = sqlx::query_scalar(
        "UPDATE audit_event SET payload = jsonb_set(payload, '{changes,0,after}', '\"Janitor\"')
         WHERE event_type = 'user.attributes_changed' RETURNING sequence",
    )
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    let found = verify(&env.log, &env.store, None, None, |_, _| {})
        .await
        .unwrap();
    let mismatch = found.mismatch.expect("the alteration is found");
    assert_eq!(mismatch.sequence, altered as u64);
    assert!(mismatch.reason.contains("altered"), "{}", mismatch.reason);
    // Rewriting the hash too does not hide it: the record now differs from the stream.
    sqlx::query("UPDATE audit_event SET hash = sha256(prev_hash || convert_to('x', 'UTF8')) WHERE sequence = $1")
        .bind(altered)
        .execute(env.store.pool())
        .await
        .unwrap();
    let found = verify(&env.log, &env.store, Some("test"), None, |_, _| {})
        .await
        .unwrap()
        .mismatch
        .unwrap();
    assert_eq!(found.sequence, altered as u64);
    // A deleted row is missing.
    let last: i64 = sqlx::query_scalar("DELETE FROM audit_event WHERE sequence = (SELECT max(sequence) FROM audit_event WHERE tenant = 'other') RETURNING sequence")
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    let found = verify(&env.log, &env.store, Some("other"), None, |_, _| {})
        .await
        .unwrap()
        .mismatch
        .unwrap();
    assert_eq!(
        (found.sequence, found.reason.as_str()),
        (last as u64, "missing from the audit table")
    );
}

#[tokio::test]
async fn a_signed_checkpoint_vouches_for_the_history_up_to_it() {
    let env = TestEnv::start().await;
    some_history(&env).await;
    let (seed, public) = checkpoint::generate();
    let key = checkpoint::signing_key(&seed).unwrap();
    let (sequence, hash) = env.store.chain_head("test").await.unwrap().unwrap();
    let signed = checkpoint::sign(&key, "test", sequence as u64, &hash);
    signed.check_signature(Some(&public)).unwrap();
    // More history after the checkpoint is fine.
    env.scim().create_user(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "later@x"})).await;
    let ok = verify(&env.log, &env.store, Some("test"), Some(&signed), |_, _| {})
        .await
        .unwrap();
    assert_eq!(ok.mismatch, None);
    // A checkpoint that does not match this history is reported.
    let foreign = checkpoint::sign(&key, "test", sequence as u64, &[9; 32]);
    let found = verify(
        &env.log,
        &env.store,
        Some("test"),
        Some(&foreign),
        |_, _| {},
    )
    .await
    .unwrap()
    .mismatch
    .unwrap();
    assert_eq!(found.sequence, sequence as u64);
    assert!(found.reason.contains("signed checkpoint"));
}
