//! The control plane without a single point of failure: watcher replicas elect a leader
//! through a Lease; the standby keeps its watches warm and takes over when the leader dies.
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::Api;
use pgop_e2e::pgop::{grpcurl, Kubeconfigs, Pgop};
use pgop_e2e::{simulated_cluster, wait};

use super::operator::{prepare, wait_running};
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
