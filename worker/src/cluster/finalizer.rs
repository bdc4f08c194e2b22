//! Zalando's finalizer (`enable_finalizers`): while it is on the postgresql object, deleting
//! the object only marks it, and the owning worker removes the cluster's objects before it
//! lets the object go. Nothing is lost even if every pgop process is down at the time.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::Client;
use pgop_common::crd::Postgresql;
use serde::Serialize;

use crate::clients::apply::FIELD_MANAGER;

/// Zalando's name, so clusters move between the two operators with their finalizer.
pub const FINALIZER: &str = "postgres-operator.acid.zalan.do";

pub fn has_finalizer(metadata: &ObjectMeta) -> bool {
    metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}

/// What to do about the finalizer of a live (not deleted) object.
pub fn wanted_change(pg: &Postgresql, enabled: bool) -> Option<bool> {
    match (enabled, has_finalizer(&pg.metadata)) {
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

/// Adds or removes pgop's finalizer on the object `uid` (empty: whichever has the name).
pub async fn set(
    client: &Client,
    namespace: &str,
    name: &str,
    uid: &str,
    present: bool,
) -> Result<(), kube::Error> {
    match present {
        true => add(client, namespace, name).await,
        false => remove(client, namespace, name, uid).await,
    }
}

/// Server-side apply: the finalizer list is a set, so other controllers' finalizers are
/// left alone.
async fn add(client: &Client, namespace: &str, name: &str) -> Result<(), kube::Error> {
    // Untyped: the answer is the whole object, which pgop's types may refuse.
    let api = crate::clients::apply::postgresql_api(client, namespace);
    let patch = FinalizerApply {
        api_version: "acid.zalan.do/v1",
        kind: "postgresql",
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            finalizers: Some(vec![FINALIZER.to_string()]),
            ..Default::default()
        },
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    gone_is_fine(api.patch(name, &params, &Patch::Apply(&patch)).await)
}

/// Removes the finalizer whoever put it there (Zalando's operator, a user, pgop: applying
/// an empty list would only drop pgop's own claim on it). A JSON patch that tests the entry
/// first, so a list changed meanwhile fails the patch instead of losing another
/// controller's finalizer, and tests the uid, so a new object of the name keeps its own; the
/// retry reads it again.
async fn remove(
    client: &Client,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Result<(), kube::Error> {
    let api = crate::clients::apply::postgresql_api(client, namespace);
    let Some(live) = api.get_metadata_opt(name).await? else {
        return Ok(());
    };
    let finalizers = live.metadata.finalizers.unwrap_or_default();
    let Some(operations) = removal(uid, &finalizers) else {
        return Ok(());
    };
    let patch: json_patch::Patch =
        serde_json::from_value(operations).map_err(kube::Error::SerdeError)?;
    let result = api
        .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await;
    gone_is_fine(result)
}

/// The JSON patch operations that remove pgop's finalizer from `finalizers` of the object
/// `uid`; None without it.
fn removal(uid: &str, finalizers: &[String]) -> Option<serde_json::Value> {
    let i = finalizers.iter().position(|f| f == FINALIZER)?;
    let path = format!("/metadata/finalizers/{i}");
    let mut operations = Vec::new();
    if !uid.is_empty() {
        operations.push(serde_json::json!({"op": "test", "path": "/metadata/uid", "value": uid}));
    }
    operations.push(serde_json::json!({"op": "test", "path": path, "value": FINALIZER}));
    operations.push(serde_json::json!({"op": "remove", "path": path}));
    Some(operations.into())
}

fn gone_is_fine<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
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

    #[test]
    fn removal_tests_the_entry_it_removes() {
        assert_eq!(removal("u-1", &["other".into()]), None);
        let operations = removal("u-1", &["other".into(), FINALIZER.into()]).unwrap();
        assert_eq!(
            operations,
            serde_json::json!([
                {"op": "test", "path": "/metadata/uid", "value": "u-1"},
                {"op": "test", "path": "/metadata/finalizers/1", "value": FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/1"},
            ])
        );
        assert_eq!(
            removal("", &[FINALIZER.into()])
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            2
        );
        serde_json::from_value::<json_patch::Patch>(operations).expect("a JSON patch");
    }
}
