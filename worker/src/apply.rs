//! Writes with one field manager, and only when something differs: a reconcile of a
//! cluster that is in sync sends no write at all.
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource};
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

/// True when every field set in `desired` has the same value in `live`. Lists must match
/// element for element: the server keeps their order. Fields the server fills in (defaults,
/// status, metadata) are ignored because `desired` does not set them.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d
            .iter()
            .all(|(k, dv)| dv.is_null() || l.get(k).is_some_and(|lv| is_subset(dv, lv))),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| is_subset(dv, lv))
        }
        (d, l) => d == l,
    }
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
pub async fn apply<K>(api: &Api<K>, desired: &K) -> Result<Applied, ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let target = Target::of(desired)?;
    let name = &target.name;
    if let Some(live) = api.get_opt(name).await.map_err(|e| target.kube(e))? {
        let desired_json = serde_json::to_value(desired).map_err(|e| target.serialize(e))?;
        let live_json = serde_json::to_value(&live).map_err(|e| target.serialize(e))?;
        if is_subset(&desired_json, &live_json) {
            return Ok(Applied::Unchanged);
        }
    }
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(desired),
    )
    .await
    .map_err(|e| target.kube(e))?;
    Ok(Applied::Written)
}

/// Creates `desired` when no object of its name exists; an existing one is left as it is
/// (credentials are never overwritten, the pod service account is not synced).
pub async fn create_if_absent<K>(api: &Api<K>, desired: &K) -> Result<Applied, ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
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
        ];
        for (desired, live, want) in table {
            assert_eq!(is_subset(&desired, &live), want, "{desired} ⊆ {live}");
        }
    }
}
