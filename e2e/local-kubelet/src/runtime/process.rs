//! A container's process: spawned in its own process group with output appended to the
//! container log, stopped gracefully (SIGTERM to the group, SIGKILL after the grace period).
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::mpsc;

use super::sandbox::Sandbox;

#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// (uid, gid) to run as.
    pub user: Option<(u32, u32)>,
    pub log_path: PathBuf,
    /// A mount namespace of its own (containers of images run as the workspace's binaries).
    pub sandbox: Option<Sandbox>,
}

/// Sent when a process ends; `generation` tells a restarted container's runs apart.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub container: usize,
    pub generation: u64,
    pub code: i32,
    pub signal: Option<i32>,
}

#[derive(Debug)]
pub struct Process {
    pgid: Pid,
}

impl Process {
    /// Starts the process; its exit is reported on `exits`.
    pub fn spawn(
        spec: &ProcessSpec,
        container: usize,
        generation: u64,
        exits: mpsc::UnboundedSender<Exit>,
    ) -> std::io::Result<Self> {
        if let Some(parent) = spec.log_path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_path)?;
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(false);
        match &spec.sandbox {
            Some(sandbox) => {
                sandbox
                    .create_mount_points()
                    .map_err(std::io::Error::other)?;
                let entry = sandbox.entry(spec.user).map_err(std::io::Error::other)?;
                // SAFETY: `enter` makes only system calls (unshare, mount, set*id) on data
                // prepared before the fork; it allocates nothing and takes no lock.
                unsafe {
                    cmd.pre_exec(move || entry.enter());
                }
            }
            None => {
                if let Some((uid, gid)) = spec.user {
                    cmd.uid(uid).gid(gid);
                }
            }
        }
        let mut child = cmd.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("process exited before it was watched"))?;
        tokio::spawn(async move {
            let status = child.wait().await;
            use std::os::unix::process::ExitStatusExt;
            let (code, signal) = match status {
                Ok(s) => (
                    s.code().unwrap_or(128 + s.signal().unwrap_or(0)),
                    s.signal(),
                ),
                Err(_) => (-1, None),
            };
            let _ = exits.send(Exit {
                container,
                generation,
                code,
                signal,
            });
        });
        Ok(Self {
            pgid: Pid::from_raw(pid as i32),
        })
    }

    pub fn pgid(&self) -> i32 {
        self.pgid.as_raw()
    }

    pub fn signal(&self, signal: Signal) {
        let _ = killpg(self.pgid, signal);
    }

    /// Whether any process of the group is still alive.
    pub fn group_alive(pgid: i32) -> bool {
        killpg(Pid::from_raw(pgid), None).is_ok()
    }

    /// SIGTERM, then SIGKILL to whatever of the group is left after `grace`.
    pub async fn stop_group(pgid: i32, grace: Duration) {
        let group = Pid::from_raw(pgid);
        if killpg(group, Signal::SIGTERM).is_err() {
            return;
        }
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if !Self::group_alive(pgid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = killpg(group, Signal::SIGKILL);
    }
}

/// uid and gid of a local user.
pub fn lookup_user(name: &str) -> Option<(u32, u32)> {
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
}

/// Hands `path` and everything below it to `user`.
pub fn chown_tree(path: &std::path::Path, user: (u32, u32)) -> std::io::Result<()> {
    let (uid, gid) = user;
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), user)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::sandbox::{Bind, Sandbox};

    /// A sandboxed process sees its bind at the mount path, its own host name and its
    /// working directory; the machine sees neither.
    #[tokio::test]
    async fn a_sandboxed_process_sees_its_mounts_and_host_name() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("[not run] sandboxes need root (mount namespaces), as the kubelet does");
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI runs as root"
            );
            return;
        }
        let tmp = std::env::temp_dir().join(format!("pgop-sandboxed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("volume")).unwrap();
        std::fs::write(tmp.join("volume/secret"), "inside").unwrap();
        let target = tmp.join("mounted");
        let spec = ProcessSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "cat secret; echo; hostname; pwd".into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: "/".into(),
            user: None,
            log_path: tmp.join("log"),
            sandbox: Some(Sandbox {
                binds: vec![Bind {
                    source: tmp.join("volume"),
                    target: target.clone(),
                    read_only: true,
                }],
                hostname: "pod-a".into(),
                working_dir: Some(target.clone()),
                ..Default::default()
            }),
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        Process::spawn(&spec, 0, 1, tx).unwrap();
        let exit = rx.recv().await.unwrap();
        let log = std::fs::read_to_string(tmp.join("log")).unwrap();
        assert_eq!(exit.code, 0, "{log}");
        assert_eq!(
            log,
            format!("inside\npod-a\n{}\n", target.display()),
            "the bind, the host name and the working directory inside"
        );
        assert!(
            !target.join("secret").exists(),
            "the mount stays inside the container's namespace"
        );
        assert_ne!(
            nix::unistd::gethostname().unwrap().to_string_lossy(),
            "pod-a"
        );
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
