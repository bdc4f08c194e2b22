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
use pgop_e2e::{simulated_cluster, wait, Environment};

use super::operator::{http_get, prepare, wait_running};
use super::{env, namespace, pg_patch};

fn lease_holder(system_ns: &str, lease: &str) -> Result<String> {
    lease_holder_in(env(), system_ns, lease)
}

/// Who holds `lease` in the environment `in_env`.
pub(crate) fn lease_holder_in(
    in_env: &Environment,
    system_ns: &str,
    lease: &str,
) -> Result<String> {
    in_env.kubectl(&[
        "get",
        "lease",
        "-n",
        system_ns,
        lease,
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

/// Simulated clusters, all Running, under a pgop with replicated watchers or schedulers.
struct Fleet {
    system_ns: &'static str,
    ns: &'static str,
    clusters: Vec<String>,
    pgop: Pgop,
    client: kube::Client,
}

impl Fleet {
    /// `(watchers, schedulers, workers)` processes and `count` clusters.
    async fn start(
        name: &str,
        (system_ns, ns): (&'static str, &'static str),
        (watchers, schedulers, workers): (usize, usize, usize),
        count: usize,
    ) -> Result<Self> {
        let client = env().client().await?;
        prepare(&client, system_ns, &[("enable_database_access", "false")]).await?;
        namespace(&client, ns).await?;
        let pgop = Pgop::start_replicated(
            name,
            system_ns,
            watchers,
            schedulers,
            workers,
            &env().state_dir,
            &Kubeconfigs::admin(&env().kubeconfig),
            Some(ns),
        )?;
        let clusters: Vec<String> = (0..count).map(|i| format!("acid-{name}-{i}")).collect();
        for cluster in &clusters {
            env().apply(ns, &simulated_cluster(cluster, 1))?;
        }
        for cluster in &clusters {
            wait_running(ns, cluster, Duration::from_secs(120)).await?;
        }
        Ok(Self {
            system_ns,
            ns,
            clusters,
            pgop,
            client,
        })
    }

    /// Which of the replicas `<prefix>-0` and `<prefix>-1` holds `lease`: (leader, standby).
    async fn leader(&self, lease: &str, prefix: &str) -> Result<(usize, usize)> {
        let holder = wait::until(
            &format!("{lease} held"),
            Duration::from_secs(30),
            || async {
                let holder = lease_holder(self.system_ns, lease)?;
                Ok((!holder.is_empty()).then_some(holder))
            },
        )
        .await?;
        match holder.strip_prefix(prefix) {
            Some("-0") => Ok((0, 1)),
            Some("-1") => Ok((1, 0)),
            _ => anyhow::bail!("unexpected holder of {lease}: {holder:?}"),
        }
    }

    /// Changes every cluster (two instances), half before `kill` and half after it, then
    /// waits for `standby` to hold `lease` and for every change to reach its StatefulSet:
    /// the time from the kill to each.
    async fn change_across_a_takeover(
        &mut self,
        lease: &str,
        standby: &str,
        kill: impl FnOnce(&mut Pgop),
    ) -> Result<(Duration, Duration)> {
        let two = serde_json::json!({"spec": {"numberOfInstances": 2}});
        let half = self.clusters.len() / 2;
        for cluster in &self.clusters[..half] {
            pg_patch(self.ns, cluster, two.clone())?;
        }
        let killed = Instant::now();
        kill(&mut self.pgop);
        for cluster in &self.clusters[half..] {
            pg_patch(self.ns, cluster, two.clone())?;
        }
        wait::until(
            &format!("{standby} holding {lease}"),
            Duration::from_secs(30),
            || async { Ok((lease_holder(self.system_ns, lease)? == standby).then_some(())) },
        )
        .await?;
        let takeover = killed.elapsed();
        let sts: Api<StatefulSet> = Api::namespaced(self.client.clone(), self.ns);
        wait::until(
            "every change on its StatefulSet",
            Duration::from_secs(120),
            || async {
                for cluster in &self.clusters {
                    if replicas(&sts, cluster).await? != 2 {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            },
        )
        .await?;
        Ok((takeover, killed.elapsed()))
    }
}

/// A standby answers `method` with UNAVAILABLE, saying it is one.
fn refused_as_standby(addr: &str, args: &[&str]) -> Result<()> {
    let refused = grpcurl(addr, args)
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    ensure!(
        refused.contains("Unavailable") && refused.contains("standby"),
        "the standby at {addr} answered {args:?}: {refused:?}"
    );
    Ok(())
}

/// Two watchers; the leader SIGKILLed while ten clusters change: the standby takes the
/// lease within the lease's duration, the scheduler subscribes to it, and every change made
/// before, during and after the takeover reaches its StatefulSet.
pub async fn watcher_standby_takes_over_and_loses_no_change() -> Result<()> {
    let mut fleet = Fleet::start("ha", ("e2e-ha-system", "e2e-ha"), (2, 1, 1), 10).await?;
    let (leader, standby) = fleet.leader("pgop-watcher", "ha-watcher").await?;
    let addrs = fleet.pgop.watcher_addrs.clone();
    refused_as_standby(
        &addrs[standby],
        &["-d", r#"{"subscriber":"e2e"}"#, "pgop.v1.Watcher/Subscribe"],
    )?;
    // Both are ready: the standby has listed too and refuses clients itself.
    readiness(&fleet.pgop.watcher_admin_addrs[leader], 200)?;
    readiness(&fleet.pgop.watcher_admin_addrs[standby], 200)?;

    let identity = format!("ha-watcher-{standby}");
    let (takeover, flowing) = fleet
        .change_across_a_takeover("pgop-watcher", &identity, |pgop| match leader {
            0 => pgop.watcher.kill(),
            _ => pgop.standby_watchers[0].kill(),
        })
        .await?;
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
    match leader {
        0 => fleet.pgop.watcher.start_again()?,
        _ => fleet.pgop.standby_watchers[0].start_again()?,
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    ensure!(
        lease_holder(fleet.system_ns, "pgop-watcher")? == identity,
        "the restarted replica took the lease back"
    );
    let state =
        grpcurl(&addrs[standby], &["pgop.v1.Watcher/GetState"]).context("the leader's state")?;
    ensure!(state.contains("\"subscribers\": 1"), "{state}");
    env().kubectl(&["delete", "namespace", fleet.ns, "--wait=false"])?;
    Ok(())
}

/// A log line's time, message and `cluster` field, in the text or the JSON format.
fn log_event(line: &str) -> Option<(Timestamp, String, Option<String>)> {
    if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let at = v["timestamp"].as_str()?.parse().ok()?;
        let fields = &v["fields"];
        let message = fields["message"].as_str()?.to_string();
        return Some((at, message, fields["cluster"].as_str().map(str::to_string)));
    }
    let mut words = line.split_whitespace();
    let at = words.next()?.parse().ok()?;
    let cluster = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("cluster="))
        .map(str::to_string);
    let message = if line.contains(" assigned ") {
        "assigned"
    } else if line.contains(" released ") {
        "released"
    } else if line.contains("fenced: every cluster task stopped") {
        "fenced: every cluster task stopped"
    } else {
        ""
    };
    Some((at, message.to_string(), cluster))
}

/// Every interval during which a worker owned a cluster, from its log: from `assigned` to
/// `released` or to the end of a fencing (every task stopped).
fn ownership(log: &str, worker: &str) -> Vec<(String, String, Timestamp, Timestamp)> {
    let mut open: BTreeMap<String, Timestamp> = BTreeMap::new();
    let mut intervals = Vec::new();
    for (at, message, cluster) in log.lines().filter_map(log_event) {
        match message.as_str() {
            "assigned" => {
                if let Some(cluster) = cluster {
                    open.entry(cluster).or_insert(at);
                }
            }
            "released" => {
                if let Some((cluster, from)) = cluster.and_then(|c| open.remove_entry(&c)) {
                    intervals.push((cluster, worker.to_string(), from, at));
                }
            }
            "fenced: every cluster task stopped" => {
                for (cluster, from) in std::mem::take(&mut open) {
                    intervals.push((cluster, worker.to_string(), from, at));
                }
            }
            _ => {}
        }
    }
    let end = Timestamp::now();
    intervals.extend(
        open.into_iter()
            .map(|(cluster, from)| (cluster, worker.to_string(), from, end)),
    );
    intervals
}

/// No cluster was owned by two workers at any moment, from their logs (worker, log text);
/// the number of ownership intervals seen.
pub(crate) fn never_two_owners_in(logs: &[(String, String)]) -> Result<usize> {
    let mut intervals = Vec::new();
    for (worker, log) in logs {
        intervals.extend(ownership(log, worker));
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
    Ok(intervals.len())
}

/// Two schedulers and two workers; the leading scheduler SIGKILLed while twenty clusters
/// change: the standby (which followed the watcher all along) leads within the lease's
/// duration, the workers fence themselves and open sessions with it, every change reaches
/// its StatefulSet, and no cluster was ever owned by two workers at once.
pub async fn scheduler_standby_takes_over_and_no_cluster_has_two_owners() -> Result<()> {
    let mut fleet =
        Fleet::start("hs", ("e2e-hasched-system", "e2e-hasched"), (1, 2, 2), 20).await?;
    let (leader, standby) = fleet.leader("pgop-scheduler", "hs-scheduler").await?;
    let addrs = fleet.pgop.scheduler_addrs.clone();
    refused_as_standby(&addrs[standby], &["pgop.v1.Scheduler/ListAssignments"])?;
    readiness(&fleet.pgop.scheduler_admin_addrs[leader], 200)?;
    readiness(&fleet.pgop.scheduler_admin_addrs[standby], 200)?;

    let identity = format!("hs-scheduler-{standby}");
    let (takeover, flowing) = fleet
        .change_across_a_takeover("pgop-scheduler", &identity, |pgop| match leader {
            0 => pgop.scheduler.kill(),
            _ => pgop.standby_schedulers[0].kill(),
        })
        .await?;
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
    let assigned = grpcurl(&addrs[standby], &["pgop.v1.Scheduler/ListAssignments"])?;
    ensure!(
        assigned.matches("\"Assigned\"").count() == fleet.clusters.len(),
        "{assigned}"
    );

    never_two_owners(&fleet)?;
    env().kubectl(&["delete", "namespace", fleet.ns, "--wait=false"])?;
    Ok(())
}

/// No cluster was owned by two of the fleet's workers at any moment, from their logs.
fn never_two_owners(fleet: &Fleet) -> Result<()> {
    let mut logs = Vec::new();
    for id in &fleet.pgop.worker_ids {
        let log = std::fs::read_to_string(env().state_dir.join(format!("logs/{id}.log")))?;
        logs.push((id.clone(), log));
    }
    let intervals = never_two_owners_in(&logs)?;
    eprintln!(
        "[e2e] {intervals} ownership intervals over {} workers, none overlapping",
        logs.len()
    );
    Ok(())
}

/// The leading scheduler frozen (SIGSTOP: alive to the kernel, silent to everyone, its lease
/// unrenewed) while clusters change: the workers give up their sessions, the standby takes
/// over and every change is applied; thawed (SIGCONT), the old leader finds its lease gone,
/// stands by and refuses clients, and no cluster ever had two owners.
pub async fn a_frozen_scheduler_is_fenced_and_stands_by_when_it_wakes() -> Result<()> {
    let mut fleet = Fleet::start("fz", ("e2e-frozen-system", "e2e-frozen"), (1, 2, 2), 10).await?;
    let (leader, standby) = fleet.leader("pgop-scheduler", "fz-scheduler").await?;
    let frozen = match leader {
        0 => fleet.pgop.scheduler.pid(),
        _ => fleet.pgop.standby_schedulers[0].pid(),
    }
    .context("the leader's pid")?;
    let signal = |sig| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(frozen as i32), sig)
            .context("signalling the leader")
    };
    let identity = format!("fz-scheduler-{standby}");
    let (takeover, flowing) = fleet
        .change_across_a_takeover("pgop-scheduler", &identity, |_| {
            let _ = signal(nix::sys::signal::Signal::SIGSTOP);
        })
        .await?;
    eprintln!(
        "[e2e] scheduler leader frozen: standby leading after {:.1}s, all 10 changes applied after {:.1}s",
        takeover.as_secs_f64(),
        flowing.as_secs_f64()
    );
    signal(nix::sys::signal::Signal::SIGCONT)?;
    // Thawed, it sees its lease expired before anything else: it refuses, as a standby.
    let addrs = fleet.pgop.scheduler_addrs.clone();
    wait::until(
        "the thawed scheduler standing by",
        Duration::from_secs(15),
        || async {
            Ok(refused_as_standby(&addrs[leader], &["pgop.v1.Scheduler/ListAssignments"]).ok())
        },
    )
    .await?;
    ensure!(
        lease_holder(fleet.system_ns, "pgop-scheduler")? == identity,
        "the thawed scheduler took the lease back"
    );
    let log = std::fs::read_to_string(
        env()
            .state_dir
            .join(format!("logs/fz-scheduler-{leader}.log")),
    )?;
    ensure!(
        log.contains("no longer leading") || log.contains("lost the lease"),
        "the thawed scheduler did not notice it lost its lease"
    );
    never_two_owners(&fleet)?;
    env().kubectl(&["delete", "namespace", fleet.ns, "--wait=false"])?;
    Ok(())
}
