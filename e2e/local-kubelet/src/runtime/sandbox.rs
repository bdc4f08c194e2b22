//! A container's own view of the file system: a mount namespace in which its volumes, its
//! image's binaries and its `/etc/resolv.conf` and `/etc/hosts` are bind-mounted where the
//! container expects them, as a container runtime would. The rest of the machine's file system
//! stays visible (there is no image root file system to pivot into).
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};

/// One bind mount: `source` on this machine appears at `target` inside the container.
#[derive(Debug, Clone, PartialEq)]
pub struct Bind {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sandbox {
    pub binds: Vec<Bind>,
}

impl Sandbox {
    /// The binds in the order they must be mounted: a mount inside another mount's target
    /// (a Secret volume below an emptyDir, say) after it.
    pub fn ordered(&self) -> Vec<Bind> {
        let mut binds = self.binds.clone();
        binds.sort_by_key(|b| b.target.components().count());
        binds
    }

    /// Creates missing mount points on this machine: an empty directory, or an empty file
    /// where the source is a file. Mount points must exist before a bind mount, and the
    /// container has no root file system of its own to hold them.
    pub fn create_mount_points(&self) -> std::io::Result<()> {
        for bind in &self.binds {
            if bind.target.exists() {
                continue;
            }
            if bind.source.is_dir() {
                std::fs::create_dir_all(&bind.target)?;
            } else {
                if let Some(parent) = bind.target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::File::create(&bind.target)?;
            }
        }
        Ok(())
    }

    /// What the child needs after fork, prepared before it (no allocation after fork).
    pub fn entry(&self, user: Option<(u32, u32)>) -> std::io::Result<Entry> {
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| std::io::Error::other(format!("{} holds a NUL byte", p.display())))
        };
        let binds = self
            .ordered()
            .iter()
            .map(|b| Ok((c(&b.source)?, c(&b.target)?, b.read_only)))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Entry { binds, user })
    }
}

/// The sandbox as the child process enters it.
pub struct Entry {
    binds: Vec<(CString, CString, bool)>,
    user: Option<(u32, u32)>,
}

impl Entry {
    /// Runs in the forked child before exec: a private mount namespace with the binds, then
    /// the container's user (dropped last: mounting needs root).
    pub fn enter(&self) -> std::io::Result<()> {
        let none: Option<&str> = None;
        unshare(CloneFlags::CLONE_NEWNS)?;
        // Nothing mounted here may propagate back to the machine's namespace.
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)?;
        for (source, target, read_only) in &self.binds {
            mount(
                Some(source.as_c_str()),
                target.as_c_str(),
                none,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                none,
            )?;
            if *read_only {
                mount(
                    none,
                    target.as_c_str(),
                    none,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    none,
                )?;
            }
        }
        if let Some((uid, gid)) = self.user {
            let gid = Gid::from_raw(gid);
            setgroups(&[gid])?;
            setgid(gid)?;
            setuid(Uid::from_raw(uid))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(source: &str, target: &str) -> Bind {
        Bind {
            source: source.into(),
            target: target.into(),
            read_only: false,
        }
    }

    #[test]
    fn nested_targets_are_mounted_after_their_parents() {
        let sandbox = Sandbox {
            binds: vec![
                bind("/s/token", "/var/run/secrets/kubernetes.io/serviceaccount"),
                bind("/s/etc/hosts", "/etc/hosts"),
                bind("/s/run", "/var/run"),
            ],
        };
        let order: Vec<PathBuf> = sandbox.ordered().into_iter().map(|b| b.target).collect();
        let position = |p: &str| order.iter().position(|t| t == Path::new(p)).unwrap();
        assert!(position("/var/run") < position("/var/run/secrets/kubernetes.io/serviceaccount"));
        assert_eq!(order.len(), 3);
    }

    #[test]
    fn missing_mount_points_are_created_as_the_source_kind() {
        let tmp = std::env::temp_dir().join(format!("pgop-sandbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("src/dir")).unwrap();
        std::fs::write(tmp.join("src/file"), "x").unwrap();
        let sandbox = Sandbox {
            binds: vec![
                bind(
                    &tmp.join("src/dir").display().to_string(),
                    &tmp.join("in/a/dir").display().to_string(),
                ),
                bind(
                    &tmp.join("src/file").display().to_string(),
                    &tmp.join("in/etc/file").display().to_string(),
                ),
            ],
        };
        sandbox.create_mount_points().unwrap();
        assert!(tmp.join("in/a/dir").is_dir());
        assert!(tmp.join("in/etc/file").is_file());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
