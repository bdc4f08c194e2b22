//! What processes cost (from /proc) and what the API server served (its `/metrics`).
use std::collections::BTreeMap;

use anyhow::{Context, Result};
use kube::Client;
use pgop_e2e::metrics::samples;
use serde::Serialize;

/// A process (or a process group, for another operator's start command) to measure.
#[derive(Debug, Clone)]
pub struct Measured {
    pub name: String,
    pub pid: u32,
    /// Count every process of the group `pid` leads (a shell command and its children).
    pub group: bool,
}

/// The local environment's own processes (control plane, kubelets), each measured alone.
pub fn environment_processes(env: &pgop_e2e::env::Environment) -> Vec<Measured> {
    env.processes()
        .into_iter()
        .map(|(name, pid)| Measured {
            name,
            pid,
            group: false,
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ProcessCost {
    pub name: String,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    /// Of the RSS, what maps files (the binary's code, shared libraries): pages shared with
    /// every process that maps the same file.
    #[serde(default)]
    pub file_mib: f64,
    /// Proportional set size: shared pages split among the processes sharing them, so two
    /// workers of the same binary count its code once between them.
    #[serde(default)]
    pub pss_mib: f64,
    pub cpu_seconds: f64,
}

struct Sample {
    rss_kib: f64,
    peak_kib: f64,
    file_kib: f64,
    pss_kib: f64,
    ticks: f64,
    group: u32,
}

fn sample(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at ") ".
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    Some(Sample {
        rss_kib: field("VmRSS:"),
        peak_kib: field("VmHWM:"),
        file_kib: field("RssFile:") + field("RssShmem:"),
        pss_kib: pss_kib(pid).unwrap_or(0.0),
        ticks: fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?,
        group: fields.get(2)?.parse().ok()?,
    })
}

/// `Pss:` of /proc/PID/smaps_rollup (Linux 4.14+).
fn pss_kib(pid: u32) -> Option<f64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// RSS, peak RSS and CPU seconds (user + system) of `what`; None once it is gone.
pub fn cost(what: &Measured) -> Option<ProcessCost> {
    let samples: Vec<Sample> = if what.group {
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(sample)
            .filter(|s| s.group == what.pid)
            .collect()
    } else {
        vec![sample(what.pid)?]
    };
    if samples.is_empty() {
        return None;
    }
    Some(ProcessCost {
        name: what.name.clone(),
        rss_mib: samples.iter().map(|s| s.rss_kib).sum::<f64>() / 1024.0,
        peak_rss_mib: samples.iter().map(|s| s.peak_kib).sum::<f64>() / 1024.0,
        file_mib: samples.iter().map(|s| s.file_kib).sum::<f64>() / 1024.0,
        pss_mib: samples.iter().map(|s| s.pss_kib).sum::<f64>() / 1024.0,
        cpu_seconds: samples.iter().map(|s| s.ticks).sum::<f64>() / 100.0,
    })
}

pub fn costs(all: &[Measured]) -> Vec<ProcessCost> {
    all.iter().filter_map(cost).collect()
}

/// CPU seconds each process spent between two readings of [`costs`].
pub fn cpu_between(before: &[ProcessCost], after: &[ProcessCost]) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|a| {
            let earlier = before
                .iter()
                .find(|b| b.name == a.name)
                .map_or(0.0, |b| b.cpu_seconds);
            (a.name.clone(), a.cpu_seconds - earlier)
        })
        .collect()
}

/// Requests the API server served, keyed `VERB resource` (`VERB resource/subresource`), from
/// `apiserver_request_total`: the resource says which client was busy.
pub async fn apiserver_requests(client: &Client) -> Result<BTreeMap<String, u64>> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .context("building the metrics request")?;
    let text = client.request_text(request).await?;
    Ok(requests_by_verb_and_resource(&text))
}

fn requests_by_verb_and_resource(metrics: &str) -> BTreeMap<String, u64> {
    let mut by_kind = BTreeMap::new();
    for (labels, n) in samples(metrics, "apiserver_request_total") {
        let kind = match (labels.get("resource"), labels.get("subresource")) {
            (resource, "") => format!("{} {resource}", labels.get("verb")),
            (resource, sub) => format!("{} {resource}/{sub}", labels.get("verb")),
        };
        *by_kind.entry(kind).or_insert(0) += n;
    }
    by_kind
}

/// Requests keyed `VERB resource` summed by verb.
pub fn by_verb(by_kind: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut by_verb = BTreeMap::new();
    for (kind, n) in by_kind {
        let verb = kind.split(' ').next().unwrap_or_default();
        *by_verb.entry(verb.to_string()).or_insert(0) += n;
    }
    by_verb
}

/// Requests pgop's workers sent, by `verb resource` (`pgop_kube_requests_total`).
pub async fn worker_requests(metrics_addrs: &[String]) -> Result<BTreeMap<String, u64>> {
    let http = reqwest::Client::new();
    let mut by_kind = BTreeMap::new();
    for addr in metrics_addrs {
        let Ok(response) = http.get(format!("http://{addr}/metrics")).send().await else {
            // A killed worker's counts are gone with it.
            continue;
        };
        let text = response.text().await?;
        for (labels, n) in samples(&text, "pgop_kube_requests_total") {
            *by_kind
                .entry(format!("{} {}", labels.get("verb"), labels.get("resource")))
                .or_insert(0) += n;
        }
    }
    Ok(by_kind)
}

pub fn requests_between(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(verb, n)| {
            (
                verb.clone(),
                n - before.get(verb).copied().unwrap_or(0).min(*n),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_summed_by_verb_and_resource_over_every_other_label() {
        let text = r#"# HELP apiserver_request_total x
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="secrets",scope="resource",subresource="",verb="GET",version="v1"} 10
apiserver_request_total{code="404",component="apiserver",dry_run="",group="",resource="secrets",scope="resource",subresource="",verb="GET",version="v1"} 5
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="status",verb="PATCH",version="v1"} 3
apiserver_request_total{code="201",component="apiserver",dry_run="",group="apps",resource="statefulsets",scope="resource",subresource="",verb="POST",version="v1"} 7
apiserver_request_duration_seconds_count{verb="GET"} 99
"#;
        let got = requests_by_verb_and_resource(text);
        assert_eq!(
            got,
            BTreeMap::from([
                ("GET secrets".to_string(), 15),
                ("PATCH pods/status".to_string(), 3),
                ("POST statefulsets".to_string(), 7),
            ])
        );
        assert_eq!(
            by_verb(&got),
            BTreeMap::from([
                ("GET".to_string(), 15),
                ("PATCH".to_string(), 3),
                ("POST".to_string(), 7),
            ])
        );
        let later = BTreeMap::from([
            ("GET secrets".to_string(), 20),
            ("PATCH pods/status".to_string(), 3),
            ("POST statefulsets".to_string(), 7),
        ]);
        assert_eq!(
            requests_between(&got, &later),
            BTreeMap::from([("GET secrets".to_string(), 5)])
        );
    }
}
