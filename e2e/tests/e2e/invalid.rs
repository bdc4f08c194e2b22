//! Manifests the API server admits but pgop cannot act on cost one pass and one Warning
//! Event each, then nothing: no status rewrite, no Event repeated on resyncs or after a
//! worker restart, no secret value in a status, an Event or a log line.
use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pgop_e2e::{simulated_cluster, wait};
use serde_json::Value;

use super::env;
use super::operator::{start_own_pgop, wait_running};

/// A manifest pgop's types refuse, deleted while Zalando's finalizer holds it: pgop lets go.
const HELD_BY_A_FINALIZER: &str = "acid-type-command";
const FINALIZER: &str = "postgres-operator.acid.zalan.do";

/// Every verb pgop's request counter knows.
const ALL_VERBS: &[&str] = &[
    "get", "watch", "create", "update", "patch", "delete", "other",
];

/// A value that must never leave the manifest (a password in a plain `env` value).
const SECRET_VALUE: &str = "31337424242";

/// name, what the spec gets instead of the simulated cluster's, what the status message
/// must name. The first ten pass the CRD's schema (its schemaless parts hold Kubernetes
/// types) but not pgop's types; the last ten parse and fail pgop's validation.
fn bad_manifests() -> Vec<(&'static str, Value, &'static str)> {
    use serde_json::json;
    vec![
        (
            "acid-type-command",
            json!({"initContainers": [{"name": "i", "image": "busybox", "command": [true]}]}),
            "spec.initContainers[0].command[0]",
        ),
        (
            "acid-type-instances",
            json!({"numberOfInstances": 2147483648u64}),
            "spec.numberOfInstances",
        ),
        (
            "acid-type-toleration",
            json!({"tolerations": [{"key": "a", "operator": "Exists", "tolerationSeconds": "soon"}]}),
            "spec.tolerations[0].tolerationSeconds",
        ),
        (
            "acid-type-env-value",
            json!({"env": [{"name": "PGPASSWORD", "value": SECRET_VALUE.parse::<u64>().unwrap()}]}),
            "spec.env[0].value",
        ),
        (
            "acid-type-sidecar-ports",
            json!({"sidecars": [{"name": "s", "image": "busybox", "ports": {"http": 80}}]}),
            "spec.sidecars[0].ports",
        ),
        (
            "acid-type-spread",
            json!({"topologySpreadConstraints": [{"maxSkew": "one", "topologyKey": "k", "whenUnsatisfiable": "DoNotSchedule"}]}),
            "spec.topologySpreadConstraints[0].maxSkew",
        ),
        (
            "acid-type-env-from",
            json!({"envFrom": [{"configMapRef": "settings"}]}),
            "spec.envFrom[0].configMapRef",
        ),
        (
            "acid-type-init-name",
            json!({"initContainers": [{"name": 5, "image": "busybox"}]}),
            "spec.initContainers[0].name",
        ),
        (
            "acid-type-value-from",
            json!({"env": [{"name": "X", "valueFrom": []}]}),
            "spec.env[0].valueFrom",
        ),
        (
            "acid-type-effect",
            json!({"tolerations": [{"key": "a", "operator": "Exists", "effect": 7}]}),
            "spec.tolerations[0].effect",
        ),
        (
            "acid-size-word",
            json!({"volume": {"size": "lots"}}),
            "volume.size",
        ),
        (
            "acid-size-zero",
            json!({"volume": {"size": "0"}}),
            "volume.size",
        ),
        (
            "acid-version-word",
            json!({"postgresql": {"version": "fifteen"}}),
            "postgresql.version",
        ),
        (
            "acid-version-three",
            json!({"postgresql": {"version": "15.1.2"}}),
            "postgresql.version",
        ),
        (
            "acid-window",
            json!({"maintenanceWindows": ["Someday 25:00-26:00"]}),
            "Someday",
        ),
        (
            "acid-init-image",
            json!({"initContainers": [{"name": "init"}]}),
            "initContainers[0]",
        ),
        (
            "acid-cpu-word",
            json!({"resources": {"requests": {"cpu": "lots"}}}),
            "cpu",
        ),
        (
            "acid-clone-name",
            json!({"clone": {"cluster": "Bad_Name"}}),
            "clone cluster name",
        ),
        ("acid.dotted", json!({}), "cluster name"),
        (
            "acid-a-name-far-too-long-for-a-postgres-cluster-managed-by-pgop",
            json!({}),
            "at most 58",
        ),
    ]
}

fn manifest(name: &str, spec: &Value) -> Result<String> {
    let mut manifest: Value = serde_yaml::from_str(&simulated_cluster(name, 1))?;
    for (key, value) in spec.as_object().context("spec")? {
        manifest["spec"][key] = value.clone();
    }
    Ok(serde_json::to_string(&manifest)?)
}

fn status(ns: &str, name: &str) -> Result<Value> {
    let out = env().kubectl(&["get", "pg", "-n", ns, name, "-o", "json"])?;
    let object: Value = serde_json::from_str(&out)?;
    Ok(object["status"].clone())
}

/// The Warning Events of every object in `ns`: (object, reason, message, count).
fn warnings(ns: &str) -> Result<Vec<(String, String, String, u64)>> {
    let out = env().kubectl(&["get", "events", "-n", ns, "-o", "json"])?;
    let list: Value = serde_json::from_str(&out)?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "Warning")
        .map(|e| {
            (
                e["involvedObject"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                e["reason"].as_str().unwrap_or("").to_string(),
                e["message"].as_str().unwrap_or("").to_string(),
                e["count"].as_u64().unwrap_or(1),
            )
        })
        .collect())
}

/// Exactly one Warning Event `Invalid` per manifest, carrying what the status says.
fn one_warning_each(ns: &str, statuses: &BTreeMap<String, String>) -> Result<()> {
    let events = warnings(ns)?;
    for (name, message) in statuses {
        let mine: Vec<_> = events.iter().filter(|e| &e.0 == name).collect();
        ensure!(
            mine.len() == 1 && mine[0].1 == "Invalid" && &mine[0].2 == message && mine[0].3 == 1,
            "{name}: one Warning Invalid {message:?} expected, found {mine:?}"
        );
    }
    Ok(())
}

pub async fn invalid_manifests_cost_one_pass_and_one_event() -> Result<()> {
    let (system_ns, ns) = ("e2e-invalid-system", "e2e-invalid");
    let mut pgop = start_own_pgop(
        "invalid",
        system_ns,
        ns,
        1,
        &[
            // A resync every few seconds: every one of them is a pass that must write nothing.
            ("resync_period", "10s"),
            ("enable_database_access", "false"),
        ],
    )
    .await?;
    let bad = bad_manifests();
    for (name, spec, _) in &bad {
        let mut manifest: Value = serde_json::from_str(&manifest(name, spec)?)?;
        if *name == HELD_BY_A_FINALIZER {
            manifest["metadata"]["finalizers"] = serde_json::json!([FINALIZER]);
        }
        env()
            .apply(ns, &manifest.to_string())
            .with_context(|| format!("the API server refused {name}"))?;
    }
    // Every one Invalid, the status naming the field and what is wrong, never the value.
    let mut statuses = BTreeMap::new();
    for (name, _, names) in &bad {
        let status = wait::until(
            &format!("{name} Invalid"),
            Duration::from_secs(60),
            || async move {
                let status = status(ns, name)?;
                Ok((status["PostgresClusterStatus"] == "Invalid").then_some(status))
            },
        )
        .await?;
        let message = status["message"].as_str().unwrap_or_default().to_string();
        ensure!(
            message.contains(names) && !message.contains(SECRET_VALUE),
            "{name}: status message {message:?} should name {names:?}"
        );
        ensure!(
            status.get("nextRetry").is_none(),
            "{name}: an invalid manifest is not retried: {status}"
        );
        statuses.insert(name.to_string(), message);
    }
    // The Events are recorded right after the status: let the last ones land.
    wait::until(
        "one Warning per manifest",
        Duration::from_secs(30),
        || async { Ok(one_warning_each(ns, &statuses).ok()) },
    )
    .await?;
    // Two minutes of resyncs: not a write, not even a read.
    let requests_before = pgop.kube_requests(ALL_VERBS)?;
    let writes_before = pgop.kube_writes()?;
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(120)).await;
    let writes = pgop.kube_writes()? - writes_before;
    let requests = pgop.kube_requests(ALL_VERBS)? - requests_before;
    one_warning_each(ns, &statuses)?;
    ensure!(
        writes == 0 && requests == 0,
        "{writes} write requests, {requests} in all, in {:?} for 20 invalid manifests",
        started.elapsed()
    );
    let log = std::fs::read_to_string(env().state_dir.join("logs/invalid-worker-0.log"))
        .context("the worker's log")?;
    ensure!(
        !log.contains(SECRET_VALUE),
        "the worker's log holds the env value"
    );

    // A restarted worker judges every manifest again: it reads each status, finds it as it
    // should be, and tries each Warning once more, which the API server refuses as a
    // duplicate (its name is the problem's). A pass ends with that try: once all 20 are
    // made, every pass has concluded.
    pgop.workers[0].restart()?;
    let event_tries = || {
        pgop_e2e::pgop::counter(
            &pgop.worker_metrics_addrs,
            "pgop_kube_requests_total",
            &[("verb", "create"), ("resource", "events")],
        )
    };
    wait::until(
        "the restarted worker's passes",
        Duration::from_secs(60),
        || async { Ok((event_tries()? >= bad.len() as u64).then_some(())) },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    one_warning_each(ns, &statuses)?;
    let rewrites = pgop.kube_requests(&["patch", "update", "delete"])?;
    let tries = event_tries()?;
    ensure!(
        rewrites == 0 && tries == bad.len() as u64,
        "the restarted worker sent {rewrites} patch/update/delete and {tries} Event creations"
    );

    // Fixing one manifest makes it converge; the others stay as they are.
    env().apply(ns, &simulated_cluster("acid-size-word", 1))?;
    wait_running(ns, "acid-size-word", Duration::from_secs(120)).await?;
    let fixed = status(ns, "acid-size-word")?;
    ensure!(
        fixed.get("message").is_none() && fixed.get("nextRetry").is_none(),
        "a running cluster's status keeps no problem: {fixed}"
    );
    ensure!(
        status(ns, "acid-size-zero")?["PostgresClusterStatus"] == "Invalid",
        "the other manifests stay Invalid"
    );
    env().kubectl(&[
        "delete",
        "pg",
        "-n",
        ns,
        HELD_BY_A_FINALIZER,
        "--timeout=60s",
    ])?;
    env().kubectl(&["delete", "namespace", ns, "--wait=false"])?;
    Ok(())
}
