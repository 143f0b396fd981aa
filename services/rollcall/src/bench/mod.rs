//! `rollcall bench`: Rollcall's numbers next to the machine's limits, measured in one run on
//! one machine. Starts a private in-process Rollcall (its own namespace and database, removed
//! afterwards), measures baselines and scenarios over real HTTP and NATS, prints a table and
//! writes JSON. Ratios, not absolute numbers, are what carry from one run to another.

mod baselines;
mod env;
mod load;
mod scenarios;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use serde_json::{json, Value};

use crate::cli::Common;
use env::BenchEnv;
use load::Measured;

/// Options of `rollcall bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// A short run (under two minutes) for after touching a hot path; the full run is for the README.
    #[arg(long)]
    quick: bool,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds each timed scenario runs, per repetition (default: 2 quick, 20 full).
    #[arg(long)]
    seconds: Option<u64>,
    /// Repetitions of each timed scenario and baseline; the median repetition (by throughput)
    /// is reported, with the spread.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Write the results as JSON to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Run only these scenarios (comma-separated), after the baselines: create, lookup, patch,
    /// members, deprovision, decide, ssf, rebuild, partitions, initial-cycle, memory. All by
    /// default.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(SCENARIOS))]
    only: Vec<String>,
    /// Events the `rebuild` scenario replays (default: 20,000 quick, 1,000,000 full), for
    /// profiling a rebuild without waiting for a full one.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rebuild_events: Option<u64>,
    /// Users the `initial-cycle` scenario provisions (default: 500 quick, 100,000 full), with a
    /// group per 100 of them (at least 10) and five memberships each, for studying the cycle
    /// without waiting for a full run.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    cycle_users: Option<u64>,
}

/// The Shared Signals latency target: SCIM response to the receiver's `account-disabled`.
const SSF_P99_MS: f64 = 50.0;

/// The scenarios, in the order they run.
const SCENARIOS: [&str; 11] = [
    "create",
    "lookup",
    "patch",
    "members",
    "deprovision",
    "decide",
    "ssf",
    "rebuild",
    "partitions",
    "initial-cycle",
    "memory",
];

struct Sizes {
    users: usize,
    group_members: usize,
    victims: usize,
    rebuild_events: usize,
    projection_events: usize,
    cycle: (usize, usize, usize),
    memory_users: usize,
    seconds: u64,
}

/// The initial cycle's users, groups and memberships for `users` users.
fn cycle(users: u64) -> (usize, usize, usize) {
    let users = usize::try_from(users).unwrap_or(usize::MAX);
    (users, (users / 100).max(10), users.saturating_mul(5))
}

impl Sizes {
    fn new(args: &BenchArgs) -> Self {
        if args.quick {
            Self {
                users: 3_000,
                group_members: 10_000,
                victims: 100,
                rebuild_events: args.rebuild_events.map_or(20_000, |n| n as usize),
                projection_events: 20_000,
                cycle: args.cycle_users.map_or((500, 10, 2_000), cycle),
                memory_users: 100_000,
                seconds: args.seconds.unwrap_or(2),
            }
        } else {
            Self {
                users: 100_000,
                group_members: 100_000,
                victims: 1_000,
                rebuild_events: args.rebuild_events.map_or(1_000_000, |n| n as usize),
                projection_events: 200_000,
                cycle: args.cycle_users.map_or((100_000, 1_000, 500_000), cycle),
                memory_users: 1_000_000,
                seconds: args.seconds.unwrap_or(20),
            }
        }
    }
}

#[derive(Debug, Serialize)]
struct Scenario {
    #[serde(flatten)]
    measured: Measured,
    ratio: Option<f64>,
    baseline: Option<String>,
    target: Option<String>,
    target_met: Option<bool>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    extra: BTreeMap<String, Value>,
}

fn scenario(measured: Measured) -> Scenario {
    Scenario {
        measured,
        ratio: None,
        baseline: None,
        target: None,
        target_met: None,
        extra: BTreeMap::new(),
    }
}

/// The median of repeated measurements (by throughput), and every repetition's throughput.
fn median(mut runs: Vec<Measured>) -> (Measured, Vec<f64>) {
    runs.sort_by(|a, b| {
        a.throughput_per_s
            .partial_cmp(&b.throughput_per_s)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let spread = runs.iter().map(|m| m.throughput_per_s.round()).collect();
    let middle = runs.len() / 2;
    (runs.into_iter().nth(middle).unwrap_or_default(), spread)
}

/// Runs a timed measurement `times` times; the median, with the spread recorded.
async fn repeated<F, Fut>(times: usize, mut run: F) -> anyhow::Result<(Measured, Vec<f64>)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Measured>>,
{
    let mut runs = Vec::new();
    for _ in 0..times.max(1) {
        runs.push(run().await?);
    }
    Ok(median(runs))
}

fn with_spread(mut s: Scenario, spread: Vec<f64>) -> Scenario {
    s.extra
        .insert("throughput_per_repetition".into(), json!(spread));
    s
}

fn versus(mut s: Scenario, baseline: &str, limit: &Measured, at_least: Option<f64>) -> Scenario {
    let ratio = s.measured.throughput_per_s / limit.throughput_per_s.max(1e-9);
    s.ratio = Some(ratio);
    s.baseline = Some(baseline.to_owned());
    if let Some(at_least) = at_least {
        s.target = Some(format!(">= {at_least} x {baseline}"));
        s.target_met = Some(ratio >= at_least);
    }
    s
}

/// Adds a latency bound to a scenario's target: `p99 <= ms` as well.
fn within_p99(mut s: Scenario, ms: f64) -> Scenario {
    let bound = format!("p99 <= {ms} ms");
    s.target = Some(match s.target.take() {
        Some(target) => format!("{target}, {bound}"),
        None => bound,
    });
    s.target_met = Some(s.target_met.unwrap_or(true) && s.measured.p99_ms <= ms);
    s
}

/// A write scenario (`create`, `patch`) judged by the write target.
fn write_scenario(
    m: Measured,
    spread: Vec<f64>,
    baselines: &BTreeMap<String, Measured>,
) -> Scenario {
    let judged = versus(
        scenario(m),
        "publish_pipelined",
        &baselines["publish_pipelined"],
        Some(WRITES_AT_LEAST),
    );
    with_spread(within_p99(judged, WRITES_P99_MS), spread)
}

/// The write scenarios' target (`create`, `patch`): a share of the pipelined append rate.
const WRITES_AT_LEAST: f64 = 0.12;
/// ... with this p99 (ms) at the benchmark's concurrency.
const WRITES_P99_MS: f64 = 25.0;
/// Members of the small group of the `members` scenario.
const SMALL_GROUP: usize = 10;
/// The `members` scenario's target: a large group's member changes at this share of a small
/// group's rate at least.
const MEMBERS_AT_LEAST: f64 = 0.9;
/// The access state's target: at most this many bytes per user.
const MEMORY_AT_MOST: f64 = 300.0;

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("model name"))
            .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
    });
    let memory = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines().next().map(|l| {
            l.split_whitespace()
                .nth(1)
                .unwrap_or("0")
                .parse::<u64>()
                .unwrap_or(0)
                / 1024
                / 1024
        })
    });
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu": cpu,
        "memory_gib": memory,
        "os": std::env::consts::OS,
        "date": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "rollcall": env!("CARGO_PKG_VERSION"),
    })
}

fn say(text: &str) {
    eprintln!("bench: {text}");
}

/// Runs the benchmark.
pub async fn run(common: Common, args: BenchArgs) -> anyhow::Result<()> {
    let sizes = Sizes::new(&args);
    let duration = Duration::from_secs(sizes.seconds);
    let c = args.concurrency;
    say(&format!(
        "starting a private Rollcall ({} run, concurrency {c}, {}s per timed scenario)",
        if args.quick { "quick" } else { "full" },
        sizes.seconds
    ));
    let env = BenchEnv::start(&common).await?;
    let only = Only(args.only.clone());
    let result = measure(&env, &common, &sizes, c, duration, args.repeat, &only).await;
    env.stop().await;
    let (baselines, scenarios, memory) = result?;
    let mut report = json!({"machine": machine(), "quick": args.quick, "concurrency": c, "repeat": args.repeat, "seconds_per_repetition": sizes.seconds, "baselines": baselines, "scenarios": scenarios, "memory": memory});
    if !args.only.is_empty() {
        report["only"] = json!(args.only);
    }
    print_table(&report);
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        say(&format!("wrote {}", path.display()));
    }
    Ok(())
}

/// The scenarios chosen with `--only` (none: all).
struct Only(Vec<String>);

impl Only {
    fn runs(&self, scenario: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|s| s == scenario)
    }

    fn any(&self, scenarios: &[&str]) -> bool {
        scenarios.iter().any(|s| self.runs(s))
    }
}

type Results = (
    BTreeMap<String, Measured>,
    BTreeMap<String, Scenario>,
    Value,
);

async fn measure(
    env: &BenchEnv,
    common: &Common,
    sizes: &Sizes,
    c: usize,
    duration: Duration,
    times: usize,
    only: &Only,
) -> anyhow::Result<Results> {
    let mut baselines = BTreeMap::new();
    say("baseline: constant HTTP handler");
    baselines.insert(
        "http".to_owned(),
        repeated(times, || baselines::http(c, duration)).await?.0,
    );
    say("baseline: raw JetStream appends, one at a time");
    baselines.insert(
        "publish_sync".to_owned(),
        repeated(times, || baselines::publish(env, false, duration))
            .await?
            .0,
    );
    say("baseline: raw JetStream appends, pipelined");
    baselines.insert(
        "publish_pipelined".to_owned(),
        repeated(times, || baselines::publish(env, true, duration))
            .await?
            .0,
    );
    say(&format!(
        "baseline: durable consumer → PostgreSQL, 500-row batches ({} events)",
        sizes.projection_events
    ));
    baselines.insert(
        "projection".to_owned(),
        baselines::projection(env, sizes.projection_events).await?,
    );

    let mut scenarios = BTreeMap::new();
    if only.runs("create") {
        create_scenarios(env, c, duration, times, &baselines, &mut scenarios).await;
    }
    if only.any(&["lookup", "patch", "members", "deprovision", "decide"]) {
        users_scenarios(
            env,
            sizes,
            c,
            duration,
            times,
            only,
            &baselines,
            &mut scenarios,
        )
        .await?;
    }
    if only.runs("ssf") {
        say(&format!(
            "scenario ssf: {} deactivations to a Shared Signals push receiver",
            sizes.victims
        ));
        // Measured from sending the PATCH; the target is on the time after its response.
        let (from_request, from_response, catch_up_ms) = scenarios::ssf(env, sizes.victims).await?;
        let mut ssf = scenario(from_request);
        ssf.target = Some(format!(
            "p99 <= {SSF_P99_MS} ms from the SCIM response to the receiver"
        ));
        ssf.target_met = Some(from_response.p99_ms <= SSF_P99_MS && from_response.errors == 0);
        ssf.extra.insert(
            "after_response_ms".into(),
            json!({"p50": from_response.p50_ms, "p90": from_response.p90_ms,
                   "p99": from_response.p99_ms, "max": from_response.max_ms}),
        );
        // The new stream's walk of the tenant's history, before its first SET (not measured
        // above; none when it did not end within the time given).
        ssf.extra.insert("catch_up_ms".into(), json!(catch_up_ms));
        scenarios.insert("ssf".to_owned(), ssf);
    }
    if only.runs("rebuild") {
        rebuild_scenario(env, common, sizes, &baselines, &mut scenarios).await?;
    }
    if only.runs("partitions") {
        partitions_scenario(env, common, sizes, &mut scenarios).await?;
    }
    if only.runs("initial-cycle") {
        initial_cycle_scenario(env, sizes, c, &mut scenarios).await;
    }
    let memory = if only.runs("memory") {
        say(&format!(
            "memory: access state for {} users with 5 groups each",
            sizes.memory_users
        ));
        let (bytes_per_user, seconds) = scenarios::memory(sizes.memory_users);
        say(&format!(
            "memory: a SCIM API's lookup index of {} users with 5 groups each",
            sizes.memory_users
        ));
        let index = scenarios::index_memory(sizes.memory_users);
        json!({"users": sizes.memory_users, "groups_per_user": 5, "bytes_per_user": bytes_per_user.round(),
               "total_mib": (bytes_per_user * sizes.memory_users as f64 / 1_048_576.0).round(), "load_seconds": seconds,
               "target": format!("<= {MEMORY_AT_MOST} bytes per user"), "target_met": bytes_per_user <= MEMORY_AT_MOST,
               "lookup_index_bytes_per_user": index.round()})
    } else {
        Value::Null
    };
    Ok((baselines, scenarios, memory))
}

/// The scenarios over preloaded users: lookup, patch, members, deprovision, decide.
#[allow(clippy::too_many_arguments)]
async fn users_scenarios(
    env: &BenchEnv,
    sizes: &Sizes,
    c: usize,
    duration: Duration,
    times: usize,
    only: &Only,
    baselines: &BTreeMap<String, Measured>,
    scenarios: &mut BTreeMap<String, Scenario>,
) -> anyhow::Result<()> {
    say(&format!("preloading {} users", sizes.users));
    let users = Arc::new(env.preload_users("pre", sizes.users).await?);
    env.settle().await?;
    if only.runs("lookup") {
        lookup_scenario(env, sizes, c, duration, times, baselines, scenarios).await?;
    }
    let third = users.len() / 3;
    if only.runs("patch") {
        say("scenario patch: PATCH active and attribute replaces");
        let patched = Arc::new(users[..third].to_vec());
        let (m, spread) = repeated(times, || async {
            Ok(scenarios::patches(env, patched.clone(), c, duration).await)
        })
        .await?;
        scenarios.insert("patch".to_owned(), write_scenario(m, spread, baselines));
    }
    if only.runs("members") {
        // The same PATCHes on a group of 10 and on a large one: a member change must cost the
        // same whatever the group's size.
        say(&format!(
            "scenario members: add/remove members on a group of {SMALL_GROUP} and on one of {}",
            sizes.group_members
        ));
        let small = scenarios::preload_group(env, SMALL_GROUP).await?;
        let large = scenarios::preload_group(env, sizes.group_members).await?;
        env.settle().await?;
        // Alternated (small, large, small, …) so that a drift of the machine during the run
        // (autovacuum after the preload, say) weighs on both alike.
        let (mut on_small, mut on_large) = (Vec::new(), Vec::new());
        for _ in 0..times.max(1) {
            on_small.push(scenarios::members(env, small, c.min(8), duration).await);
            on_large.push(scenarios::members(env, large, c.min(8), duration).await);
        }
        let ((on_small, small_spread), (on_large, large_spread)) =
            (median(on_small), median(on_large));
        let small_name = format!("members: group of {SMALL_GROUP}");
        scenarios.insert(
            "members".to_owned(),
            with_spread(
                versus(
                    scenario(on_large.clone()),
                    &small_name,
                    &on_small,
                    Some(MEMBERS_AT_LEAST),
                ),
                large_spread,
            ),
        );
        scenarios.insert(
            small_name,
            with_spread(
                versus(scenario(on_small), "http", &baselines["http"], None),
                small_spread,
            ),
        );
    }
    if only.runs("deprovision") {
        say(&format!(
            "scenario deprovision: {} users under background writes",
            sizes.victims
        ));
        let victims: Vec<_> = users[third..third + sizes.victims.min(third)].to_vec();
        let background = Arc::new(users[..third].to_vec());
        let (measured, allowed_after) = scenarios::deprovision(env, &victims, background).await;
        let mut deprovision = scenario(measured);
        deprovision.target = Some("p99 <= 5 ms; no allow after the SCIM response".into());
        deprovision.target_met = Some(
            deprovision.measured.p99_ms <= 5.0
                && allowed_after == 0
                && deprovision.measured.errors == 0,
        );
        deprovision.extra.insert(
            "decisions_allowed_after_response".into(),
            json!(allowed_after),
        );
        scenarios.insert("deprovision".to_owned(), deprovision);
    }
    if only.runs("decide") {
        say("scenario decide: forward-auth decisions for valid sessions");
        let active: Vec<_> = users[2 * third..].to_vec();
        let (m, spread) = repeated(times, || async {
            Ok(scenarios::decide(env, &active, c, duration).await)
        })
        .await?;
        scenarios.insert(
            "decide".to_owned(),
            with_spread(
                versus(scenario(m), "http", &baselines["http"], Some(0.6)),
                spread,
            ),
        );
    }
    Ok(())
}

async fn lookup_scenario(
    env: &BenchEnv,
    sizes: &Sizes,
    c: usize,
    duration: Duration,
    times: usize,
    baselines: &BTreeMap<String, Measured>,
    scenarios: &mut BTreeMap<String, Scenario>,
) -> anyhow::Result<()> {
    say("scenario lookup: GET /Users?filter=userName eq …, as served and without the probe, in turns");
    let index = env
        .lookup_index()
        .context("the private SCIM API has no lookup index")?;
    let (probed, unprobed) = in_turns(times, |probe| async move {
        index.set_probing_for_benchmark(probe);
        scenarios::lookup(env, sizes.users, c, duration).await
    })
    .await;
    index.set_probing_for_benchmark(true);
    let (probed, probed_spread) = median(probed);
    let (unprobed, unprobed_spread) = median(unprobed);
    // What read-your-writes across replicas costs a lookup: one probe of the stream's last
    // sequence (a NATS round trip) shared by the lookups that wait for it. Reported, not judged.
    let mut cost = scenario(probed.clone());
    cost.ratio = Some(probed.throughput_per_s / unprobed.throughput_per_s.max(f64::MIN_POSITIVE));
    cost.baseline = Some("lookup: without the probe".to_owned());
    scenarios.insert("lookup: probe cost".to_owned(), cost);
    scenarios.insert(
        "lookup: without the probe".to_owned(),
        with_spread(
            versus(scenario(unprobed), "http", &baselines["http"], None),
            unprobed_spread,
        ),
    );
    scenarios.insert(
        "lookup".to_owned(),
        with_spread(
            versus(scenario(probed), "http", &baselines["http"], Some(0.5)),
            probed_spread,
        ),
    );
    Ok(())
}

/// Runs a scenario `times` times with a switch on and as often with it off, alternating which
/// goes first each round (so that neither always runs on a machine the other warmed): the
/// measurements with it on, then those with it off.
async fn in_turns<F, Fut>(times: usize, mut run: F) -> (Vec<Measured>, Vec<Measured>)
where
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = Measured>,
{
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for round in 0..times.max(1) {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for switch in order {
            let measured = run(switch).await;
            if switch {
                on.push(measured);
            } else {
                off.push(measured);
            }
        }
    }
    (on, off)
}

/// What sealing costs a scenario: `sealed` judged against `clear` (named `clear_name`) of the
/// same run, at most 10%.
fn sealing_cost(sealed: &Measured, clear: &Measured, clear_name: &str) -> Scenario {
    let cost = sealed.throughput_per_s / clear.throughput_per_s.max(f64::MIN_POSITIVE);
    let mut sealing = scenario(sealed.clone());
    sealing.ratio = Some(cost);
    sealing.baseline = Some(clear_name.to_owned());
    sealing.target = Some(format!(">= 0.9 x {clear_name} (sealing costs at most 10%)"));
    sealing.target_met = Some(cost >= 0.9);
    sealing
}

/// `create` as served (personal fields sealed) and, in the same run, with sealing switched
/// off (as before sealing existed), alternating which goes first: `create`, and what sealing
/// costs it.
async fn create_scenarios(
    env: &BenchEnv,
    concurrency: usize,
    duration: Duration,
    times: usize,
    baselines: &BTreeMap<String, Measured>,
    scenarios: &mut BTreeMap<String, Scenario>,
) {
    say("scenario create: POST /Users, sealed as served and with sealing off, in turns");
    // Not measured: the SCIM API's spare users (ids with stored keys) are made on first use.
    scenarios::create(env, concurrency, Duration::from_secs(2)).await;
    let (sealed, clear) = in_turns(times, |seal| async move {
        // A clear run does no sealed run's work: its spares' top-ups are done first.
        env.store.spares_settled().await;
        env.store.set_sealing_for_benchmark(seal);
        scenarios::create(env, concurrency, duration).await
    })
    .await;
    env.store.set_sealing_for_benchmark(true);
    let per_round: Vec<f64> = sealed
        .iter()
        .zip(&clear)
        .map(|(s, c)| {
            (s.throughput_per_s / c.throughput_per_s.max(f64::MIN_POSITIVE) * 100.0).round() / 100.0
        })
        .collect();
    let (sealed, sealed_spread) = median(sealed);
    let (clear, clear_spread) = median(clear);
    let mut sealing = sealing_cost(&sealed, &clear, "create: clear events");
    sealing
        .extra
        .insert("ratio_per_repetition".into(), json!(per_round));
    scenarios.insert(
        "create: clear events".to_owned(),
        with_spread(scenario(clear), clear_spread),
    );
    scenarios.insert("create: sealing cost".to_owned(), sealing);
    scenarios.insert(
        "create".to_owned(),
        write_scenario(sealed, sealed_spread, baselines),
    );
}

async fn rebuild_scenario(
    env: &BenchEnv,
    common: &Common,
    sizes: &Sizes,
    baselines: &BTreeMap<String, Measured>,
    scenarios: &mut BTreeMap<String, Scenario>,
) -> anyhow::Result<()> {
    say(&format!(
        "scenario rebuild: {} events, personal fields in clear (as before sealing), then sealed",
        sizes.rebuild_events
    ));
    let clear = scenarios::rebuild(env, common, sizes.rebuild_events, false).await?;
    let sealed = scenarios::rebuild(env, common, sizes.rebuild_events, true).await?;
    // What sealing costs a rebuild, in the same run: opening every event's personal fields and
    // reading every user's data key.
    let sealing = sealing_cost(&sealed, &clear, "rebuild: clear events");
    scenarios.insert(
        "rebuild: clear events".to_owned(),
        versus(
            scenario(clear),
            "projection",
            &baselines["projection"],
            None,
        ),
    );
    scenarios.insert("rebuild: sealing cost".to_owned(), sealing);
    scenarios.insert(
        "rebuild".to_owned(),
        versus(
            scenario(sealed),
            "projection",
            &baselines["projection"],
            Some(0.7),
        ),
    );
    Ok(())
}

async fn partitions_scenario(
    env: &BenchEnv,
    common: &Common,
    sizes: &Sizes,
    scenarios: &mut BTreeMap<String, Scenario>,
) -> anyhow::Result<()> {
    say(&format!(
        "scenario partitions: {} events over 16 tenants, P=1 with one projector process, then P=4 with four",
        sizes.projection_events
    ));
    let one = scenarios::partitions(env, common, sizes.projection_events, 1).await?;
    let four = scenarios::partitions(env, common, sizes.projection_events, 4).await?;
    let ratio = four.throughput_per_s / one.throughput_per_s.max(f64::MIN_POSITIVE);
    let mut partitioned = scenario(four);
    partitioned.ratio = Some(ratio);
    partitioned.baseline = Some("partitions: P=1".into());
    partitioned.target = Some("> 1.0 × P=1 (throughput grows with active projectors)".into());
    partitioned.target_met = Some(ratio > 1.0);
    scenarios.insert("partitions: P=1".to_owned(), scenario(one));
    scenarios.insert("partitions".to_owned(), partitioned);
    Ok(())
}

async fn initial_cycle_scenario(
    env: &BenchEnv,
    sizes: &Sizes,
    c: usize,
    scenarios: &mut BTreeMap<String, Scenario>,
) {
    let (cycle_users, cycle_groups, cycle_memberships) = sizes.cycle;
    say(&format!("scenario initial-cycle: {cycle_users} users, {cycle_groups} groups, {cycle_memberships} memberships"));
    for (phase, measured) in
        scenarios::initial_cycle(env, cycle_users, cycle_groups, cycle_memberships, c).await
    {
        let mut s = scenario(measured);
        if phase == "whole cycle" {
            s.target = Some("zero errors; wall time reported".into());
            s.target_met = Some(s.measured.errors == 0);
            scenarios.insert("initial-cycle".to_owned(), s);
        } else {
            scenarios.insert(format!("initial-cycle: {phase}"), s);
        }
    }
}

fn print_table(report: &Value) {
    println!("\nmachine: {}", report["machine"]);
    println!(
        "\n{:<38} {:>10} {:>8} {:>8} {:>8} {:>9} {:>7} {:>7}  target",
        "baseline / scenario", "ops/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors", "ratio"
    );
    let row = |name: &str, m: &Value| {
        let ratio = m["ratio"]
            .as_f64()
            .map_or("".to_owned(), |r| format!("{r:.2}"));
        let target = match (m["target"].as_str(), m["target_met"].as_bool()) {
            (Some(t), Some(true)) => format!("met ({t})"),
            (Some(t), Some(false)) => format!("MISSED ({t})"),
            _ => String::new(),
        };
        println!(
            "{:<38} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>7} {:>7}  {}",
            name,
            m["throughput_per_s"].as_f64().unwrap_or(0.0),
            m["p50_ms"].as_f64().unwrap_or(0.0),
            m["p90_ms"].as_f64().unwrap_or(0.0),
            m["p99_ms"].as_f64().unwrap_or(0.0),
            m["max_ms"].as_f64().unwrap_or(0.0),
            m["errors"].as_u64().unwrap_or(0),
            ratio,
            target
        );
    };
    for (name, m) in report["baselines"].as_object().into_iter().flatten() {
        row(&format!("[baseline] {name}"), m);
    }
    for (name, m) in report["scenarios"].as_object().into_iter().flatten() {
        row(name, m);
    }
    if let Some(cycle) = report["scenarios"].get("initial-cycle") {
        println!(
            "\ninitial-cycle wall time: {:.1} s, errors: {}",
            cycle["seconds"].as_f64().unwrap_or(0.0),
            cycle["errors"]
        );
    }
    if !report["memory"].is_null() {
        println!(
            "access memory: {} bytes per user ({} users, 5 groups each; {} MiB): {} ({})",
            report["memory"]["bytes_per_user"],
            report["memory"]["users"],
            report["memory"]["total_mib"],
            if report["memory"]["target_met"].as_bool() == Some(true) {
                "met"
            } else {
                "MISSED"
            },
            report["memory"]["target"].as_str().unwrap_or_default()
        );
        println!(
            "lookup index memory: {} bytes per user (each SCIM API process)",
            report["memory"]["lookup_index_bytes_per_user"]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latency_bound_joins_the_ratio_target() {
        let measured = |throughput_per_s, p99_ms| Measured {
            throughput_per_s,
            p99_ms,
            ..Default::default()
        };
        let limit = measured(1000.0, 0.0);
        let judged = |m| within_p99(versus(scenario(m), "x", &limit, Some(0.12)), 25.0);
        let fast_enough = judged(measured(200.0, 20.0));
        assert_eq!(
            fast_enough.target.as_deref(),
            Some(">= 0.12 x x, p99 <= 25 ms")
        );
        assert_eq!(fast_enough.target_met, Some(true));
        assert_eq!(judged(measured(200.0, 30.0)).target_met, Some(false));
        assert_eq!(judged(measured(100.0, 20.0)).target_met, Some(false));
    }

    #[test]
    fn the_median_repetition_is_reported_with_the_spread() {
        let run = |throughput| Measured {
            throughput_per_s: throughput,
            ..Default::default()
        };
        let (median, spread) = median(vec![run(30.0), run(10.0), run(20.0)]);
        assert_eq!(median.throughput_per_s, 20.0);
        assert_eq!(spread, vec![10.0, 20.0, 30.0]);
    }

    #[test]
    fn a_chosen_cycle_keeps_the_full_runs_proportions() {
        assert_eq!(cycle(100_000), (100_000, 1_000, 500_000));
        assert_eq!(cycle(30_000), (30_000, 300, 150_000));
        // A small cycle still spreads its members over ten groups.
        assert_eq!(cycle(1), (1, 10, 5));
    }

    #[tokio::test]
    async fn turns_alternate_which_side_goes_first_and_keep_each_sides_runs_apart() {
        let order = std::sync::Mutex::new(Vec::new());
        let (on, off) = in_turns(3, |switch| {
            let order = &order;
            async move {
                let mut order = order.lock().unwrap();
                order.push(switch);
                Measured {
                    throughput_per_s: if switch { 1.0 } else { 2.0 },
                    ..Default::default()
                }
            }
        })
        .await;
        assert_eq!(
            order.into_inner().unwrap(),
            [false, true, true, false, false, true]
        );
        assert!(on.len() == 3 && on.iter().all(|m| m.throughput_per_s == 1.0));
        assert!(off.len() == 3 && off.iter().all(|m| m.throughput_per_s == 2.0));
    }
}
