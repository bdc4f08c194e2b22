//! pgop as its users run it: `kubectl apply -k deploy/overlays/local` into a cluster of its
//! own, whose kubelet runs the image `pgop` as the workspace's binaries. Every process is a
//! pod: the in-cluster configuration from its ServiceAccount, the others found by Service
//! name through cluster DNS, its own pod address. The control plane then scales, rolls to a
//! new image and loses its leaders without losing a change or restarting PostgreSQL.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use pgop_e2e::env::workspace_root;
use pgop_e2e::{create_namespace, simulated_cluster, wait, Environment, EnvironmentOptions};
use serde_json::{json, Value};

use super::ha::{lease_holder_in, never_two_owners_in};
use super::operator::{assignments_at, wait_running_in};

const SYSTEM: &str = "pgop-system";
const FLEET: &str = "fleet";
const MINIMAL: &str = "acid-minimal-cluster";

/// The in-cluster environment, stopped however the test ends (kept running for a look
/// inside when PGOP_E2E_KEEP is set).
struct Own(Option<Environment>);

impl Drop for Own {
    fn drop(&mut self) {
        let Some(env) = self.0.take() else { return };
        if std::env::var_os("PGOP_E2E_KEEP").is_some() {
            eprintln!(
                "[e2e] PGOP_E2E_KEEP: the in-cluster environment keeps running (KUBECONFIG={})",
                env.kubeconfig.display()
            );
            std::mem::forget(env);
        } else {
            env.stop();
        }
    }
}

pub async fn pgop_deployed_with_kubectl_apply_k() -> Result<()> {
    let state = std::env::var_os("PGOP_E2E_STATE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/e2e/state"))
        .with_file_name("incluster");
    let options = EnvironmentOptions {
        pgop_image: true,
        ..Default::default()
    };
    let own = Own(Some(Environment::start(&state, options)?));
    let env = own.0.as_ref().context("the in-cluster environment")?;
    let e = InCluster {
        env,
        client: env.client().await?,
    };
    e.run().await.with_context(|| {
        format!(
            "the in-cluster environment's logs are in {}/logs",
            state.display()
        )
    })
}

struct InCluster<'a> {
    env: &'a Environment,
    client: Client,
}

impl InCluster<'_> {
    async fn run(&self) -> Result<()> {
        self.deploy().await?;
        let postgres = self.minimal_cluster_logs_in().await?;
        self.kubectl_logs()?;
        let clusters = self.fleet(20).await?;
        self.workers_scale(&clusters).await?;
        let scheduler = self.leader_pod_deleted("pgop-scheduler", &clusters).await?;
        let watcher = self.leader_pod_deleted("pgop-watcher", &clusters).await?;
        let crashed = self
            .leader_process_killed("pgop-scheduler", &clusters)
            .await?;
        eprintln!(
            "[e2e] in-cluster: the leading scheduler's process SIGKILLed (no lease released; its container restarts): all 20 changes applied after {:.1}s, {}",
            crashed.1.as_secs_f64(),
            crashed.0
        );
        eprintln!(
            "[e2e] in-cluster takeovers (leader pod force-deleted → new leader / all 20 changes applied): scheduler {:.1}s / {:.1}s, watcher {:.1}s / {:.1}s",
            scheduler.0.as_secs_f64(),
            scheduler.1.as_secs_f64(),
            watcher.0.as_secs_f64(),
            watcher.1.as_secs_f64()
        );
        self.image_rollout(&clusters).await?;
        self.never_two_owners()?;
        ensure!(
            self.postgres_identity().await? == postgres,
            "a PostgreSQL pod or its postmaster restarted: before {postgres:?}"
        );
        Ok(())
    }

    fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.env.kubectl(args)
    }

    /// Waits until every pgop Deployment has rolled out.
    fn rolled_out(&self) -> Result<()> {
        for d in ["watcher", "scheduler", "worker", "api-gateway"] {
            self.kubectl(&[
                "-n",
                SYSTEM,
                "rollout",
                "status",
                &format!("deployment/pgop-{d}"),
                "--timeout=180s",
            ])?;
        }
        Ok(())
    }

    async fn deploy(&self) -> Result<()> {
        let started = Instant::now();
        let overlay = workspace_root().join("deploy/overlays/local");
        self.kubectl(&["apply", "-k", &overlay.display().to_string()])?;
        self.rolled_out()?;
        eprintln!(
            "[e2e] kubectl apply -k deploy/overlays/local: every Deployment rolled out in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        // Every process is a pod that reached Ready through its own /readyz.
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), SYSTEM);
        let listed = pods.list(&ListParams::default()).await?.items;
        ensure!(
            listed.len() == 7,
            "{} pgop pods, not 2 watchers, 2 schedulers, 2 workers and a gateway",
            listed.len()
        );
        Ok(())
    }

    /// The minimal manifest reaches Running with a Patroni master and its generated
    /// password logs in; the master pod's (uid, restarts, postmaster start).
    async fn minimal_cluster_logs_in(&self) -> Result<(String, i32, String)> {
        let manifest = std::fs::read_to_string(
            workspace_root().join("manifests/minimal-postgres-manifest.yaml"),
        )?;
        wait::until(
            "the default ServiceAccount",
            Duration::from_secs(30),
            || async {
                Ok(self
                    .kubectl(&["get", "serviceaccount", "default", "-n", "default"])
                    .is_ok()
                    .then_some(()))
            },
        )
        .await?;
        self.env.apply("default", &manifest)?;
        self.wait_status("default", MINIMAL, Duration::from_secs(240))
            .await?;
        let identity = self.postgres_identity().await?;
        eprintln!(
            "[e2e] {MINIMAL} Running under the in-cluster pgop; the generated password logs in"
        );
        Ok(identity)
    }

    /// The master's pod uid, its restarts and its postmaster's start, read through a login
    /// with the generated password.
    async fn postgres_identity(&self) -> Result<(String, i32, String)> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), "default");
        let master = wait::until("a master pod", Duration::from_secs(120), || async {
            let selector = format!("cluster-name={MINIMAL},spilo-role=master");
            let listed = pods.list(&ListParams::default().labels(&selector)).await?;
            Ok(listed.items.into_iter().next())
        })
        .await?;
        let ip = super::pod_ip(&master).context("master without an address")?;
        let password = super::secret_value(
            &self.client,
            "default",
            &format!("postgres.{MINIMAL}.credentials.postgresql.acid.zalan.do"),
            "password",
        )
        .await?;
        let db = super::connect(&ip, &password).await?;
        let started: String = db
            .query_one("SELECT pg_postmaster_start_time()::text", &[])
            .await?
            .get(0);
        let restarts = master
            .status
            .and_then(|s| s.container_statuses)
            .into_iter()
            .flatten()
            .map(|c| c.restart_count)
            .sum();
        Ok((master.metadata.uid.unwrap_or_default(), restarts, started))
    }

    async fn wait_status(&self, ns: &str, name: &str, timeout: Duration) -> Result<()> {
        wait_running_in(self.env, ns, name, timeout).await
    }

    /// `kubectl logs` reaches the kubelet: the scheduler's JSON log lines.
    fn kubectl_logs(&self) -> Result<()> {
        let logs = self.kubectl(&["logs", "-n", SYSTEM, "deploy/pgop-scheduler", "--tail=5"])?;
        let lines: Vec<&str> = logs.lines().collect();
        ensure!(
            !lines.is_empty() && lines.len() <= 5,
            "kubectl logs --tail=5 gave {} lines",
            lines.len()
        );
        for line in lines {
            serde_json::from_str::<Value>(line)
                .with_context(|| format!("not a JSON log line: {line}"))?;
        }
        Ok(())
    }

    /// `count` simulated clusters in their own namespace, all Running.
    async fn fleet(&self, count: usize) -> Result<Vec<String>> {
        // Simulated pods run no PostgreSQL: the operator stops reaching into databases, as a
        // user changes its configuration.
        let patch = json!({"data": {"enable_database_access": "false"}}).to_string();
        self.kubectl(&[
            "-n",
            SYSTEM,
            "patch",
            "configmap",
            "postgres-operator",
            "--type",
            "merge",
            "-p",
            &patch,
        ])?;
        create_namespace(&self.client, FLEET).await?;
        let clusters: Vec<String> = (0..count).map(|i| format!("acid-fleet-{i}")).collect();
        for cluster in &clusters {
            self.env.apply(FLEET, &simulated_cluster(cluster, 1))?;
        }
        for cluster in &clusters {
            self.wait_status(FLEET, cluster, Duration::from_secs(180))
                .await?;
        }
        Ok(clusters)
    }

    fn patch_instances(&self, cluster: &str, instances: i32) -> Result<()> {
        let patch = json!({"spec": {"numberOfInstances": instances}}).to_string();
        self.kubectl(&[
            "patch", "pg", "-n", FLEET, cluster, "--type", "merge", "-p", &patch,
        ])?;
        Ok(())
    }

    /// Waits until every cluster's StatefulSet has `instances` replicas.
    async fn applied(&self, clusters: &[String], instances: i32) -> Result<()> {
        let sts: Api<StatefulSet> = Api::namespaced(self.client.clone(), FLEET);
        wait::until(
            &format!("every StatefulSet at {instances} replicas"),
            Duration::from_secs(120),
            || async {
                for cluster in clusters {
                    let replicas = sts.get(cluster).await?.spec.and_then(|s| s.replicas);
                    if replicas != Some(instances) {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            },
        )
        .await
    }

    /// The pod IP of the replica holding `lease`, and its name.
    async fn leader(&self, lease: &str) -> Result<(String, String)> {
        wait::until(
            &format!("{lease} held by a live pod"),
            Duration::from_secs(60),
            || async {
                let holder = self.lease_holder(lease)?;
                if holder.is_empty() {
                    return Ok(None);
                }
                let pod = Api::<Pod>::namespaced(self.client.clone(), SYSTEM)
                    .get_opt(&holder)
                    .await?;
                Ok(pod
                    .and_then(|p| super::pod_ip(&p))
                    .map(|ip| (holder.clone(), ip)))
            },
        )
        .await
    }

    fn lease_holder(&self, lease: &str) -> Result<String> {
        lease_holder_in(self.env, SYSTEM, lease)
    }

    /// cluster → worker, from the leading scheduler.
    async fn assignments(&self) -> Result<BTreeMap<String, String>> {
        let (_, ip) = self.leader("pgop-scheduler").await?;
        assignments_at(&format!("{ip}:50051"))
    }

    async fn worker_pods(&self) -> Result<Vec<String>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), SYSTEM);
        let listed = pods
            .list(&ListParams::default().labels("app.kubernetes.io/component=worker"))
            .await?;
        Ok(listed
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.metadata.name)
            .collect())
    }

    /// `kubectl scale` of the workers, waiting until exactly `replicas` are ready.
    async fn scale_workers(&self, replicas: usize) -> Result<()> {
        self.kubectl(&[
            "-n",
            SYSTEM,
            "scale",
            "deployment/pgop-worker",
            &format!("--replicas={replicas}"),
        ])?;
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), SYSTEM);
        wait::until(
            &format!("{replicas} ready workers"),
            Duration::from_secs(120),
            || async {
                let status = deployments
                    .get("pgop-worker")
                    .await?
                    .status
                    .unwrap_or_default();
                let ready = status.ready_replicas.unwrap_or_default() as usize;
                let total = status.replicas.unwrap_or_default() as usize;
                let pods = self.worker_pods().await?.len();
                Ok((ready == replicas && total == replicas && pods == replicas).then_some(()))
            },
        )
        .await
    }

    /// Waits until every cluster is assigned, to live workers only, spread over `spread`
    /// of them.
    async fn assigned_over(&self, clusters: &[String], spread: usize) -> Result<()> {
        let last = std::sync::Mutex::new(String::new());
        wait::until(
            &format!("every cluster assigned over {spread} workers"),
            Duration::from_secs(90),
            || async {
                let live = self.worker_pods().await?;
                let assigned = self.assignments().await?;
                let mut per_worker: BTreeMap<&String, usize> = BTreeMap::new();
                let mut unassigned = Vec::new();
                for cluster in clusters {
                    match assigned.get(&format!("{FLEET}/{cluster}")) {
                        Some(worker) => *per_worker.entry(worker).or_default() += 1,
                        None => unassigned.push(cluster.as_str()),
                    }
                }
                *last.lock().unwrap_or_else(|e| e.into_inner()) = format!(
                    "live workers {live:?}; clusters per worker {per_worker:?}; not assigned {unassigned:?}"
                );
                let only_live = per_worker.keys().all(|w| live.contains(w));
                // Rendezvous hashing leaves one of four workers without any of 20 clusters
                // once in about 75 runs; two workers both get some all but certainly.
                let spread_enough = match spread {
                    1 | 2 => per_worker.len() == spread,
                    _ => per_worker.len() + 1 >= spread,
                };
                Ok((unassigned.is_empty() && only_live && spread_enough).then_some(()))
            },
        )
        .await
        .with_context(|| last.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Workers 2 → 4 → 1 → 2: clusters spread over the new ones and come back to the one
    /// left; nothing unowned; changes applied at each size.
    async fn workers_scale(&self, clusters: &[String]) -> Result<()> {
        self.assigned_over(clusters, 2).await?;
        self.scale_workers(4).await?;
        self.assigned_over(clusters, 4).await?;
        for cluster in clusters {
            self.patch_instances(cluster, 2)?;
        }
        self.applied(clusters, 2).await?;
        self.scale_workers(1).await?;
        self.assigned_over(clusters, 1).await?;
        for cluster in clusters {
            self.patch_instances(cluster, 1)?;
        }
        self.applied(clusters, 1).await?;
        self.scale_workers(2).await?;
        self.assigned_over(clusters, 2).await?;
        eprintln!("[e2e] workers scaled 2 → 4 → 1 → 2 with kubectl scale: clusters spread and came back, every change applied");
        Ok(())
    }

    /// The other instance count (1 ↔ 2) than the clusters' StatefulSets have now.
    async fn flipped(&self, clusters: &[String]) -> Result<i32> {
        let sts: Api<StatefulSet> = Api::namespaced(self.client.clone(), FLEET);
        let now = sts.get(&clusters[0]).await?.spec.and_then(|s| s.replicas);
        Ok(if now == Some(1) { 2 } else { 1 })
    }

    /// The pod holding `lease` force-deleted while every cluster changes: the time to a new
    /// leader and until every change reached its StatefulSet.
    async fn leader_pod_deleted(
        &self,
        lease: &str,
        clusters: &[String],
    ) -> Result<(Duration, Duration)> {
        let (leader, _) = self.leader(lease).await?;
        let instances = self.flipped(clusters).await?;
        let half = clusters.len() / 2;
        for cluster in &clusters[..half] {
            self.patch_instances(cluster, instances)?;
        }
        let deleted = Instant::now();
        self.kubectl(&[
            "-n",
            SYSTEM,
            "delete",
            "pod",
            &leader,
            "--grace-period=0",
            "--force",
        ])?;
        for cluster in &clusters[half..] {
            self.patch_instances(cluster, instances)?;
        }
        wait::until(
            &format!("a new holder of {lease}"),
            Duration::from_secs(30),
            || async {
                let holder = self.lease_holder(lease)?;
                Ok((!holder.is_empty() && holder != leader).then_some(()))
            },
        )
        .await?;
        let takeover = deleted.elapsed();
        self.applied(clusters, instances).await?;
        let flowing = deleted.elapsed();
        ensure!(
            takeover <= Duration::from_secs(15),
            "{lease}: a new leader after {takeover:?}"
        );
        self.rolled_out()?;
        Ok((takeover, flowing))
    }

    /// The leader's process SIGKILLed (a crash: no lease released) while every cluster
    /// changes: who leads then, and when every change reached its StatefulSet.
    async fn leader_process_killed(
        &self,
        lease: &str,
        clusters: &[String],
    ) -> Result<(String, Duration)> {
        let (leader, _) = self.leader(lease).await?;
        let instances = self.flipped(clusters).await?;
        // A container's HOSTNAME is its pod's name, as on any kubelet.
        let pid = process_with_env(&format!("HOSTNAME={leader}"))?
            .with_context(|| format!("no process of the pod {leader}"))?;
        let killed = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        for cluster in clusters {
            self.patch_instances(cluster, instances)?;
        }
        self.applied(clusters, instances).await?;
        let flowing = killed.elapsed();
        let (holder, _) = self.leader(lease).await?;
        let who = if holder == leader {
            format!("the restarted {holder} leading again")
        } else {
            format!("the standby {holder} leading")
        };
        self.rolled_out()?;
        Ok((who, flowing))
    }

    /// Every Deployment moved to a new image tag while clusters change: the rollout
    /// completes and every change is applied.
    async fn image_rollout(&self, clusters: &[String]) -> Result<()> {
        let started = Instant::now();
        let next = self.flipped(clusters).await?;
        for (deployment, container) in [
            ("pgop-worker", "worker"),
            ("pgop-scheduler", "scheduler"),
            ("pgop-watcher", "watcher"),
            ("pgop-api-gateway", "api-gateway"),
        ] {
            self.kubectl(&[
                "-n",
                SYSTEM,
                "set",
                "image",
                &format!("deployment/{deployment}"),
                &format!("{container}=pgop:v2"),
            ])?;
        }
        for cluster in clusters {
            self.patch_instances(cluster, next)?;
        }
        self.rolled_out()?;
        self.applied(clusters, next).await?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), SYSTEM);
        for pod in pods.list(&ListParams::default()).await?.items {
            let images: Vec<String> = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .filter_map(|c| c.image.clone())
                .collect();
            ensure!(
                pod.metadata.deletion_timestamp.is_some() || images == ["pgop:v2"],
                "{:?} still runs {images:?}",
                pod.metadata.name
            );
        }
        eprintln!(
            "[e2e] kubectl set image pgop:v2 on every Deployment while 20 clusters changed: rolled out and applied in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// No cluster had two owners, from every worker pod's log (the kubelet keeps the logs of
    /// deleted pods).
    fn never_two_owners(&self) -> Result<()> {
        let dir = self.env.state_dir.join("logs/pods");
        let mut logs = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if let Some(pod) = name
                .strip_prefix(&format!("{SYSTEM}_"))
                .and_then(|n| n.strip_suffix("_worker.log"))
            {
                logs.push((pod.to_string(), std::fs::read_to_string(&path)?));
            }
        }
        let intervals = never_two_owners_in(&logs)?;
        ensure!(intervals > 0, "no ownership in the worker logs");
        eprintln!(
            "[e2e] {intervals} ownership intervals over {} worker pods, none overlapping",
            logs.len()
        );
        Ok(())
    }
}

/// The pid of the process whose environment holds `entry` (`NAME=value`).
fn process_with_env(entry: &str) -> Result<Option<i32>> {
    for dir in std::fs::read_dir("/proc")? {
        let dir = dir?;
        let Some(pid) = dir.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(environ) = std::fs::read(dir.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|e| e == entry.as_bytes()) {
            return Ok(Some(pid));
        }
    }
    Ok(None)
}
