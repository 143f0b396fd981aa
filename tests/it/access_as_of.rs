//! Access as of an instant, from the events alone: the audit API answers who could reach which
//! application at any recorded instant exactly as the live access service decided then.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rollcall::commands::policies;
use rollcall_it::{eventually, TestEnv, POLICIES};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A small deterministic generator (xorshift), so that a failing run can be replayed.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % sides as u64) as usize
    }
}

fn patch(operations: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations})
}

/// The test policies with `engineering` open to group `group`.
fn engineering_for(group: &str) -> String {
    POLICIES.replacen(
        "{ group = \"Engineering\" }",
        &format!("{{ group = {group:?} }}"),
        1,
    )
}

/// Per user, the applications allowed.
type Decided = BTreeMap<String, BTreeSet<&'static str>>;

/// What the live access service decides now, per user, per application host.
fn live(env: &TestEnv, users: &[String]) -> Decided {
    let mut decided = BTreeMap::new();
    for user in users {
        let mut allowed = BTreeSet::new();
        for (host, name) in [("eng.test", "engineering"), ("wiki.test", "wiki")] {
            let target = rollcall_access::target::Target::new(host, "/").unwrap();
            let (decision, _) = env.access.decide_for_user(&target, "test", user);
            if decision.outcome == rollcall_access::decision::Outcome::Allow {
                allowed.insert(name);
            }
        }
        decided.insert(user.clone(), allowed);
    }
    decided
}

#[tokio::test]
async fn access_as_of_answers_as_the_live_service_decided_at_every_recorded_instant() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let mut users = Vec::new();
    for n in 0..4 {
        users.push(
            scim.create_user(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("u{n}@example.com")}))
                .await,
        );
    }
    let group = |name: &str| json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": name});
    let mut engineering = scim.create_group(&group("Engineering")).await;
    let finance = scim.create_group(&group("Finance")).await;
    let policy_file =
        std::env::temp_dir().join(format!("rollcall-{}-asof.toml", env.namespace.as_str()));

    let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
    let mut recorded: Vec<(OffsetDateTime, u64, Decided)> = Vec::new();
    let mut active = vec![true; users.len()];
    let mut engineering_name = "Engineering";
    // How often each kind of change happened (each must, for the run to test it).
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for step in 0..60 {
        let user = dice.roll(users.len());
        let kind = dice.roll(7);
        let kind = if kind == 5 && dice.roll(3) != 0 {
            6
        } else {
            kind
        };
        *kinds
            .entry(
                [
                    "membership",
                    "membership",
                    "activity",
                    "rename",
                    "policy",
                    "group deleted",
                    "engineer",
                ][kind],
            )
            .or_default() += 1;
        match kind {
            // Membership changes, in either group.
            0 | 1 => {
                let (group, op) = (
                    [&engineering, &finance][dice.roll(2)],
                    ["Add", "Remove"][dice.roll(2)],
                );
                let response = scim
                    .patch(
                        &format!("/Groups/{group}"),
                        &patch(json!([{"op": op, "path": "members", "value": [{"value": users[user]}]}])),
                    )
                    .await;
                assert!(response.status < 300, "step {step}: {:?}", response.body);
            }
            // Deactivation and reactivation.
            2 => {
                active[user] = !active[user];
                let response = scim
                    .patch(
                        &format!("/Users/{}", users[user]),
                        &patch(json!([{"op": "Replace", "path": "active", "value": active[user]}])),
                    )
                    .await;
                assert_eq!(response.status, 200, "step {step}: {:?}", response.body);
            }
            // The group the policy names by displayName is renamed (and back).
            3 => {
                engineering_name = if engineering_name == "Engineering" {
                    "Engineers"
                } else {
                    "Engineering"
                };
                let response = scim
                    .patch(
                        &format!("/Groups/{engineering}"),
                        &patch(json!([{"op": "Replace", "path": "displayName", "value": engineering_name}])),
                    )
                    .await;
                assert!(response.status < 300, "step {step}: {:?}", response.body);
            }
            // The policy changes the group it names.
            4 => {
                let named = ["Engineering", "Finance", "Engineers"][dice.roll(3)];
                std::fs::write(&policy_file, engineering_for(named)).unwrap();
                let plan = policies::apply(
                    &env.log,
                    &policy_file,
                    false,
                    "auditor-test",
                    None,
                    &mut Vec::new(),
                )
                .await
                .unwrap();
                // Nothing else writes now: the stream's head is the change, if there was one.
                let head = env.head().await;
                if !plan.is_empty() {
                    eventually(
                        "the access service follows the policy",
                        Duration::from_secs(5),
                        || async { env.access.policy_version() == head },
                    )
                    .await;
                }
            }
            // The group is deleted and a new one takes its name (and its place in the policy).
            5 => {
                assert_eq!(
                    scim.delete(&format!("/Groups/{engineering}")).await.status,
                    204
                );
                engineering = scim.create_group(&group(engineering_name)).await;
            }
            _ => {
                let response = scim
                    .patch(
                        &format!("/Groups/{engineering}"),
                        &patch(json!([{"op": "Add", "path": "members", "value": [{"value": users[user]}]}])),
                    )
                    .await;
                assert!(response.status < 300, "step {step}: {:?}", response.body);
            }
        }
        // The write is in effect at the access service (SCIM answers after it is); recorded
        // at an instant after its events and before the next step's.
        let at = OffsetDateTime::now_utc();
        let at = at
            .replace_nanosecond(at.nanosecond() / 1_000 * 1_000)
            .unwrap();
        recorded.push((at, env.access.policy_version(), live(&env, &users)));
        while OffsetDateTime::now_utc() - at < time::Duration::microseconds(2) {}
    }
    let head = env.head().await;
    eventually(
        "the projector audited every event",
        Duration::from_secs(10),
        || env.projected(head),
    )
    .await;

    assert_eq!(kinds.len(), 6, "every kind of change happens: {kinds:?}");
    let distinct: BTreeSet<_> = recorded.iter().map(|(_, _, d)| d.clone()).collect();
    assert!(
        distinct.len() > 3,
        "the run changed too little to test anything"
    );
    for (at, version, decided) in &recorded {
        let at_text = at.format(&Rfc3339).unwrap();
        for (user, allowed) in decided {
            let (status, answer) = env
                .audit(&format!("/audit/v1/users/{user}/access?at={at_text}"))
                .await;
            assert_eq!(status, 200, "{answer}");
            let as_of: BTreeSet<String> = answer["allowed"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["application"].as_str().unwrap().to_owned())
                .collect();
            let live: BTreeSet<String> = allowed.iter().map(|a| a.to_string()).collect();
            assert_eq!(as_of, live, "user {user} at {at_text}: {answer}");
        }
        let (status, answer) = env
            .audit(&format!(
                "/audit/v1/applications/engineering/access?at={at_text}"
            ))
            .await;
        assert_eq!(status, 200, "{answer}");
        let as_of: BTreeSet<String> = answer["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_str().unwrap().to_owned())
            .collect();
        let live: BTreeSet<String> = decided
            .iter()
            .filter(|(_, apps)| apps.contains("engineering"))
            .map(|(user, _)| user.clone())
            .collect();
        assert_eq!(as_of, live, "engineering at {at_text}: {answer}");
        assert_eq!(answer["policy_version"], *version, "{answer}");
        // Each allowed engineer came in through a membership of the group the policy named.
        for user in answer["users"].as_array().unwrap() {
            assert_eq!(user["policy"], "engineers");
            assert!(!user["via"].as_array().unwrap().is_empty(), "{user}");
        }
    }

    // The intervals agree with the instants: a user is inside an interval exactly when allowed.
    let (status, answer) = env
        .audit("/audit/v1/applications/engineering/intervals")
        .await;
    assert_eq!(status, 200, "{answer}");
    let intervals: BTreeMap<String, Vec<(OffsetDateTime, Option<OffsetDateTime>)>> = answer
        ["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            let stretches = u["intervals"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    let parse = |v: &Value| {
                        v.as_str()
                            .map(|t| OffsetDateTime::parse(t, &Rfc3339).unwrap())
                    };
                    assert!(i["opened_by"]["event"].is_string(), "{i}");
                    (parse(&i["from"]).unwrap(), parse(&i["to"]))
                })
                .collect();
            (u["id"].as_str().unwrap().to_owned(), stretches)
        })
        .collect();
    for (at, _, decided) in &recorded {
        for (user, allowed) in decided {
            let inside = intervals.get(user).is_some_and(|stretches| {
                stretches
                    .iter()
                    .any(|(from, to)| from <= at && to.is_none_or(|to| *at < to))
            });
            assert_eq!(
                inside,
                allowed.contains("engineering"),
                "user {user} at {at}: {answer}"
            );
        }
    }

    // The policy's history: every change with before and after, actor and request.
    let (status, history) = env
        .audit("/audit/v1/applications/engineering/history")
        .await;
    assert_eq!(status, 200, "{history}");
    let events = history["events"].as_array().unwrap();
    assert_eq!(events[0]["type"], "application.configured");
    for change in &events[1..] {
        assert_eq!(change["type"], "application.policy_changed", "{change}");
        assert_eq!(change["actor"]["name"], "auditor-test");
        assert_ne!(change["payload"]["before"], change["payload"]["after"]);
    }
    let _ = std::fs::remove_file(policy_file);
}

#[tokio::test]
async fn access_as_of_refuses_what_it_cannot_answer_and_sees_only_its_tenant() {
    let env = TestEnv::start().await;
    let before = "2000-01-01T00:00:00Z";
    let (status, answer) = env
        .audit(&format!("/audit/v1/applications/wiki/access?at={before}"))
        .await;
    assert_eq!(status, 404, "{answer}");
    assert!(
        answer
            .to_string()
            .contains("was not configured at 2000-01-01T00:00:00Z"),
        "{answer}"
    );
    let (status, answer) = env
        .audit("/audit/v1/applications/wiki/access?at=yesterday")
        .await;
    assert_eq!(status, 400, "{answer}");
    let (status, _) = env.audit("/audit/v1/applications/nothing/history").await;
    assert_eq!(status, 404);
    let (status, _) = env
        .audit(&format!("/audit/v1/users/{}/access", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(status, 404);
    let (status, answer) = env
        .audit("/audit/v1/applications/wiki/intervals?from=2030-01-01T00:00:00Z&to=2020-01-01T00:00:00Z")
        .await;
    assert_eq!(status, 400, "{answer}");

    // Another tenant's auditor sees none of this tenant's applications or users.
    let other = env.tenant("other").await;
    let user = other
        .create_user(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "x@example.com"}))
        .await;
    let (status, _) = env.audit(&format!("/audit/v1/users/{user}/access")).await;
    assert_eq!(status, 404, "a user of another tenant");
    let (status, answer) = env.audit("/audit/v1/applications/wiki/access").await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["users"].as_array().unwrap().is_empty(), "{answer}");
}

#[tokio::test]
async fn the_auditors_page_shows_an_applications_users_and_a_users_applications_at_an_instant() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let ada = scim
        .create_user(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "page@example.com"}))
        .await;
    scim.create_group(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Engineering", "members": [{"value": ada}]}))
        .await;
    let head = env.head().await;
    eventually(
        "the projector audited every event",
        Duration::from_secs(10),
        || env.projected(head),
    )
    .await;
    // An instant after every event, to the second, as the page's picker gives it.
    let at = (OffsetDateTime::now_utc() + time::Duration::seconds(2))
        .format(&Rfc3339)
        .unwrap()[..19]
        .to_owned();
    let dump = |fragment: String| {
        let url = format!(
            "{}/audit/#{fragment}&token={}",
            env.audit_base, env.audit_token
        );
        async move { crate::audit::dump_dom(&url).await.0 }
    };
    let dom = dump(format!("access=application&name=engineering&at={at}")).await;
    assert!(dom.contains("data-access-loaded=\"true\""), "{dom}");
    assert!(dom.contains(&format!("page@example.com ({ada})")), "{dom}");
    assert!(
        dom.contains("engineers") && dom.contains("Engineering since"),
        "{dom}"
    );
    let dom = dump(format!("access=user&name={ada}&at={at}")).await;
    assert!(dom.contains("data-access-loaded=\"true\""), "{dom}");
    let allowed = dom.matches("data-access=\"allowed\"").count();
    assert_eq!(allowed, 2, "engineering and wiki: {dom}");
}
