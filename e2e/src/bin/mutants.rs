//! `pgop-mutants`: a storm of broken manifests against pgop on a fresh local environment.
//! Creates `--count` seeded mutations of the example manifests, waits until pgop has given
//! every admitted one a status, then leaves the fleet alone for `--quiet-seconds` and counts
//! what pgop does meanwhile (write requests, Warning Events per object and problem), checks
//! that no pgop process died and that no planted secret value reached a status, an Event
//! or a log, and times a good cluster created right after the storm. Prints the figures and
//! writes them to `<out>/results.json`.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use futures::stream::{self, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Event};
use kube::api::{ApiResource, DynamicObject, ListParams, PostParams};
use kube::{Api, Client};
use pgop_common::crd::Postgresql;
use pgop_e2e::pgop::{Kubeconfigs, Pgop};
use pgop_e2e::{mutants, simulated_cluster, wait};
use serde_json::{json, Value};

const NAMESPACE: &str = "mutants";
const SYSTEM_NAMESPACE: &str = "mutants-system";
/// Planted as a plain `env` value in every manifest: it must never leave the manifest.
const SECRET_VALUE: &str = "s3cr3t-31337424242";

#[derive(Parser, Debug)]
#[command(about = "Broken manifests against pgop: statuses, Events and requests")]
struct Args {
    #[arg(long, default_value_t = 1000)]
    count: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// How long the fleet is left alone while pgop's requests and Events are counted.
    #[arg(long, default_value_t = 120)]
    quiet_seconds: u64,
    /// How long to wait for every admitted manifest to get a status.
    #[arg(long, default_value_t = 300)]
    settle_seconds: u64,
    #[arg(long, default_value = "target/mutants")]
    out: PathBuf,
}

fn example(file: &str) -> Result<Value> {
    let path = pgop_e2e::env::workspace_root().join(file);
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let mut manifest: Value = serde_yaml::from_str(&text)?;
    // On the simulated nodes, one pod each, with a credential in plain sight.
    let placement: Value = serde_yaml::from_str(&simulated_cluster("x", 1))?;
    for key in ["tolerations", "nodeAffinity"] {
        manifest["spec"][key] = placement["spec"][key].clone();
    }
    manifest["spec"]["numberOfInstances"] = json!(1);
    let env = manifest["spec"]["env"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut env: Vec<Value> = env;
    env.push(json!({"name": "PGOP_PLANTED_PASSWORD", "value": SECRET_VALUE}));
    manifest["spec"]["env"] = json!(env);
    Ok(manifest)
}

/// Every `postgresql` in the namespace, untyped: name → status.
async fn statuses(api: &Api<DynamicObject>) -> Result<BTreeMap<String, Value>> {
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|o| {
            let status = o.data.get("status").cloned().unwrap_or(Value::Null);
            (o.metadata.name.unwrap_or_default(), status)
        })
        .collect())
}

#[derive(Debug, Default, serde::Serialize)]
struct Warnings {
    /// pgop's Warning Events (on `postgresql` objects), counting `count`.
    total: usize,
    objects: usize,
    /// The most Warning Events one object has.
    most_on_one_object: usize,
    /// Events beyond the first for the same object, reason and message.
    repeats: usize,
    by_reason: BTreeMap<String, usize>,
    /// Other components' Warnings on the clusters' objects (pods, StatefulSets, …), by
    /// component and reason, counting `count`.
    others: BTreeMap<String, usize>,
}

async fn warnings(client: &Client) -> Result<Warnings> {
    let events: Api<Event> = Api::namespaced(client.clone(), NAMESPACE);
    let mut per_problem: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    let mut per_object: BTreeMap<String, usize> = BTreeMap::new();
    let mut found = Warnings::default();
    for e in events.list(&ListParams::default()).await?.items {
        if e.type_.as_deref() != Some("Warning") {
            continue;
        }
        let count = e.count.unwrap_or(1).max(1) as usize;
        let reason = e.reason.unwrap_or_default();
        if e.involved_object.kind.as_deref() != Some("postgresql") {
            let component = e
                .reporting_component
                .filter(|c| !c.is_empty())
                .or(e.source.and_then(|s| s.component))
                .unwrap_or_default();
            *found
                .others
                .entry(format!("{component} {reason}"))
                .or_default() += count;
            continue;
        }
        let object = e.involved_object.name.unwrap_or_default();
        found.total += count;
        *found.by_reason.entry(reason.clone()).or_default() += count;
        *per_object.entry(object.clone()).or_default() += count;
        *per_problem
            .entry((object, reason, e.message.unwrap_or_default()))
            .or_default() += count;
    }
    found.objects = per_object.len();
    found.most_on_one_object = per_object.values().copied().max().unwrap_or(0);
    found.repeats = per_problem.values().map(|n| n - 1).sum();
    Ok(found)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let state = pgop_e2e::env::workspace_root().join("target/mutants-state");
    let (env, client) =
        pgop_e2e::environment_with_crd(&state, &[NAMESPACE, SYSTEM_NAMESPACE]).await?;
    let config = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("postgres-operator".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from(
            [
                ("watched_namespace", NAMESPACE),
                ("enable_database_access", "false"),
                ("enable_master_load_balancer", "false"),
                ("enable_replica_load_balancer", "false"),
                // A mutation must not start thousands of pods.
                ("max_instances", "2"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        )),
        ..Default::default()
    };
    env.apply(SYSTEM_NAMESPACE, &serde_json::to_string(&config)?)?;
    let pgop = Pgop::start(
        "mutants",
        SYSTEM_NAMESPACE,
        args.workers,
        &env.state_dir,
        &Kubeconfigs::admin(&env.kubeconfig),
        None,
    )?;
    let pids = |pgop: &Pgop| -> Vec<Option<u32>> {
        let mut all = vec![pgop.watcher.pid(), pgop.scheduler.pid(), pgop.gateway.pid()];
        all.extend(pgop.workers.iter().map(|w| w.pid()));
        all
    };
    let started_pids = pids(&pgop);

    let bases = [
        example("manifests/minimal-postgres-manifest.yaml")?,
        example("manifests/complete-postgres-manifest.yaml")?,
    ];
    let mutants = mutants::mutants(&bases, args.count, args.seed, "mutant");
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        NAMESPACE,
        &ApiResource::erase::<Postgresql>(&()),
    );
    let created_at = Instant::now();
    let outcomes: Vec<(String, Result<(), String>)> = stream::iter(mutants.iter())
        .map(|m| {
            let api = api.clone();
            async move {
                let object: Result<DynamicObject, _> = serde_json::from_value(m.manifest.clone());
                let result = match object {
                    Err(e) => Err(format!("not an object: {e}")),
                    Ok(object) => api
                        .create(&PostParams::default(), &object)
                        .await
                        .map(|_| ())
                        .map_err(|e| match e {
                            kube::Error::Api(s) => format!("{} {}", s.code, s.reason),
                            other => other.to_string(),
                        }),
                };
                (m.name.clone(), result)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let admitted = outcomes.iter().filter(|(_, r)| r.is_ok()).count();
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    for (_, r) in &outcomes {
        if let Err(reason) = r {
            *refusals.entry(reason.clone()).or_default() += 1;
        }
    }
    println!(
        "{} manifests: {admitted} admitted by the API server, {} refused ({refusals:?}) in {:.1}s",
        mutants.len(),
        mutants.len() - admitted,
        created_at.elapsed().as_secs_f64()
    );

    let settled = wait::until(
        "a status on every admitted manifest",
        Duration::from_secs(args.settle_seconds),
        || async {
            let all = statuses(&api).await?;
            let without = all
                .values()
                .filter(|s| s["PostgresClusterStatus"].as_str().unwrap_or("").is_empty())
                .count();
            Ok((without == 0 && all.len() == admitted).then_some(()))
        },
    )
    .await;
    let settle_time = created_at.elapsed();
    if let Err(e) = &settled {
        println!("not every manifest got a status: {e:#}");
    }
    // The last Events land right after their status.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let writes_before = pgop.kube_writes()?;
    let warnings_before = warnings(&client).await?;
    tokio::time::sleep(Duration::from_secs(args.quiet_seconds)).await;
    let quiet_writes = pgop.kube_writes()? - writes_before;
    let warnings_after = warnings(&client).await?;
    let final_statuses = statuses(&api).await?;
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut leaked = Vec::new();
    for (name, status) in &final_statuses {
        let shown = status["PostgresClusterStatus"]
            .as_str()
            .unwrap_or("(none)")
            .to_string();
        *by_status.entry(shown).or_default() += 1;
        if status.to_string().contains(SECRET_VALUE) {
            leaked.push(format!("status of {name}"));
        }
    }
    let events_text = env.kubectl(&["get", "events", "-n", NAMESPACE, "-o", "json"])?;
    if events_text.contains(SECRET_VALUE) {
        leaked.push("an Event".into());
    }
    for entry in std::fs::read_dir(env.state_dir.join("logs"))? {
        let path = entry?.path();
        let is_pgop = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("mutants-"));
        if is_pgop && std::fs::read_to_string(&path)?.contains(SECRET_VALUE) {
            leaked.push(path.display().to_string());
        }
    }
    let mut pgop = pgop;
    let mut exited = Vec::new();
    for (i, p) in [&mut pgop.watcher, &mut pgop.scheduler, &mut pgop.gateway]
        .into_iter()
        .chain(pgop.workers.iter_mut())
        .enumerate()
    {
        if p.exited().is_some() {
            exited.push(i);
        }
    }
    let restarted = exited.len() + usize::from(pids(&pgop) != started_pids);

    // A good cluster right after the storm.
    let good = Instant::now();
    env.apply(NAMESPACE, &simulated_cluster("acid-after-the-storm", 1))?;
    let good_running = wait::until(
        "the good cluster Running",
        Duration::from_secs(300),
        || async {
            let all = statuses(&api).await?;
            Ok((all
                .get("acid-after-the-storm")
                .is_some_and(|s| s["PostgresClusterStatus"] == "Running"))
            .then_some(()))
        },
    )
    .await
    .map(|_| good.elapsed().as_secs_f64());

    let results = json!({
        "count": mutants.len(),
        "seed": args.seed,
        "workers": args.workers,
        "admitted": admitted,
        "refused": refusals,
        "every_admitted_manifest_has_a_status": settled.is_ok(),
        "seconds_until_every_status": settle_time.as_secs_f64(),
        "statuses": by_status,
        "quiet_seconds": args.quiet_seconds,
        "write_requests_while_quiet": quiet_writes,
        "warnings_before_quiet": warnings_before,
        "warnings_after_quiet": warnings_after,
        "secret_value_found_in": leaked,
        "pgop_processes_exited": restarted,
        "good_cluster_running_after_seconds": good_running.as_ref().ok(),
    });
    let text = serde_json::to_string_pretty(&results)?;
    println!("{text}");
    std::fs::write(args.out.join("results.json"), &text)?;
    env.stop();
    Ok(())
}
