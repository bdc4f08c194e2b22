//! A container's own view of the machine: a mount namespace in which its volumes, its image's
//! binaries and its `/etc/resolv.conf` and `/etc/hosts` are bind-mounted where the container
//! expects them, as a container runtime would, and a UTS namespace with the pod's host name.
//! The rest of the machine's file system stays visible (there is no image root file system to
//! pivot into); with `readOnlyRootFilesystem` the machine's root mount is read-only inside.
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{chdir, setgid, setgroups, sethostname, setuid, Gid, Uid};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the source of the mount at {target} does not exist: {source_path}")]
    SourceMissing {
        target: PathBuf,
        source_path: PathBuf,
    },
    #[error("creating the mount point {path}: {error}")]
    MountPoint {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0} holds a NUL byte")]
    NulByte(PathBuf),
}

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
    /// The pod's host name (`gethostname` inside the container).
    pub hostname: String,
    /// The container's `workingDir`, entered after the mounts.
    pub working_dir: Option<PathBuf>,
    /// `readOnlyRootFilesystem`: the machine's root mount is read-only inside.
    pub read_only_root: bool,
    /// `allowPrivilegeEscalation: false`: no_new_privs, so no setuid binary gains rights.
    pub no_new_privileges: bool,
}

impl Sandbox {
    /// The binds in the order they must be mounted: a mount inside another mount's target
    /// (a Secret volume below an emptyDir, say) after it.
    pub(crate) fn ordered(&self) -> Vec<Bind> {
        let mut binds = self.binds.clone();
        binds.sort_by_key(|b| b.target.components().count());
        binds
    }

    /// Where a bind's mount point is on this machine once the binds before it are mounted:
    /// below the source of the innermost earlier bind that contains it, else the path itself.
    pub(crate) fn mount_point_on_host(earlier: &[Bind], target: &Path) -> PathBuf {
        earlier
            .iter()
            .filter_map(|b| target.strip_prefix(&b.target).ok().map(|rest| (b, rest)))
            .max_by_key(|(b, _)| b.target.components().count())
            .map(|(b, rest)| b.source.join(rest))
            .unwrap_or_else(|| target.to_path_buf())
    }

    /// Checks every source and creates missing mount points where the mount will look for
    /// them: an empty directory, or an empty file where the source is a file. The container
    /// has no root file system of its own to hold them, so mount points outside every volume
    /// are created on the machine itself.
    pub(crate) fn create_mount_points(&self) -> Result<(), SandboxError> {
        let ordered = self.ordered();
        for (i, bind) in ordered.iter().enumerate() {
            if !bind.source.exists() {
                return Err(SandboxError::SourceMissing {
                    target: bind.target.clone(),
                    source_path: bind.source.clone(),
                });
            }
            let path = Self::mount_point_on_host(&ordered[..i], &bind.target);
            if path.exists() {
                continue;
            }
            let fail = |error| SandboxError::MountPoint {
                path: path.clone(),
                error,
            };
            if bind.source.is_dir() {
                std::fs::create_dir_all(&path).map_err(fail)?;
            } else {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(fail)?;
                }
                std::fs::File::create(&path).map_err(fail)?;
            }
        }
        Ok(())
    }

    /// What the child needs after fork, prepared before it (no allocation after fork).
    pub(crate) fn entry(&self, user: Option<(u32, u32)>) -> Result<Entry, SandboxError> {
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes()).map_err(|_| SandboxError::NulByte(p.into()))
        };
        let binds = self
            .ordered()
            .iter()
            .map(|b| Ok((c(&b.source)?, c(&b.target)?, b.read_only)))
            .collect::<Result<Vec<_>, SandboxError>>()?;
        Ok(Entry {
            binds,
            hostname: OsString::from(&self.hostname),
            working_dir: self.working_dir.as_deref().map(c).transpose()?,
            read_only_root: self.read_only_root,
            no_new_privileges: self.no_new_privileges,
            user,
        })
    }
}

/// The sandbox as the child process enters it.
pub struct Entry {
    binds: Vec<(CString, CString, bool)>,
    hostname: OsString,
    working_dir: Option<CString>,
    read_only_root: bool,
    no_new_privileges: bool,
    user: Option<(u32, u32)>,
}

impl Entry {
    /// Runs in the forked child before exec: private mount and UTS namespaces with the
    /// binds and the host name, then the container's user (dropped last: mounting needs
    /// root), then its working directory. System calls only, on data prepared before fork.
    pub(crate) fn enter(&self) -> std::io::Result<()> {
        let none: Option<&str> = None;
        unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)?;
        // Nothing mounted here may propagate back to the machine's namespace.
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)?;
        if self.read_only_root {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(none, "/", none, flags, none)?;
        }
        for (source, target, read_only) in &self.binds {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
            mount(
                Some(source.as_c_str()),
                target.as_c_str(),
                none,
                flags,
                none,
            )?;
            if *read_only {
                let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                mount(none, target.as_c_str(), none, flags, none)?;
            }
        }
        if !self.hostname.is_empty() {
            sethostname(&self.hostname)?;
        }
        if self.no_new_privileges {
            nix::sys::prctl::set_no_new_privs()?;
        }
        if let Some((uid, gid)) = self.user {
            let gid = Gid::from_raw(gid);
            setgroups(&[gid])?;
            setgid(gid)?;
            setuid(Uid::from_raw(uid))?;
        }
        if let Some(dir) = &self.working_dir {
            chdir(dir.as_c_str())?;
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
            ..Default::default()
        };
        let order: Vec<PathBuf> = sandbox.ordered().into_iter().map(|b| b.target).collect();
        let position = |p: &str| order.iter().position(|t| t == Path::new(p)).unwrap();
        assert!(position("/var/run") < position("/var/run/secrets/kubernetes.io/serviceaccount"));
        assert_eq!(order.len(), 3);
    }

    #[test]
    fn a_mount_point_inside_an_earlier_mount_is_in_its_source() {
        let earlier = [bind("/h/empty-dir", "/data"), bind("/h/other", "/data/x")];
        let cases = [
            ("/data/conf", "/h/empty-dir/conf"),
            ("/data/x/y", "/h/other/y"),
            ("/etc/hosts", "/etc/hosts"),
            ("/database", "/database"),
        ];
        for (target, want) in cases {
            assert_eq!(
                Sandbox::mount_point_on_host(&earlier, Path::new(target)),
                PathBuf::from(want),
                "{target}"
            );
        }
    }

    #[test]
    fn missing_mount_points_are_created_where_the_mount_looks_for_them() {
        let tmp = std::env::temp_dir().join(format!("pgop-sandbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("src/dir")).unwrap();
        std::fs::create_dir_all(tmp.join("src/empty-dir")).unwrap();
        std::fs::write(tmp.join("src/file"), "x").unwrap();
        let p = |s: &str| tmp.join(s).display().to_string();
        let sandbox = Sandbox {
            binds: vec![
                bind(&p("src/dir"), &p("in/a/dir")),
                bind(&p("src/file"), &p("in/etc/file")),
                bind(&p("src/empty-dir"), &p("in/data")),
                bind(&p("src/dir"), &p("in/data/conf")),
            ],
            ..Default::default()
        };
        sandbox.create_mount_points().unwrap();
        assert!(tmp.join("in/a/dir").is_dir());
        assert!(tmp.join("in/etc/file").is_file());
        assert!(
            tmp.join("src/empty-dir/conf").is_dir(),
            "the nested mount point is inside the outer mount's source"
        );
        assert!(!tmp.join("in/data/conf").exists());

        let missing = Sandbox {
            binds: vec![bind(&p("src/nothing"), &p("in/nothing"))],
            ..Default::default()
        };
        assert!(matches!(
            missing.create_mount_points(),
            Err(SandboxError::SourceMissing { .. })
        ));
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
