//! Zalando's finalizer (`enable_finalizers`): while it is on the postgresql object, deleting
//! the object only marks it, and the owning worker removes the cluster's objects before it
//! lets the object go. Nothing is lost even if every pgop process is down at the time.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use pgop_common::crd::Postgresql;
use serde::Serialize;

use crate::apply::FIELD_MANAGER;

/// Zalando's name, so clusters move between the two operators with their finalizer.
pub const FINALIZER: &str = "postgres-operator.acid.zalan.do";

pub fn has_finalizer(pg: &Postgresql) -> bool {
    pg.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}

/// What to do about the finalizer of a live (not deleted) object.
pub fn wanted_change(pg: &Postgresql, enabled: bool) -> Option<bool> {
    match (enabled, has_finalizer(pg)) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FinalizerApply {
    api_version: &'static str,
    kind: &'static str,
    metadata: ObjectMeta,
}

/// Adds or removes pgop's finalizer with server-side apply: the finalizer list is a set,
/// so other controllers' finalizers are left alone.
pub async fn set(
    client: &Client,
    namespace: &str,
    name: &str,
    present: bool,
) -> Result<(), kube::Error> {
    let api: Api<Postgresql> = Api::namespaced(client.clone(), namespace);
    let patch = FinalizerApply {
        api_version: "acid.zalan.do/v1",
        kind: "postgresql",
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            finalizers: Some(if present {
                vec![FINALIZER.to_string()]
            } else {
                Vec::new()
            }),
            ..Default::default()
        },
    };
    match api
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Gone already: nothing holds it any more.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(finalizers: &[&str]) -> Postgresql {
        let mut pg: Postgresql = serde_json::from_value(serde_json::json!({
            "apiVersion": "acid.zalan.do/v1", "kind": "postgresql",
            "metadata": {"name": "acid-a", "namespace": "ns"},
            "spec": {"teamId": "acid", "numberOfInstances": 1, "volume": {"size": "1Gi"},
                     "postgresql": {"version": "15"}}
        }))
        .expect("manifest");
        pg.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
        pg
    }

    #[test]
    fn the_finalizer_follows_the_configuration() {
        let table = [
            (&[][..], true, Some(true)),
            (&[][..], false, None),
            (&[FINALIZER][..], true, None),
            (&[FINALIZER, "other"][..], false, Some(false)),
            (&["other"][..], true, Some(true)),
        ];
        for (finalizers, enabled, want) in table {
            assert_eq!(
                wanted_change(&pg(finalizers), enabled),
                want,
                "{finalizers:?} {enabled}"
            );
        }
    }
}
