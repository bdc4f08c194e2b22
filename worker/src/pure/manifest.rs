//! Reading a `postgresql` object the watcher passed on as JSON. What the API server accepts
//! in the schemaless parts may still not be a valid manifest: the error then names the
//! field but never repeats its value, which could be a password.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pgop_common::crd::Postgresql;

/// The annotation that pauses a cluster: while it is `"true"`, pgop writes nothing for the
/// cluster (deleting the manifest still removes it).
pub const PAUSED_ANNOTATION: &str = "pgop.io/paused";

/// Whether the manifest pauses its cluster.
pub fn paused(pg: &Postgresql) -> bool {
    pg.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PAUSED_ANNOTATION))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Only the metadata (generation, annotations, finalizers, deletion), which the API server
/// has validated whatever the spec holds; None without a manifest.
pub fn metadata(json: &[u8]) -> Option<ObjectMeta> {
    #[derive(serde::Deserialize)]
    struct Object {
        metadata: ObjectMeta,
    }
    serde_json::from_slice::<Object>(json)
        .ok()
        .map(|o| o.metadata)
}

pub fn parse(json: &[u8]) -> Result<Postgresql, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        format!("{path}: {}", without_value(&e.inner().to_string()))
    })
}

/// serde's messages quote the offending value (`invalid type: string "s3cr3t", expected
/// i64`); keep what is wrong and what was expected.
fn without_value(message: &str) -> String {
    let message = match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    };
    for kind in [
        "invalid type",
        "invalid value",
        "unknown variant",
        "unknown field",
    ] {
        if message.starts_with(kind) {
            return match message.find(", expected ") {
                Some(i) => format!("{kind}{}", &message[i..]),
                None => kind.to_string(),
            };
        }
    }
    message.to_string()
}

/// The cluster's name: every object of the cluster is named after it.
pub fn cluster_name(pg: &Postgresql) -> &str {
    pg.metadata.name.as_deref().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_annotation() {
        for (annotation, want) in [
            (None, false),
            (Some("true"), true),
            (Some("True"), true),
            (Some("false"), false),
            (Some("yes"), false),
        ] {
            let mut pg: Postgresql = serde_json::from_value(serde_json::json!({
                "apiVersion": "acid.zalan.do/v1", "kind": "postgresql",
                "metadata": {"name": "acid-p"},
                "spec": {"teamId": "acid", "numberOfInstances": 1, "volume": {"size": "1Gi"}, "postgresql": {"version": "15"}}
            }))
            .unwrap();
            if let Some(value) = annotation {
                pg.metadata.annotations =
                    Some([(PAUSED_ANNOTATION.to_string(), value.to_string())].into());
            }
            assert_eq!(paused(&pg), want, "{annotation:?}");
        }
    }

    fn manifest(spec_extra: &str) -> Vec<u8> {
        format!(
            r#"{{"apiVersion":"acid.zalan.do/v1","kind":"postgresql",
                "metadata":{{"name":"acid-a","namespace":"ns"}},
                "spec":{{"teamId":"acid","numberOfInstances":1,"volume":{{"size":"1Gi"}},
                         "postgresql":{{"version":"15"}}{spec_extra}}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn errors_name_the_field_without_its_value() {
        let table = [
            (
                r#","tolerations":[{"key":"a","tolerationSeconds":"soon"}]"#,
                "spec.tolerations[0].tolerationSeconds: invalid type, expected i64",
                "soon",
            ),
            (
                r#","env":[{"name":"PASSWORD","value":1234567}]"#,
                "spec.env[0].value: invalid type, expected a string",
                "1234567",
            ),
        ];
        for (extra, want, secret) in table {
            let err = parse(&manifest(extra)).unwrap_err();
            assert_eq!(err, want);
            assert!(!err.contains(secret), "{err}");
        }
        assert!(parse(&manifest("")).is_ok());
        assert!(parse(b"{}").unwrap_err().contains("missing field"));
    }
}
