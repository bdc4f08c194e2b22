//! pgop-bench: how fast pgop converges a fleet on the local environment (simulated pods, no
//! PostgreSQL processes), against what the API server can take in the same run.
//!
//! 1. Bound: the objects pgop writes for N clusters (StatefulSet, Services, Endpoints,
//!    Secrets, from pgop's own builders) created by a bare client at a fixed concurrency.
//! 2. Convergence: N manifests applied at once; time until all are Running, and the curve.
//! 3. Steady state: a sync of every cluster asked for; how long until the workers are idle
//!    again, and the write and read requests they made (writes must be 0).
//! 4. Latency: a pod annotation changed in manifests, one a second, then at `--churn-rate`;
//!    p50/p99 from the change to the StatefulSet showing it (watched).
//! 5. Cost: RSS and CPU seconds of each pgop process, settled.
//!
//! Not yet: 1/2/4-worker and stuck-cluster runs, failover,
//! another operator in the same harness, the PNG chart (see the benchmark issue).
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use futures::stream::{self, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Secret, Service};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use pgop_common::config::OperatorConfig;
use pgop_common::crd::Postgresql;
use pgop_e2e::pgop::{Kubeconfigs, Pgop};
use pgop_e2e::{simulated_cluster, Environment, EnvironmentOptions};
use pgop_worker::builders::{secrets, services, statefulset};
use serde::Serialize;

#[derive(Parser, Debug, Clone, Serialize)]
#[command(about = "Scale benchmark of pgop on the local environment")]
struct Args {
    /// Clusters in the fleet.
    #[arg(long, default_value_t = 100)]
    clusters: usize,
    /// Namespaces they are spread over.
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Instances per cluster.
    #[arg(long, default_value_t = 1)]
    instances: u32,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Requests in flight for the bound and for applying manifests.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Spec changes per second of the loaded latency phase.
    #[arg(long, default_value_t = 50.0)]
    churn_rate: f64,
    /// How long the loaded latency phase lasts.
    #[arg(long, default_value_t = 10)]
    churn_seconds: u64,
    /// Where results go (`results.json`, `summary.md`).
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

#[derive(Debug, Serialize)]
struct ProcessCost {
    name: String,
    rss_mib: f64,
    cpu_seconds: f64,
}

#[derive(Debug, Serialize, Default)]
struct Latency {
    changes: usize,
    /// Changes the StatefulSet never showed (nor a later one) within 60 s.
    missed: usize,
    p50_seconds: f64,
    p99_seconds: f64,
    max_seconds: f64,
}

#[derive(Debug, Serialize)]
struct Results {
    args: Args,
    machine: String,
    bound_seconds: f64,
    bound_objects: usize,
    convergence_seconds: f64,
    convergence_ratio: f64,
    /// (seconds since the manifests were applied, clusters Running)
    curve: Vec<(f64, usize)>,
    resync_seconds: f64,
    resync_writes: u64,
    resync_reads: u64,
    /// Change → StatefulSet updated, one change a second.
    latency_idle: Latency,
    /// The same at `churn_rate` changes a second.
    latency_loaded: Latency,
    cost: Vec<ProcessCost>,
    rss_mib_total: f64,
}

fn manifest(name: &str, namespace: &str, instances: u32) -> Result<Postgresql> {
    let mut pg: Postgresql = serde_yaml::from_str(&simulated_cluster(name, instances))?;
    pg.metadata.namespace = Some(namespace.to_string());
    Ok(pg)
}

async fn namespace(client: &Client, name: &str) -> Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}

/// Creates what pgop writes for `pg` with a bare client; returns the number of objects.
async fn create_objects(
    client: &Client,
    pg: &Postgresql,
    config: &OperatorConfig,
) -> Result<usize> {
    let ns = pg.metadata.namespace.clone().unwrap_or_default();
    let pp = PostParams::default();
    let mut count = 0;
    for target in secrets::credential_secrets(pg, config) {
        let secret = secrets::desired_secret(pg, config, &target, "bench-password");
        Api::<Secret>::namespaced(client.clone(), &ns)
            .create(&pp, &secret)
            .await?;
        count += 1;
    }
    for service in services::desired_services(pg, config) {
        Api::<Service>::namespaced(client.clone(), &ns)
            .create(&pp, &service)
            .await?;
        count += 1;
    }
    if let Some(endpoints) = services::desired_endpoints(pg, config) {
        Api::<Endpoints>::namespaced(client.clone(), &ns)
            .create(&pp, &endpoints)
            .await?;
        count += 1;
    }
    let sts = statefulset::desired_statefulset(pg, config)?;
    Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .create(&pp, &sts)
        .await?;
    Ok(count + 1)
}

/// RSS (MiB) and CPU seconds of a process, from /proc.
fn cost(name: &str, pid: u32) -> Result<ProcessCost> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at ") ".
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .context("stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ProcessCost {
        name: name.into(),
        rss_mib: rss_kib / 1024.0,
        cpu_seconds: ticks / 100.0,
    })
}

async fn running(client: &Client) -> Result<usize> {
    let list = Api::<Postgresql>::all(client.clone())
        .list(&Default::default())
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|pg| {
            pg.status
                .as_ref()
                .is_some_and(|s| s.postgres_cluster_status == "Running")
        })
        .count())
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

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.clusters > 0 && args.namespaces > 0,
        "nothing to measure"
    );
    let root = pgop_e2e::env::workspace_root();
    let out = root.join(&args.out);
    std::fs::create_dir_all(&out)?;
    eprintln!("[bench] starting the local environment");
    let env = Environment::start(&out.join("state"), EnvironmentOptions::default())?;
    let client = env.client().await?;
    for file in [
        "manifests/postgresql.crd.yaml",
        "manifests/postgres-pod-rbac.yaml",
    ] {
        env.kubectl(&["apply", "-f", &root.join(file).display().to_string()])?;
    }
    let config = OperatorConfig::default();
    let names: Vec<(String, String)> = (0..args.clusters)
        .map(|i| {
            (
                format!("bench-{}", i % args.namespaces),
                format!("acid-bench-{i}"),
            )
        })
        .collect();

    // 1. The bound, in namespaces of its own, then removed.
    for i in 0..args.namespaces {
        namespace(&client, &format!("bound-{i}")).await?;
        namespace(&client, &format!("bench-{i}")).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let objects: Vec<usize> =
        stream::iter(
            names.iter().map(|(ns, name)| {
                let ns = ns.replace("bench-", "bound-");
                let (client, config) = (client.clone(), config.clone());
                let name = name.clone();
                async move {
                    create_objects(&client, &manifest(&name, &ns, args.instances)?, &config).await
                }
            }),
        )
        .buffer_unordered(args.concurrency)
        .try_collect()
        .await?;
    let bound = started.elapsed().as_secs_f64();
    let bound_objects: usize = objects.iter().sum();
    eprintln!("[bench] bound: {bound_objects} objects in {bound:.1}s");
    for i in 0..args.namespaces {
        Api::<Namespace>::all(client.clone())
            .delete(&format!("bound-{i}"), &DeleteParams::default())
            .await?;
    }

    // 2. Convergence.
    let system_ns = "bench-system";
    namespace(&client, system_ns).await?;
    let watched = (0..args.namespaces)
        .map(|i| format!("bench-{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "postgres-operator"},
        "data": {"watched_namespace": watched, "enable_database_access": "false"}
    });
    env.apply(system_ns, &cm.to_string())?;
    let pgop = Pgop::start(
        "bench",
        system_ns,
        args.workers,
        &env.state_dir,
        &Kubeconfigs::admin(&env.kubeconfig),
        None,
    )?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pg_api = |ns: &str| Api::<Postgresql>::namespaced(client.clone(), ns);
    let started = Instant::now();
    stream::iter(names.iter().map(|(ns, name)| {
        let api = pg_api(ns);
        let instances = args.instances;
        async move {
            api.create(&PostParams::default(), &manifest(name, ns, instances)?)
                .await?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(args.concurrency)
    .try_collect::<Vec<()>>()
    .await?;
    let mut curve = Vec::new();
    let convergence = loop {
        let now = running(&client).await?;
        let at = started.elapsed().as_secs_f64();
        curve.push((at, now));
        if now == args.clusters {
            break at;
        }
        ensure!(
            at < 900.0,
            "the fleet did not converge within 15 minutes ({now} of {} Running)",
            args.clusters
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "[bench] convergence: {} clusters Running in {convergence:.1}s ({:.2}× the bound)",
        args.clusters,
        convergence / bound
    );

    // 3. Steady state: a sync of every cluster.
    let http = reqwest::Client::new();
    while !workers_idle(&http, &pgop.gateway_addr).await? {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = ["create", "update", "patch", "delete"];
    let reads = ["get", "list", "watch"];
    let (writes_before, reads_before) = (pgop.kube_requests(&writes)?, pgop.kube_requests(&reads)?);
    let started = Instant::now();
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
    while !workers_idle(&http, &pgop.gateway_addr).await? {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resync = started.elapsed().as_secs_f64();
    let resync_writes = pgop.kube_requests(&writes)? - writes_before;
    let resync_reads = pgop.kube_requests(&reads)? - reads_before;
    eprintln!("[bench] resync: {resync:.1}s, {resync_writes} writes, {resync_reads} reads");

    // Latency: a pod annotation changed in a manifest until its StatefulSet shows it.
    let seen = Arc::new(std::sync::Mutex::new(HashMap::<String, Instant>::new()));
    let watch = tokio::spawn(watch_changes(client.clone(), seen.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let latency_idle = churn(&client, &names, 1.0, 10, 0, &seen).await?;
    let changes = (args.churn_rate * args.churn_seconds as f64) as usize;
    let latency_loaded = churn(&client, &names, args.churn_rate, changes, 10, &seen).await?;
    watch.abort();
    eprintln!(
        "[bench] latency: idle p50 {:.2}s p99 {:.2}s; at {}/s p50 {:.2}s p99 {:.2}s ({} missed)",
        latency_idle.p50_seconds,
        latency_idle.p99_seconds,
        args.churn_rate,
        latency_loaded.p50_seconds,
        latency_loaded.p99_seconds,
        latency_loaded.missed
    );

    // 4. Cost, settled.
    let mut processes: Vec<(&str, Option<u32>)> = vec![
        ("watcher", pgop.watcher.pid()),
        ("scheduler", pgop.scheduler.pid()),
        ("gateway", pgop.gateway.pid()),
    ];
    for (i, w) in pgop.workers.iter().enumerate() {
        processes.push((
            ["worker-0", "worker-1", "worker-2", "worker-3"]
                .get(i)
                .copied()
                .unwrap_or("worker"),
            w.pid(),
        ));
    }
    let cost = processes
        .into_iter()
        .filter_map(|(name, pid)| cost(name, pid?).ok())
        .collect::<Vec<_>>();
    let rss_mib_total = cost.iter().map(|c| c.rss_mib).sum();

    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m
                .lines()
                .next()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")))
            .unwrap_or_default()
    );
    let results = Results {
        args: args.clone(),
        machine,
        bound_seconds: bound,
        bound_objects,
        convergence_seconds: convergence,
        convergence_ratio: convergence / bound,
        curve,
        resync_seconds: resync,
        resync_writes,
        resync_reads,
        latency_idle,
        latency_loaded,
        cost,
        rss_mib_total,
    };
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let summary = summary(&results);
    std::fs::write(out.join("summary.md"), &summary)?;
    println!("{summary}");
    drop(pgop);
    env.stop();
    Ok(())
}

/// The annotation the latency phases change.
const CHANGE: &str = "pgop-bench/change";

/// Records when each StatefulSet first shows each value of [`CHANGE`] in its pod template.
async fn watch_changes(client: Client, seen: Arc<std::sync::Mutex<HashMap<String, Instant>>>) {
    use kube::runtime::{watcher, WatchStreamExt};
    let stream = watcher(Api::<StatefulSet>::all(client), watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    while let Some(Ok(sts)) = stream.next().await {
        let value = sts
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(CHANGE))
            .cloned();
        if let Some(value) = value {
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.entry(value).or_insert_with(Instant::now);
        }
    }
}

/// `count` changes at `rate` a second, each to the next cluster; their latencies.
async fn churn(
    client: &Client,
    names: &[(String, String)],
    rate: f64,
    count: usize,
    first: usize,
    seen: &Arc<std::sync::Mutex<HashMap<String, Instant>>>,
) -> Result<Latency> {
    let mut sent = Vec::with_capacity(count);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.01)));
    for i in first..first + count {
        tick.tick().await;
        let (ns, name) = &names[i % names.len()];
        let value = format!("change-{i}");
        let patch = serde_json::json!({"spec": {"podAnnotations": {CHANGE: value}}});
        let api = Api::<Postgresql>::namespaced(client.clone(), ns);
        let at = Instant::now();
        // Sent without waiting in line behind the previous ones.
        let name = name.clone();
        tokio::spawn(async move {
            let _ = api
                .patch(
                    &name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await;
        });
        sent.push((i % names.len(), value, at));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = {
            let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            sent.iter().all(|(_, v, _)| seen.contains_key(v))
        };
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    // A change overtaken by a later one to the same cluster is carried out when the
    // StatefulSet shows that later one (the worker coalesces them, as it should).
    let mut latencies: Vec<f64> = sent
        .iter()
        .enumerate()
        .filter_map(|(k, (cluster, _, at))| {
            sent[k..]
                .iter()
                .filter(|(c, _, _)| c == cluster)
                .filter_map(|(_, v, _)| seen.get(v))
                .min()
                .map(|t| t.duration_since(*at).as_secs_f64())
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(Latency {
        changes: sent.len(),
        missed: sent.len() - latencies.len(),
        p50_seconds: pick(0.5),
        p99_seconds: pick(0.99),
        max_seconds: latencies.last().copied().unwrap_or(f64::NAN),
    })
}

fn summary(r: &Results) -> String {
    let per_1000 = |v: f64| v * 1000.0 / r.args.clusters as f64;
    let mut rows = BTreeMap::new();
    rows.insert(
        "1 bound (bare client)",
        format!("{:.1} s for {} objects", r.bound_seconds, r.bound_objects),
    );
    rows.insert(
        "2 convergence",
        format!(
            "{:.1} s, {:.2}× the bound (target ≤ 1.5×)",
            r.convergence_seconds, r.convergence_ratio
        ),
    );
    rows.insert(
        "3 resync of the converged fleet",
        format!(
            "{:.1} s, {} writes (target 0), {} reads",
            r.resync_seconds, r.resync_writes, r.resync_reads
        ),
    );
    rows.insert(
        "3b change → StatefulSet, idle (1/s)",
        format!(
            "p50 {:.2} s, p99 {:.2} s (target ≤ 1 s), {} of {} missed",
            r.latency_idle.p50_seconds,
            r.latency_idle.p99_seconds,
            r.latency_idle.missed,
            r.latency_idle.changes
        ),
    );
    rows.insert(
        "3c change → StatefulSet, loaded",
        format!(
            "at {}/s: p50 {:.2} s, p99 {:.2} s (target ≤ 5 s at 50/s), {} of {} missed",
            r.args.churn_rate,
            r.latency_loaded.p50_seconds,
            r.latency_loaded.p99_seconds,
            r.latency_loaded.missed,
            r.latency_loaded.changes
        ),
    );
    rows.insert(
        "4 cost, all pgop processes",
        format!(
            "{:.0} MiB RSS ({:.0} MiB per 1,000 clusters; target ≤ 300 MiB at 5,000)",
            r.rss_mib_total,
            per_1000(r.rss_mib_total)
        ),
    );
    let mut md = format!(
        "# pgop-bench: {} clusters × {} instances, {} namespaces, {} workers\n\nMachine: {}\n\n| figure | value |\n| --- | --- |\n",
        r.args.clusters, r.args.instances, r.args.namespaces, r.args.workers, r.machine
    );
    for (k, v) in rows {
        md.push_str(&format!("| {k} | {v} |\n"));
    }
    md.push_str("\n| process | RSS MiB | CPU s |\n| --- | --- | --- |\n");
    for c in &r.cost {
        md.push_str(&format!(
            "| {} | {:.1} | {:.1} |\n",
            c.name, c.rss_mib, c.cpu_seconds
        ));
    }
    md
}
