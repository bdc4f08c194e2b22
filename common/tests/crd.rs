//! The CRD in manifests/ is the one the types generate, and the types read every
//! manifest of Zalando's compatibility corpus without losing a field.
use std::path::PathBuf;

use pgop_common::crd::{crd_yaml, Postgresql};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn manifests_crd_matches_the_types() {
    let committed = std::fs::read_to_string(root().join("manifests/postgresql.crd.yaml")).unwrap();
    assert!(
        committed == crd_yaml(),
        "manifests/postgresql.crd.yaml is stale: run `cargo run -p pgop-common --bin pgop-crdgen > manifests/postgresql.crd.yaml`"
    );
}

#[test]
fn crd_has_zalandos_names_columns_and_status() {
    let crd = pgop_common::crd::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("postgresqls.acid.zalan.do")
    );
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["pg".to_string()][..])
    );
    assert_eq!(
        crd.spec.names.categories.as_deref(),
        Some(&["all".to_string()][..])
    );
    let version = &crd.spec.versions[0];
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "Team",
            "Version",
            "Pods",
            "Volume",
            "CPU-Request",
            "Memory-Request",
            "Age",
            "Status"
        ]
    );
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some(),
        "status subresource"
    );
    let schema = serde_json::to_string(&version.schema).unwrap();
    assert!(!schema.contains("\"default\""), "no server-side defaults");
}

/// Drops what serialisation may legitimately normalise: nulls and empty maps/lists.
fn normalised(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| {
                    !v.is_null()
                        && *v != &Value::Object(Default::default())
                        && *v != &Value::Array(vec![])
                })
                .map(|(k, v)| (k.clone(), normalised(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalised).collect()),
        other => other.clone(),
    }
}

#[test]
fn every_corpus_manifest_round_trips_without_losing_fields() {
    // Zalando's own when they are here, pgop's always.
    let corpus = pgop_common::corpus::zalando_corpus(
        "every_corpus_manifest_round_trips_without_losing_fields",
    );
    let mut files: Vec<PathBuf> = [
        "minimal-postgres-manifest.yaml",
        "minimal-postgres-lowest-version-manifest.yaml",
        "standby-manifest.yaml",
        "complete-postgres-manifest.yaml",
    ]
    .iter()
    .filter_map(|f| Some(corpus.as_ref()?.join(f)))
    .collect();
    for own in [
        "minimal-postgres-manifest.yaml",
        "complete-postgres-manifest.yaml",
        "standby-manifest.yaml",
        "clone-postgres-manifest.yaml",
    ] {
        files.push(root().join("manifests").join(own));
    }
    for file in files {
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let input: Value = serde_yaml::from_str(&text).unwrap();
        let parsed: Postgresql = serde_json::from_value(input.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let output = serde_json::to_value(&parsed).unwrap();
        assert_eq!(
            normalised(&output["spec"]),
            normalised(&input["spec"]),
            "{}",
            file.display()
        );
    }
}
