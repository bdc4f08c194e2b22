//! Writes with one field manager, and only when something differs: a reconcile of a
//! cluster that is in sync sends no write at all.
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams, TypeMeta};
use kube::{Api, Client, Resource};
use pgop_common::crd::Postgresql;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

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

/// Annotation with a hash of the desired object as pgop last applied it: when the desired
/// object changes, even by losing a field (which a comparison with the live object cannot
/// see), it is applied again, and server-side apply removes what pgop no longer sets.
pub const APPLIED_HASH: &str = "pgop/applied-hash";

/// True when every field set in `desired` has the same value in `live`. Lists must match
/// element for element: the server keeps their order. Fields the server fills in (defaults,
/// status, metadata) are ignored because `desired` does not set them; empty strings, lists
/// and maps, which the server drops, match a missing field; quantities match by value
/// (the server writes `1000m` as `1`).
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, dv)| match l.get(k) {
            Some(lv) => is_subset(dv, lv),
            None => is_empty(dv),
        }),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| is_subset(dv, lv))
        }
        (Value::String(d), Value::String(l)) => d == l || same_quantity(d, l),
        (d, l) => d == l || (is_empty(d) && l.is_null()),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn same_quantity(a: &str, b: &str) -> bool {
    use crate::builders::quantity::parse;
    matches!((parse(a), parse(b)), (Ok(x), Ok(y)) if x == y)
}

fn hash_of(target: &Target, object: &impl Serialize) -> Result<String, ApplyError> {
    let json = serde_json::to_string(object).map_err(|e| target.serialize(e))?;
    Ok(content_hash(&json))
}

/// FNV-1a of the object's JSON: stable across processes and versions of pgop.
pub fn content_hash(json: &str) -> String {
    let hash = json.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
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

/// Server-side apply of `desired` unless the live object already matches it.
pub async fn apply<K: Object>(api: &Api<K>, desired: &K) -> Result<Applied, ApplyError> {
    apply_adjusted(api, desired, |_, _| {}).await
}

/// [`apply`], with `adjust` fitting the desired object to the live one first (e.g. keeping
/// fields Kubernetes does not let change).
pub async fn apply_adjusted<K: Object>(
    api: &Api<K>,
    desired: &K,
    adjust: impl FnOnce(&mut K, &K),
) -> Result<Applied, ApplyError> {
    let target = Target::of(desired)?;
    let live = api
        .get_opt(&target.name)
        .await
        .map_err(|e| target.kube(e))?;
    // Hashed before the adjustment: what was taken from the live object is no change.
    let hash = hash_of(&target, desired)?;
    let mut desired = desired.clone();
    if let Some(live) = &live {
        adjust(&mut desired, live);
    }
    write_if_changed(api, &target, desired, hash, live).await
}

/// [`apply`] of `desired` under another version of its API group with the same schema, the
/// one the cluster serves: e.g. a policy/v1 PodDisruptionBudget as policy/v1beta1 on
/// Kubernetes 1.20.
pub async fn apply_as<K: Object>(
    client: &kube::Client,
    namespace: &str,
    desired: &K,
    version: &str,
) -> Result<Applied, ApplyError> {
    let (api, target) = versioned_api::<K>(client, namespace, desired, version)?;
    let mut object: DynamicObject = serde_json::to_value(desired)
        .and_then(serde_json::from_value)
        .map_err(|e| target.serialize(e))?;
    object.types = Some(TypeMeta {
        api_version: api_version::<K>(version),
        kind: target.kind.clone(),
    });
    let live = api
        .get_opt(&target.name)
        .await
        .map_err(|e| target.kube(e))?;
    let hash = hash_of(&target, &object)?;
    write_if_changed(&api, &target, object, hash, live).await
}

/// Deletes the object `name` of `K`'s kind under `version` if it exists: an absent one
/// costs a read, never a write.
pub async fn delete_as<K: Object>(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    version: &str,
) -> Result<Applied, ApplyError> {
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
    desired
        .meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(APPLIED_HASH.to_string(), hash);
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
/// (credentials are never overwritten, the pod service account is not synced).
pub async fn create_if_absent<K: Object>(api: &Api<K>, desired: &K) -> Result<Applied, ApplyError> {
    let target = Target::of(desired)?;
    let name = &target.name;
    if api
        .get_metadata_opt(name)
        .await
        .map_err(|e| target.kube(e))?
        .is_some()
    {
        return Ok(Applied::Unchanged);
    }
    match api.create(&PostParams::default(), desired).await {
        Ok(_) => Ok(Applied::Written),
        // Created meanwhile by someone else (a previous owner's last write): keep theirs.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Applied::Unchanged),
        Err(e) => Err(target.kube(e)),
    }
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
    fn subset_comparison() {
        let table = [
            (json!({"a": 1}), json!({"a": 1, "b": 2}), true),
            (json!({"a": 1}), json!({"a": 2}), false),
            (json!({"a": 1}), json!({}), false),
            (json!({"a": null}), json!({}), true),
            (
                json!({"m": {"x": "1"}}),
                json!({"m": {"x": "1", "y": "2"}}),
                true,
            ),
            (
                json!({"l": [{"n": 1}]}),
                json!({"l": [{"n": 1, "d": true}]}),
                true,
            ),
            (
                json!({"l": [{"n": 1}]}),
                json!({"l": [{"n": 1}, {"n": 2}]}),
                false,
            ),
            (json!({"l": [1, 2]}), json!({"l": [2, 1]}), false),
            (json!({"s": "5432"}), json!({"s": 5432}), false),
            // What the server drops or rewrites still matches.
            (
                json!({"env": [{"name": "A", "value": ""}]}),
                json!({"env": [{"name": "A"}]}),
                true,
            ),
            (json!({"a": [], "m": {}}), json!({}), true),
            (
                json!({"cpu": "1000m", "memory": "2048Mi"}),
                json!({"cpu": "1", "memory": "2Gi"}),
                true,
            ),
            (json!({"cpu": "500m"}), json!({"cpu": "1"}), false),
            (
                json!({"env": [{"name": "A", "value": "x"}]}),
                json!({"env": [{"name": "A"}]}),
                false,
            ),
        ];
        for (desired, live, want) in table {
            assert_eq!(is_subset(&desired, &live), want, "{desired} ⊆ {live}");
        }
    }

    #[test]
    fn the_hash_follows_the_content() {
        let a = content_hash(r#"{"spec":{"replicas":2}}"#);
        assert_eq!(a, content_hash(r#"{"spec":{"replicas":2}}"#));
        assert_ne!(a, content_hash(r#"{"spec":{"replicas":3}}"#));
        assert_ne!(
            a,
            content_hash(r#"{"spec":{}}"#),
            "a removed field changes the hash"
        );
    }

    mod request_sequences {
        use super::*;
        use crate::mock_api::{client, Exchange};
        use k8s_openapi::api::core::v1::ConfigMap;

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
            let desired = desired();
            let hash = hash_of(&Target::of(&desired).unwrap(), &desired).unwrap();
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "cm", "namespace": "ns", "labels": {"team": "acid"},
                    "annotations": {APPLIED_HASH: hash}, "uid": "u-1", "resourceVersion": "7",
                    "creationTimestamp": "2026-01-01T00:00:00Z"},
                "data": data
            })
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
                apply(&api(c), &desired()).await.unwrap(),
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
                assert_eq!(apply(&api(c), &desired()).await.unwrap(), Applied::Written);
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
                create_if_absent(&api(c), &desired()).await.unwrap(),
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
                create_if_absent(&api(c), &desired()).await.unwrap(),
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
                create_if_absent(&api(c), &desired()).await.unwrap(),
                Applied::Unchanged
            );
            assert_eq!(server.await.unwrap().len(), 2);
        }

        #[tokio::test]
        async fn deleting_an_absent_object_costs_one_read() {
            let (c, server) = client(vec![Exchange::not_found("GET", PATH)]);
            let applied = delete_as::<ConfigMap>(&c, "ns", "cm", "v1").await.unwrap();
            assert_eq!(applied, Applied::Unchanged);
            drop(c);
            assert_eq!(server.await.unwrap().len(), 1);
        }
    }
}
