//! pgop-bench: how fast pgop converges a fleet on the local environment (simulated pods, no
//! PostgreSQL processes), against what the API server can take on the same machine.
//!
//! Each setup runs in a fresh environment, so none inherits another's objects:
//! 1. the bound: what pgop writes for the fleet, created by a bare client, and the full
//!    floor: the same until every pod is Ready and role-labelled;
//! 2. convergence of N manifests with pgop at each `--workers` count (the curve, the API
//!    requests served, every process's CPU);
//! 3. on the last worker count also: the fleet left alone and a full resync (writes must be
//!    0), objects deleted or edited by hand until repaired, change → StatefulSet latency at
//!    1/s and at `--churn-rate`, cost, and a worker killed while one of its clusters changes;
//! 4. the same convergence and latency with one stuck cluster (its pods never ready);
//! 5. with `--operator-command`, another operator through points 2–5.
//!
//! Output: `results.json`, `summary.md` and `convergence.png` in `--out`.
mod bound;
mod chart;
mod drift;
mod latency;
mod measure;
mod report;
mod setup;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Result};
use clap::{ArgAction, Parser};
use serde::Serialize;

use setup::{Operator, Scope, SetupResult};

#[derive(Parser, Debug, Clone, Serialize)]
#[command(about = "Scale benchmark of pgop on the local environment")]
pub struct Args {
    /// Clusters in the fleet.
    #[arg(long, default_value_t = 100)]
    clusters: usize,
    /// Namespaces they are spread over.
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Instances per cluster.
    #[arg(long, default_value_t = 1)]
    instances: u32,
    /// Worker counts to converge with; everything else is measured on the last.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    workers: Vec<usize>,
    /// Also converge with one stuck cluster (on the last worker count).
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    stuck: bool,
    /// Kill one worker of the converged fleet.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    failover: bool,
    /// Start command (bash) of another operator managing the `postgresql` CRD and writing
    /// `status.PostgresClusterStatus`. It gets KUBECONFIG, POD_NAMESPACE, CONFIG_MAP_NAME
    /// (`bench-system/postgres-operator`), WATCHED_NAMESPACE=* and PGOP_BENCH_STATE (the
    /// environment's state directory); SIGTERM to its process group stops it.
    #[arg(long)]
    operator_command: Option<String>,
    /// Its name in the results.
    #[arg(long, default_value = "other operator")]
    operator_name: String,
    /// Requests in flight for the bound and for applying manifests.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Spec changes per second of the loaded latency phase.
    #[arg(long, default_value_t = 50.0)]
    churn_rate: f64,
    /// How long the loaded latency phase lasts.
    #[arg(long, default_value_t = 10)]
    churn_seconds: u64,
    /// Objects deleted or edited by hand, one at a time, for the drift figures.
    #[arg(long, default_value_t = 20)]
    drift_changes: usize,
    /// How long the converged fleet is left alone before the resync.
    #[arg(long, default_value_t = 20)]
    idle_seconds: u64,
    /// A setup whose fleet is not Running by then fails the run.
    #[arg(long, default_value_t = 900)]
    timeout_seconds: u64,
    /// Where results go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct Results {
    args: Args,
    machine: String,
    /// Where pgop's binaries came from (PGOP_BIN_DIR; the debug build by default).
    binaries: String,
    total_seconds: f64,
    bound: bound::Bound,
    setups: Vec<SetupResult>,
}

fn machine() -> String {
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kib: f64 = m.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.0} GiB", kib / 1024.0 / 1024.0))
        })
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    format!(
        "{} cores ({cpu}), {memory}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.clusters > 0 && args.namespaces > 0 && !args.workers.is_empty(),
        "nothing to measure"
    );
    ensure!(
        args.workers.iter().all(|w| *w > 0),
        "a setup needs a worker"
    );
    let begun = Instant::now();
    let root = pgop_e2e::env::workspace_root();
    let out = root.join(&args.out);
    std::fs::create_dir_all(&out)?;
    let names = setup::fleet(&args);
    let state = out.join("state");
    let bound = bound::measure(&args, &names, &state).await?;
    let cx = setup::Run {
        args: &args,
        names: &names,
        bound_seconds: bound.seconds,
        floor_seconds: bound.floor_seconds,
        state,
    };
    let mut runs: Vec<(Operator, Scope)> = Vec::new();
    let last = args.workers.len() - 1;
    for (i, workers) in args.workers.iter().enumerate() {
        let scope = if i == last {
            Scope::Full
        } else {
            Scope::Convergence
        };
        runs.push((Operator::Pgop { workers: *workers }, scope));
    }
    if args.stuck {
        runs.push((
            Operator::Pgop {
                workers: args.workers[last],
            },
            Scope::Stuck,
        ));
    }
    if let Some(command) = &args.operator_command {
        let other = Operator::External {
            name: args.operator_name.clone(),
            command: command.clone(),
        };
        runs.push((other, Scope::Full));
    }
    let mut setups = Vec::new();
    for (operator, scope) in &runs {
        setups.push(setup::run(&cx, operator, *scope).await?);
    }
    let results = Results {
        binaries: pgop_e2e::env::bin_dir().display().to_string(),
        machine: machine(),
        total_seconds: begun.elapsed().as_secs_f64(),
        args: args.clone(),
        bound,
        setups,
    };
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let summary = report::summary(&results);
    std::fs::write(out.join("summary.md"), &summary)?;
    let curves = chart::Curves {
        title: format!(
            "{} clusters: Running over time ({})",
            args.clusters,
            machine()
        ),
        bound_seconds: results.bound.seconds,
        clusters: args.clusters,
        lines: results
            .setups
            .iter()
            .map(|s| (s.label.as_str(), s.curve.as_slice()))
            .collect(),
    };
    chart::draw(&out.join("convergence.png"), &curves)?;
    println!("{summary}");
    Ok(())
}
