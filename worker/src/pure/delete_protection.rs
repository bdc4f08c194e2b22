//! Delete protection (`delete_annotation_date_key`, `delete_annotation_name_key`): a
//! cluster's objects are removed only when its manifest carried both annotations, the date
//! one set to the day of the deletion (`YYYY-MM-DD`, UTC) and the name one to the cluster's
//! name, as Zalando's operator checks them. Without owner references (Kubernetes' garbage
//! collector would remove the objects anyway, so Zalando skips the check then too).
use chrono::NaiveDate;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pgop_common::config::OperatorConfig;

/// Why deleting the manifest with this `metadata` (None: not known) must not remove its
/// objects on `today`; None when it may. Only the metadata counts, so a manifest whose spec
/// pgop's types refuse is judged like any other.
pub fn deletion_refused(
    metadata: Option<&ObjectMeta>,
    config: &OperatorConfig,
    today: NaiveDate,
) -> Option<String> {
    let key = |k: &Option<String>| k.clone().filter(|k| !k.is_empty());
    let (date_key, name_key) = (
        key(&config.delete_annotation_date_key),
        key(&config.delete_annotation_name_key),
    );
    if (date_key.is_none() && name_key.is_none()) || config.enable_owner_references {
        return None;
    }
    let Some(metadata) = metadata else {
        return Some(
            "delete protection is on and the deleted manifest is not known, so its delete annotations cannot be checked"
                .into(),
        );
    };
    let annotation = |k: &str| {
        metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(k))
            .cloned()
    };
    let mut problems = Vec::new();
    if let Some(k) = &date_key {
        let wanted = today.format("%Y-%m-%d").to_string();
        match annotation(k) {
            None => problems.push(format!("annotation {k} is not set")),
            Some(date) if date != wanted => {
                problems.push(format!("annotation {k} is {date:?}, not today ({wanted})"))
            }
            Some(_) => {}
        }
    }
    if let Some(k) = &name_key {
        let name = metadata.name.clone().unwrap_or_default();
        match annotation(k) {
            None => problems.push(format!("annotation {k} is not set")),
            Some(value) if value != name => problems.push(format!(
                "annotation {k} is {value:?}, not the cluster's name"
            )),
            Some(_) => {}
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgop_common::crd::Postgresql;
    use std::collections::BTreeMap;

    fn pg(annotations: &[(&str, &str)]) -> Postgresql {
        let mut pg = crate::pure::roles::desired::tests::manifest(
            "acid-d",
            "  teamId: acid\n  numberOfInstances: 1\n  volume: {size: 1Gi}\n  postgresql: {version: \"15\"}\n",
        );
        pg.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        pg
    }

    #[test]
    fn both_annotations_are_needed_when_configured() {
        let today = NaiveDate::from_ymd_opt(2026, 12, 3).unwrap();
        let protected = OperatorConfig {
            delete_annotation_date_key: Some("delete-date".into()),
            delete_annotation_name_key: Some("delete-clustername".into()),
            ..OperatorConfig::default()
        };
        let good = [
            ("delete-date", "2026-12-03"),
            ("delete-clustername", "acid-d"),
        ];
        // (what, configuration, annotations, refused?)
        type Case<'a> = (&'a str, OperatorConfig, Vec<(&'a str, &'a str)>, bool);
        let table: Vec<Case> = vec![
            ("unprotected", OperatorConfig::default(), vec![], false),
            ("both right", protected.clone(), good.to_vec(), false),
            ("none", protected.clone(), vec![], true),
            (
                "yesterday",
                protected.clone(),
                vec![
                    ("delete-date", "2026-12-02"),
                    ("delete-clustername", "acid-d"),
                ],
                true,
            ),
            (
                "another name",
                protected.clone(),
                vec![
                    ("delete-date", "2026-12-03"),
                    ("delete-clustername", "acid-x"),
                ],
                true,
            ),
            (
                "only the date configured",
                OperatorConfig {
                    delete_annotation_name_key: None,
                    ..protected.clone()
                },
                vec![("delete-date", "2026-12-03")],
                false,
            ),
            (
                "owner references make it moot",
                OperatorConfig {
                    enable_owner_references: true,
                    ..protected.clone()
                },
                vec![],
                false,
            ),
        ];
        for (what, config, annotations, refused) in table {
            let reason = deletion_refused(Some(&pg(&annotations).metadata), &config, today);
            assert_eq!(reason.is_some(), refused, "{what}: {reason:?}");
        }
        assert!(
            deletion_refused(None, &protected, today).is_some(),
            "an unknown manifest cannot be checked"
        );
        assert_eq!(
            deletion_refused(Some(&pg(&[]).metadata), &protected, today).unwrap(),
            "annotation delete-date is not set; annotation delete-clustername is not set"
        );
    }
}
