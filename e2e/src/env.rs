//! Starting and stopping one local environment.
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::pgop::free_port;

/// Waits up to `grace` for a signalled child to exit, then kills it.
/// Waits up to `grace` for `child` to exit, then kills it. Its exit status when it exited
/// by itself, None when it had to be killed.
pub fn wait_or_kill(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The standard output of a finished command, or an error naming it with its stderr.
pub fn stdout_of(output: std::io::Result<std::process::Output>, what: &str) -> Result<String> {
    let output = output.with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The workspace root (this crate lives in `<root>/e2e`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e crate has a parent")
        .to_path_buf()
}

/// Where the workspace's binaries are: `PGOP_BIN_DIR`, else `target/debug`.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("PGOP_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target").join("debug"))
}

/// Taint of the simulated nodes: only pods that tolerate it run there.
pub const SIMULATED_TAINT: &str = "pgop.local/simulated=true:NoSchedule";

pub struct EnvironmentOptions {
    /// Also run a second kubelet in simulate mode (nodes `sim-node-*`).
    pub simulated_nodes: bool,
    /// `--image-command` arguments for the process kubelet.
    pub image_commands: Vec<String>,
    /// Run images named `pgop` as the workspace's binaries (pgop deployed with
    /// `kubectl apply -k deploy/overlays/local`).
    pub pgop_image: bool,
}

impl Default for EnvironmentOptions {
    fn default() -> Self {
        Self {
            simulated_nodes: true,
            image_commands: Vec::new(),
            pgop_image: false,
        }
    }
}

pub struct Environment {
    pub state_dir: PathBuf,
    /// The process kubelet's state (pod directories and volumes).
    pub kubelet_dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub pod_network: Ipv4Addr,
    ports: [u16; 3],
    kubelets: std::sync::Mutex<Vec<Child>>,
}

/// A /16 in 127/8 whose first address has nothing listening on Patroni's port, and which no
/// other environment of this process has (their pods would share addresses).
fn free_pod_network() -> Ipv4Addr {
    static TAKEN: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    let start = 20 + (std::process::id() % 200) as u8;
    let second = (0..200u8)
        .map(|i| 20 + (start - 20 + i) % 200)
        .filter(|second| !taken.contains(second))
        .find(|&second| {
            let first = Ipv4Addr::new(127, second, 0, 1);
            std::net::TcpStream::connect_timeout(&(first, 8008).into(), Duration::from_millis(50))
                .is_err()
        })
        .unwrap_or(20);
    taken.push(second);
    Ipv4Addr::new(127, second, 0, 0)
}

/// The process kubelet's state: below the state dir when PostgreSQL (running as `postgres`)
/// can reach it there, else in /var/tmp.
fn kubelet_dir_for(state_dir: &Path) -> PathBuf {
    let reachable = Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(state_dir)
        .status()
        .is_ok_and(|s| s.success());
    if reachable {
        state_dir.join("kubelet")
    } else {
        let tag = state_dir
            .display()
            .to_string()
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
        PathBuf::from(format!("/var/tmp/pgop-e2e-kubelet-{tag:08x}"))
    }
}

impl Environment {
    /// Starts a fresh environment in `state_dir` (emptied first).
    pub fn start(state_dir: &Path, options: EnvironmentOptions) -> Result<Self> {
        if state_dir.exists() {
            std::fs::remove_dir_all(state_dir)
                .with_context(|| format!("emptying {}", state_dir.display()))?;
        }
        std::fs::create_dir_all(state_dir.join("logs"))?;
        let state_dir = std::fs::canonicalize(state_dir)?;
        let ports = [free_port()?, free_port()?, free_port()?];
        let pod_network = free_pod_network();
        let env = Environment {
            kubeconfig: state_dir.join("kubeconfig"),
            kubelet_dir: kubelet_dir_for(&state_dir),
            state_dir,
            pod_network,
            ports,
            kubelets: std::sync::Mutex::new(Vec::new()),
        };
        if !env.kubelet_dir.starts_with(&env.state_dir) && env.kubelet_dir.exists() {
            std::fs::remove_dir_all(&env.kubelet_dir)
                .with_context(|| format!("emptying {}", env.kubelet_dir.display()))?;
        }
        let started = Instant::now();
        env.control_plane("up")?;
        eprintln!(
            "[e2e] control plane up in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        let kubelet = bin_dir().join("pgop-local-kubelet");
        if !kubelet.is_file() {
            bail!("{} is missing: build the workspace first (`cargo build --workspace --bins` or `make build`)", kubelet.display());
        }
        let mut args = vec![
            "--state-dir".to_string(),
            env.kubelet_dir.display().to_string(),
            "--log-dir".into(),
            env.state_dir.join("logs").display().to_string(),
            "--pod-network".into(),
            format!("{pod_network}/17"),
            // `kubectl logs` reaches the kubelet here; one port per environment.
            "--kubelet-port".into(),
            free_port()?.to_string(),
        ];
        if options.pgop_image {
            args.push("--image-binaries".into());
            args.push(format!("pgop={}", bin_dir().display()));
        }
        for c in &options.image_commands {
            args.push("--image-command".into());
            args.push(c.clone());
        }
        env.spawn_kubelet("kubelet", &args)?;
        if options.simulated_nodes {
            let sim_net = format!("{}/17", Ipv4Addr::new(127, pod_network.octets()[1], 128, 0));
            let args = [
                "--simulate",
                "--node-prefix",
                "sim-node",
                "--state-dir",
                &env.state_dir.join("kubelet-sim").display().to_string(),
                "--pod-network",
                &sim_net,
                "--taint",
                SIMULATED_TAINT,
                "--no-provisioner",
                // Advertised by its nodes, served by nobody: never another kubelet's port.
                "--kubelet-port",
                &free_port()?.to_string(),
            ]
            .map(str::to_string);
            env.spawn_kubelet("kubelet-sim", &args)?;
        }
        Ok(env)
    }

    fn spawn_kubelet(&self, name: &str, args: &[String]) -> Result<()> {
        let log = std::fs::File::create(self.state_dir.join("logs").join(format!("{name}.log")))?;
        let child = Command::new(bin_dir().join("pgop-local-kubelet"))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the local kubelet")?;
        self.kubelets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child);
        Ok(())
    }

    fn control_plane(&self, action: &str) -> Result<()> {
        let script = workspace_root().join("e2e/env/control-plane.sh");
        let output = Command::new("bash")
            .arg(&script)
            .arg(action)
            .arg(&self.state_dir)
            .env("PGOP_ETCD_PORT", self.ports[0].to_string())
            .env("PGOP_ETCD_PEER_PORT", self.ports[1].to_string())
            .env("PGOP_APISERVER_PORT", self.ports[2].to_string())
            .output();
        stdout_of(output, &format!("control-plane.sh {action}")).map(|_| ())
    }

    pub async fn client(&self) -> Result<kube::Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Runs kubectl against the environment; fails with its stderr when it fails, or
    /// after two minutes (a `kubectl delete` waiting on a finalizer would wait forever).
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let output = Command::new("timeout")
            .args(["120", "kubectl"])
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output();
        stdout_of(output, &format!("kubectl {}", args.join(" ")))
    }

    /// A kubeconfig that acts as the service account `namespace/name` (its token Secret,
    /// made by the controller-manager), to run a process with exactly its RBAC.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
        let client = self.client().await?;
        let accounts: kube::Api<ServiceAccount> = kube::Api::namespaced(client.clone(), namespace);
        let secrets: kube::Api<Secret> = kube::Api::namespaced(client, namespace);
        let token = crate::wait::until(
            &format!("the token of service account {namespace}/{name}"),
            Duration::from_secs(30),
            || async {
                let Some(account) = accounts.get_opt(name).await? else {
                    return Ok(None);
                };
                let Some(secret) = account
                    .secrets
                    .unwrap_or_default()
                    .into_iter()
                    .find_map(|r| r.name)
                else {
                    return Ok(None);
                };
                let token = secrets
                    .get_opt(&secret)
                    .await?
                    .and_then(|s| s.data?.remove("token"));
                Ok(token.map(|t| String::from_utf8_lossy(&t.0).into_owned()))
            },
        )
        .await?;
        let path = self
            .state_dir
            .join(format!("kubeconfig-{namespace}-{name}"));
        std::fs::copy(&self.kubeconfig, &path)?;
        let user = self.kubectl(&[
            "config",
            "view",
            "-o",
            "jsonpath={.contexts[0].context.user}",
        ])?;
        let output = Command::new("kubectl")
            .args(["config", "set-credentials", user.trim(), "--token", &token])
            .env("KUBECONFIG", &path)
            .output();
        stdout_of(output, "kubectl config set-credentials")?;
        Ok(path)
    }

    /// `kubectl apply -n namespace -f -` with `manifest` on standard input.
    pub fn apply(&self, namespace: &str, manifest: &str) -> Result<String> {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .args(["apply", "-n", namespace, "-f", "-"])
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(manifest.as_bytes())?;
        stdout_of(child.wait_with_output(), "kubectl apply")
    }

    /// The environment's own processes by name (etcd, kube-apiserver, kube-controller-manager,
    /// kube-scheduler, the kubelets), for measuring what they cost.
    pub fn processes(&self) -> Vec<(String, u32)> {
        let mut found: Vec<(String, u32)> = std::fs::read_dir(self.state_dir.join("pids"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let path = entry.path();
                let name = path.file_stem()?.to_str()?.to_string();
                let pid = std::fs::read_to_string(&path).ok()?.trim().parse().ok()?;
                Some((name, pid))
            })
            .collect();
        found.sort();
        let kubelets = self.kubelets.lock().unwrap_or_else(|e| e.into_inner());
        for (i, child) in kubelets.iter().enumerate() {
            let name = if i == 0 { "kubelet" } else { "kubelet-sim" };
            found.push((name.to_string(), child.id()));
        }
        found
    }

    /// Stops the kubelets (their pods' processes with them) and the control plane.
    pub fn stop(&self) {
        let mut kubelets = self.kubelets.lock().unwrap_or_else(|e| e.into_inner());
        if kubelets.is_empty() {
            return;
        }
        for child in kubelets.iter() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        for child in kubelets.iter_mut() {
            wait_or_kill(child, Duration::from_secs(60));
        }
        kubelets.clear();
        if let Err(e) = self.control_plane("down") {
            eprintln!("[e2e] {e}");
        }
    }
}

impl Drop for Environment {
    fn drop(&mut self) {
        self.stop();
    }
}
