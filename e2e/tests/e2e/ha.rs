//! The control plane without a single point of failure: watcher and scheduler replicas
//! elect leaders through Leases; a standby keeps its copy of the fleet warm and takes over
//! when the leader dies.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use pgop_e2e::pgop::{grpcurl, Kubeconfigs, Pgop};
use pgop_e2e::{simulated_cluster, wait};

use super::operator::{http_get, prepare, wait_running};
use super::{env, namespace, pg_patch};

fn lease_holder(system_ns: &str) -> Result<String> {
    env().kubectl(&[
        "get",
        "lease",
        "-n",
        system_ns,
        "pgop-watcher",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
}

/// `GET /readyz` of an admin port answers `code`; its body.
fn readiness(admin: &str, code: u16) -> Result<serde_json::Value> {
    let (status, body) = http_get(admin, "/readyz")?;
    ensure!(status == code, "{admin}/readyz answered {status}: {body}");
    Ok(body)
}

async fn replicas(sts: &Api<StatefulSet>, name: &str) -> Result<i32> {
    Ok(sts
        .get(name)
        .await?
        .spec
        .and_then(|s| s.replicas)
        .unwrap_or_default())
}

/// Two watchers; the leader SIGKILLed while ten clusters change: the standby takes the
/// lease within the lease's duration, the scheduler subscribes to it, and every change made
/// before, during and after the takeover reaches its StatefulSet.
pub async fn watcher_standby_takes_over_and_loses_no_change() -> Result<()> {
    let (system_ns, ns) = ("e2e-ha-system", "e2e-ha");
    let client = env().client().await?;
    prepare(&client, system_ns, &[("enable_database_access", "false")]).await?;
    namespace(&client, ns).await?;
    let mut pgop = Pgop::start_replicated(
        "ha",
        system_ns,
        2,
        1,
        1,
        &env().state_dir,
        &Kubeconfigs::admin(&env().kubeconfig),
        Some(ns),
    )?;
    let clusters: Vec<String> = (0..10).map(|i| format!("acid-ha-{i}")).collect();
    for name in &clusters {
        env().apply(ns, &simulated_cluster(name, 1))?;
    }
    for name in &clusters {
        wait_running(ns, name, Duration::from_secs(120)).await?;
    }
    let leader = wait::until("a watcher leading", Duration::from_secs(30), || async {
        let holder = lease_holder(system_ns)?;
        Ok((!holder.is_empty()).then_some(holder))
    })
    .await?;
    let (leader_index, standby_index) = match leader.as_str() {
        "ha-watcher-0" => (0, 1),
        "ha-watcher-1" => (1, 0),
        other => anyhow::bail!("unexpected lease holder {other:?}"),
    };
    // The standby is alive and says why it does not serve.
    let refused = grpcurl(
        &pgop.watcher_addrs[standby_index],
        &["-d", r#"{"subscriber":"e2e"}"#, "pgop.v1.Watcher/Subscribe"],
    )
    .err()
    .map(|e| format!("{e:#}"))
    .unwrap_or_default();
    ensure!(
        refused.contains("Unavailable") && refused.contains("standby"),
        "the standby's answer to Subscribe: {refused:?}"
    );
    // Both are ready: the standby has listed too and refuses clients itself.
    readiness(&pgop.watcher_admin_addrs[leader_index], 200)?;
    readiness(&pgop.watcher_admin_addrs[standby_index], 200)?;

    // Half the changes before the kill, half after it.
    for name in &clusters[..5] {
        pg_patch(
            ns,
            name,
            serde_json::json!({"spec": {"numberOfInstances": 2}}),
        )?;
    }
    let killed = Instant::now();
    match leader_index {
        0 => pgop.watcher.kill(),
        _ => pgop.standby_watchers[0].kill(),
    }
    for name in &clusters[5..] {
        pg_patch(
            ns,
            name,
            serde_json::json!({"spec": {"numberOfInstances": 2}}),
        )?;
    }
    let standby = format!("ha-watcher-{standby_index}");
    wait::until("the standby leading", Duration::from_secs(30), || async {
        Ok((lease_holder(system_ns)? == standby).then_some(()))
    })
    .await?;
    let takeover = killed.elapsed();
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    wait::until(
        "every change on its StatefulSet",
        Duration::from_secs(90),
        || async {
            for name in &clusters {
                if replicas(&sts, name).await? != 2 {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await?;
    let flowing = killed.elapsed();
    eprintln!(
        "[e2e] watcher leader killed: standby leading after {:.1}s, all 10 changes applied after {:.1}s",
        takeover.as_secs_f64(),
        flowing.as_secs_f64()
    );
    ensure!(
        takeover <= Duration::from_secs(15),
        "the standby took {takeover:?} to lead"
    );

    // The killed replica comes back as the standby: the lease stays where it is.
    match leader_index {
        0 => pgop.watcher.start_again()?,
        _ => pgop.standby_watchers[0].start_again()?,
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    ensure!(
        lease_holder(system_ns)? == standby,
        "the restarted replica took the lease back"
    );
    let state = grpcurl(
        &pgop.watcher_addrs[standby_index],
        &["pgop.v1.Watcher/GetState"],
    )
    .context("the leader's state")?;
    ensure!(state.contains("\"subscribers\": 1"), "{state}");
    env().kubectl(&["delete", "namespace", ns, "--wait=false"])?;
    Ok(())
}

/// Every interval during which a worker owned a cluster, from its log: from `assigned` to
/// `released` or to the end of a fencing (every task stopped).
fn ownership(log: &str, worker: &str) -> Vec<(String, String, Timestamp, Timestamp)> {
    let mut open: BTreeMap<String, Timestamp> = BTreeMap::new();
    let mut intervals = Vec::new();
    for line in log.lines() {
        let Some(at) = line
            .split_whitespace()
            .next()
            .and_then(|t| t.parse::<Timestamp>().ok())
        else {
            continue;
        };
        let cluster = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("cluster="))
            .map(str::to_string);
        if line.contains(" assigned ") {
            if let Some(cluster) = cluster {
                open.entry(cluster).or_insert(at);
            }
        } else if line.contains(" released ") {
            if let Some((cluster, from)) = cluster.and_then(|c| open.remove_entry(&c)) {
                intervals.push((cluster, worker.to_string(), from, at));
            }
        } else if line.contains("fenced: every cluster task stopped") {
            for (cluster, from) in std::mem::take(&mut open) {
                intervals.push((cluster, worker.to_string(), from, at));
            }
        }
    }
    let end = Timestamp::now();
    intervals.extend(
        open.into_iter()
            .map(|(cluster, from)| (cluster, worker.to_string(), from, end)),
    );
    intervals
}

/// Two schedulers and two workers; the leading scheduler SIGKILLed while twenty clusters
/// change: the standby (which followed the watcher all along) leads within the lease's
/// duration, the workers fence themselves and open sessions with it, every change reaches
/// its StatefulSet, and no cluster was ever owned by two workers at once.
pub async fn scheduler_standby_takes_over_and_no_cluster_has_two_owners() -> Result<()> {
    let (system_ns, ns) = ("e2e-hasched-system", "e2e-hasched");
    let client = env().client().await?;
    prepare(&client, system_ns, &[("enable_database_access", "false")]).await?;
    namespace(&client, ns).await?;
    let mut pgop = Pgop::start_replicated(
        "hasched",
        system_ns,
        1,
        2,
        2,
        &env().state_dir,
        &Kubeconfigs::admin(&env().kubeconfig),
        Some(ns),
    )?;
    let clusters: Vec<String> = (0..20).map(|i| format!("acid-hs-{i}")).collect();
    for name in &clusters {
        env().apply(ns, &simulated_cluster(name, 1))?;
    }
    for name in &clusters {
        wait_running(ns, name, Duration::from_secs(120)).await?;
    }
    let holder = |system_ns: &'static str| {
        env().kubectl(&[
            "get",
            "lease",
            "-n",
            system_ns,
            "pgop-scheduler",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
    };
    let leader = holder(system_ns)?;
    let (leader_index, standby_index) = match leader.as_str() {
        "hasched-scheduler-0" => (0, 1),
        "hasched-scheduler-1" => (1, 0),
        other => anyhow::bail!("unexpected lease holder {other:?}"),
    };
    let refused = grpcurl(
        &pgop.scheduler_addrs[standby_index],
        &["pgop.v1.Scheduler/ListAssignments"],
    )
    .err()
    .map(|e| format!("{e:#}"))
    .unwrap_or_default();
    ensure!(
        refused.contains("Unavailable") && refused.contains("standby"),
        "the standby scheduler's answer: {refused:?}"
    );
    readiness(&pgop.scheduler_admin_addrs[leader_index], 200)?;
    readiness(&pgop.scheduler_admin_addrs[standby_index], 200)?;

    for name in &clusters[..10] {
        pg_patch(
            ns,
            name,
            serde_json::json!({"spec": {"numberOfInstances": 2}}),
        )?;
    }
    let killed = Instant::now();
    match leader_index {
        0 => pgop.scheduler.kill(),
        _ => pgop.standby_schedulers[0].kill(),
    }
    for name in &clusters[10..] {
        pg_patch(
            ns,
            name,
            serde_json::json!({"spec": {"numberOfInstances": 2}}),
        )?;
    }
    let standby = format!("hasched-scheduler-{standby_index}");
    wait::until(
        "the standby scheduler leading",
        Duration::from_secs(30),
        || async { Ok((holder(system_ns)? == standby).then_some(())) },
    )
    .await?;
    let takeover = killed.elapsed();
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    wait::until(
        "every change on its StatefulSet",
        Duration::from_secs(120),
        || async {
            for name in &clusters {
                if replicas(&sts, name).await? != 2 {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await?;
    let flowing = killed.elapsed();
    eprintln!(
        "[e2e] scheduler leader killed: standby leading after {:.1}s, all 20 changes applied after {:.1}s",
        takeover.as_secs_f64(),
        flowing.as_secs_f64()
    );
    ensure!(
        takeover <= Duration::from_secs(15),
        "the standby scheduler took {takeover:?} to lead"
    );
    // The new leader hands every cluster out again.
    let assigned = grpcurl(
        &pgop.scheduler_addrs[standby_index],
        &["pgop.v1.Scheduler/ListAssignments"],
    )?;
    ensure!(
        assigned.matches("\"Assigned\"").count() == clusters.len(),
        "{assigned}"
    );

    // Never two owners at once.
    let mut intervals = Vec::new();
    for id in &pgop.worker_ids {
        let log = std::fs::read_to_string(env().state_dir.join(format!("logs/{id}.log")))?;
        intervals.extend(ownership(&log, id));
    }
    for a in &intervals {
        for b in &intervals {
            if a.0 == b.0 && a.1 < b.1 {
                ensure!(
                    a.3 <= b.2 || b.3 <= a.2,
                    "{} owned by {} ({} – {}) and {} ({} – {}) at once",
                    a.0,
                    a.1,
                    a.2,
                    a.3,
                    b.1,
                    b.2,
                    b.3
                );
            }
        }
    }
    let moved = intervals.len();
    eprintln!("[e2e] {moved} ownership intervals over 2 workers, none overlapping");
    env().kubectl(&["delete", "namespace", ns, "--wait=false"])?;
    Ok(())
}
