//! Objects pgop writes, changed or deleted by somebody else, are put back within seconds
//! (the watcher reports the change, no periodic sync needed), and a resync of clusters in
//! sync sends no request at all.
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use pgop_e2e::pgop::Pgop;
use pgop_e2e::{simulated_cluster, wait};
use serde_json::Value;

use super::env;
use super::operator::{http_get, start_own_pgop, wait_running};

/// Every verb pgop's request counter knows.
const ALL_VERBS: &[&str] = &[
    "get", "watch", "create", "update", "patch", "delete", "other",
];

/// How long a repair may take here (the watch, the pass, the write).
const REPAIRED_WITHIN: Duration = Duration::from_secs(15);

fn get(ns: &str, what: &str) -> Result<Option<Value>> {
    let out = env().kubectl(&["get", "-n", ns, what, "-o", "json", "--ignore-not-found"])?;
    match out.trim().is_empty() {
        true => Ok(None),
        false => Ok(Some(serde_json::from_str(&out)?)),
    }
}

/// Waits until `repaired` holds for the object, and returns how long that took.
async fn repaired(
    what: &str,
    ns: &str,
    object: &str,
    since: Instant,
    repaired: impl Fn(&Value) -> bool,
) -> Result<Duration> {
    let repaired = &repaired;
    wait::until(what, REPAIRED_WITHIN, || async move {
        Ok(get(ns, object)?.filter(|o| repaired(o)).map(|_| ()))
    })
    .await?;
    let took = since.elapsed();
    println!("[drift] {what}: {took:.1?}");
    Ok(took)
}

/// The number of passes the workers ran for `cluster`, from the gateway.
fn passes(pgop: &Pgop, ns: &str, cluster: &str) -> Result<u64> {
    let (code, status) = http_get(&pgop.gateway_addr, &format!("/clusters/{ns}/{cluster}/"))?;
    ensure!(code == 200, "{code} {status}");
    status["Reconciles"]
        .as_u64()
        .with_context(|| format!("no reconciles in {status}"))
}

pub async fn drift_is_repaired_and_a_resync_in_sync_sends_nothing() -> Result<()> {
    let (system_ns, ns) = ("e2e-drift-system", "e2e-drift");
    let pgop = start_own_pgop(
        "drift",
        system_ns,
        ns,
        2,
        &[
            ("resync_period", "10s"),
            ("enable_database_access", "false"),
        ],
    )
    .await?;
    let clusters = ["acid-drift-0", "acid-drift-1", "acid-drift-2"];
    for name in clusters {
        let manifest = format!("{}  users: {{appuser: []}}\n", simulated_cluster(name, 1));
        env().apply(ns, &manifest)?;
    }
    for name in clusters {
        wait_running(ns, name, Duration::from_secs(120)).await?;
    }

    // At rest: resyncs every 10 s run passes that send nothing, not even a read.
    let quiet = || async {
        let before = pgop.kube_requests(ALL_VERBS)?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok((pgop.kube_requests(ALL_VERBS)? == before).then_some(()))
    };
    wait::until("pgop at rest", Duration::from_secs(60), quiet).await?;
    let passes_before = passes(&pgop, ns, clusters[0])?;
    let requests_before = pgop.kube_requests(ALL_VERBS)?;
    tokio::time::sleep(Duration::from_secs(25)).await;
    let requests = pgop.kube_requests(ALL_VERBS)? - requests_before;
    let resync_passes = passes(&pgop, ns, clusters[0])? - passes_before;
    println!("[drift] 25 s at rest: {resync_passes} passes of one cluster, {requests} requests");
    ensure!(
        resync_passes >= 2,
        "the resyncs ran {resync_passes} passes of {}",
        clusters[0]
    );
    ensure!(
        requests == 0,
        "{requests} requests in 25 s of resyncs of 3 clusters in sync"
    );

    // A deleted Service is recreated.
    let service = format!("service/{}-repl", clusters[0]);
    let old_uid = get(ns, &service)?.context("the replica Service")?["metadata"]["uid"].clone();
    let since = Instant::now();
    env().kubectl(&["delete", "-n", ns, &service, "--wait=false"])?;
    repaired(
        "the deleted replica Service recreated",
        ns,
        &service,
        since,
        |s| s["metadata"]["uid"] != old_uid,
    )
    .await?;

    // A StatefulSet scaled by hand is put back.
    let statefulset = format!("statefulset/{}", clusters[1]);
    let since = Instant::now();
    env().kubectl(&["scale", "-n", ns, &statefulset, "--replicas=3"])?;
    repaired(
        "the hand-scaled StatefulSet put back",
        ns,
        &statefulset,
        since,
        |s| s["spec"]["replicas"] == 1,
    )
    .await?;

    // A user Secret's labels: a changed one and a removed one are put back, the password
    // stays.
    let secret = format!(
        "secret/appuser.{}.credentials.postgresql.acid.zalan.do",
        clusters[2]
    );
    let password = get(ns, &secret)?.context("the user's Secret")?["data"]["password"].clone();
    let since = Instant::now();
    env().kubectl(&["label", "-n", ns, &secret, "team=intruder", "--overwrite"])?;
    repaired("a changed Secret label put back", ns, &secret, since, |s| {
        s["metadata"]["labels"]["team"] == "acid"
    })
    .await?;
    let since = Instant::now();
    env().kubectl(&["label", "-n", ns, &secret, "cluster-name-"])?;
    repaired("a removed Secret label put back", ns, &secret, since, |s| {
        s["metadata"]["labels"]["cluster-name"] == clusters[2]
    })
    .await?;
    let kept = get(ns, &secret)?.context("the user's Secret")?["data"]["password"].clone();
    ensure!(kept == password, "relabelling rewrote the password");

    // A deleted credentials Secret is created again.
    let since = Instant::now();
    env().kubectl(&["delete", "-n", ns, &secret, "--wait=false"])?;
    repaired("the deleted Secret recreated", ns, &secret, since, |s| {
        s["data"]["password"].is_string()
    })
    .await?;

    // In sync again: the repairs left nothing to do.
    wait::until("pgop at rest again", Duration::from_secs(60), quiet).await?;
    let writes_before = pgop.kube_writes()?;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let writes = pgop.kube_writes()? - writes_before;
    ensure!(writes == 0, "{writes} writes after the repairs");
    Ok(())
}
