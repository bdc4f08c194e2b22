//! Labels and annotations the cluster's objects carry, as Zalando's `labelsSet`,
//! `roleLabelsSet` and `annotationsSet` make them.
//!
//! Selectors use only the stable labels (operator's `cluster_labels` + cluster name):
//! the team and inherited labels may change, and a StatefulSet's selector cannot.
use std::collections::BTreeMap;

use pgop_common::config::OperatorConfig;
use pgop_common::crd::Postgresql;

use super::cluster_name;

/// Value of the role label on the primary's pod (Patroni sets it).
pub const MASTER_ROLE: &str = "master";
/// Value of the role label on replica pods.
pub const REPLICA_ROLE: &str = "replica";
/// Label carrying the manifest's `teamId`, for finding a team's objects.
pub const TEAM_LABEL: &str = "team";

/// `cluster_labels` + `cluster_name_label: <cluster>`: what StatefulSet selectors, PVC and
/// pod lookups match on.
pub fn selector_labels(pg: &Postgresql, config: &OperatorConfig) -> BTreeMap<String, String> {
    cluster_selector(config, cluster_name(pg))
}

/// [`selector_labels`] from the cluster's name alone (a deleted cluster has no manifest).
pub fn cluster_selector(config: &OperatorConfig, cluster: &str) -> BTreeMap<String, String> {
    let mut labels = config.cluster_labels.clone();
    labels.insert(config.cluster_name_label.clone(), cluster.to_string());
    labels
}

/// Selector labels + `team` (the `teamId` as written, as Zalando does) + the manifest labels
/// named in `inherited_labels`: what every object of the cluster carries.
pub fn object_labels(pg: &Postgresql, config: &OperatorConfig) -> BTreeMap<String, String> {
    let mut labels = selector_labels(pg, config);
    labels.insert(TEAM_LABEL.to_string(), pg.spec.team_id.clone());
    labels.extend(inherited(
        pg.metadata.labels.as_ref(),
        &config.inherited_labels,
    ));
    labels
}

/// Selector labels + the role label: what selects the pods of one role.
pub fn role_selector(
    pg: &Postgresql,
    config: &OperatorConfig,
    role: &str,
) -> BTreeMap<String, String> {
    let mut labels = selector_labels(pg, config);
    labels.insert(config.pod_role_label.clone(), role.to_string());
    labels
}

/// Object labels + the role label: what role-specific objects (Services, Endpoints) carry.
pub fn role_labels(
    pg: &Postgresql,
    config: &OperatorConfig,
    role: &str,
) -> BTreeMap<String, String> {
    let mut labels = object_labels(pg, config);
    labels.insert(config.pod_role_label.clone(), role.to_string());
    labels
}

/// The manifest annotations named in `inherited_annotations`, which every object of the
/// cluster carries.
pub fn inherited_annotations(pg: &Postgresql, config: &OperatorConfig) -> BTreeMap<String, String> {
    inherited(
        pg.metadata.annotations.as_ref(),
        &config.inherited_annotations,
    )
}

fn inherited(from: Option<&BTreeMap<String, String>>, keys: &[String]) -> BTreeMap<String, String> {
    from.into_iter()
        .flatten()
        .filter(|(key, _)| keys.contains(key))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A parsed manifest for tests: `name` in namespace `default`.
    pub fn manifest(name: &str, yaml_spec: &str) -> Postgresql {
        let yaml = format!(
            "apiVersion: acid.zalan.do/v1\nkind: postgresql\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n{yaml_spec}"
        );
        serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }

    /// The minimal manifest of Zalando's examples.
    pub fn minimal() -> Postgresql {
        manifest(
            "acid-minimal-cluster",
            "  teamId: ACID\n  numberOfInstances: 2\n  volume: {size: 1Gi}\n  postgresql: {version: \"15\"}\n",
        )
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_sets() {
        let mut pg = minimal();
        pg.metadata.labels = Some(map(&[("environment", "demo"), ("private", "x")]));
        pg.metadata.annotations = Some(map(&[("owner", "db-team"), ("other", "y")]));
        let config = OperatorConfig {
            inherited_labels: vec!["environment".into(), "absent".into()],
            inherited_annotations: vec!["owner".into()],
            cluster_labels: map(&[("application", "spilo"), ("tier", "db")]),
            ..OperatorConfig::default()
        };
        let selector = map(&[
            ("application", "spilo"),
            ("tier", "db"),
            ("cluster-name", "acid-minimal-cluster"),
        ]);
        type Labels = BTreeMap<String, String>;
        let cases: &[(&str, Labels, Labels)] = &[
            ("selector", selector_labels(&pg, &config), selector.clone()),
            (
                "object",
                object_labels(&pg, &config),
                map(&[
                    ("application", "spilo"),
                    ("tier", "db"),
                    ("cluster-name", "acid-minimal-cluster"),
                    ("team", "ACID"),
                    ("environment", "demo"),
                ]),
            ),
            (
                "role selector",
                role_selector(&pg, &config, REPLICA_ROLE),
                map(&[
                    ("application", "spilo"),
                    ("tier", "db"),
                    ("cluster-name", "acid-minimal-cluster"),
                    ("spilo-role", "replica"),
                ]),
            ),
            (
                "role labels",
                role_labels(&pg, &config, MASTER_ROLE),
                map(&[
                    ("application", "spilo"),
                    ("tier", "db"),
                    ("cluster-name", "acid-minimal-cluster"),
                    ("team", "ACID"),
                    ("environment", "demo"),
                    ("spilo-role", "master"),
                ]),
            ),
            (
                "annotations",
                inherited_annotations(&pg, &config),
                map(&[("owner", "db-team")]),
            ),
        ];
        for (what, got, want) in cases {
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn custom_label_names_and_no_inheritance_by_default() {
        let mut pg = minimal();
        pg.metadata.labels = Some(map(&[("environment", "demo")]));
        let config = OperatorConfig {
            cluster_name_label: "cluster".into(),
            pod_role_label: "role".into(),
            ..OperatorConfig::default()
        };
        assert_eq!(
            role_labels(&pg, &config, MASTER_ROLE),
            map(&[
                ("application", "spilo"),
                ("cluster", "acid-minimal-cluster"),
                ("team", "ACID"),
                ("role", "master"),
            ])
        );
        assert!(inherited_annotations(&pg, &config).is_empty());
    }
}
