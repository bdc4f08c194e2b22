//! Storage for this machine: a default StorageClass whose claims get a directory each.
//! Pending claims get a PersistentVolume pre-bound to them (the controller-manager's binder
//! completes the binding), a resize request is reflected in the volume and the claim's
//! status, and a released volume is deleted together with its directory.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;

use crate::nodes::FIELD_MANAGER;
use crate::Shared;

pub const PROVISIONER: &str = "pgop.local/hostpath";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

pub fn desired_storage_class(name: &str) -> StorageClass {
    StorageClass {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            annotations: Some(
                [(
                    "storageclass.kubernetes.io/is-default-class".to_string(),
                    "true".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        provisioner: PROVISIONER.to_string(),
        allow_volume_expansion: Some(true),
        reclaim_policy: Some("Delete".to_string()),
        volume_binding_mode: Some("Immediate".to_string()),
        ..Default::default()
    }
}

/// The volume for a pending claim, or None when the claim needs none.
pub fn desired_volume(
    claim: &PersistentVolumeClaim,
    volumes_dir: &Path,
) -> Option<PersistentVolume> {
    let spec = claim.spec.as_ref()?;
    if spec.volume_name.as_deref().is_some_and(|v| !v.is_empty())
        || claim.metadata.deletion_timestamp.is_some()
    {
        return None;
    }
    let uid = claim.metadata.uid.clone()?;
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .cloned()?;
    let name = format!("pvc-{uid}");
    Some(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            annotations: Some([(PROVISIONED_BY.to_string(), PROVISIONER.to_string())].into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some([("storage".to_string(), size)].into()),
            access_modes: spec
                .access_modes
                .clone()
                .or_else(|| Some(vec!["ReadWriteOnce".into()])),
            storage_class_name: spec.storage_class_name.clone(),
            volume_mode: spec.volume_mode.clone(),
            persistent_volume_reclaim_policy: Some("Retain".into()),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: claim.metadata.namespace.clone(),
                name: claim.metadata.name.clone(),
                uid: Some(uid),
                ..Default::default()
            }),
            host_path: Some(HostPathVolumeSource {
                path: volumes_dir.join(&name).display().to_string(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            ..Default::default()
        }),
        status: None,
    })
}

/// The size a bound claim asks for when it is larger than what it has.
pub fn requested_growth(claim: &PersistentVolumeClaim) -> Option<Quantity> {
    let requested = claim
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")?;
    let current = claim.status.as_ref()?.capacity.as_ref()?.get("storage")?;
    (parse_bytes(&requested.0)? > parse_bytes(&current.0)?).then(|| requested.clone())
}

/// Bytes of a storage quantity (binary and decimal suffixes, plain numbers).
pub fn parse_bytes(q: &str) -> Option<u128> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let value: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => return None,
    };
    Some((value * factor) as u128)
}

pub async fn run(shared: Arc<Shared>) -> Result<(), kube::Error> {
    let client = shared.client.clone();
    let classes: Api<StorageClass> = Api::all(client.clone());
    let class = desired_storage_class(&shared.config.storage_class);
    classes
        .patch(
            &shared.config.storage_class,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&class),
        )
        .await?;
    let volumes_dir = shared.config.state_dir.join("volumes");
    std::fs::create_dir_all(&volumes_dir).map_err(|e| kube::Error::Service(Box::new(e)))?;

    let claims = watcher::watcher(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .applied_objects()
    .map(|c| Either::Claim(Box::new(c)));
    let volumes = watcher::watcher(
        Api::<PersistentVolume>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .filter_map(|e| async move {
        match e {
            Ok(Event::Apply(pv) | Event::InitApply(pv)) => Some(Either::Volume(Box::new(pv))),
            _ => None,
        }
    });
    let mut events = std::pin::pin!(futures::stream::select(claims, volumes));
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    loop {
        let event = tokio::select! {
            _ = shared.shutdown.cancelled() => return Ok(()),
            e = events.next() => e,
        };
        let result = match event {
            None => return Ok(()),
            Some(Either::Claim(claim)) => match *claim {
                Ok(claim) => on_claim(&client, &pvs, &claim, &volumes_dir).await,
                Err(e) => {
                    tracing::warn!("claim watch: {e}");
                    Ok(())
                }
            },
            Some(Either::Volume(pv)) => on_volume(&pvs, &pv).await,
        };
        if let Err(e) = result {
            tracing::warn!("storage: {e}");
        }
    }
}

enum Either {
    Claim(Box<Result<PersistentVolumeClaim, watcher::Error>>),
    Volume(Box<PersistentVolume>),
}

async fn on_claim(
    client: &kube::Client,
    pvs: &Api<PersistentVolume>,
    claim: &PersistentVolumeClaim,
    volumes_dir: &Path,
) -> Result<(), kube::Error> {
    if let Some(pv) = desired_volume(claim, volumes_dir) {
        let name = pv.metadata.name.clone().unwrap_or_default();
        match pvs.create(&PostParams::default(), &pv).await {
            Ok(_) => {
                tracing::info!(volume = %name, claim = ?claim.metadata.name, "provisioned volume")
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e),
        }
        return Ok(());
    }
    if let Some(size) = requested_growth(claim) {
        let volume = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .unwrap_or_default();
        let capacity = serde_json::json!({"spec": {"capacity": {"storage": size}}});
        pvs.patch(&volume, &PatchParams::default(), &Patch::Merge(&capacity))
            .await?;
        let namespace = claim.metadata.namespace.clone().unwrap_or_default();
        let name = claim.metadata.name.clone().unwrap_or_default();
        let status =
            serde_json::json!({"status": {"capacity": {"storage": size}, "conditions": null}});
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &namespace)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        tracing::info!(claim = %name, size = %size.0, "resized volume");
    }
    Ok(())
}

async fn on_volume(pvs: &Api<PersistentVolume>, pv: &PersistentVolume) -> Result<(), kube::Error> {
    let ours = pv
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROVISIONED_BY))
        .is_some_and(|p| p == PROVISIONER);
    let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
    if !ours || phase != Some("Released") {
        return Ok(());
    }
    let name = pv.metadata.name.clone().unwrap_or_default();
    if let Some(path) = pv
        .spec
        .as_ref()
        .and_then(|s| s.host_path.as_ref())
        .map(|h| PathBuf::from(&h.path))
    {
        let _ = std::fs::remove_dir_all(&path);
    }
    match pvs.delete(&name, &DeleteParams::default()).await {
        Ok(_) => tracing::info!(volume = %name, "deleted released volume"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(json: serde_json::Value) -> PersistentVolumeClaim {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn pending_claim_gets_a_prebound_volume_of_its_class_and_size() {
        let c = claim(serde_json::json!({
            "metadata": {"name": "pgdata-acid-0", "namespace": "default", "uid": "abc"},
            "spec": {"storageClassName": "standard", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
        }));
        let pv = desired_volume(&c, Path::new("/v")).unwrap();
        assert_eq!(pv.metadata.name.as_deref(), Some("pvc-abc"));
        let spec = pv.spec.unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("standard"));
        assert_eq!(spec.capacity.unwrap()["storage"], Quantity("1Gi".into()));
        assert_eq!(spec.host_path.unwrap().path, "/v/pvc-abc");
        let claim_ref = spec.claim_ref.unwrap();
        assert_eq!(
            (
                claim_ref.namespace.as_deref(),
                claim_ref.name.as_deref(),
                claim_ref.uid.as_deref()
            ),
            (Some("default"), Some("pgdata-acid-0"), Some("abc"))
        );
    }

    #[test]
    fn bound_or_deleting_claims_need_no_volume() {
        let bound = claim(
            serde_json::json!({"metadata": {"uid": "a"}, "spec": {"volumeName": "pvc-a", "resources": {"requests": {"storage": "1Gi"}}}}),
        );
        assert!(desired_volume(&bound, Path::new("/v")).is_none());
        let deleting = claim(
            serde_json::json!({"metadata": {"uid": "a", "deletionTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"resources": {"requests": {"storage": "1Gi"}}}}),
        );
        assert!(desired_volume(&deleting, Path::new("/v")).is_none());
    }

    #[test]
    fn growth_is_detected_across_units() {
        let cases = [
            ("2Gi", "1Gi", true),
            ("1Gi", "1Gi", false),
            ("1024Mi", "1Gi", false),
            ("1100M", "1Gi", true),
            ("500Mi", "1Gi", false),
        ];
        for (requested, current, grows) in cases {
            let c = claim(serde_json::json!({
                "spec": {"volumeName": "pv", "resources": {"requests": {"storage": requested}}},
                "status": {"capacity": {"storage": current}}
            }));
            assert_eq!(
                requested_growth(&c).is_some(),
                grows,
                "{requested} vs {current}"
            );
        }
    }
}
