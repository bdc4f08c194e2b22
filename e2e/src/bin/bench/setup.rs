//! One setup of the benchmark: a fresh local environment, an operator (pgop with some
//! workers, or another operator's start command), and the fleet's convergence; on the main
//! setups also the steady state, latency, cost and a worker's failover.
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use pgop_common::crd::Postgresql;
use pgop_e2e::pgop::{Kubeconfigs, Pgop};
use pgop_e2e::{simulated_cluster, Environment};
use serde::Serialize;

use crate::latency::{self, Latency, Seen, CHANGE};
use crate::measure::{self, Measured, ProcessCost};
use crate::Args;

/// Pod annotation of the local kubelet's simulate mode: the pod never becomes ready.
const NEVER_READY: &str = "pgop.local/simulate-never-ready";
/// Where the operator finds its ConfigMap (`postgres-operator`).
pub const SYSTEM_NAMESPACE: &str = "bench-system";

#[derive(Debug, Clone)]
pub enum Operator {
    Pgop {
        workers: usize,
    },
    /// Another operator managing the same CRD, started by a shell command.
    External {
        name: String,
        command: String,
    },
}

impl Operator {
    pub fn label(&self) -> String {
        match self {
            Operator::Pgop { workers: 1 } => "pgop, 1 worker".into(),
            Operator::Pgop { workers } => format!("pgop, {workers} workers"),
            Operator::External { name, .. } => name.clone(),
        }
    }
}

/// What a setup measures beyond convergence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Convergence,
    /// Convergence with one cluster whose pods never become ready, and latency.
    Stuck,
    /// Everything: steady state, latency, cost, failover (pgop with several workers).
    Full,
}

#[derive(Debug, Serialize, Default)]
pub struct Steady {
    /// pgop only: a sync of every cluster asked for over REST, until the workers are idle.
    pub resync_seconds: Option<f64>,
    pub resync_writes: Option<u64>,
    pub resync_reads: Option<u64>,
    /// Requests the API server served (every client) while the converged fleet was left
    /// alone for `--idle-seconds`.
    pub idle_requests: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct Failover {
    pub killed: String,
    pub clusters_moved: u32,
    /// Until no cluster is assigned to the killed worker.
    pub owned_seconds: f64,
    /// Until the survivors' queues are empty again (every moved cluster reconciled).
    pub reconciled_seconds: f64,
    /// A change made to one of the killed worker's clusters as it died, until its
    /// StatefulSet shows it.
    pub change_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct SetupResult {
    pub label: String,
    pub stuck: bool,
    /// Clusters that had to reach Running (the stuck one does not count).
    pub expected: usize,
    pub convergence_seconds: f64,
    /// To the bound (pgop's objects created by a bare client).
    pub convergence_ratio: f64,
    /// To the full floor (the same, until every pod is Ready and role-labelled).
    pub floor_ratio: f64,
    /// (seconds since the manifests were created, clusters Running)
    pub curve: Vec<(f64, usize)>,
    /// The stuck cluster's status at the end (never Running).
    pub stuck_status: Option<String>,
    /// Requests the API server served during convergence (every client), by `VERB resource`.
    pub apiserver_requests: BTreeMap<String, u64>,
    /// pgop only: requests its workers made during convergence, by `verb resource`.
    pub operator_requests: Option<BTreeMap<String, u64>>,
    /// CPU seconds of every process during convergence (environment and operator).
    pub convergence_cpu: BTreeMap<String, f64>,
    pub steady: Option<Steady>,
    pub latency_idle: Option<Latency>,
    pub latency_loaded: Option<Latency>,
    pub failover: Option<Failover>,
    /// Objects deleted or edited by another client until put back.
    pub drift: Option<crate::drift::Drift>,
    /// The operator's processes, settled at the end.
    pub cost: Vec<ProcessCost>,
}

/// The fleet's names: `(namespace, cluster)`.
pub fn fleet(args: &Args) -> Vec<(String, String)> {
    (0..args.clusters)
        .map(|i| {
            (
                format!("bench-{}", i % args.namespaces),
                format!("acid-bench-{i}"),
            )
        })
        .collect()
}

pub fn manifest(name: &str, namespace: &str, instances: u32) -> Result<Postgresql> {
    let mut pg: Postgresql = serde_yaml::from_str(&simulated_cluster(name, instances))?;
    pg.metadata.namespace = Some(namespace.to_string());
    Ok(pg)
}

/// The operator as started, with what is measured of it.
struct Started {
    pgop: Option<Pgop>,
    external: Option<Child>,
    processes: Vec<Measured>,
}

impl Started {
    fn stop(&mut self) {
        if let Some(child) = self.external.as_mut() {
            let group = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
            if pgop_e2e::env::wait_or_kill(child, Duration::from_secs(10)).is_none() {
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            }
        }
        self.external = None;
        self.pgop = None;
    }
}

/// The operator configuration of every setup (and of the bound's objects): the fleet's
/// namespaces, no database access (no PostgreSQL runs), and no load balancer per cluster, as
/// in Zalando's example ConfigMap (thousands would also exhaust the node port range).
pub fn operator_config_data(args: &Args) -> BTreeMap<String, String> {
    let watched = (0..args.namespaces)
        .map(|i| format!("bench-{i}"))
        .collect::<Vec<_>>()
        .join(",");
    BTreeMap::from([
        ("watched_namespace".to_string(), watched),
        ("enable_database_access".to_string(), "false".to_string()),
        (
            "enable_master_load_balancer".to_string(),
            "false".to_string(),
        ),
        (
            "enable_replica_load_balancer".to_string(),
            "false".to_string(),
        ),
    ])
}

fn start_operator(operator: &Operator, env: &Environment, args: &Args) -> Result<Started> {
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some("postgres-operator".into()),
            ..Default::default()
        },
        data: Some(operator_config_data(args)),
        ..Default::default()
    };
    env.apply(SYSTEM_NAMESPACE, &serde_json::to_string(&config_map)?)?;
    match operator {
        Operator::Pgop { workers } => {
            let pgop = Pgop::start(
                "bench",
                SYSTEM_NAMESPACE,
                *workers,
                &env.state_dir,
                &Kubeconfigs::admin(&env.kubeconfig),
                None,
            )?;
            let mut processes = vec![
                ("watcher", pgop.watcher.pid()),
                ("scheduler", pgop.scheduler.pid()),
                ("gateway", pgop.gateway.pid()),
            ]
            .into_iter()
            .map(|(name, pid)| (name.to_string(), pid))
            .collect::<Vec<_>>();
            for (i, w) in pgop.workers.iter().enumerate() {
                processes.push((format!("worker-{i}"), w.pid()));
            }
            let processes = processes
                .into_iter()
                .filter_map(|(name, pid)| {
                    Some(Measured {
                        name,
                        pid: pid?,
                        group: false,
                    })
                })
                .collect();
            Ok(Started {
                pgop: Some(pgop),
                external: None,
                processes,
            })
        }
        Operator::External { name, command } => {
            use std::os::unix::process::CommandExt;
            let log =
                std::fs::File::create(env.state_dir.join("logs").join(format!("{name}.log")))?;
            let child = Command::new("bash")
                .arg("-c")
                .arg(command)
                .env("KUBECONFIG", &env.kubeconfig)
                .env("POD_NAMESPACE", SYSTEM_NAMESPACE)
                .env(
                    "CONFIG_MAP_NAME",
                    format!("{SYSTEM_NAMESPACE}/postgres-operator"),
                )
                .env("WATCHED_NAMESPACE", "*")
                .env("PGOP_BENCH_STATE", &env.state_dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .process_group(0)
                .spawn()
                .with_context(|| format!("starting {name}: {command}"))?;
            let processes = vec![Measured {
                name: name.clone(),
                pid: child.id(),
                group: true,
            }];
            Ok(Started {
                pgop: None,
                external: Some(child),
                processes,
            })
        }
    }
}

/// Every cluster's status, kept by a watch (listing thousands of objects twice a second
/// would load the API server being measured).
#[derive(Clone, Default)]
struct Statuses(Arc<Mutex<HashMap<String, String>>>);

impl Statuses {
    fn start(client: Client) -> (Self, tokio::task::JoinHandle<()>) {
        use kube::runtime::{watcher, WatchStreamExt};
        let statuses = Self::default();
        let map = statuses.0.clone();
        let task = tokio::spawn(async move {
            let stream = watcher(Api::<Postgresql>::all(client), watcher::Config::default())
                .default_backoff()
                .applied_objects();
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(pg)) = stream.next().await {
                let key = format!(
                    "{}/{}",
                    pg.metadata.namespace.unwrap_or_default(),
                    pg.metadata.name.unwrap_or_default()
                );
                let status = pg
                    .status
                    .map(|s| s.postgres_cluster_status)
                    .unwrap_or_default();
                map.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, status);
            }
        });
        (statuses, task)
    }

    fn running(&self, except: Option<&str>) -> usize {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter(|(k, s)| s.as_str() == "Running" && Some(k.as_str()) != except)
            .count()
    }

    fn of(&self, key: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }
}

pub struct Run<'a> {
    pub args: &'a Args,
    pub names: &'a [(String, String)],
    pub bound_seconds: f64,
    pub floor_seconds: f64,
    pub state: PathBuf,
}

pub async fn run(cx: &Run<'_>, operator: &Operator, scope: Scope) -> Result<SetupResult> {
    let args = cx.args;
    let mut namespaces: Vec<String> = (0..args.namespaces).map(|i| format!("bench-{i}")).collect();
    namespaces.push(SYSTEM_NAMESPACE.into());
    let (env, client) = pgop_e2e::environment_with_crd(&cx.state, &namespaces).await?;
    let mut started = start_operator(operator, &env, args)?;
    let result = measure(cx, operator, scope, &env, &client, &mut started).await;
    started.stop();
    env.stop();
    result
}

async fn measure(
    cx: &Run<'_>,
    operator: &Operator,
    scope: Scope,
    env: &Environment,
    client: &Client,
    started: &mut Started,
) -> Result<SetupResult> {
    let (args, names) = (cx.args, cx.names);
    let label = match scope {
        Scope::Stuck => format!("{}, 1 stuck cluster", operator.label()),
        _ => operator.label(),
    };
    eprintln!("[bench] {label}: {} clusters", names.len());
    if let Some(pgop) = &started.pgop {
        wait_for_workers(&pgop.gateway_addr, pgop.workers.len()).await?;
    } else {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let mut everything: Vec<Measured> = measure::environment_processes(env);
    everything.extend(started.processes.iter().cloned());
    let (statuses, status_watch) = Statuses::start(client.clone());
    let stuck = (scope == Scope::Stuck).then(|| format!("{}/{}", names[0].0, names[0].1));
    let expected = names.len() - usize::from(stuck.is_some());

    let cpu_before = measure::costs(&everything);
    let requests_before = measure::apiserver_requests(client).await?;
    let pgop_before = match &started.pgop {
        Some(pgop) => Some(measure::worker_requests(&pgop.worker_metrics_addrs).await?),
        None => None,
    };
    let begun = Instant::now();
    stream::iter(names.iter().enumerate().map(|(i, (ns, name))| {
        let api = Api::<Postgresql>::namespaced(client.clone(), ns);
        let stuck = i == 0 && scope == Scope::Stuck;
        async move {
            let mut pg = manifest(name, ns, args.instances)?;
            if stuck {
                pg.spec
                    .pod_annotations
                    .insert(NEVER_READY.into(), "true".into());
            }
            api.create(&PostParams::default(), &pg).await?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(args.concurrency)
    .try_collect::<Vec<()>>()
    .await?;
    let mut curve = Vec::new();
    let convergence = loop {
        let now = statuses.running(stuck.as_deref());
        let at = begun.elapsed().as_secs_f64();
        curve.push((at, now));
        if now >= expected {
            break at;
        }
        ensure!(
            at < args.timeout_seconds as f64,
            "{label}: the fleet did not converge within {} s ({now} of {expected} Running)",
            args.timeout_seconds
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let convergence_cpu = measure::cpu_between(&cpu_before, &measure::costs(&everything));
    let apiserver_requests = measure::requests_between(
        &requests_before,
        &measure::apiserver_requests(client).await?,
    );
    let operator_requests = match (&started.pgop, pgop_before) {
        (Some(pgop), Some(before)) => Some(measure::requests_between(
            &before,
            &measure::worker_requests(&pgop.worker_metrics_addrs).await?,
        )),
        _ => None,
    };
    eprintln!(
        "[bench] {label}: {expected} clusters Running in {convergence:.1}s ({:.2}× the bound, {:.2}× the floor)",
        convergence / cx.bound_seconds,
        convergence / cx.floor_seconds
    );

    let mut result = SetupResult {
        label: label.clone(),
        stuck: stuck.is_some(),
        expected,
        convergence_seconds: convergence,
        convergence_ratio: convergence / cx.bound_seconds,
        floor_ratio: convergence / cx.floor_seconds,
        curve,
        stuck_status: None,
        apiserver_requests,
        operator_requests,
        convergence_cpu,
        steady: None,
        latency_idle: None,
        latency_loaded: None,
        failover: None,
        drift: None,
        cost: Vec::new(),
    };
    if scope != Scope::Convergence {
        if scope == Scope::Full {
            result.steady = Some(steady(args, client, started.pgop.as_ref(), names).await?);
            let drift =
                crate::drift::measure(client, names, args.instances, args.drift_changes).await?;
            eprintln!(
                "[bench] {label}: drift repaired p50 {:.2}s p99 {:.2}s ({} changes)",
                drift.p50_seconds, drift.p99_seconds, drift.changes
            );
            result.drift = Some(drift);
        }
        // The stuck cluster is left out of the changes: the others' latency is the question.
        let changed = &names[usize::from(stuck.is_some())..];
        let seen = Seen::default();
        let watch = tokio::spawn(latency::watch_changes(client.clone(), seen.clone()));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = latency::churn(client, changed, 1.0, 10, 0, &seen).await?;
        let count = (args.churn_rate * args.churn_seconds as f64) as usize;
        let loaded = latency::churn(client, changed, args.churn_rate, count, 10, &seen).await?;
        eprintln!(
            "[bench] {label}: latency idle p50 {:.2}s p99 {:.2}s; at {}/s p50 {:.2}s p99 {:.2}s ({} missed)",
            idle.p50_seconds, idle.p99_seconds, args.churn_rate, loaded.p50_seconds, loaded.p99_seconds, loaded.missed
        );
        result.latency_idle = Some(idle);
        result.latency_loaded = Some(loaded);
        // Before the failover kills a worker.
        result.cost = measure::costs(&started.processes);
        if scope == Scope::Full && args.failover {
            if let Some(pgop) = started.pgop.as_mut() {
                if pgop.workers.len() > 1 {
                    result.failover = Some(failover(client, pgop, names, &seen).await?);
                }
            }
        }
        watch.abort();
    }
    result.stuck_status = stuck.as_deref().map(|k| statuses.of(k).unwrap_or_default());
    status_watch.abort();
    ensure!(
        result.stuck_status.as_deref() != Some("Running"),
        "{label}: the stuck cluster became Running: the local kubelet did not keep it stuck"
    );
    if result.cost.is_empty() {
        result.cost = measure::costs(&started.processes);
    }
    Ok(result)
}

/// (reads, writes) pgop's workers sent to the API server so far.
fn pgop_requests(pgop: &Pgop) -> Result<(u64, u64)> {
    Ok((
        pgop.kube_requests(&["get", "list", "watch"])?,
        pgop.kube_writes()?,
    ))
}

async fn wait_for_workers(gateway: &str, workers: usize) -> Result<()> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = list_workers(&http, gateway).await.map_or(0, |l| l.len());
        if listed == workers {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {listed} of {workers} workers joined within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether every worker's queue is empty and nothing is being reconciled.
async fn workers_idle(http: &reqwest::Client, gateway: &str) -> Result<bool> {
    let queues: serde_json::Value = http
        .get(format!("http://{gateway}/workers/all/queue/"))
        .send()
        .await?
        .json()
        .await?;
    Ok(queues.as_object().is_some_and(|all| {
        all.values().all(|q| {
            q["List"].as_array().is_none_or(|l| l.is_empty())
                && q["Running"].as_u64().unwrap_or(0) == 0
        })
    }))
}

async fn wait_idle(http: &reqwest::Client, gateway: &str, poll: Duration) -> Result<()> {
    while !workers_idle(http, gateway).await? {
        tokio::time::sleep(poll).await;
    }
    Ok(())
}

/// The converged fleet left alone, then (pgop) a sync of every cluster asked for.
async fn steady(
    args: &Args,
    client: &Client,
    pgop: Option<&Pgop>,
    names: &[(String, String)],
) -> Result<Steady> {
    let http = reqwest::Client::new();
    if let Some(pgop) = pgop {
        wait_idle(&http, &pgop.gateway_addr, Duration::from_millis(500)).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = measure::apiserver_requests(client).await?;
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let idle_requests =
        measure::requests_between(&before, &measure::apiserver_requests(client).await?);
    let mut steady = Steady {
        idle_requests,
        ..Steady::default()
    };
    let Some(pgop) = pgop else {
        return Ok(steady);
    };
    let (reads_before, writes_before) = pgop_requests(pgop)?;
    let begun = Instant::now();
    let gateway = Arc::new(pgop.gateway_addr.clone());
    stream::iter(names.iter().map(|(ns, name)| {
        let (http, gateway) = (http.clone(), gateway.clone());
        async move {
            let response = http
                .post(format!("http://{gateway}/clusters/{ns}/{name}/sync/"))
                .send()
                .await?;
            ensure!(
                response.status() == 202,
                "sync of {ns}/{name}: {}",
                response.status()
            );
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(args.concurrency)
    .try_collect::<Vec<()>>()
    .await?;
    wait_idle(&http, &pgop.gateway_addr, Duration::from_millis(100)).await?;
    let (reads_after, writes_after) = pgop_requests(pgop)?;
    steady.resync_seconds = Some(begun.elapsed().as_secs_f64());
    steady.resync_reads = Some(reads_after - reads_before);
    steady.resync_writes = Some(writes_after - writes_before);
    eprintln!(
        "[bench] resync: {:.1}s, {} writes, {} reads",
        begun.elapsed().as_secs_f64(),
        writes_after - writes_before,
        reads_after - reads_before
    );
    Ok(steady)
}

/// Kills the first worker (SIGKILL) while changing one of its clusters.
async fn failover(
    client: &Client,
    pgop: &mut Pgop,
    names: &[(String, String)],
    seen: &Seen,
) -> Result<Failover> {
    let http = reqwest::Client::new();
    let gateway = pgop.gateway_addr.clone();
    wait_idle(&http, &gateway, Duration::from_millis(200)).await?;
    let killed = pgop.worker_ids[0].clone();
    let workers = worker_clusters(&http, &gateway).await?;
    let clusters_moved = workers.get(&killed).copied().unwrap_or(0);
    let mut victim = None;
    for (ns, name) in names.iter().take(200) {
        let status: serde_json::Value = http
            .get(format!("http://{gateway}/clusters/{ns}/{name}/"))
            .send()
            .await?
            .json()
            .await?;
        if status["Worker"] == killed.as_str() {
            victim = Some((ns.clone(), name.clone()));
            break;
        }
    }
    let (ns, name) = victim.context("no cluster of the first worker among the first 200")?;
    let begun = Instant::now();
    pgop.workers[0].kill();
    let value = "failover-change";
    Api::<Postgresql>::namespaced(client.clone(), &ns)
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"podAnnotations": {CHANGE: value}}})),
        )
        .await?;
    let deadline = begun + Duration::from_secs(180);
    let owned_seconds = loop {
        let workers = worker_clusters(&http, &gateway).await.unwrap_or_default();
        let owned: u32 = workers.values().sum();
        if !workers.contains_key(&killed) && owned as usize == names.len() {
            break begun.elapsed().as_secs_f64();
        }
        ensure!(
            Instant::now() < deadline,
            "the killed worker's clusters were not moved within 180 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    wait_idle(&http, &gateway, Duration::from_millis(100)).await?;
    let reconciled_seconds = begun.elapsed().as_secs_f64();
    let change_seconds = loop {
        if let Some(at) = seen.at(value) {
            break at.duration_since(begun).as_secs_f64();
        }
        ensure!(
            Instant::now() < deadline,
            "the change to {ns}/{name} was not applied within 180 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "[bench] failover: {clusters_moved} clusters owned again in {owned_seconds:.1}s, reconciled in {reconciled_seconds:.1}s, change applied in {change_seconds:.1}s"
    );
    Ok(Failover {
        killed,
        clusters_moved,
        owned_seconds,
        reconciled_seconds,
        change_seconds,
    })
}

/// The gateway's `/workers/` list.
async fn list_workers(http: &reqwest::Client, gateway: &str) -> Result<Vec<serde_json::Value>> {
    Ok(http
        .get(format!("http://{gateway}/workers/"))
        .send()
        .await?
        .json()
        .await?)
}

/// Worker id → clusters assigned, from the gateway.
async fn worker_clusters(http: &reqwest::Client, gateway: &str) -> Result<BTreeMap<String, u32>> {
    Ok(list_workers(http, gateway)
        .await?
        .iter()
        .filter_map(|w| {
            Some((
                w["ID"].as_str()?.to_string(),
                w["Clusters"].as_u64()? as u32,
            ))
        })
        .collect())
}
