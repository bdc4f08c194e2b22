//! Pod volumes as host directories. Processes have no mount namespace, so every path a
//! container would see under a `volumeMount` is translated to the directory behind it.
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod, Volume};
use k8s_openapi::ByteString;

use super::env::ReferencedData;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume:?}: persistent volume claim {claim:?} is not bound")]
    ClaimNotBound { volume: String, claim: String },
    #[error("volume {volume:?}: {what} {name:?} not found")]
    SourceMissing {
        volume: String,
        what: &'static str,
        name: String,
    },
    #[error("volume {volume:?}: unsupported volume type")]
    Unsupported { volume: String },
    #[error("container mounts unknown volume {0:?}")]
    UnknownVolume(String),
    #[error("writing volume files under {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the kubelet needs to know to materialise a pod's volumes.
#[derive(Debug, Default)]
pub struct VolumeInputs {
    pub data: ReferencedData,
    /// Secret contents including binary values, for secret volumes.
    pub secret_files: BTreeMap<String, BTreeMap<String, ByteString>>,
    /// PVC name → host directory of the bound PersistentVolume.
    pub claim_dirs: BTreeMap<String, PathBuf>,
}

/// A container's view: mount path → host path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mounts(pub Vec<(PathBuf, PathBuf)>);

impl Mounts {
    /// The host path for a path inside the container (longest mount prefix wins); paths
    /// outside every mount are returned unchanged.
    pub fn translate(&self, container_path: &str) -> PathBuf {
        let path = Path::new(container_path);
        self.0
            .iter()
            .filter_map(|(mount, host)| {
                path.strip_prefix(mount)
                    .ok()
                    .map(|rest| (mount, host, rest))
            })
            .max_by_key(|(mount, _, _)| mount.as_os_str().len())
            .map(|(_, host, rest)| {
                if rest.as_os_str().is_empty() {
                    host.clone()
                } else {
                    host.join(rest)
                }
            })
            .unwrap_or_else(|| path.to_path_buf())
    }

    pub fn find_file(&self, file_name: &str) -> Option<PathBuf> {
        self.0
            .iter()
            .map(|(_, host)| host.join(file_name))
            .find(|p| p.is_file())
    }
}

/// Writes every volume of the pod under `pod_dir/volumes/` (or points at the claim's
/// directory) and returns volume name → host directory.
pub fn materialise(
    pod: &Pod,
    pod_dir: &Path,
    inputs: &VolumeInputs,
) -> Result<BTreeMap<String, PathBuf>, VolumeError> {
    let mut dirs = BTreeMap::new();
    for volume in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        let dir = materialise_one(
            pod,
            volume,
            &pod_dir.join("volumes").join(&volume.name),
            inputs,
        )?;
        dirs.insert(volume.name.clone(), dir);
    }
    Ok(dirs)
}

fn materialise_one(
    pod: &Pod,
    volume: &Volume,
    dir: &Path,
    inputs: &VolumeInputs,
) -> Result<PathBuf, VolumeError> {
    let name = &volume.name;
    if let Some(claim) = &volume.persistent_volume_claim {
        return inputs
            .claim_dirs
            .get(&claim.claim_name)
            .cloned()
            .ok_or_else(|| VolumeError::ClaimNotBound {
                volume: name.clone(),
                claim: claim.claim_name.clone(),
            });
    }
    if let Some(host) = &volume.host_path {
        return Ok(PathBuf::from(&host.path));
    }
    create_dir(dir)?;
    if volume.empty_dir.is_some() {
        // Writable by whichever user the containers run as, as Kubernetes makes it.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).map_err(
            |source| VolumeError::Io {
                path: dir.to_path_buf(),
                source,
            },
        )?;
        return Ok(dir.to_path_buf());
    }
    if let Some(secret) = &volume.secret {
        let secret_name = secret.secret_name.clone().unwrap_or_default();
        match inputs.secret_files.get(&secret_name) {
            Some(files) => write_keys(
                dir,
                files.iter().map(|(k, v)| (k.as_str(), v.0.as_slice())),
                secret.items.as_deref(),
                secret.default_mode,
            )?,
            None if secret.optional == Some(true) => {}
            None => {
                return Err(VolumeError::SourceMissing {
                    volume: name.clone(),
                    what: "secret",
                    name: secret_name,
                })
            }
        }
        return Ok(dir.to_path_buf());
    }
    if let Some(cm) = &volume.config_map {
        match inputs.data.config_maps.get(&cm.name) {
            Some(values) => write_keys(
                dir,
                values.iter().map(|(k, v)| (k.as_str(), v.as_bytes())),
                cm.items.as_deref(),
                cm.default_mode,
            )?,
            None if cm.optional == Some(true) => {}
            None => {
                return Err(VolumeError::SourceMissing {
                    volume: name.clone(),
                    what: "configmap",
                    name: cm.name.clone(),
                })
            }
        }
        return Ok(dir.to_path_buf());
    }
    if let Some(projected) = &volume.projected {
        for source in projected.sources.iter().flatten() {
            if let Some(secret) = &source.secret {
                if let Some(files) = inputs.secret_files.get(&secret.name) {
                    write_keys(
                        dir,
                        files.iter().map(|(k, v)| (k.as_str(), v.0.as_slice())),
                        secret.items.as_deref(),
                        projected.default_mode,
                    )?;
                }
            }
            if let Some(cm) = &source.config_map {
                if let Some(values) = inputs.data.config_maps.get(&cm.name) {
                    write_keys(
                        dir,
                        values.iter().map(|(k, v)| (k.as_str(), v.as_bytes())),
                        cm.items.as_deref(),
                        projected.default_mode,
                    )?;
                }
            }
            // serviceAccountToken sources need the TokenRequest API; the pod's token secret
            // (Kubernetes 1.20 still mounts one) serves the same purpose here.
        }
        return Ok(dir.to_path_buf());
    }
    if let Some(downward) = &volume.downward_api {
        for item in downward.items.iter().flatten() {
            if let Some(field) = &item.field_ref {
                let value =
                    super::env::field_value(pod, "", "", &field.field_path).unwrap_or_default();
                write_file(
                    &dir.join(&item.path),
                    value.as_bytes(),
                    item.mode.or(downward.default_mode),
                )?;
            }
        }
        return Ok(dir.to_path_buf());
    }
    Err(VolumeError::Unsupported {
        volume: name.clone(),
    })
}

fn write_keys<'a>(
    dir: &Path,
    values: impl Iterator<Item = (&'a str, &'a [u8])>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
) -> Result<(), VolumeError> {
    let values: BTreeMap<&str, &[u8]> = values.collect();
    match items {
        Some(items) => {
            for item in items {
                if let Some(v) = values.get(item.key.as_str()) {
                    write_file(&dir.join(&item.path), v, item.mode.or(default_mode))?;
                }
            }
        }
        None => {
            for (k, v) in values {
                write_file(&dir.join(k), v, default_mode)?;
            }
        }
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), VolumeError> {
    std::fs::create_dir_all(dir).map_err(|source| VolumeError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

fn write_file(path: &Path, content: &[u8], mode: Option<i32>) -> Result<(), VolumeError> {
    let io = |source| VolumeError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, content).map_err(io)?;
    let mode = mode.unwrap_or(0o644) as u32;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)
}

/// The container's mounts as (mount path, host path), with `subPath` applied.
pub fn container_mounts(
    container: &Container,
    volume_dirs: &BTreeMap<String, PathBuf>,
) -> Result<Mounts, VolumeError> {
    let mut mounts = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let dir = volume_dirs
            .get(&m.name)
            .ok_or_else(|| VolumeError::UnknownVolume(m.name.clone()))?;
        let host = match m.sub_path.as_deref() {
            Some(sub) if !sub.is_empty() => dir.join(sub),
            _ => dir.clone(),
        };
        mounts.push((PathBuf::from(&m.mount_path), host));
    }
    Ok(Mounts(mounts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translate_uses_longest_mount_prefix() {
        let mounts = Mounts(vec![
            (
                PathBuf::from("/home/postgres/pgdata"),
                PathBuf::from("/h/pvc-1"),
            ),
            (
                PathBuf::from("/home/postgres/pgdata/tls"),
                PathBuf::from("/h/tls"),
            ),
        ]);
        let cases = [
            ("/home/postgres/pgdata/pgroot", "/h/pvc-1/pgroot"),
            ("/home/postgres/pgdata", "/h/pvc-1"),
            ("/home/postgres/pgdata/tls/tls.crt", "/h/tls/tls.crt"),
            ("/home/postgres/pgdatax", "/home/postgres/pgdatax"),
            ("/etc/other", "/etc/other"),
        ];
        for (inside, host) in cases {
            assert_eq!(mounts.translate(inside), PathBuf::from(host), "{inside}");
        }
    }

    #[test]
    fn secret_and_config_map_volumes_are_written_with_items_and_modes() {
        let tmp = std::env::temp_dir().join(format!("pgop-vol-test-{}", std::process::id()));
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [], "volumes": [
                {"name": "tls", "secret": {"secretName": "tls-secret", "defaultMode": 0o600, "items": [{"key": "tls.key", "path": "keys/server.key"}]}},
                {"name": "cfg", "configMap": {"name": "cfg"}},
                {"name": "scratch", "emptyDir": {}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "pgdata-p"}}
            ]}
        }))
        .unwrap();
        let mut inputs = VolumeInputs::default();
        inputs.secret_files.insert(
            "tls-secret".into(),
            [
                ("tls.key".to_string(), ByteString(b"KEY".to_vec())),
                ("tls.crt".to_string(), ByteString(b"CRT".to_vec())),
            ]
            .into(),
        );
        inputs.data.config_maps.insert(
            "cfg".into(),
            [("a.conf".to_string(), "x=1".to_string())].into(),
        );
        inputs
            .claim_dirs
            .insert("pgdata-p".into(), PathBuf::from("/claims/pvc-9"));
        let dirs = materialise(&pod, &tmp, &inputs).unwrap();
        let key = dirs["tls"].join("keys/server.key");
        assert_eq!(std::fs::read(&key).unwrap(), b"KEY");
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            !dirs["tls"].join("tls.crt").exists(),
            "items limit the keys written"
        );
        assert_eq!(
            std::fs::read_to_string(dirs["cfg"].join("a.conf")).unwrap(),
            "x=1"
        );
        assert!(dirs["scratch"].is_dir());
        assert_eq!(
            std::fs::metadata(&dirs["scratch"])
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o777,
            "an emptyDir is writable by any container user"
        );
        assert_eq!(dirs["data"], PathBuf::from("/claims/pvc-9"));
        std::fs::remove_dir_all(&tmp).unwrap();

        inputs.claim_dirs.clear();
        assert!(matches!(
            materialise(&pod, &tmp, &inputs),
            Err(VolumeError::ClaimNotBound { .. })
        ));
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
