//! One task per pod bound to our nodes: prepares volumes and environment, runs init
//! containers then containers as processes, restarts them per `restartPolicy`, reports
//! readiness and status, and on deletion stops them within the grace period and removes
//! the pod object.
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::Api;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::env::{referenced_names, resolve_env};
use super::launch::{prepare, Launch, LaunchContext};
use super::probes::{check, LivenessState, Readiness};
use super::status::{now, ContainerRecord, PodRecord, RestartPolicy, RunState};
use super::volumes::{container_mounts, materialise, VolumeInputs};
use crate::runtime::process::{Exit, Process};
use crate::runtime::{runtime_for, RuntimeKind};
use crate::Shared;

const PREPARE_RETRY: Duration = Duration::from_secs(3);
const PROBE_PERIOD: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(20);

/// How the task ended, for the dispatcher.
enum Ending {
    /// The pod object is gone (deleted by us or by someone else).
    Gone,
    /// The kubelet is shutting down: processes stopped, pod left as it is.
    Shutdown,
}

struct PodCtx {
    shared: Arc<Shared>,
    api: Api<Pod>,
    name: String,
    uid: String,
    pod_dir: PathBuf,
    ip: Ipv4Addr,
}

pub async fn run(shared: Arc<Shared>, mut updates: watch::Receiver<Option<Pod>>) {
    let Some(pod) = updates.borrow_and_update().clone() else {
        return;
    };
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &namespace);

    if pod.metadata.deletion_timestamp.is_some() {
        delete_now(&api, &name, &uid).await;
        return;
    }
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        // Finished before a kubelet restart: nothing runs, wait for the deletion.
        wait_for_deletion(&shared, &api, &name, &uid, &mut updates).await;
        return;
    }
    let preferred = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok());
    let ip = match shared.pool.allocate(preferred) {
        Ok(ip) => ip,
        Err(e) => {
            tracing::error!(pod = %name, namespace = %namespace, "{e}");
            return;
        }
    };
    let pod_dir = shared
        .config
        .state_dir
        .join("pods")
        .join(format!("{namespace}_{name}_{uid}"));
    let ctx = PodCtx {
        shared: shared.clone(),
        api,
        name,
        uid,
        pod_dir,
        ip,
    };
    tracing::info!(pod = %ctx.name, namespace = %namespace, %ip, "starting pod");
    let ending = if shared.config.simulate {
        simulate(&ctx, &mut updates).await
    } else {
        supervise(&ctx, &mut updates).await
    };
    shared.pool.release(ip);
    if matches!(ending, Ending::Gone) {
        let _ = std::fs::remove_dir_all(&ctx.pod_dir);
        let _ = std::fs::remove_dir_all(PathBuf::from("/tmp/pgop-sockets").join(ip.to_string()));
    }
}

fn spec_of(pod: &Pod) -> (Vec<Container>, Vec<Container>, RestartPolicy) {
    let spec = pod.spec.clone().unwrap_or_default();
    (
        spec.init_containers.unwrap_or_default(),
        spec.containers,
        RestartPolicy::parse(spec.restart_policy.as_deref()),
    )
}

fn grace_period(pod: &Pod) -> Duration {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(seconds.max(1) as u64)
}

async fn delete_now(api: &Api<Pod>, name: &str, uid: &str) {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..Default::default()
    };
    if let Err(e) = api.delete(name, &params).await {
        if !is_not_found(&e) {
            tracing::warn!(pod = %name, "removing the pod failed: {e}");
        }
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404 || s.code == 409)
}

async fn wait_for_deletion(
    shared: &Shared,
    api: &Api<Pod>,
    name: &str,
    uid: &str,
    updates: &mut watch::Receiver<Option<Pod>>,
) {
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            changed = updates.changed() => {
                let current = if changed.is_ok() { updates.borrow_and_update().clone() } else { None };
                match current {
                    None => return,
                    Some(p) if p.metadata.deletion_timestamp.is_some() => {
                        delete_now(api, name, uid).await;
                        return;
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

async fn patch_status(ctx: &PodCtx, record: &PodRecord, last: &mut Option<serde_json::Value>) {
    let status = json!({"status": record.status()});
    if last.as_ref() == Some(&status) {
        return;
    }
    match ctx
        .api
        .patch_status(&ctx.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
    {
        Ok(_) => *last = Some(status),
        Err(e) if is_not_found(&e) => {}
        Err(e) => tracing::warn!(pod = %ctx.name, "status update failed: {e}"),
    }
}

/// Pod annotation that keeps a simulated pod's containers from ever becoming ready, and a
/// Spilo pod from getting its role (as when Patroni cannot start): a stuck cluster in the
/// scale benchmark.
pub const NEVER_READY_ANNOTATION: &str = "pgop.local/simulate-never-ready";

/// Simulate mode: no processes; containers run and are ready at once (unless the pod carries
/// [`NEVER_READY_ANNOTATION`]), and Spilo pods get their role label from their ordinal.
async fn simulate(ctx: &PodCtx, updates: &mut watch::Receiver<Option<Pod>>) -> Ending {
    let pod = updates.borrow().clone().unwrap_or_default();
    let (init, containers, policy) = spec_of(&pod);
    let never_ready = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.get(NEVER_READY_ANNOTATION).is_some_and(|v| v == "true"));
    let started = now();
    let state = |_: &Container| {
        if policy == RestartPolicy::Always {
            RunState::Running {
                started_at: started.clone(),
            }
        } else {
            RunState::Terminated {
                exit_code: 0,
                signal: None,
                started_at: Some(started.clone()),
                finished_at: started.clone(),
            }
        }
    };
    let records = |cs: &[Container], st: &dyn Fn(&Container) -> RunState| {
        cs.iter()
            .map(|c| ContainerRecord {
                state: st(c),
                ready: policy == RestartPolicy::Always && !never_ready,
                ..ContainerRecord::new(&c.name, c.image.as_deref().unwrap_or_default())
            })
            .collect::<Vec<_>>()
    };
    let done = |_: &Container| RunState::Terminated {
        exit_code: 0,
        signal: None,
        started_at: Some(started.clone()),
        finished_at: started.clone(),
    };
    let mut record = PodRecord::new(
        ctx.ip,
        policy,
        records(&init, &done),
        records(&containers, &state),
    );
    record.init_done = true;
    record.update_conditions();

    let spilo = containers.iter().find(|c| {
        runtime_for(c.image.as_deref().unwrap_or_default(), &[], &[], "") == RuntimeKind::Spilo
    });
    if let Some(c) = spilo.filter(|_| !never_ready) {
        let role_label = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "KUBERNETES_ROLE_LABEL")
            .and_then(|e| e.value.clone())
            .unwrap_or_else(|| "spilo-role".into());
        let ordinal = ctx
            .name
            .rsplit('-')
            .next()
            .and_then(|o| o.parse::<u32>().ok())
            .unwrap_or(0);
        let role = if ordinal == 0 { "master" } else { "replica" };
        let patch = json!({"metadata": {"labels": {role_label: role}}});
        if let Err(e) = ctx
            .api
            .patch(&ctx.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(pod = %ctx.name, "setting the role label failed: {e}");
        }
    }
    let mut last = None;
    patch_status(ctx, &record, &mut last).await;
    loop {
        tokio::select! {
            _ = ctx.shared.shutdown.cancelled() => return Ending::Shutdown,
            changed = updates.changed() => {
                let current = if changed.is_ok() { updates.borrow_and_update().clone() } else { None };
                match current {
                    None => return Ending::Gone,
                    Some(p) if p.metadata.deletion_timestamp.is_some() => {
                        delete_now(&ctx.api, &ctx.name, &ctx.uid).await;
                        return Ending::Gone;
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

/// Everything a pod's processes need, fetched and written once per start.
struct Prepared {
    init: Vec<Launch>,
    containers: Vec<Launch>,
}

async fn fetch_inputs(ctx: &PodCtx, pod: &Pod) -> Result<VolumeInputs, String> {
    let client = &ctx.shared.client;
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let mut secret_names = std::collections::BTreeSet::new();
    let mut cm_names = std::collections::BTreeSet::new();
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
    {
        let (s, m) = referenced_names(c);
        secret_names.extend(s);
        cm_names.extend(m);
    }
    let mut claims = Vec::new();
    for v in spec.volumes.iter().flatten() {
        if let Some(s) = &v.secret {
            secret_names.extend(s.secret_name.clone());
        }
        if let Some(c) = &v.config_map {
            cm_names.insert(c.name.clone());
        }
        if let Some(p) = &v.projected {
            for source in p.sources.iter().flatten() {
                secret_names.extend(source.secret.as_ref().map(|s| s.name.clone()));
                cm_names.extend(source.config_map.as_ref().map(|c| c.name.clone()));
            }
        }
        if let Some(pvc) = &v.persistent_volume_claim {
            claims.push(pvc.claim_name.clone());
        }
    }
    let mut inputs = VolumeInputs::default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    for name in secret_names {
        if let Some(secret) = secrets
            .get_opt(&name)
            .await
            .map_err(|e| format!("reading secret {name:?}: {e}"))?
        {
            let mut files = secret.data.unwrap_or_default();
            for (k, v) in secret.string_data.unwrap_or_default() {
                files.insert(k, k8s_openapi::ByteString(v.into_bytes()));
            }
            inputs.data.secrets.insert(
                name.clone(),
                files
                    .iter()
                    .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
                    .collect(),
            );
            inputs.secret_files.insert(name, files);
        }
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    for name in cm_names {
        if let Some(cm) = cms
            .get_opt(&name)
            .await
            .map_err(|e| format!("reading configmap {name:?}: {e}"))?
        {
            inputs
                .data
                .config_maps
                .insert(name, cm.data.unwrap_or_default());
        }
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for claim in claims {
        let pvc = pvcs
            .get(&claim)
            .await
            .map_err(|e| format!("reading claim {claim:?}: {e}"))?;
        let Some(volume) = pvc
            .spec
            .and_then(|s| s.volume_name)
            .filter(|v| !v.is_empty())
        else {
            return Err(format!("claim {claim:?} is not bound yet"));
        };
        let pv = pvs
            .get(&volume)
            .await
            .map_err(|e| format!("reading volume {volume:?}: {e}"))?;
        let path = pv
            .spec
            .and_then(|s| s.host_path.map(|h| h.path).or(s.local.map(|l| l.path)))
            .ok_or_else(|| format!("volume {volume:?} has no host path"))?;
        inputs.claim_dirs.insert(claim, PathBuf::from(path));
    }
    Ok(inputs)
}

async fn prepare_pod(ctx: &PodCtx, pod: &Pod) -> Result<Prepared, String> {
    let inputs = fetch_inputs(ctx, pod).await?;
    let volume_dirs = materialise(pod, &ctx.pod_dir, &inputs).map_err(|e| e.to_string())?;
    let launch_ctx = LaunchContext {
        shared: &ctx.shared,
        pod,
        ip: ctx.ip,
        pod_dir: &ctx.pod_dir,
    };
    let (init, containers, _) = spec_of(pod);
    let ip = ctx.ip.to_string();
    let mut prepared = Prepared {
        init: Vec::new(),
        containers: Vec::new(),
    };
    for (list, out) in [
        (&init, &mut prepared.init),
        (&containers, &mut prepared.containers),
    ] {
        for c in list {
            let env = resolve_env(pod, &ip, "127.0.0.1", c, &inputs.data)
                .map_err(|e| format!("container {:?}: {e}", c.name))?;
            let mounts = container_mounts(c, &volume_dirs)
                .map_err(|e| format!("container {:?}: {e}", c.name))?;
            out.push(
                prepare(&launch_ctx, c, &env, &mounts)
                    .await
                    .map_err(|e| format!("container {:?}: {e}", c.name))?,
            );
        }
    }
    Ok(prepared)
}

/// A running container of the pod.
struct Slot {
    launch: Launch,
    process: Option<Process>,
    generation: u64,
    restart_at: Option<Instant>,
    /// The running process's liveness, when the container has a livenessProbe.
    liveness: Option<LivenessState>,
}

fn pgid_file(pod_dir: &Path) -> PathBuf {
    pod_dir.join("pgids")
}

/// Keeps the process groups of the pod's running processes on disk, so a restarted kubelet
/// can stop what it left behind.
fn record_pgids<'a>(pod_dir: &Path, slots: impl Iterator<Item = &'a Slot>) {
    let pgids: Vec<String> = slots
        .filter_map(|s| s.process.as_ref())
        .map(|p| p.pgid().to_string())
        .collect();
    let _ = std::fs::create_dir_all(pod_dir);
    let _ = std::fs::write(pgid_file(pod_dir), pgids.join("\n"));
}

/// Stops processes a previous kubelet run left behind for this pod.
async fn stop_leftovers(pod_dir: &Path) {
    let Ok(content) = std::fs::read_to_string(pgid_file(pod_dir)) else {
        return;
    };
    for pgid in content.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        Process::stop_group(pgid, Duration::from_secs(10)).await;
    }
}

/// A postmaster survives its Patroni when Patroni is killed; stop it by its pid file.
async fn stop_postmaster(pgdata: &Path, grace: Duration) {
    let Ok(content) = std::fs::read_to_string(pgdata.join("postmaster.pid")) else {
        return;
    };
    let Some(pid) = content
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        return;
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    let is_postgres = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|c| c.starts_with("postgres"));
    if !is_postgres {
        return;
    }
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && nix::sys::signal::kill(pid, None).is_ok() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
}

async fn stop_all(slots: &mut [Slot], grace: Duration) {
    let stops = slots
        .iter_mut()
        .filter_map(|s| s.process.take().map(|p| (p, s.launch.pgdata.clone())))
        .map(|(p, pgdata)| async move {
            Process::stop_group(p.pgid(), grace).await;
            if let Some(pgdata) = pgdata {
                stop_postmaster(&pgdata, Duration::from_secs(5)).await;
            }
        });
    futures::future::join_all(stops).await;
}

fn backoff(restarts: i32) -> Duration {
    Duration::from_secs(1u64 << restarts.clamp(0, 5) as u32).min(MAX_BACKOFF)
}

fn start(
    slot: &mut Slot,
    index: usize,
    record: &mut ContainerRecord,
    exits: &mpsc::UnboundedSender<Exit>,
) {
    slot.generation += 1;
    slot.restart_at = None;
    match Process::spawn(&slot.launch.spec, index, slot.generation, exits.clone()) {
        Ok(p) => {
            slot.process = Some(p);
            slot.liveness = slot
                .launch
                .liveness
                .as_ref()
                .map(|l| LivenessState::started(l, Instant::now()));
            record.state = RunState::Running { started_at: now() };
        }
        Err(e) => {
            record.state = RunState::waiting(
                "RunContainerError",
                Some(format!("{}: {e}", slot.launch.spec.program)),
            );
            slot.restart_at = Some(Instant::now() + backoff(record.restart_count));
        }
    }
    record.ready = false;
}

/// Probes the running containers whose liveness probe is due; one that failed its threshold
/// is stopped (SIGTERM, SIGKILL after the pod's grace period) and restarted through its exit,
/// as the kubelet does.
async fn probe_liveness(
    ctx: &PodCtx,
    slots: &mut [Slot],
    records: &[ContainerRecord],
    grace: Duration,
) {
    let now = Instant::now();
    let due: Vec<usize> = slots
        .iter()
        .enumerate()
        .filter(|(i, slot)| records[*i].is_running() && slot.liveness.is_some_and(|l| l.due(now)))
        .map(|(i, _)| i)
        .collect();
    let checks = due.iter().map(|&i| {
        let (http, ip) = (ctx.shared.http.clone(), ctx.ip);
        let liveness = slots[i].launch.liveness.clone();
        async move {
            match liveness {
                Some(l) => check(&http, ip, &l.check).await,
                None => true,
            }
        }
    });
    let results = futures::future::join_all(checks).await;
    for (i, alive) in due.into_iter().zip(results) {
        let slot = &mut slots[i];
        let (Some(state), Some(liveness)) = (slot.liveness, slot.launch.liveness.as_ref()) else {
            continue;
        };
        let next = state.observe(liveness, alive, Instant::now());
        slot.liveness = Some(next);
        if next == LivenessState::Failed {
            if let Some(process) = &slot.process {
                tracing::warn!(pod = %ctx.name, container = %records[i].name, "liveness probe failed {} times: restarting the container", liveness.failure_threshold);
                tokio::spawn(Process::stop_group(process.pgid(), grace));
            }
        }
    }
}

enum Wake {
    Shutdown,
    Update(Box<Option<Pod>>),
    Exit(Exit),
    Tick,
}

async fn next_wake(
    ctx: &PodCtx,
    updates: &mut watch::Receiver<Option<Pod>>,
    exits: &mut mpsc::UnboundedReceiver<Exit>,
    tick: &mut tokio::time::Interval,
) -> Wake {
    tokio::select! {
        _ = ctx.shared.shutdown.cancelled() => Wake::Shutdown,
        changed = updates.changed() => Wake::Update(Box::new(if changed.is_ok() { updates.borrow_and_update().clone() } else { None })),
        Some(exit) = exits.recv() => Wake::Exit(exit),
        _ = tick.tick() => Wake::Tick,
    }
}

async fn supervise(ctx: &PodCtx, updates: &mut watch::Receiver<Option<Pod>>) -> Ending {
    let mut pod = updates.borrow().clone().unwrap_or_default();
    let (init_specs, container_specs, policy) = spec_of(&pod);
    let new_records = |cs: &[Container]| {
        cs.iter()
            .map(|c| ContainerRecord::new(&c.name, c.image.as_deref().unwrap_or_default()))
            .collect()
    };
    let mut record = PodRecord::new(
        ctx.ip,
        policy,
        new_records(&init_specs),
        new_records(&container_specs),
    );
    let mut last = None;
    patch_status(ctx, &record, &mut last).await;
    stop_leftovers(&ctx.pod_dir).await;

    let (exit_tx, mut exits) = mpsc::unbounded_channel();
    let mut tick = tokio::time::interval(PROBE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    // Preparing: retried until the referenced objects exist.
    let prepared = loop {
        match prepare_pod(ctx, &pod).await {
            Ok(p) => break p,
            Err(message) => {
                tracing::warn!(pod = %ctx.name, "preparing the pod failed: {message}");
                for c in record.init.iter_mut().chain(record.containers.iter_mut()) {
                    c.state =
                        RunState::waiting("CreateContainerConfigError", Some(message.clone()));
                }
                patch_status(ctx, &record, &mut last).await;
            }
        }
        let deadline = Instant::now() + PREPARE_RETRY;
        while Instant::now() < deadline {
            match next_wake(ctx, updates, &mut exits, &mut tick).await {
                Wake::Shutdown => return Ending::Shutdown,
                Wake::Update(update) => match *update {
                    None => return Ending::Gone,
                    Some(p) if p.metadata.deletion_timestamp.is_some() => {
                        delete_now(&ctx.api, &ctx.name, &ctx.uid).await;
                        return Ending::Gone;
                    }
                    Some(p) => pod = p,
                },
                _ => {}
            }
        }
    };
    let mut init_slots: Vec<Slot> = prepared
        .init
        .into_iter()
        .map(|launch| Slot {
            launch,
            process: None,
            generation: 0,
            restart_at: None,
            liveness: None,
        })
        .collect();
    let mut slots: Vec<Slot> = prepared
        .containers
        .into_iter()
        .map(|launch| Slot {
            launch,
            process: None,
            generation: 0,
            restart_at: None,
            liveness: None,
        })
        .collect();
    // Init containers are numbered after the containers in exit reports.
    let init_base = slots.len();

    let mut current_init = 0;
    if init_slots.is_empty() {
        record.init_done = true;
    } else {
        start(&mut init_slots[0], init_base, &mut record.init[0], &exit_tx);
        record_pgids(&ctx.pod_dir, init_slots.iter());
    }
    if record.init_done {
        for (i, slot) in slots.iter_mut().enumerate() {
            start(slot, i, &mut record.containers[i], &exit_tx);
        }
        record_pgids(&ctx.pod_dir, slots.iter());
    }
    record.update_conditions();
    patch_status(ctx, &record, &mut last).await;

    loop {
        match next_wake(ctx, updates, &mut exits, &mut tick).await {
            Wake::Shutdown => {
                stop_all(&mut init_slots, Duration::from_secs(10)).await;
                stop_all(&mut slots, Duration::from_secs(10)).await;
                return Ending::Shutdown;
            }
            Wake::Update(update) => match *update {
                None => {
                    stop_all(&mut init_slots, Duration::from_secs(2)).await;
                    stop_all(&mut slots, Duration::from_secs(2)).await;
                    return Ending::Gone;
                }
                Some(p) if p.metadata.deletion_timestamp.is_some() => {
                    let grace = grace_period(&p);
                    tracing::info!(pod = %ctx.name, "stopping pod within {grace:?}");
                    stop_all(&mut init_slots, grace).await;
                    stop_all(&mut slots, grace).await;
                    delete_now(&ctx.api, &ctx.name, &ctx.uid).await;
                    return Ending::Gone;
                }
                Some(_) => {}
            },
            Wake::Exit(exit) => {
                let (slot, rec, is_init) = if exit.container >= init_base {
                    let i = exit.container - init_base;
                    (&mut init_slots[i], &mut record.init[i], true)
                } else {
                    (
                        &mut slots[exit.container],
                        &mut record.containers[exit.container],
                        false,
                    )
                };
                if exit.generation != slot.generation {
                    continue;
                }
                slot.process = None;
                slot.liveness = None;
                if let Some(pgdata) = &slot.launch.pgdata {
                    stop_postmaster(pgdata, Duration::from_secs(5)).await;
                }
                tracing::info!(pod = %ctx.name, container = %rec.name, code = exit.code, "container exited");
                let terminated = RunState::Terminated {
                    exit_code: exit.code,
                    signal: exit.signal,
                    started_at: rec.started_at(),
                    finished_at: now(),
                };
                rec.ready = false;
                if is_init && exit.code == 0 {
                    rec.state = terminated;
                    current_init += 1;
                    if current_init < init_slots.len() {
                        start(
                            &mut init_slots[current_init],
                            init_base + current_init,
                            &mut record.init[current_init],
                            &exit_tx,
                        );
                    } else {
                        record.init_done = true;
                        for (i, slot) in slots.iter_mut().enumerate() {
                            start(slot, i, &mut record.containers[i], &exit_tx);
                        }
                        record_pgids(&ctx.pod_dir, slots.iter());
                    }
                } else if policy.restarts(exit.code) || (is_init && policy != RestartPolicy::Never)
                {
                    rec.last_state = Some(terminated);
                    rec.state = RunState::waiting(
                        "CrashLoopBackOff",
                        Some(format!("exited with code {}", exit.code)),
                    );
                    slot.restart_at = Some(Instant::now() + backoff(rec.restart_count));
                } else {
                    rec.state = terminated;
                }
            }
            Wake::Tick => {
                let now_instant = Instant::now();
                for (list, recs, base) in [
                    (&mut init_slots, &mut record.init, init_base),
                    (&mut slots, &mut record.containers, 0),
                ] {
                    for (i, slot) in list.iter_mut().enumerate() {
                        if slot.restart_at.is_some_and(|at| at <= now_instant) {
                            recs[i].restart_count += 1;
                            start(slot, base + i, &mut recs[i], &exit_tx);
                        }
                    }
                }
                record_pgids(&ctx.pod_dir, init_slots.iter().chain(slots.iter()));
                let probes = slots
                    .iter()
                    .zip(record.containers.iter())
                    .map(|(slot, rec)| {
                        let readiness = slot.launch.readiness.clone();
                        let running = rec.is_running();
                        let http = ctx.shared.http.clone();
                        let ip = ctx.ip;
                        async move {
                            match (running, &readiness) {
                                (false, _) => false,
                                (true, Readiness::Running) => true,
                                (true, r) => check(&http, ip, r).await,
                            }
                        }
                    });
                let results = futures::future::join_all(probes).await;
                for (rec, ready) in record.containers.iter_mut().zip(results) {
                    rec.ready = ready;
                }
                probe_liveness(ctx, &mut slots, &record.containers, grace_period(&pod)).await;
            }
        }
        record.update_conditions();
        patch_status(ctx, &record, &mut last).await;
    }
}
