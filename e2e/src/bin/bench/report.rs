//! The Markdown summary of a run: figures with their bound or target, the setups side by
//! side, where the CPU went during convergence.
use std::fmt::Write;

use crate::setup::SetupResult;
use crate::Results;

fn verdict_at_most(value: f64, target: f64) -> String {
    if value.is_nan() {
        "not measured".into()
    } else if value <= target {
        "met".into()
    } else {
        format!(
            "missed by {:.2} ({:.0}% over)",
            value - target,
            (value / target - 1.0) * 100.0
        )
    }
}

/// CPU seconds of the operator's own processes in a setup's convergence.
fn operator_cpu(s: &SetupResult) -> f64 {
    s.cost
        .iter()
        .filter_map(|c| s.convergence_cpu.get(&c.name))
        .sum()
}

fn cpu_of(s: &SetupResult, name: &str) -> f64 {
    s.convergence_cpu.get(name).copied().unwrap_or(0.0)
}

fn requests(s: &SetupResult) -> String {
    crate::measure::by_verb(&s.apiserver_requests)
        .iter()
        .filter(|(verb, _)| verb.as_str() != "WATCH")
        .map(|(verb, n)| format!("{verb} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads (get, list, watch) and writes among requests keyed `verb resource`.
fn reads_and_writes(by_kind: &std::collections::BTreeMap<String, u64>) -> (u64, u64) {
    by_kind.iter().fold((0, 0), |(reads, writes), (kind, n)| {
        match kind.split(' ').next() {
            Some("get" | "list" | "watch") => (reads + n, writes),
            _ => (reads, writes + n),
        }
    })
}

/// Writes (APPLY, PATCH, POST, PUT, DELETE, …) among API requests keyed `VERB resource`.
fn writes_served(by_kind: &std::collections::BTreeMap<String, u64>) -> u64 {
    crate::measure::by_verb(by_kind)
        .iter()
        .filter(|(verb, _)| !matches!(verb.as_str(), "GET" | "LIST" | "WATCH" | "CONNECT"))
        .map(|(_, n)| n)
        .sum()
}

/// The targets (issue 18), at 1,000 and 5,000 clusters with 4 workers.
const CONVERGENCE_TO_FLOOR: f64 = 1.15;
const RESYNC_SECONDS: f64 = 5.0;
const LATENCY_IDLE_P99: f64 = 0.5;
const LATENCY_LOADED_P99: f64 = 2.0;
const DRIFT_P99: f64 = 2.0;
const FAILOVER_SECONDS: f64 = 5.0;
const MEMORY_AT_5000_MIB: f64 = 300.0;

/// One measured explanation per missed target of the main setup.
fn missed_targets(r: &Results, main: &SetupResult) -> Vec<String> {
    let mut why = Vec::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    if main.floor_ratio > CONVERGENCE_TO_FLOOR {
        let available = cores * main.convergence_seconds;
        let used: f64 = main.convergence_cpu.values().sum();
        let control_plane: f64 = [
            "kube-apiserver",
            "etcd",
            "kube-controller-manager",
            "kube-scheduler",
        ]
        .iter()
        .map(|name| cpu_of(main, name))
        .sum();
        let operator = operator_cpu(main);
        let writes = writes_served(&main.apiserver_requests);
        let (reads, pgop_writes) = main
            .operator_requests
            .as_ref()
            .map_or((0, 0), reads_and_writes);
        why.push(format!(
            "Convergence ({:.2}× the floor of {:.1} s): the machine was {:.0}% busy ({used:.0} of {available:.0} CPU s); \
             the API server, etcd, controller-manager and scheduler used {control_plane:.0} CPU s ({:.0}%), \
             pgop {operator:.1} CPU s ({:.0}%). The API server served {writes} writes from every client; \
             pgop's own were {pgop_writes} ({:.1} per cluster: its objects, status and Events) with {reads} reads, \
             on top of what the floor's bare client and the control plane do.",
            main.floor_ratio,
            r.bound.floor_seconds,
            used / available * 100.0,
            control_plane / available * 100.0,
            operator / available * 100.0,
            pgop_writes as f64 / r.args.clusters as f64,
        ));
    }
    if let Some(steady) = &main.steady {
        if let (Some(seconds), Some(reads)) = (steady.resync_seconds, steady.resync_reads) {
            if seconds > RESYNC_SECONDS || reads > 0 {
                why.push(format!(
                    "Full resync ({seconds:.1} s, {reads} reads, {:.2} per cluster): a resync asked \
                     for over REST is one request to the gateway per cluster, forwarded to the owner, \
                     and one pass each; {:.0} clusters a second went through.",
                    reads as f64 / r.args.clusters as f64,
                    r.args.clusters as f64 / seconds,
                ));
            }
        }
    }
    let peak: f64 = main.cost.iter().map(|c| c.peak_rss_mib).sum();
    if r.args.clusters >= 5000 && peak > MEMORY_AT_5000_MIB {
        let mut by_process: Vec<_> = main.cost.iter().collect();
        by_process.sort_by(|x, y| y.peak_rss_mib.total_cmp(&x.peak_rss_mib));
        why.push(format!(
            "Memory ({peak:.0} MiB peak at {} clusters): {}.",
            r.args.clusters,
            by_process
                .iter()
                .map(|c| format!("{} {:.0} MiB", c.name, c.peak_rss_mib))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(f) = main
        .failover
        .as_ref()
        .filter(|f| f.reconciled_seconds.max(f.change_seconds) > FAILOVER_SECONDS)
    {
        why.push(format!(
            "Failover ({:.1} s until reconciled, {:.1} s until the change showed): the survivors \
             took {} clusters at once, {:.0} passes a second.",
            f.reconciled_seconds,
            f.change_seconds,
            f.clusters_moved,
            f.clusters_moved as f64 / f.reconciled_seconds
        ));
    }
    for (latency, target, when) in [
        (&main.latency_idle, LATENCY_IDLE_P99, "idle"),
        (&main.latency_loaded, LATENCY_LOADED_P99, "loaded"),
    ] {
        if let Some(l) = latency.as_ref().filter(|l| l.p99_seconds > target) {
            why.push(format!(
                "Change → StatefulSet {when} (p99 {:.2} s, p50 {:.2} s at {}/s): the time from the \
                 manifest's write to the StatefulSet's covers the watcher, the scheduler, the \
                 worker's queue and pass, and the API server; see the CPU split below for who was busy.",
                l.p99_seconds, l.p50_seconds, l.rate
            ));
        }
    }
    if let Some(d) = main.drift.as_ref().filter(|d| d.p99_seconds > DRIFT_P99) {
        why.push(format!(
            "Drift (p99 {:.2} s, p50 {:.2} s over {} changes): from the other client's write to \
             pgop's repair showing.",
            d.p99_seconds, d.p50_seconds, d.changes
        ));
    }
    why
}

pub fn summary(r: &Results) -> String {
    let mut md = String::new();
    let a = &r.args;
    let _ = writeln!(
        md,
        "# pgop-bench: {} clusters × {} instance(s), {} namespaces\n",
        a.clusters, a.instances, a.namespaces
    );
    let _ = writeln!(
        md,
        "Machine: {}. Binaries: `{}`. The whole run took {:.1} min.\n",
        r.machine,
        r.binaries,
        r.total_seconds / 60.0
    );
    let bound = &r.bound;
    let _ = writeln!(
        md,
        "API-server bound: {} objects created by a bare client in {:.1} s ({:.0} objects/s, {} in flight). \
         Full floor: the same, until all {} pods were Ready and role-labelled, {:.1} s.\n",
        bound.objects,
        bound.seconds,
        bound.objects as f64 / bound.seconds,
        a.concurrency,
        bound.pods,
        bound.floor_seconds,
    );
    let per_1000 = |v: f64| v * 1000.0 / a.clusters as f64;

    if let Some(main) = r
        .setups
        .iter()
        .find(|s| s.steady.is_some() && s.label.starts_with("pgop"))
    {
        let _ = writeln!(md, "## Figures ({})\n", main.label);
        md.push_str("| # | figure | value | target | verdict |\n| --- | --- | --- | --- | --- |\n");
        let _ = writeln!(
            md,
            "| 2 | convergence | {:.1} s, {:.2}× the full floor, {:.2}× the bound | ≤ {CONVERGENCE_TO_FLOOR}× the floor | {} |",
            main.convergence_seconds,
            main.floor_ratio,
            main.convergence_ratio,
            verdict_at_most(main.floor_ratio, CONVERGENCE_TO_FLOOR)
        );
        for (l, target) in [
            (&main.latency_idle, LATENCY_IDLE_P99),
            (&main.latency_loaded, LATENCY_LOADED_P99),
        ] {
            if let Some(l) = l {
                let _ = writeln!(
                    md,
                    "| 3 | change → StatefulSet at {}/s | p50 {:.2} s, p99 {:.2} s, max {:.2} s ({} of {} missed) | p99 ≤ {target} s{} | {} |",
                    l.rate,
                    l.p50_seconds,
                    l.p99_seconds,
                    l.max_seconds,
                    l.missed,
                    l.changes,
                    if target == LATENCY_LOADED_P99 { " at 50/s" } else { " idle" },
                    verdict_at_most(l.p99_seconds, target)
                );
            }
        }
        if let Some(s) = &main.steady {
            if let (Some(sec), Some(w), Some(rd)) =
                (s.resync_seconds, s.resync_writes, s.resync_reads)
            {
                let none = |n: u64| match n {
                    0 => "met".to_string(),
                    n => format!("missed ({n})"),
                };
                let _ = writeln!(
                    md,
                    "| 4 | full resync (REST, every cluster) | {sec:.1} s, {w} writes, {rd} reads ({:.2} reads per cluster) | 0 writes, 0 reads, ≤ {RESYNC_SECONDS} s | writes: {}; reads: {}; time: {} |",
                    rd as f64 / a.clusters as f64,
                    none(w),
                    none(rd),
                    verdict_at_most(sec, RESYNC_SECONDS),
                );
            }
            let idle: String = s
                .idle_requests
                .iter()
                .filter(|(kind, _)| !kind.starts_with("WATCH "))
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                md,
                "| 4 | fleet left alone {} s | API server served (every client): {} | — | — |",
                a.idle_seconds,
                if idle.is_empty() {
                    "nothing".into()
                } else {
                    idle
                }
            );
        }
        let rss: f64 = main.cost.iter().map(|c| c.rss_mib).sum();
        let peak: f64 = main.cost.iter().map(|c| c.peak_rss_mib).sum();
        let pss: f64 = main.cost.iter().map(|c| c.pss_mib).sum();
        let cpu: f64 = main.cost.iter().map(|c| c.cpu_seconds).sum();
        let verdict = if a.clusters >= 5000 {
            verdict_at_most(peak, MEMORY_AT_5000_MIB)
        } else {
            format!("the target is for 5,000 (measured at {})", a.clusters)
        };
        let _ = writeln!(
            md,
            "| 5 | cost, all pgop processes | RSS {rss:.0} MiB settled, {peak:.0} MiB peak (PSS {pss:.0} MiB: the code the processes share counted once); {cpu:.1} CPU s; per 1,000 clusters {:.0} MiB, {:.1} CPU s | peak ≤ {MEMORY_AT_5000_MIB} MiB at 5,000 | {verdict} |",
            per_1000(rss),
            per_1000(cpu),
        );
        if let Some(stuck) = r.setups.iter().find(|s| s.stuck) {
            let p99 = |s: &SetupResult| {
                (
                    s.latency_idle.as_ref().map_or(f64::NAN, |l| l.p99_seconds),
                    s.latency_loaded
                        .as_ref()
                        .map_or(f64::NAN, |l| l.p99_seconds),
                )
            };
            let (with_idle, with_loaded) = p99(stuck);
            let (without_idle, without_loaded) = p99(main);
            let _ = writeln!(
                md,
                "| 6 | one stuck cluster (status {}) | the other {} Running in {:.1} s ({:.2}× the bound) vs {:.1} s without; p99 {with_idle:.2} s idle, {with_loaded:.2} s loaded vs {without_idle:.2} s, {without_loaded:.2} s without | the others within the latency targets | idle: {}; loaded: {} |",
                stuck.stuck_status.as_deref().unwrap_or("?"),
                stuck.expected,
                stuck.convergence_seconds,
                stuck.convergence_ratio,
                main.convergence_seconds,
                verdict_at_most(with_idle, LATENCY_IDLE_P99),
                verdict_at_most(with_loaded, LATENCY_LOADED_P99)
            );
        }
        if let Some(f) = &main.failover {
            let _ = writeln!(
                md,
                "| 7 | failover: {} SIGKILLed | its {} clusters owned by survivors in {:.1} s, all reconciled in {:.1} s; a change to one of them applied in {:.1} s | ≤ {FAILOVER_SECONDS} s | {} |",
                f.killed,
                f.clusters_moved,
                f.owned_seconds,
                f.reconciled_seconds,
                f.change_seconds,
                verdict_at_most(f.reconciled_seconds.max(f.change_seconds), FAILOVER_SECONDS)
            );
        }
        if let Some(d) = &main.drift {
            let _ = writeln!(
                md,
                "| 8 | drift: a replica Service deleted, a StatefulSet scaled by hand, until repaired | p50 {:.2} s, p99 {:.2} s, max {:.2} s ({} changes) | p99 ≤ {DRIFT_P99} s | {} |",
                d.p50_seconds,
                d.p99_seconds,
                d.max_seconds,
                d.changes,
                verdict_at_most(d.p99_seconds, DRIFT_P99)
            );
        }
        md.push('\n');
        let why = missed_targets(r, main);
        if !why.is_empty() {
            md.push_str("### Why targets were missed\n\n");
            for line in why {
                let _ = writeln!(md, "- {line}");
            }
            md.push('\n');
        }
    }

    md.push_str("## Convergence by setup (6: sharding)\n\n");
    md.push_str("| setup | Running | seconds | × floor | × bound | API requests served (every client, no watches) | operator's reads / writes | CPU s: apiserver / etcd / controller-manager / kubelets / operator |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for s in &r.setups {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.2} | {:.2} | {} | {} | {:.0} / {:.0} / {:.0} / {:.0} / {:.0} |",
            s.label,
            s.expected,
            s.convergence_seconds,
            s.floor_ratio,
            s.convergence_ratio,
            requests(s),
            match &s.operator_requests {
                Some(by_kind) => {
                    let (reads, writes) = reads_and_writes(by_kind);
                    format!("{reads} / {writes}")
                }
                None => "—".into(),
            },
            cpu_of(s, "kube-apiserver"),
            cpu_of(s, "etcd"),
            cpu_of(s, "kube-controller-manager"),
            cpu_of(s, "kubelet") + cpu_of(s, "kubelet-sim"),
            operator_cpu(s),
        );
    }
    md.push_str("\n## Where the CPU went during convergence\n\n");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    for s in &r.setups {
        let available = cores * s.convergence_seconds;
        let mut by_process: Vec<(&String, &f64)> = s.convergence_cpu.iter().collect();
        by_process.sort_by(|x, y| y.1.total_cmp(x.1));
        let top: Vec<String> = by_process
            .iter()
            .take(4)
            .map(|(name, cpu)| format!("{name} {:.0} s ({:.0}%)", cpu, *cpu / available * 100.0))
            .collect();
        let used: f64 = s.convergence_cpu.values().sum();
        let _ = writeln!(
            md,
            "- {}: {:.0} of {:.0} CPU s available ({:.0}% busy); {}",
            s.label,
            used,
            available,
            used / available * 100.0,
            top.join(", ")
        );
    }
    if let Some((label, by_kind)) = r
        .setups
        .iter()
        .find_map(|s| Some((&s.label, s.operator_requests.as_ref()?)))
    {
        let _ = writeln!(
            md,
            "\npgop's requests per cluster during convergence ({label}): {}",
            by_kind
                .iter()
                .map(|(kind, n)| format!("{kind} {:.1}", *n as f64 / a.clusters as f64))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    md.push_str("\n## Cost per process, settled (5)\n\nRSS counts the pages of code a process maps (its binary, shared libraries) as its own; \"of it, code\" is that part, and PSS splits shared pages among the processes sharing them.\n\n| setup | process | RSS MiB | of it, code MiB | PSS MiB | peak RSS MiB | CPU s |\n| --- | --- | --- | --- | --- | --- | --- |\n");
    for s in &r.setups {
        for c in &s.cost {
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                s.label, c.name, c.rss_mib, c.file_mib, c.pss_mib, c.peak_rss_mib, c.cpu_seconds
            );
        }
    }
    md.push_str("\nThe chart of Running clusters over time is `convergence.png`.\n");
    md
}
