//! Policies as events: applications and their policies are aggregates on the event stream,
//! written by `rollcall policies apply` and by the policy file's mode (at start and on
//! SIGHUP), audited like users and groups, and followed by every access service.

use std::time::Duration;

use rollcall::commands::policies;
use rollcall_domain::application::application_id;
use rollcall_it::{eventually, TestEnv, POLICIES};
use serde_json::{json, Value};

/// The test policies with `wiki` closed to group Auditors, `engineering` gone and `finance`
/// new.
fn changed_policies() -> String {
    let wiki = POLICIES
        .split("[[application]]")
        .find(|app| app.contains("\"wiki\""))
        .unwrap()
        .replace(
            "include = [{ everyone = true }]",
            "include = [{ group = \"Auditors\" }]",
        );
    format!(
        r#"[[application]]{wiki}
[[application]]
name = "finance"
tenant = "test"
hosts = ["finance.test"]
paths = ["/ledger"]
[[application.policy]]
name = "engineers"
action = "allow"
include = [{{ group = "Engineering" }}]
"#
    )
}

/// The applications a policy file declares, by tenant and name (the stream keeps them in that
/// order).
fn declared(text: &str) -> rollcall_access::policy::Declared {
    let mut declared = rollcall_access::policy::Policies::read_file(text).unwrap();
    declared.sort_by(|a, b| (&a.0, &a.1.name).cmp(&(&b.0, &b.1.name)));
    declared
}

fn file(env: &TestEnv, name: &str, text: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("rollcall-{}-{name}.toml", env.namespace.as_str()));
    std::fs::write(&path, text).unwrap();
    path
}

async fn decision(env: &TestEnv, host: &str, session: &str) -> Value {
    reqwest::Client::new()
        .post(format!("{}/v1/decisions", env.access_base))
        .json(&json!({"session": session, "host": host}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()
}

#[tokio::test]
async fn policies_apply_appends_a_files_differences_as_audited_events_that_every_access_service_follows(
) {
    let env = TestEnv::start().await;
    // The access service appended the test policy file when it started: the stream holds it.
    let exported = policies::export(&env.log).await.unwrap();
    assert_eq!(declared(&exported), declared(POLICIES), "{exported}");
    // A second access service without a policy file takes the stream's policies.
    let replica = rollcall_access::Access::from_installation(
        rollcall_access::Config {
            policies: None,
            ..rollcall_it::access_config(&env.policy_file)
        },
        &env.client,
        &env.log,
        Some(&env.store),
    )
    .await
    .unwrap();
    let started = env.head().await;
    assert!(started > 0);
    assert_eq!(env.access.policy_version(), started);
    assert_eq!(replica.policy_version(), started);

    let user = env
        .scim()
        .create_user(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "ada@example.com"}))
        .await;
    let session = env.session(&user);
    let allowed = decision(&env, "wiki.test", &session).await;
    assert_eq!(allowed["allow"], true, "{allowed}");
    assert_eq!(allowed["decision"]["policy_version"], started, "{allowed}");
    let head = env.head().await;

    // A dry run prints the changes and appends nothing.
    let changed = file(&env, "changed", &changed_policies());
    let mut printed = Vec::new();
    let state = rollcall_access::feed::load(&env.client, &env.namespace)
        .await
        .unwrap();
    let plan = policies::apply(
        &env.log,
        &changed,
        true,
        "alice",
        Some(&state),
        &mut printed,
    )
    .await
    .unwrap();
    let printed = String::from_utf8(printed).unwrap();
    assert_eq!(plan.changes.len(), 3, "{printed}");
    for line in [
        "- application \"engineering\" of tenant \"test\"",
        "+ application \"finance\" of tenant \"test\": hosts [\"finance.test\"], paths [\"/ledger\"], policies [\"engineers\"]",
        "~ application \"wiki\" of tenant \"test\": policies",
        "  application \"wiki\" of tenant \"test\": 0 gain access, 1 lose it\n    - ada@example.com",
        "dry run: nothing appended",
    ] {
        assert!(printed.contains(line), "{line:?} not in:\n{printed}");
    }
    assert_eq!(env.head().await, head, "a dry run appended");

    // Applied: the events are on the stream and both access services decide with them.
    let mut printed = Vec::new();
    policies::apply(&env.log, &changed, false, "alice", None, &mut printed)
        .await
        .unwrap();
    let printed = String::from_utf8(printed).unwrap();
    assert!(printed.contains("appended 3 change(s)"), "{printed}");
    let version = env.head().await;
    assert!(version > head);
    eventually(
        "both access services follow the applied policies",
        Duration::from_secs(5),
        || async { env.access.policy_version() == version && replica.policy_version() == version },
    )
    .await;
    let denied = decision(&env, "wiki.test", &session).await;
    assert_eq!(
        (&denied["allow"], &denied["decision"]["policy_version"]),
        (&json!(false), &json!(version)),
        "{denied}"
    );
    assert_eq!(
        decision(&env, "eng.test", &session).await["decision"]["code"],
        "no_application"
    );

    // Audited like users and groups: actor, request and before/after.
    let wiki = application_id("test", "wiki").to_string();
    eventually(
        "the projector audited the changes",
        Duration::from_secs(5),
        || async {
            env.event_types("test", &wiki).await
                == ["application.configured", "application.policy_changed"]
        },
    )
    .await;
    let changes = env
        .store
        .audit_events("test", wiki.parse().unwrap())
        .await
        .unwrap();
    let change = &changes[1];
    assert_eq!(change.payload["before"][0]["include"][0]["everyone"], true);
    assert_eq!(
        change.payload["after"][0]["include"][0]["group"],
        "Auditors"
    );
    assert_eq!(change.actor["name"], "alice", "{:?}", change.actor);
    assert!(change
        .request_id
        .as_deref()
        .is_some_and(|r| r.starts_with("cli-")));
    let engineering = application_id("test", "engineering").to_string();
    assert_eq!(
        env.event_types("test", &engineering).await,
        ["application.configured", "application.removed"]
    );

    // The same file again changes nothing; the export is that file.
    let mut printed = Vec::new();
    let plan = policies::apply(&env.log, &changed, false, "alice", None, &mut printed)
        .await
        .unwrap();
    assert!(plan.is_empty(), "{}", String::from_utf8_lossy(&printed));
    assert_eq!(env.head().await, version);
    assert_eq!(
        declared(&policies::export(&env.log).await.unwrap()),
        declared(&changed_policies()),
    );

    // A file that does not check is refused with where, and nothing is appended.
    let bad = file(
        &env,
        "bad",
        &changed_policies().replace("action = \"allow\"", "action = \"bypass\""),
    );
    let error = policies::apply(&env.log, &bad, false, "alice", None, &mut Vec::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("bypass") && error.contains("\"wiki\""),
        "{error}"
    );
    // Said at the line of the application that does not check: wiki's, the file's first.
    assert!(error.contains("line 1: "), "{error}");
    let unknown = file(&env, "unknown", "[[application]]\nname = \"x\"\ntenant = \"test\"\nhosts = [\"x.test\"]\ncolour = \"red\"\n");
    let error = policies::apply(&env.log, &unknown, false, "alice", None, &mut Vec::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("colour") && error.contains("line 5"),
        "{error}"
    );
    assert_eq!(env.head().await, version, "a refused file appended");

    for path in [changed, bad, unknown] {
        let _ = std::fs::remove_file(path);
    }
}

#[tokio::test]
async fn the_policy_files_mode_appends_its_differences_on_reload_as_events_of_the_file() {
    let env = TestEnv::start().await;
    let before = env.head().await;
    std::fs::write(&env.policy_file, changed_policies()).unwrap();
    env.access.reload_policies().await.unwrap();
    let version = env.head().await;
    assert!(version > before);
    assert_eq!(
        env.access.policy_version(),
        version,
        "a reload returns once its policies are in force"
    );
    let finance = application_id("test", "finance").to_string();
    eventually(
        "the projector audited the reload",
        Duration::from_secs(5),
        || async { env.event_types("test", &finance).await == ["application.configured"] },
    )
    .await;
    let configured = env
        .store
        .audit_events("test", finance.parse().unwrap())
        .await
        .unwrap();
    let actor = configured[0].actor["name"].as_str().unwrap().to_owned();
    assert_eq!(actor, format!("policy file {}", env.policy_file.display()));
    assert!(configured[0]
        .request_id
        .as_deref()
        .is_some_and(|r| r.starts_with("policy-file-")));

    // Reloading the same file appends nothing.
    env.access.reload_policies().await.unwrap();
    assert_eq!(env.head().await, version);
}

#[tokio::test]
async fn access_services_starting_together_write_one_file_once_and_an_unreadable_application_event_stops_none(
) {
    let installation = rollcall_it::Installation::create_on(rollcall_it::nats_url()).await;
    let config = || rollcall_it::access_config(&installation.policy_file);
    let (a, b) = tokio::join!(installation.access(config()), installation.access(config()));
    let head = installation.log.head().await.unwrap();
    assert_eq!(
        head, 2,
        "each application is configured once, by one of the two"
    );
    assert_eq!((a.policy_version(), b.policy_version()), (head, head));

    // A message on an application's subject that no version of Rollcall wrote.
    let id = uuid::Uuid::now_v7();
    let mut garbage =
        rollcall_it::user_envelope("test", id, 1, &rollcall_domain::user::UserEvent::Deleted);
    garbage.aggregate_type = "application".into();
    garbage.event_type = "application.policy_changed".into();
    garbage.payload = json!({"type": "application.policy_changed", "before": "nonsense"});
    let subject = installation
        .namespace
        .aggregate_subject("test", "application", &id);
    let unreadable = installation
        .log
        .append(&subject, 0, &[garbage])
        .await
        .unwrap();
    eventually(
        "running services pass over it",
        Duration::from_secs(5),
        || async { a.policy_version() == unreadable && b.policy_version() == unreadable },
    )
    .await;
    // A service starting now passes over it too, and the file's applications stay in force.
    let c = installation.access(config()).await;
    assert_eq!(c.policy_version(), unreadable);
    let exported = policies::export(&installation.log).await.unwrap();
    assert_eq!(declared(&exported), declared(POLICIES));
}

#[tokio::test]
async fn the_policy_tester_explains_a_users_decision_and_lists_who_may_get_in() {
    use rollcall::commands::access;
    let env = TestEnv::start().await;
    let scim = env.scim();
    let user = |name: &str| json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name, "externalId": format!("x-{name}")});
    let ada = scim.create_user(&user("ada@example.com")).await;
    let bob = scim.create_user(&user("bob@example.com")).await;
    scim.create_group(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Engineering", "members": [{"value": ada}]}))
        .await;

    // The decision API answers for a user, to an audit token of the tenant only.
    let ask = |body: Value, token: Option<String>| {
        let mut request = reqwest::Client::new()
            .post(format!("{}/v1/decisions", env.access_base))
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let question = json!({"user": "x-bob@example.com", "host": "eng.test", "path": "/x"});
    let (status, answer) = ask(question.clone(), Some(env.audit_token.clone())).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["allow"], false, "{answer}");
    assert_eq!(answer["decision"]["code"], "no_policy", "{answer}");
    assert_eq!(
        answer["decision"]["identity"]["id"],
        bob.as_str(),
        "{answer}"
    );
    assert_eq!(answer["policies"][0]["policy"], "engineers");
    assert_eq!(answer["policies"][0]["matched"], false);
    assert_eq!(
        answer["policies"][0]["why"],
        "no include rule matches (group \"Engineering\")"
    );
    let (status, answer) = ask(
        json!({"user": ada, "host": "eng.test"}),
        Some(env.audit_token.clone()),
    )
    .await;
    assert_eq!((status, &answer["allow"]), (200, &json!(true)), "{answer}");
    assert_eq!(
        answer["policies"][0]["why"],
        "include group \"Engineering\" matches"
    );
    for token in [
        None,
        Some(env.token.clone()),
        Some("rc_nonsense".to_owned()),
    ] {
        let (status, answer) = ask(question.clone(), token.clone()).await;
        assert_eq!(status, 401, "{token:?}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("audit token"),
            "{answer}"
        );
    }
    let both = json!({"user": ada, "session": "s", "host": "eng.test"});
    assert_eq!(ask(both, Some(env.audit_token.clone())).await.0, 400);

    // The app launcher: a signed-in person's applications, linked; nothing without a session.
    let launcher = |session: Option<String>| {
        let mut request = reqwest::Client::new().get(format!("{}/", env.access_base));
        if let Some(session) = session {
            request = request.header("Cookie", format!("rollcall_session={session}"));
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, page) = launcher(Some(env.session(&ada))).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("<a href=\"https://eng.test/\">engineering</a>")
            && page.contains("<a href=\"https://wiki.test/\">wiki</a>"),
        "{page}"
    );
    let (status, page) = launcher(Some(env.session(&bob))).await;
    assert!(
        status == 200 && page.contains("wiki") && !page.contains("engineering"),
        "{page}"
    );
    let (status, page) = launcher(None).await;
    assert!(status == 401 && page.contains("Not signed in"), "{page}");
    let (status, _) = launcher(Some("forged".into())).await;
    assert_eq!(status, 401);

    // At the command line, from NATS: explain and who.
    let (decision, trials) = access::explain(
        &env.client,
        &env.log,
        "test",
        "ada@example.com",
        "https://eng.test/anything",
    )
    .await
    .unwrap();
    let text = access::describe(&decision, &trials);
    assert!(
        text.starts_with("Allow: policy \"engineers\" allows"),
        "{text}"
    );
    assert!(
        text.contains("1. \"engineers\" (Allow) matches: include group \"Engineering\" matches"),
        "{text}"
    );
    let allowed = access::who(&env.client, &env.log, "test", "https://eng.test/")
        .await
        .unwrap();
    assert_eq!(
        allowed
            .iter()
            .map(|a| a.user_name.as_str())
            .collect::<Vec<_>>(),
        ["ada@example.com"]
    );
    let everyone = access::who(&env.client, &env.log, "test", "https://wiki.test/")
        .await
        .unwrap();
    assert_eq!(everyone.len(), 2);
    // Deactivated users are out; another tenant's applications are not listed.
    let disable = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "Replace", "path": "active", "value": false}]});
    assert_eq!(
        scim.patch(&format!("/Users/{ada}"), &disable).await.status,
        200
    );
    let allowed = access::who(&env.client, &env.log, "test", "https://eng.test/")
        .await
        .unwrap();
    assert!(allowed.is_empty(), "{allowed:?}");
    let error = access::who(&env.client, &env.log, "other", "https://eng.test/")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("no application of tenant \"other\""),
        "{error}"
    );
}
