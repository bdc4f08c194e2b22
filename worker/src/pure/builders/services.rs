//! The cluster's Services: `<cluster>` for the primary and `<cluster>-repl` for the
//! replicas, as Zalando's `generateService`/`generateEndpoint` build them.
//!
//! With Patroni's default Endpoints DCS the master Service has no selector: Patroni itself
//! writes the primary's address into the Endpoints of the same name, which the operator
//! only creates empty. With ConfigMaps as DCS, the Service selects the master pod.
//!
//! Load balancers follow Zalando (type, source ranges, traffic policy, DNS and ELB
//! annotations), with the manifest's `enable{Master,Replica}LoadBalancer` over the
//! configuration's `enable_{master,replica}_load_balancer`. The configuration's deprecated
//! `enable_load_balancer` has no effect, as in Zalando.
//!
//! A role's Service is a NodePort instead when the manifest's
//! `enable{Master,Replica}NodePort` is true (this overrides the load balancer, as Zalando's
//! CRD documents it), on `{master,replica}NodePort` (0 or unset: Kubernetes picks one).
//! pgop's configuration has no `enable_{master,replica}_node_port` keys yet.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Endpoints, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pgop_common::config::OperatorConfig;
use pgop_common::crd::Postgresql;

use super::labels::{
    inherited_annotations, owner_references, role_labels, role_selector, MASTER_ROLE, REPLICA_ROLE,
};
use super::spilo_env::{patroni_uses_configmaps, POSTGRES_PORT};
use super::validate::team_prefixed_name;
use super::{cluster_name, non_empty, object_meta};

/// Annotation external-dns reads the load balancer's DNS names from.
const DNS_NAME_ANNOTATION: &str = "external-dns.alpha.kubernetes.io/hostname";
/// Long-lived database connections outlast AWS's default ELB idle timeout of 60 s.
const ELB_TIMEOUT_ANNOTATION: &str =
    "service.beta.kubernetes.io/aws-load-balancer-connection-idle-timeout";
const ELB_TIMEOUT: &str = "3600";
/// A load balancer without `allowedSourceRanges` is only reachable from itself.
const LOCAL_SOURCE_RANGE: &str = "127.0.0.1/32";

/// The name of a role's Service: `<cluster>` for the master, `<cluster>-repl` for replicas.
pub fn service_name(pg: &Postgresql, role: &str) -> String {
    match role {
        REPLICA_ROLE => format!("{}-repl", cluster_name(pg)),
        _ => cluster_name(pg).to_string(),
    }
}

/// The master and the replica Service, in that order.
pub fn desired_services(pg: &Postgresql, config: &OperatorConfig) -> Vec<Service> {
    [MASTER_ROLE, REPLICA_ROLE]
        .into_iter()
        .map(|role| desired_service(pg, config, role))
        .collect()
}

/// The Service of one role (`master` or `replica`).
pub fn desired_service(pg: &Postgresql, config: &OperatorConfig, role: &str) -> Service {
    let selects_pods = role == REPLICA_ROLE || patroni_uses_configmaps(config);
    let node_port = node_port(pg, role);
    let load_balancer = node_port.is_none() && load_balancer_enabled(pg, config, role);
    let mut spec = ServiceSpec {
        type_: Some("ClusterIP".into()),
        ports: Some(vec![ServicePort {
            name: Some("postgresql".into()),
            port: POSTGRES_PORT,
            target_port: Some(IntOrString::Int(POSTGRES_PORT)),
            protocol: Some("TCP".into()),
            node_port: node_port.flatten(),
            ..ServicePort::default()
        }]),
        selector: selects_pods.then(|| role_selector(pg, config, role)),
        ..ServiceSpec::default()
    };
    if node_port.is_some() {
        spec.type_ = Some("NodePort".into());
        spec.external_traffic_policy = Some(config.external_traffic_policy.clone());
    }
    if load_balancer {
        spec.type_ = Some("LoadBalancer".into());
        spec.load_balancer_source_ranges = Some(if pg.spec.allowed_source_ranges.is_empty() {
            vec![LOCAL_SOURCE_RANGE.into()]
        } else {
            pg.spec.allowed_source_ranges.clone()
        });
        spec.external_traffic_policy = Some(config.external_traffic_policy.clone());
    }

    let mut annotations = config.custom_service_annotations.clone();
    annotations.extend(pg.spec.service_annotations.clone());
    annotations.extend(match role {
        MASTER_ROLE => pg.spec.master_service_annotations.clone(),
        _ => pg.spec.replica_service_annotations.clone(),
    });
    if load_balancer {
        annotations
            .entry(ELB_TIMEOUT_ANNOTATION.into())
            .or_insert_with(|| ELB_TIMEOUT.into());
        annotations.insert(DNS_NAME_ANNOTATION.into(), dns_names(pg, config, role));
    }
    annotations.extend(inherited_annotations(pg, config));

    let mut metadata = object_meta(pg, service_name(pg, role));
    metadata.labels = Some(role_labels(pg, config, role));
    metadata.annotations = non_empty(annotations);
    metadata.owner_references = owner_references(pg, config);
    Service {
        metadata,
        spec: Some(spec),
        status: None,
    }
}

/// The empty Endpoints `<cluster>` backing the selector-less master Service, which Patroni
/// fills; `None` when Patroni uses ConfigMaps and the Service selects the master itself.
pub fn desired_endpoints(pg: &Postgresql, config: &OperatorConfig) -> Option<Endpoints> {
    if patroni_uses_configmaps(config) {
        return None;
    }
    let mut metadata = object_meta(pg, service_name(pg, MASTER_ROLE));
    metadata.labels = Some(role_labels(pg, config, MASTER_ROLE));
    metadata.annotations = non_empty(inherited_annotations(pg, config));
    metadata.owner_references = owner_references(pg, config);
    Some(Endpoints {
        metadata,
        subsets: None,
    })
}

/// Whether a role's Service is a load balancer (Zalando's
/// `shouldCreateLoadBalancerForService`): the manifest's `enable{Master,Replica}LoadBalancer`,
/// else the configuration's `enable_{master,replica}_load_balancer`. The configuration's
/// deprecated `enable_load_balancer` takes no effect.
pub fn load_balancer_enabled(pg: &Postgresql, config: &OperatorConfig, role: &str) -> bool {
    let (master, replica) = merge_deprecated_load_balancer_flags(
        pg.spec.enable_master_load_balancer,
        pg.spec.enable_replica_load_balancer,
        pg.spec.use_load_balancer,
        pg.spec.replica_load_balancer,
    );
    match role {
        MASTER_ROLE => master.unwrap_or(config.enable_master_load_balancer),
        _ => replica.unwrap_or(config.enable_replica_load_balancer),
    }
}

/// The manifest's load balancer flags (master, replica) with Zalando's deprecated
/// `useLoadBalancer` and `replicaLoadBalancer` merged in as its
/// `mergeDeprecatedPostgreSQLSpecParameters` does: they count only when neither
/// `enableMasterLoadBalancer` nor `enableReplicaLoadBalancer` is set.
pub fn merge_deprecated_load_balancer_flags(
    enable_master: Option<bool>,
    enable_replica: Option<bool>,
    use_load_balancer: Option<bool>,
    replica_load_balancer: Option<bool>,
) -> (Option<bool>, Option<bool>) {
    if enable_master.is_none() && enable_replica.is_none() {
        (use_load_balancer, replica_load_balancer)
    } else {
        (enable_master, enable_replica)
    }
}

/// `Some(port)` when a role's Service is a NodePort (`enable{Master,Replica}NodePort`),
/// with the manifest's `{master,replica}NodePort` (`None`: Kubernetes picks one).
pub fn node_port(pg: &Postgresql, role: &str) -> Option<Option<i32>> {
    let (enabled, port) = match role {
        MASTER_ROLE => (pg.spec.enable_master_node_port, pg.spec.master_node_port),
        _ => (pg.spec.enable_replica_node_port, pg.spec.replica_node_port),
    };
    enabled.unwrap_or(false).then_some(port.filter(|p| *p != 0))
}

/// Node ports Kubernetes would refuse: out of range, or one port for both Services.
pub fn node_port_problems(pg: &Postgresql) -> Vec<String> {
    let mut problems = Vec::new();
    let mut ports = Vec::new();
    for (role, field) in [
        (MASTER_ROLE, "masterNodePort"),
        (REPLICA_ROLE, "replicaNodePort"),
    ] {
        if let Some(Some(port)) = node_port(pg, role) {
            if !(1..=65535).contains(&port) {
                problems.push(format!(
                    "{field} {port} is not a port (1-65535, or 0 to let Kubernetes choose)"
                ));
            } else if ports.contains(&port) {
                problems.push(format!(
                    "masterNodePort and replicaNodePort are both {port}; the Services need different ports"
                ));
            }
            ports.push(port);
        }
    }
    problems
}

/// The DNS name(s) of a role's load balancer, lowercased. A cluster named `<team>-<name>`
/// also keeps its legacy name made from `<name>`.
fn dns_names(pg: &Postgresql, config: &OperatorConfig, role: &str) -> String {
    let (format, legacy_format) = match role {
        MASTER_ROLE => (
            &config.master_dns_name_format,
            &config.master_legacy_dns_name_format,
        ),
        _ => (
            &config.replica_dns_name_format,
            &config.replica_legacy_dns_name_format,
        ),
    };
    let namespace = pg.metadata.namespace.as_deref().unwrap_or_default();
    let render = |template: &str, cluster: &str| {
        let values = BTreeMap::from([
            ("{cluster}", cluster),
            ("{namespace}", namespace),
            ("{team}", pg.spec.team_id.as_str()),
            ("{hostedzone}", config.db_hosted_zone.as_str()),
        ]);
        values
            .iter()
            .fold(template.to_string(), |text, (key, value)| {
                text.replace(key, value)
            })
            .to_lowercase()
    };
    let name = render(format, cluster_name(pg));
    match team_prefixed_name(cluster_name(pg), &pg.spec.team_id) {
        Ok(short_name) => format!("{name},{}", render(legacy_format, short_name)),
        Err(_) => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::builders::labels::selector_labels;
    use crate::pure::builders::labels::tests::{manifest, minimal};

    fn no_load_balancers() -> OperatorConfig {
        OperatorConfig {
            enable_master_load_balancer: false,
            enable_replica_load_balancer: false,
            ..OperatorConfig::default()
        }
    }

    fn with_role(mut labels: BTreeMap<String, String>, role: &str) -> BTreeMap<String, String> {
        labels.insert("spilo-role".into(), role.into());
        labels
    }

    #[test]
    fn selectors_in_both_dcs_modes() {
        let pg = minimal();
        for use_configmaps in [false, true] {
            let config = OperatorConfig {
                kubernetes_use_configmaps: use_configmaps,
                ..no_load_balancers()
            };
            let services = desired_services(&pg, &config);
            let names: Vec<_> = services
                .iter()
                .map(|s| s.metadata.name.as_deref().unwrap())
                .collect();
            assert_eq!(names, ["acid-minimal-cluster", "acid-minimal-cluster-repl"]);
            let selector = selector_labels(&pg, &config);
            let master = services[0].spec.as_ref().unwrap();
            let replica = services[1].spec.as_ref().unwrap();
            assert_eq!(
                master.selector,
                use_configmaps.then(|| with_role(selector.clone(), "master")),
                "configmaps: {use_configmaps}"
            );
            assert_eq!(replica.selector, Some(with_role(selector, "replica")));
            assert_eq!(desired_endpoints(&pg, &config).is_some(), !use_configmaps);
        }
        // With etcd, Patroni keeps no Kubernetes objects: Zalando keeps the Endpoints.
        let etcd = OperatorConfig {
            etcd_host: Some("etcd:2379".into()),
            kubernetes_use_configmaps: true,
            ..no_load_balancers()
        };
        assert!(desired_services(&pg, &etcd)[0]
            .spec
            .as_ref()
            .unwrap()
            .selector
            .is_none());
        assert!(desired_endpoints(&pg, &etcd).is_some());
    }

    #[test]
    fn cluster_ip_service_shape() {
        let pg = minimal();
        let config = no_load_balancers();
        for service in desired_services(&pg, &config) {
            assert_eq!(service.metadata.namespace.as_deref(), Some("default"));
            let role = if service.metadata.name.as_deref().unwrap().ends_with("-repl") {
                "replica"
            } else {
                "master"
            };
            let labels = service.metadata.labels.clone().unwrap();
            assert_eq!(labels["spilo-role"], role);
            assert_eq!(labels["team"], "ACID");
            assert_eq!(labels["cluster-name"], "acid-minimal-cluster");
            assert!(service.metadata.annotations.is_none());
            let spec = service.spec.unwrap();
            assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
            assert_eq!(
                spec.ports,
                Some(vec![ServicePort {
                    name: Some("postgresql".into()),
                    port: 5432,
                    target_port: Some(IntOrString::Int(5432)),
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                }])
            );
            assert!(spec.load_balancer_source_ranges.is_none());
        }
        let endpoints = desired_endpoints(&pg, &config).unwrap();
        assert_eq!(
            endpoints.metadata.name.as_deref(),
            Some("acid-minimal-cluster")
        );
        assert_eq!(endpoints.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(endpoints.metadata.labels.unwrap()["spilo-role"], "master");
        assert!(endpoints.subsets.is_none());
    }

    #[test]
    fn load_balancers() {
        let pg = manifest(
            "acid-lb",
            "  teamId: acid\n  numberOfInstances: 1\n  volume: {size: 1Gi}\n  postgresql: {version: \"15\"}\n  enableReplicaLoadBalancer: true\n  allowedSourceRanges: [10.0.0.0/8]\n  serviceAnnotations: {common: x}\n  replicaServiceAnnotations: {service.beta.kubernetes.io/aws-load-balancer-connection-idle-timeout: \"60\"}\n",
        );
        // Zalando's default enables the master load balancer.
        let config = OperatorConfig::default();
        let services = desired_services(&pg, &config);
        let master = &services[0];
        let spec = master.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(
            spec.load_balancer_source_ranges,
            Some(vec!["10.0.0.0/8".to_string()])
        );
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
        let annotations = master.metadata.annotations.clone().unwrap();
        assert_eq!(
            annotations[DNS_NAME_ANNOTATION],
            "acid-lb.default.db.example.com,lb.acid.db.example.com"
        );
        assert_eq!(annotations[ELB_TIMEOUT_ANNOTATION], "3600");
        assert_eq!(annotations["common"], "x");

        let replica = &services[1];
        let annotations = replica.metadata.annotations.clone().unwrap();
        assert_eq!(
            annotations[ELB_TIMEOUT_ANNOTATION], "60",
            "manifest value kept"
        );
        assert_eq!(
            annotations[DNS_NAME_ANNOTATION],
            "acid-lb-repl.default.db.example.com,lb-repl.acid.db.example.com"
        );

        // A cluster not named after its team has no legacy name; no ranges means local only.
        let mut other = minimal();
        other.spec.team_id = "other".into();
        let service = desired_service(&other, &config, MASTER_ROLE);
        assert_eq!(
            service.metadata.annotations.unwrap()[DNS_NAME_ANNOTATION],
            "acid-minimal-cluster.default.db.example.com"
        );
        assert_eq!(
            service.spec.unwrap().load_balancer_source_ranges,
            Some(vec!["127.0.0.1/32".to_string()])
        );
    }

    #[test]
    fn load_balancer_precedence() {
        // Zalando's TestCreateLoadBalancerLogic and TestEnableLoadBalancers: (role,
        // manifest flag, configuration flag, want). The deprecated enable_load_balancer
        // takes no effect either way.
        let cases = [
            (REPLICA_ROLE, Some(true), false, true),
            (REPLICA_ROLE, Some(false), true, false),
            (REPLICA_ROLE, None, true, true),
            (REPLICA_ROLE, None, false, false),
            (MASTER_ROLE, Some(true), false, true),
            (MASTER_ROLE, Some(false), true, false),
            (MASTER_ROLE, None, true, true),
            (MASTER_ROLE, None, false, false),
        ];
        for (role, manifest_flag, configured, want) in cases {
            for deprecated in [None, Some(!want)] {
                let mut pg = minimal();
                pg.spec.enable_master_load_balancer = manifest_flag;
                pg.spec.enable_replica_load_balancer = manifest_flag;
                let config = OperatorConfig {
                    enable_master_load_balancer: configured,
                    enable_replica_load_balancer: configured,
                    enable_load_balancer: deprecated,
                    ..OperatorConfig::default()
                };
                let what = format!("{role} {manifest_flag:?} {configured} {deprecated:?}");
                assert_eq!(load_balancer_enabled(&pg, &config, role), want, "{what}");
                let spec = desired_service(&pg, &config, role).spec.unwrap();
                let type_ = if want { "LoadBalancer" } else { "ClusterIP" };
                assert_eq!(spec.type_.as_deref(), Some(type_), "{what}");
                assert_eq!(
                    spec.external_traffic_policy.is_some(),
                    want,
                    "{what}: traffic policy only for load balancers"
                );
            }
        }
    }

    #[test]
    fn deprecated_manifest_flags() {
        // (enableMaster, enableReplica, useLoadBalancer, replicaLoadBalancer, want)
        let cases = [
            (
                None,
                None,
                Some(true),
                Some(false),
                (Some(true), Some(false)),
            ),
            (None, None, None, Some(true), (None, Some(true))),
            // Any new flag set: the old ones are ignored, for both roles.
            (None, Some(false), Some(true), None, (None, Some(false))),
            (Some(false), None, None, Some(true), (Some(false), None)),
            (
                Some(true),
                Some(true),
                Some(false),
                Some(false),
                (Some(true), Some(true)),
            ),
        ];
        for (master, replica, old_master, old_replica, want) in cases {
            assert_eq!(
                merge_deprecated_load_balancer_flags(master, replica, old_master, old_replica),
                want
            );
        }
    }

    #[test]
    fn deprecated_flags_in_a_manifest_decide_the_service_type() {
        let pg = |extra: &str| {
            manifest(
                "acid-lb",
                &format!("  teamId: acid\n  numberOfInstances: 1\n  volume: {{size: 1Gi}}\n  postgresql: {{version: \"15\"}}\n{extra}"),
            )
        };
        let config = OperatorConfig {
            enable_master_load_balancer: false,
            ..Default::default()
        };
        // (manifest, master type, replica type)
        let cases = [
            ("  useLoadBalancer: true\n", "LoadBalancer", "ClusterIP"),
            ("  replicaLoadBalancer: true\n", "ClusterIP", "LoadBalancer"),
            (
                "  useLoadBalancer: true\n  enableReplicaLoadBalancer: false\n",
                "ClusterIP",
                "ClusterIP",
            ),
        ];
        for (extra, master, replica) in cases {
            let pg = pg(extra);
            let types: Vec<String> = desired_services(&pg, &config)
                .into_iter()
                .map(|s| s.spec.and_then(|s| s.type_).unwrap_or_default())
                .collect();
            assert_eq!(types, [master, replica], "{extra}");
        }
    }

    #[test]
    fn node_ports() {
        let pg = |extra: &str| {
            manifest(
                "acid-np",
                &format!("  teamId: acid\n  numberOfInstances: 1\n  volume: {{size: 1Gi}}\n  postgresql: {{version: \"15\"}}\n  allowedSourceRanges: [10.0.0.0/8]\n{extra}"),
            )
        };
        // (manifest, role, want type, want node port)
        let cases: &[(&str, &str, &str, Option<i32>)] = &[
            ("", MASTER_ROLE, "LoadBalancer", None),
            ("", REPLICA_ROLE, "ClusterIP", None),
            ("  masterNodePort: 30432\n", MASTER_ROLE, "LoadBalancer", None),
            (
                "  enableMasterNodePort: true\n  masterNodePort: 30432\n",
                MASTER_ROLE,
                "NodePort",
                Some(30432),
            ),
            ("  enableMasterNodePort: true\n", MASTER_ROLE, "NodePort", None),
            (
                "  enableMasterNodePort: true\n  masterNodePort: 0\n",
                MASTER_ROLE,
                "NodePort",
                None,
            ),
            (
                "  enableReplicaNodePort: true\n  enableReplicaLoadBalancer: true\n  replicaNodePort: 30433\n",
                REPLICA_ROLE,
                "NodePort",
                Some(30433),
            ),
            (
                "  enableReplicaNodePort: true\n  replicaNodePort: 30433\n",
                MASTER_ROLE,
                "LoadBalancer",
                None,
            ),
            (
                "  enableMasterNodePort: false\n  masterNodePort: 30432\n",
                MASTER_ROLE,
                "LoadBalancer",
                None,
            ),
        ];
        let config = OperatorConfig::default();
        for (extra, role, want_type, want_port) in cases {
            let service = desired_service(&pg(extra), &config, role);
            let spec = service.spec.unwrap();
            let what = format!("{extra:?} {role}");
            assert_eq!(spec.type_.as_deref(), Some(*want_type), "{what}");
            let port = &spec.ports.as_ref().unwrap()[0];
            assert_eq!(port.node_port, *want_port, "{what}");
            assert_eq!(port.port, 5432, "{what}");
            let annotations = service.metadata.annotations.unwrap_or_default();
            if *want_type == "NodePort" {
                assert!(spec.load_balancer_source_ranges.is_none(), "{what}");
                assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
                assert!(
                    !annotations.contains_key(DNS_NAME_ANNOTATION),
                    "{what}: no load balancer DNS name"
                );
            }
        }

        let problems = |extra: &str| node_port_problems(&pg(extra));
        assert!(problems("  enableMasterNodePort: true\n  masterNodePort: 30432\n  enableReplicaNodePort: true\n  replicaNodePort: 30433\n").is_empty());
        assert!(
            problems("  enableMasterNodePort: true\n  enableReplicaNodePort: true\n").is_empty()
        );
        assert!(problems("  enableMasterNodePort: true\n  masterNodePort: 30432\n  enableReplicaNodePort: true\n  replicaNodePort: 30432\n")[0].contains("both 30432"));
        assert!(
            problems("  enableReplicaNodePort: true\n  replicaNodePort: -1\n")[0]
                .contains("replicaNodePort -1 is not a port")
        );
        assert!(
            problems("  masterNodePort: -1\n").is_empty(),
            "ignored when disabled"
        );
    }

    #[test]
    fn owner_references_when_enabled() {
        let mut pg = minimal();
        pg.metadata.uid = Some("uid-1".into());
        for enabled in [false, true] {
            let config = OperatorConfig {
                enable_owner_references: enabled,
                ..no_load_balancers()
            };
            let mut owners: Vec<_> = desired_services(&pg, &config)
                .into_iter()
                .map(|s| s.metadata.owner_references)
                .collect();
            owners.push(
                desired_endpoints(&pg, &config)
                    .unwrap()
                    .metadata
                    .owner_references,
            );
            for owner in owners {
                match owner {
                    None => assert!(!enabled),
                    Some(refs) => {
                        assert!(enabled);
                        assert_eq!(
                            (refs[0].kind.as_str(), refs[0].uid.as_str()),
                            ("postgresql", "uid-1")
                        );
                    }
                }
            }
        }
    }
}
