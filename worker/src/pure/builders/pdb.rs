//! The cluster's PodDisruptionBudgets, as Zalando's `generatePrimaryPodDisruptionBudget` and
//! `generateCriticalOpPodDisruptionBudget` build them. Zalando syncs both for every cluster
//! (no setting turns the second off), so pgop does too:
//!
//! - `pdb_name_format` (`postgres-{cluster}-pdb`): `minAvailable: 1` over the master pod
//!   (the cluster's selector labels plus `<pod_role_label>: master`, or only the selector
//!   labels when `pdb_master_label_selector` is false), so that a node drain never evicts
//!   the primary without a switchover first;
//! - `postgres-{cluster}-critical-op-pdb` (a fixed format in Zalando): `minAvailable:
//!   numberOfInstances` over the pods Patroni labels `critical-operation: "true"` while they
//!   bootstrap (see `KUBERNETES_BOOTSTRAP_LABELS` in [`super::spilo_env`]) or while the
//!   operator runs a major version upgrade, so that none of them is evicted meanwhile.
//!
//! Both drop to `minAvailable: 0` when `enable_pod_disruption_budget` is false or the
//! manifest asks for no instances (`numberOfInstances <= 0`), as in Zalando: the budgets
//! stay, they just allow every eviction. Like Zalando, both use the manifest's
//! `numberOfInstances` as written, not the count after `min_instances`/`max_instances`.
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pgop_common::config::OperatorConfig;
use pgop_common::crd::Postgresql;

use super::labels::{
    inherited_annotations, object_labels, role_selector, selector_labels, MASTER_ROLE,
};
use super::{cluster_name, non_empty, object_meta};

/// The label Patroni puts on pods during critical operations (bootstrap, major upgrade).
pub const CRITICAL_OPERATION_LABEL: &str = "critical-operation";
/// Zalando's fixed name format of the critical-operation budget.
const CRITICAL_OP_NAME_FORMAT: &str = "postgres-{cluster}-critical-op-pdb";

/// The name of the master's budget: `pdb_name_format` with `{cluster}` replaced.
pub fn primary_pdb_name(config: &OperatorConfig, cluster: &str) -> String {
    config.pdb_name_format.replace("{cluster}", cluster)
}

/// The name of the critical-operation budget: `postgres-{cluster}-critical-op-pdb`.
pub fn critical_op_pdb_name(cluster: &str) -> String {
    CRITICAL_OP_NAME_FORMAT.replace("{cluster}", cluster)
}

/// The names of every budget of `cluster` (master first), for deleting them by name.
pub fn pdb_names(config: &OperatorConfig, cluster: &str) -> Vec<String> {
    vec![
        primary_pdb_name(config, cluster),
        critical_op_pdb_name(cluster),
    ]
}

/// The master's budget and the critical-operation budget, in that order.
pub fn desired_pdbs(pg: &Postgresql, config: &OperatorConfig) -> Vec<PodDisruptionBudget> {
    vec![primary_pdb(pg, config), critical_op_pdb(pg, config)]
}

/// `minAvailable: 1` (or 0, see the module documentation) over the master pod.
pub fn primary_pdb(pg: &Postgresql, config: &OperatorConfig) -> PodDisruptionBudget {
    let selector = if config.pdb_master_label_selector {
        role_selector(pg, config, MASTER_ROLE)
    } else {
        selector_labels(pg, config)
    };
    budget(
        pg,
        config,
        primary_pdb_name(config, cluster_name(pg)),
        1,
        selector,
    )
}

/// `minAvailable: numberOfInstances` (or 0) over the pods in a critical operation.
pub fn critical_op_pdb(pg: &Postgresql, config: &OperatorConfig) -> PodDisruptionBudget {
    let mut selector = selector_labels(pg, config);
    selector.insert(CRITICAL_OPERATION_LABEL.into(), "true".into());
    budget(
        pg,
        config,
        critical_op_pdb_name(cluster_name(pg)),
        pg.spec.number_of_instances,
        selector,
    )
}

fn budget(
    pg: &Postgresql,
    config: &OperatorConfig,
    name: String,
    min_available: i32,
    selector: std::collections::BTreeMap<String, String>,
) -> PodDisruptionBudget {
    let protects = config.enable_pod_disruption_budget && pg.spec.number_of_instances > 0;
    let mut metadata = object_meta(pg, name);
    metadata.labels = Some(object_labels(pg, config));
    metadata.annotations = non_empty(inherited_annotations(pg, config));
    metadata.owner_references = super::labels::owner_references(pg, config);
    PodDisruptionBudget {
        metadata,
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(if protects { min_available } else { 0 })),
            selector: Some(LabelSelector {
                match_labels: Some(selector),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::pure::builders::labels::tests::{manifest, minimal};

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The cluster of Zalando's `TestGeneratePodDisruptionBudget`.
    fn myapp(instances: i32) -> Postgresql {
        let mut pg = manifest(
            "myapp-database",
            &format!(
                "  teamId: myapp\n  numberOfInstances: {instances}\n  volume: {{size: 1Gi}}\n  postgresql: {{version: \"15\"}}\n"
            ),
        );
        pg.metadata.namespace = Some("myapp".into());
        pg
    }

    /// Zalando's test configuration: no `cluster_labels`.
    fn zalando_test_config() -> OperatorConfig {
        OperatorConfig {
            cluster_labels: BTreeMap::new(),
            ..OperatorConfig::default()
        }
    }

    fn min_available(pdb: &PodDisruptionBudget) -> i32 {
        match pdb.spec.as_ref().unwrap().min_available {
            Some(IntOrString::Int(n)) => n,
            ref other => panic!("minAvailable {other:?}"),
        }
    }

    fn selector(pdb: &PodDisruptionBudget) -> BTreeMap<String, String> {
        let spec = pdb.spec.as_ref().unwrap();
        let selector = spec.selector.as_ref().unwrap();
        assert!(selector.match_expressions.is_none());
        selector.match_labels.clone().unwrap()
    }

    #[test]
    fn primary_budget_as_zalando() {
        let master = map(&[("spilo-role", "master"), ("cluster-name", "myapp-database")]);
        /// (what, configuration, instances, name, minAvailable, selector)
        type Case = (
            &'static str,
            OperatorConfig,
            i32,
            &'static str,
            i32,
            BTreeMap<String, String>,
        );
        let cases: &[Case] = &[
            (
                "with multiple instances",
                zalando_test_config(),
                3,
                "postgres-myapp-database-pdb",
                1,
                master.clone(),
            ),
            (
                "with zero instances",
                zalando_test_config(),
                0,
                "postgres-myapp-database-pdb",
                0,
                master.clone(),
            ),
            (
                "with PodDisruptionBudget disabled",
                OperatorConfig {
                    enable_pod_disruption_budget: false,
                    ..zalando_test_config()
                },
                3,
                "postgres-myapp-database-pdb",
                0,
                master.clone(),
            ),
            (
                "with non-default PDBNameFormat and PodDisruptionBudget explicitly enabled",
                OperatorConfig {
                    pdb_name_format: "postgres-{cluster}-databass-budget".into(),
                    enable_pod_disruption_budget: true,
                    ..zalando_test_config()
                },
                3,
                "postgres-myapp-database-databass-budget",
                1,
                master.clone(),
            ),
            (
                "with PDBMasterLabelSelector disabled",
                OperatorConfig {
                    pdb_master_label_selector: false,
                    ..zalando_test_config()
                },
                3,
                "postgres-myapp-database-pdb",
                1,
                map(&[("cluster-name", "myapp-database")]),
            ),
        ];
        for (what, config, instances, name, min, want_selector) in cases {
            let pdb = primary_pdb(&myapp(*instances), config);
            assert_eq!(pdb.metadata.name.as_deref(), Some(*name), "{what}");
            assert_eq!(pdb.metadata.namespace.as_deref(), Some("myapp"), "{what}");
            assert_eq!(
                pdb.metadata.labels,
                Some(map(&[
                    ("team", "myapp"),
                    ("cluster-name", "myapp-database")
                ])),
                "{what}"
            );
            assert_eq!(min_available(&pdb), *min, "{what}");
            assert_eq!(selector(&pdb), *want_selector, "{what}");
            assert!(pdb.spec.as_ref().unwrap().max_unavailable.is_none());
        }
    }

    #[test]
    fn critical_operation_budget_as_zalando() {
        let critical = map(&[
            ("critical-operation", "true"),
            ("cluster-name", "myapp-database"),
        ]);
        let cases: &[(&str, OperatorConfig, i32, i32)] = &[
            ("with multiple instances", zalando_test_config(), 3, 3),
            ("with zero instances", zalando_test_config(), 0, 0),
            (
                "with PodDisruptionBudget disabled",
                OperatorConfig {
                    enable_pod_disruption_budget: false,
                    ..zalando_test_config()
                },
                3,
                0,
            ),
            (
                "the name format and master selector settings do not apply",
                OperatorConfig {
                    pdb_name_format: "postgres-{cluster}-databass-budget".into(),
                    pdb_master_label_selector: false,
                    ..zalando_test_config()
                },
                2,
                2,
            ),
        ];
        for (what, config, instances, min) in cases {
            let pdb = critical_op_pdb(&myapp(*instances), config);
            assert_eq!(
                pdb.metadata.name.as_deref(),
                Some("postgres-myapp-database-critical-op-pdb"),
                "{what}"
            );
            assert_eq!(pdb.metadata.namespace.as_deref(), Some("myapp"), "{what}");
            assert_eq!(
                pdb.metadata.labels,
                Some(map(&[
                    ("team", "myapp"),
                    ("cluster-name", "myapp-database")
                ])),
                "{what}"
            );
            assert_eq!(min_available(&pdb), *min, "{what}");
            assert_eq!(selector(&pdb), critical, "{what}");
        }
    }

    #[test]
    fn both_budgets_with_default_configuration() {
        let mut pg = minimal();
        pg.metadata.labels = Some(map(&[("environment", "demo")]));
        pg.metadata.annotations = Some(map(&[("owner", "db-team"), ("other", "x")]));
        let config = OperatorConfig {
            inherited_labels: vec!["environment".into()],
            inherited_annotations: vec!["owner".into()],
            ..OperatorConfig::default()
        };
        let pdbs = desired_pdbs(&pg, &config);
        let names: Vec<_> = pdbs
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "postgres-acid-minimal-cluster-pdb",
                "postgres-acid-minimal-cluster-critical-op-pdb"
            ]
        );
        assert_eq!(names, pdb_names(&config, "acid-minimal-cluster"));
        for pdb in &pdbs {
            assert_eq!(pdb.metadata.namespace.as_deref(), Some("default"));
            assert_eq!(
                pdb.metadata.labels,
                Some(map(&[
                    ("application", "spilo"),
                    ("cluster-name", "acid-minimal-cluster"),
                    ("team", "ACID"),
                    ("environment", "demo"),
                ]))
            );
            assert_eq!(pdb.metadata.annotations, Some(map(&[("owner", "db-team")])));
        }
        assert_eq!(
            selector(&pdbs[0]),
            map(&[
                ("application", "spilo"),
                ("cluster-name", "acid-minimal-cluster"),
                ("spilo-role", "master"),
            ]),
            "team and inherited labels never select"
        );
        assert_eq!(min_available(&pdbs[0]), 1);
        assert_eq!(
            selector(&pdbs[1]),
            map(&[
                ("application", "spilo"),
                ("cluster-name", "acid-minimal-cluster"),
                ("critical-operation", "true"),
            ])
        );
        assert_eq!(min_available(&pdbs[1]), 2);
    }

    #[test]
    fn names_for_deletion() {
        let custom = OperatorConfig {
            pdb_name_format: "{cluster}-budget".into(),
            ..OperatorConfig::default()
        };
        let cases = [
            (
                OperatorConfig::default(),
                ["postgres-demo-pdb", "postgres-demo-critical-op-pdb"],
            ),
            (custom, ["demo-budget", "postgres-demo-critical-op-pdb"]),
        ];
        for (config, want) in cases {
            assert_eq!(pdb_names(&config, "demo"), want);
        }
    }

    #[test]
    fn custom_label_names() {
        let config = OperatorConfig {
            cluster_name_label: "cluster".into(),
            pod_role_label: "role".into(),
            ..OperatorConfig::default()
        };
        let pdbs = desired_pdbs(&myapp(1), &config);
        assert_eq!(
            selector(&pdbs[0]),
            map(&[
                ("application", "spilo"),
                ("cluster", "myapp-database"),
                ("role", "master"),
            ])
        );
        assert_eq!(min_available(&pdbs[1]), 1);
    }
}
