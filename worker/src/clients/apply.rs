//! Writes with one field manager, and only when something differs: a reconcile of a
//! cluster that is in sync sends no write at all, and no read either when the watcher
//! reported the object as pgop left it ([`Seen`]).
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams, TypeMeta};
use kube::{Api, Client, Resource};
use pgop_common::applied::LAST_APPLIED;
pub use pgop_common::applied::{content_hash, is_subset, APPLIED_HASH};
use pgop_common::crd::Postgresql;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::cache::children::Seen;

/// The one field manager of every pgop write.
pub const FIELD_MANAGER: &str = "pgop";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Unchanged,
    Written,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{kind} {name}: {source}")]
    Kube {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("{kind} without a name")]
    Unnamed { kind: String },
    #[error("{kind} {name} does not serialize: {source}")]
    Serialize {
        kind: String,
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

fn hash_of(target: &Target, object: &impl Serialize) -> Result<String, ApplyError> {
    let json = serde_json::to_string(object).map_err(|e| target.serialize(e))?;
    Ok(content_hash(&json))
}

/// A namespaced Kubernetes object pgop writes.
pub trait Object:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Serialize
    + DeserializeOwned
    + Clone
    + Debug
{
}

impl<K> Object for K where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug
{
}

/// The object a write is about, for error messages.
struct Target {
    kind: String,
    name: String,
}

impl Target {
    fn of<K: Resource<DynamicType = ()>>(object: &K) -> Result<Self, ApplyError> {
        let kind = K::kind(&()).into_owned();
        match object.meta().name.clone() {
            Some(name) => Ok(Self { kind, name }),
            None => Err(ApplyError::Unnamed { kind }),
        }
    }

    fn kube(&self, source: kube::Error) -> ApplyError {
        ApplyError::Kube {
            kind: self.kind.clone(),
            name: self.name.clone(),
            source,
        }
    }

    fn serialize(&self, source: serde_json::Error) -> ApplyError {
        ApplyError::Serialize {
            kind: self.kind.clone(),
            name: self.name.clone(),
            source,
        }
    }
}

/// Server-side apply of `desired` unless the live object already matches it: no request at
/// all when `seen` shows the object as pgop applied it.
pub(crate) async fn apply<K: Object>(
    api: &Api<K>,
    desired: &K,
    seen: &Seen,
) -> Result<Applied, ApplyError> {
    apply_adjusted(api, desired, seen, |_, _| {}).await
}

/// [`apply`], with `adjust` fitting the desired object to the live one first (e.g. keeping
/// fields Kubernetes does not let change).
pub(crate) async fn apply_adjusted<K: Object>(
    api: &Api<K>,
    desired: &K,
    seen: &Seen,
    adjust: impl FnOnce(&mut K, &K),
) -> Result<Applied, ApplyError> {
    let target = Target::of(desired)?;
    // Hashed before the adjustment: what was taken from the live object is no change.
    let hash = hash_of(&target, desired)?;
    if seen.as_applied(&hash) {
        return Ok(Applied::Unchanged);
    }
    if seen.absent() {
        if let Some(done) = create_unread(api, &target, desired, &hash).await {
            return done;
        }
    }
    let live = api
        .get_opt(&target.name)
        .await
        .map_err(|e| target.kube(e))?;
    let mut desired = desired.clone();
    if let Some(live) = &live {
        adjust(&mut desired, live);
    }
    write_if_changed(api, &target, desired, hash, live).await
}

/// [`apply`] of `desired` under another version of its API group with the same schema, the
/// one the cluster serves: e.g. a policy/v1 PodDisruptionBudget as policy/v1beta1 on
/// Kubernetes 1.20.
pub(crate) async fn apply_as<K: Object>(
    client: &kube::Client,
    namespace: &str,
    desired: &K,
    version: &str,
    seen: &Seen,
) -> Result<Applied, ApplyError> {
    let (api, target) = versioned_api::<K>(client, namespace, desired, version)?;
    let mut object: DynamicObject = serde_json::to_value(desired)
        .and_then(serde_json::from_value)
        .map_err(|e| target.serialize(e))?;
    object.types = Some(TypeMeta {
        api_version: api_version::<K>(version),
        kind: target.kind.clone(),
    });
    let hash = hash_of(&target, &object)?;
    if seen.as_applied(&hash) {
        return Ok(Applied::Unchanged);
    }
    if seen.absent() {
        if let Some(done) = create_unread(&api, &target, &object, &hash).await {
            return done;
        }
    }
    let live = api
        .get_opt(&target.name)
        .await
        .map_err(|e| target.kube(e))?;
    write_if_changed(&api, &target, object, hash, live).await
}

/// An object reported absent is applied without reading it first. None when it existed
/// after all in a form the write could not change (a report that lags, an immutable field):
/// the caller reads it and compares.
async fn create_unread<K>(
    api: &Api<K>,
    target: &Target,
    desired: &K,
    hash: &str,
) -> Option<Result<Applied, ApplyError>>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    match write_if_changed(api, target, desired.clone(), hash.to_string(), None).await {
        Err(ApplyError::Kube {
            source: kube::Error::Api(e),
            ..
        }) if matches!(e.code, 409 | 422) => None,
        done => Some(done),
    }
}

/// Deletes the object `name` of `K`'s kind under `version` if it exists: an absent one
/// costs a read, never a write, and nothing when `seen` reports it absent.
pub(crate) async fn delete_as<K: Object>(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    version: &str,
    seen: &Seen,
) -> Result<Applied, ApplyError> {
    if seen.absent() {
        return Ok(Applied::Unchanged);
    }
    let resource = versioned_resource::<K>(version);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let error = |source| ApplyError::Kube {
        kind: resource.kind.clone(),
        name: name.to_string(),
        source,
    };
    if api.get_metadata_opt(name).await.map_err(error)?.is_none() {
        return Ok(Applied::Unchanged);
    }
    match api
        .delete(name, &kube::api::DeleteParams::background())
        .await
    {
        Ok(_) => Ok(Applied::Written),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Applied::Unchanged),
        Err(source) => Err(error(source)),
    }
}

fn api_version<K: Object>(version: &str) -> String {
    match K::group(&()).as_ref() {
        "" => version.to_string(),
        group => format!("{group}/{version}"),
    }
}

fn versioned_resource<K: Object>(version: &str) -> ApiResource {
    let mut resource = ApiResource::erase::<K>(&());
    resource.version = version.to_string();
    resource.api_version = api_version::<K>(version);
    resource
}

fn versioned_api<K: Object>(
    client: &kube::Client,
    namespace: &str,
    desired: &K,
    version: &str,
) -> Result<(Api<DynamicObject>, Target), ApplyError> {
    let target = Target::of(desired)?;
    let resource = versioned_resource::<K>(version);
    Ok((
        Api::namespaced_with(client.clone(), namespace, &resource),
        target,
    ))
}

/// Annotates `desired` with its hash and with itself as applied, for the watcher to judge
/// the live object by (see `pgop_common::applied`).
fn stamp<K: Resource + Serialize>(desired: &mut K, hash: String) -> Result<(), serde_json::Error> {
    let annotations = desired
        .meta_mut()
        .annotations
        .get_or_insert_with(Default::default);
    annotations.insert(APPLIED_HASH.to_string(), hash);
    annotations.remove(LAST_APPLIED);
    let mut applied = serde_json::to_value(&desired)?;
    without_credentials(&mut applied);
    let applied = applied.to_string();
    desired
        .meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(LAST_APPLIED.to_string(), applied);
    Ok(())
}

/// Drops the inline values of environment variables that hold credentials (the logical
/// backup's storage keys, a password in a manifest's `env`) from what goes into
/// `pgop/last-applied`: metadata is readable more widely than a pod template. They are then
/// not compared for drift; a change of them changes the hash all the same.
fn without_credentials(value: &mut Value) {
    const SENSITIVE: [&str; 5] = ["SECRET", "PASSWORD", "TOKEN", "KEY", "CREDENTIAL"];
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                if let (true, Value::Array(vars)) = (key == "env", &mut *inner) {
                    for var in vars.iter_mut().filter_map(|v| v.as_object_mut()) {
                        let name = var
                            .get("name")
                            .and_then(|n| n.as_str())
                            .unwrap_or_default()
                            .to_ascii_uppercase();
                        if SENSITIVE.iter().any(|s| name.contains(s)) {
                            var.remove("value");
                        }
                    }
                }
                without_credentials(inner);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(without_credentials),
        _ => {}
    }
}

/// The common end of every apply: stamp the content hash, compare with `live`, and
/// server-side apply only when something differs.
async fn write_if_changed<K>(
    api: &Api<K>,
    target: &Target,
    mut desired: K,
    hash: String,
    live: Option<K>,
) -> Result<Applied, ApplyError>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    stamp(&mut desired, hash).map_err(|e| target.serialize(e))?;
    if let Some(live) = live {
        let desired_json = serde_json::to_value(&desired).map_err(|e| target.serialize(e))?;
        let live_json = serde_json::to_value(&live).map_err(|e| target.serialize(e))?;
        if is_subset(&desired_json, &live_json) {
            return Ok(Applied::Unchanged);
        }
    }
    api.patch(
        &target.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await
    .map_err(|e| target.kube(e))?;
    Ok(Applied::Written)
}

/// Creates `desired` when no object of its name exists; an existing one is left as it is
/// (the pod service account is not synced, Patroni owns the Endpoints): no request when
/// `seen` reports it.
pub(crate) async fn create_if_absent<K: Object>(
    api: &Api<K>,
    desired: &K,
    seen: &Seen,
) -> Result<Applied, ApplyError> {
    let target = Target::of(desired)?;
    if seen.exists() {
        return Ok(Applied::Unchanged);
    }
    if seen.absent() {
        // Reported absent: created without a read (one created meanwhile answers 409).
        return create(api, &target, desired).await;
    }
    let name = &target.name;
    if api
        .get_metadata_opt(name)
        .await
        .map_err(|e| target.kube(e))?
        .is_some()
    {
        return Ok(Applied::Unchanged);
    }
    create(api, &target, desired).await
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    }
}

async fn create<K: Object>(
    api: &Api<K>,
    target: &Target,
    desired: &K,
) -> Result<Applied, ApplyError> {
    match api.create(&post_params(), desired).await {
        Ok(_) => Ok(Applied::Written),
        // Created meanwhile by someone else (a previous owner's last write): keep theirs.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Applied::Unchanged),
        Err(e) => Err(target.kube(e)),
    }
}

/// Creates `desired` when absent, and otherwise keeps only its labels in sync: credentials
/// are never overwritten, but a label somebody changed or removed is put back (a
/// server-side apply of the metadata alone).
pub(crate) async fn create_or_relabel<K: Object>(
    api: &Api<K>,
    desired: &K,
    seen: &Seen,
) -> Result<Applied, ApplyError> {
    let target = Target::of(desired)?;
    let labels = serde_json::json!({"metadata": {"labels": desired.meta().labels}});
    let hash = content_hash(&labels.to_string());
    if seen.as_applied(&hash) {
        return Ok(Applied::Unchanged);
    }
    let annotations = [
        (APPLIED_HASH.to_string(), hash),
        (LAST_APPLIED.to_string(), labels.to_string()),
    ];
    let annotated = || {
        let mut desired = desired.clone();
        desired
            .meta_mut()
            .annotations
            .get_or_insert_with(Default::default)
            .extend(annotations.clone());
        desired
    };
    if seen.absent() {
        // Reported absent: created without a read; one that exists after all is compared.
        match api.create(&post_params(), &annotated()).await {
            Ok(_) => return Ok(Applied::Written),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(target.kube(e)),
        }
    }
    let live = api
        .get_metadata_opt(&target.name)
        .await
        .map_err(|e| target.kube(e))?;
    let Some(live) = live else {
        return create(api, &target, &annotated()).await;
    };
    let mut metadata = kube::api::ObjectMeta {
        name: Some(target.name.clone()),
        labels: desired.meta().labels.clone(),
        annotations: Some(annotations.into_iter().collect()),
        ..Default::default()
    };
    let wanted = serde_json::to_value(&metadata).map_err(|e| target.serialize(e))?;
    let have = serde_json::to_value(&live.metadata).map_err(|e| target.serialize(e))?;
    if is_subset(&wanted, &have) {
        return Ok(Applied::Unchanged);
    }
    metadata.namespace = desired.meta().namespace.clone();
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": metadata,
    });
    api.patch(
        &target.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|e| target.kube(e))?;
    Ok(Applied::Written)
}

/// The `postgresql` resource without its types: whatever the API server admits must be
/// written and read back, including manifests pgop's types refuse (a response that does not
/// fit the types would fail a write that succeeded, and kube-client would log the object).
pub fn postgresql_api(client: &Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        namespace,
        &ApiResource::erase::<Postgresql>(&()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn credentials_stay_out_of_the_last_applied_annotation() {
        let mut object = json!({"spec": {"template": {"spec": {"containers": [{"env": [
            {"name": "AWS_SECRET_ACCESS_KEY", "value": "s3-secret"},
            {"name": "PGPASSWORD_SUPERUSER", "value": "pw"},
            {"name": "LOGICAL_BACKUP_S3_BUCKET", "value": "bucket"},
            {"name": "SCALYR_API_KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
        ]}]}}}});
        without_credentials(&mut object);
        let text = object.to_string();
        assert!(
            !text.contains("s3-secret") && !text.contains("\"pw\""),
            "{text}"
        );
        assert!(
            text.contains("bucket") && text.contains("secretKeyRef"),
            "{text}"
        );
    }

    mod request_sequences {
        use super::*;
        use crate::clients::mock_api::{client, Exchange};
        use k8s_openapi::api::core::v1::{ConfigMap, Secret};
        use pgop_proto::v1::{ChildDrift, ChildState};

        const PATH: &str = "/api/v1/namespaces/ns/configmaps/cm";

        fn desired() -> ConfigMap {
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "cm", "namespace": "ns", "labels": {"team": "acid"}},
                "data": {"a": "1"}
            }))
            .unwrap()
        }

        /// The object as the API server returns it after pgop applied `desired`: with the
        /// content hash and what the server fills in.
        fn live(data: Value) -> Value {
            let mut applied = desired();
            stamp(&mut applied, hash()).unwrap();
            let mut live = serde_json::to_value(applied).unwrap();
            live["data"] = data;
            live["metadata"]["uid"] = json!("u-1");
            live["metadata"]["resourceVersion"] = json!("7");
            live["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            live
        }

        fn hash() -> String {
            let desired = desired();
            hash_of(&Target::of(&desired).unwrap(), &desired).unwrap()
        }

        /// What the watcher reports of the object.
        fn reported(hash: &str, drift: ChildDrift) -> Seen {
            Seen::Present(ChildState {
                namespace: "ns".into(),
                kind: "ConfigMap".into(),
                name: "cm".into(),
                applied_hash: hash.into(),
                drift: drift as i32,
                ..ChildState::default()
            })
        }

        #[tokio::test]
        async fn an_object_reported_as_applied_costs_no_request() {
            let (c, server) = client(vec![]);
            let seen = reported(&hash(), ChildDrift::InSync);
            assert_eq!(
                apply(&api(c.clone()), &desired(), &seen).await.unwrap(),
                Applied::Unchanged
            );
            assert_eq!(
                create_if_absent(&api(c.clone()), &desired(), &seen)
                    .await
                    .unwrap(),
                Applied::Unchanged
            );
            assert_eq!(
                delete_as::<ConfigMap>(&c, "ns", "cm", "v1", &Seen::Absent)
                    .await
                    .unwrap(),
                Applied::Unchanged
            );
            drop(c);
            assert!(server.await.unwrap().is_empty());
        }

        #[tokio::test]
        async fn a_drifted_or_outdated_report_is_read_and_repaired() {
            for seen in [
                reported(&hash(), ChildDrift::Drifted),
                reported("an older desired object", ChildDrift::InSync),
                reported(&hash(), ChildDrift::Unknown),
            ] {
                let (c, server) = client(vec![
                    Exchange::new("GET", PATH, 200, live(json!({"a": "changed by hand"}))),
                    Exchange::new("PATCH", PATH, 200, live(json!({"a": "1"}))),
                ]);
                assert_eq!(
                    apply(&api(c), &desired(), &seen).await.unwrap(),
                    Applied::Written,
                    "{seen:?}"
                );
                let requests = server.await.unwrap();
                assert_eq!(requests.len(), 2, "{seen:?}");
                let body = requests[1].body.as_ref().unwrap();
                let applied: Value = serde_json::from_str(
                    body["metadata"]["annotations"][LAST_APPLIED]
                        .as_str()
                        .unwrap(),
                )
                .unwrap();
                assert_eq!(applied["data"], json!({"a": "1"}));
                assert!(applied["metadata"]["annotations"][LAST_APPLIED].is_null());
                assert_eq!(
                    pgop_common::applied::judge(&live(json!({"a": "1"}))),
                    pgop_common::applied::Drift::InSync,
                    "the watcher judges what pgop applied as in sync"
                );
            }
        }

        #[tokio::test]
        async fn an_object_reported_absent_is_written_without_a_read() {
            let collection = "/api/v1/namespaces/ns/configmaps";
            let (c, server) = client(vec![
                Exchange::new("PATCH", PATH, 201, live(json!({"a": "1"}))),
                Exchange::new("POST", collection, 201, live(json!({"a": "1"}))),
            ]);
            assert_eq!(
                apply(&api(c.clone()), &desired(), &Seen::Absent)
                    .await
                    .unwrap(),
                Applied::Written
            );
            assert_eq!(
                create_if_absent(&api(c.clone()), &desired(), &Seen::Absent)
                    .await
                    .unwrap(),
                Applied::Written
            );
            drop(c);
            let requests = server.await.unwrap();
            assert_eq!(requests.len(), 2);
            assert!(requests[0].query.contains("fieldManager=pgop"));
        }

        #[tokio::test]
        async fn an_object_reported_absent_that_exists_after_all_is_read_and_compared() {
            let invalid = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "Invalid", "code": 422, "message": "field is immutable"});
            let (c, server) = client(vec![
                Exchange::new("PATCH", PATH, 422, invalid),
                Exchange::new("GET", PATH, 200, live(json!({"a": "1"}))),
            ]);
            let adjusted = std::sync::atomic::AtomicBool::new(false);
            let applied = apply_adjusted(&api(c), &desired(), &Seen::Absent, |_, _| {
                adjusted.store(true, std::sync::atomic::Ordering::Relaxed)
            })
            .await
            .unwrap();
            assert_eq!(applied, Applied::Unchanged, "in sync once read");
            assert!(adjusted.load(std::sync::atomic::Ordering::Relaxed));
            assert_eq!(server.await.unwrap().len(), 2);
        }

        #[tokio::test]
        async fn secrets_are_created_once_and_only_their_labels_kept() {
            let secret = || -> Secret {
                serde_json::from_value(json!({
                    "metadata": {"name": "s", "namespace": "ns", "labels": {"team": "acid"}},
                    "data": {"password": "c2VjcmV0"}
                }))
                .unwrap()
            };
            let path = "/api/v1/namespaces/ns/secrets/s";
            let meta = |labels: Value, annotations: Value| {
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                    "metadata": {"name": "s", "namespace": "ns", "labels": labels,
                    "annotations": annotations}})
            };
            // Reported absent: created with its labels as applied, without a read.
            let (c, server) = client(vec![Exchange::new(
                "POST",
                "/api/v1/namespaces/ns/secrets",
                201,
                json!({}),
            )]);
            let api: Api<Secret> = Api::namespaced(c, "ns");
            assert_eq!(
                create_or_relabel(&api, &secret(), &Seen::Absent)
                    .await
                    .unwrap(),
                Applied::Written
            );
            drop(api);
            let created = server.await.unwrap()[0].body.clone().unwrap();
            assert_eq!(created["data"]["password"], "c2VjcmV0");
            let annotations = created["metadata"]["annotations"].clone();
            let hash = annotations[APPLIED_HASH].as_str().unwrap().to_string();

            // A label changed by hand: the metadata alone is applied, never the data.
            let (c, server) = client(vec![
                Exchange::new(
                    "GET",
                    path,
                    200,
                    meta(json!({"team": "x"}), annotations.clone()),
                ),
                Exchange::new("PATCH", path, 200, json!({})),
            ]);
            let api: Api<Secret> = Api::namespaced(c, "ns");
            let seen = Seen::Present(ChildState {
                kind: "Secret".into(),
                applied_hash: hash.clone(),
                drift: ChildDrift::Drifted as i32,
                ..ChildState::default()
            });
            assert_eq!(
                create_or_relabel(&api, &secret(), &seen).await.unwrap(),
                Applied::Written
            );
            drop(api);
            let patch = server.await.unwrap()[1].body.clone().unwrap();
            assert_eq!(patch["metadata"]["labels"], json!({"team": "acid"}));
            assert!(patch.get("data").is_none(), "{patch}");

            // In sync, as read or as reported.
            let (c, server) = client(vec![Exchange::new(
                "GET",
                path,
                200,
                meta(json!({"team": "acid", "extra": "kept"}), annotations),
            )]);
            let api: Api<Secret> = Api::namespaced(c, "ns");
            assert_eq!(
                create_or_relabel(&api, &secret(), &Seen::Unobserved)
                    .await
                    .unwrap(),
                Applied::Unchanged
            );
            let in_sync = Seen::Present(ChildState {
                applied_hash: hash,
                drift: ChildDrift::InSync as i32,
                ..ChildState::default()
            });
            assert_eq!(
                create_or_relabel(&api, &secret(), &in_sync).await.unwrap(),
                Applied::Unchanged
            );
            drop(api);
            assert_eq!(server.await.unwrap().len(), 1);
        }

        fn api(c: kube::Client) -> Api<ConfigMap> {
            Api::namespaced(c, "ns")
        }

        #[tokio::test]
        async fn an_object_in_sync_costs_one_read_and_no_write() {
            let (c, server) = client(vec![Exchange::new(
                "GET",
                PATH,
                200,
                live(json!({"a": "1"})),
            )]);
            assert_eq!(
                apply(&api(c), &desired(), &Seen::Unobserved).await.unwrap(),
                Applied::Unchanged
            );
            assert_eq!(server.await.unwrap().len(), 1);
        }

        #[tokio::test]
        async fn a_missing_or_drifted_object_is_applied_server_side_with_its_hash() {
            for found in [
                Exchange::not_found("GET", PATH),
                Exchange::new("GET", PATH, 200, live(json!({"a": "changed by hand"}))),
            ] {
                let (c, server) = client(vec![
                    found,
                    Exchange::new("PATCH", PATH, 200, live(json!({"a": "1"}))),
                ]);
                assert_eq!(
                    apply(&api(c), &desired(), &Seen::Unobserved).await.unwrap(),
                    Applied::Written
                );
                let seen = server.await.unwrap();
                let patch = &seen[1];
                assert!(patch.query.contains("fieldManager=pgop"), "{}", patch.query);
                assert!(patch.query.contains("force=true"), "{}", patch.query);
                let body = patch.body.as_ref().unwrap();
                assert_eq!(body["data"], json!({"a": "1"}));
                assert!(body["metadata"]["annotations"][APPLIED_HASH].is_string());
            }
        }

        #[tokio::test]
        async fn create_if_absent_reads_metadata_and_never_overwrites() {
            let metadata = json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": "cm", "namespace": "ns", "resourceVersion": "7"}});
            let (c, server) = client(vec![Exchange::new("GET", PATH, 200, metadata)]);
            assert_eq!(
                create_if_absent(&api(c), &desired(), &Seen::Unobserved)
                    .await
                    .unwrap(),
                Applied::Unchanged
            );
            assert_eq!(
                server.await.unwrap().len(),
                1,
                "an existing object is not written"
            );

            let collection = "/api/v1/namespaces/ns/configmaps";
            let (c, server) = client(vec![
                Exchange::not_found("GET", PATH),
                Exchange::new("POST", collection, 201, live(json!({"a": "1"}))),
            ]);
            assert_eq!(
                create_if_absent(&api(c), &desired(), &Seen::Unobserved)
                    .await
                    .unwrap(),
                Applied::Written
            );
            assert_eq!(
                server.await.unwrap()[1].body.as_ref().unwrap()["data"],
                json!({"a": "1"})
            );

            // Created meanwhile by someone else: theirs is kept.
            let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "AlreadyExists", "code": 409, "message": "exists"});
            let (c, server) = client(vec![
                Exchange::not_found("GET", PATH),
                Exchange::new("POST", collection, 409, conflict),
            ]);
            assert_eq!(
                create_if_absent(&api(c), &desired(), &Seen::Unobserved)
                    .await
                    .unwrap(),
                Applied::Unchanged
            );
            assert_eq!(server.await.unwrap().len(), 2);
        }

        #[tokio::test]
        async fn deleting_an_absent_object_costs_one_read() {
            let (c, server) = client(vec![Exchange::not_found("GET", PATH)]);
            let applied = delete_as::<ConfigMap>(&c, "ns", "cm", "v1", &Seen::Unobserved)
                .await
                .unwrap();
            assert_eq!(applied, Applied::Unchanged);
            drop(c);
            assert_eq!(server.await.unwrap().len(), 1);
        }
    }
}
