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
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("{kind} without a name")]
    Unnamed { kind: &'static str },
    #[error("{kind} {name} does not serialize: {source}")]
    Serialize {
        kind: &'static str,
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

fn name_of<K: Resource>(object: &K) -> Result<String, ApplyError> {
    object.meta().name.clone().ok_or(ApplyError::Unnamed {
        kind: std::any::type_name::<K>()
            .rsplit("::")
            .next()
            .unwrap_or("object"),
    })
}

fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    // Leaked once per type and process: `kind` is a &'static str in error messages.
    let kind = K::kind(&()).into_owned();
    Box::leak(kind.into_boxed_str())
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
    let kind = kind_of::<K>();
    let name = name_of(desired)?;
    let kube_err = |source| ApplyError::Kube {
        kind,
        name: name.clone(),
        source,
    };
    let ser_err = |source| ApplyError::Serialize {
        kind,
        name: name.clone(),
        source,
    };
    if let Some(live) = api.get_opt(&name).await.map_err(kube_err)? {
        let desired_json = serde_json::to_value(desired).map_err(ser_err)?;
        let live_json = serde_json::to_value(&live).map_err(ser_err)?;
        if is_subset(&desired_json, &live_json) {
            return Ok(Applied::Unchanged);
        }
    }
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(desired),
    )
    .await
    .map_err(kube_err)?;
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
    let kind = kind_of::<K>();
    let name = name_of(desired)?;
    let kube_err = |source| ApplyError::Kube {
        kind,
        name: name.clone(),
        source,
    };
    if api
        .get_metadata_opt(&name)
        .await
        .map_err(kube_err)?
        .is_some()
    {
        return Ok(Applied::Unchanged);
    }
    match api.create(&PostParams::default(), desired).await {
        Ok(_) => Ok(Applied::Written),
        // Created meanwhile by someone else (a previous owner's last write): keep theirs.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Applied::Unchanged),
        Err(e) => Err(kube_err(e)),
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
