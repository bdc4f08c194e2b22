//! Zalando's `OperatorConfiguration` resource is read into the same
//! `OperatorConfig` as its ConfigMap: Zalando's sample loads without unknown
//! keys and agrees with the sample ConfigMap except where the two files
//! differ, every key of Zalando's CRD schema has its place, bad values are
//! refused with the key's path, and the redacted view never shows a
//! credential.
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use pgop_common::config::{
    effective_config_json, flatten_operator_configuration, from_config_map, from_config_map_data,
    from_operator_configuration, operator_configuration_path, operator_configuration_unknown_keys,
    ConfigError, OperatorConfig, KNOWN_KEYS, SECRET_KEYS,
};
use pgop_common::corpus::zalando_corpus;
use serde_json::{json, Value};

/// A file of Zalando's corpus; the tests that read one first ask [`corpus_missing`].
fn zalando(file: &str) -> PathBuf {
    zalando_corpus(file)
        .expect("the test checked for the corpus")
        .join(file)
}

/// True (and said on the terminal) when `test` cannot run without Zalando's corpus.
fn corpus_missing(test: &str) -> bool {
    zalando_corpus(test).is_none()
}

fn read(file: &str) -> String {
    let path = zalando(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).expect("valid YAML")
}

fn default_configuration() -> Value {
    yaml(&read("postgresql-operator-default-configuration.yaml"))
}

fn zalando_config_map() -> OperatorConfig {
    let cm: ConfigMap = serde_yaml::from_str(&read("configmap.yaml")).unwrap();
    from_config_map(&cm).expect("Zalando's ConfigMap loads")
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `{"configuration": <configuration>}`.
fn resource(configuration: Value) -> Value {
    json!({
        "apiVersion": "acid.zalan.do/v1",
        "kind": "OperatorConfiguration",
        "metadata": {"name": "test"},
        "configuration": configuration,
    })
}

/// Zalando's default configuration file, with its commented-out examples
/// uncommented (`  # key: value` → `  key: value`).
fn uncommented_default_configuration() -> String {
    read("postgresql-operator-default-configuration.yaml")
        .lines()
        .map(|line| {
            let body = line.trim_start();
            match body.strip_prefix('#') {
                Some(example) if line.starts_with(' ') => {
                    let indent = &line[..line.len() - body.len()];
                    format!("{indent}{}", example.strip_prefix(' ').unwrap_or(example))
                }
                _ => line.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn zalando_default_configuration_loads_without_unknown_keys() {
    if corpus_missing("zalando_default_configuration_loads_without_unknown_keys") {
        return;
    }
    let config = from_operator_configuration(&default_configuration())
        .expect("Zalando's OperatorConfiguration loads");
    assert_eq!(config.unknown_keys, Vec::<String>::new());

    // Values the file states, one per group.
    assert_eq!(config.docker_image, "ghcr.io/zalando/spilo-18:4.1-p2");
    assert_eq!(config.workers, 8);
    assert_eq!(config.min_instances, -1);
    assert_eq!(config.resync_period, Duration::from_secs(30 * 60));
    assert_eq!(config.password_rotation_user_retention, 180);
    assert_eq!(config.major_version_upgrade_mode, "manual");
    assert_eq!(config.target_major_version, "18");
    assert_eq!(config.pod_service_account_name, "postgres-pod");
    assert_eq!(config.cluster_labels, map(&[("application", "spilo")]));
    assert_eq!(
        config.persistent_volume_claim_retention_policy,
        map(&[("when_deleted", "retain"), ("when_scaled", "retain")])
    );
    assert_eq!(config.oauth_token_secret_name, "postgresql-operator");
    assert_eq!(config.master_pod_move_timeout, Duration::from_secs(20 * 60));
    assert_eq!(config.default_cpu_request.as_deref(), Some("100m"));
    assert_eq!(config.default_memory_limit.as_deref(), Some("500Mi"));
    assert_eq!(config.ready_wait_interval, Duration::from_secs(4));
    assert_eq!(config.patroni_api_check_timeout, Duration::from_secs(5));
    assert!(!config.enable_master_load_balancer);
    assert_eq!(config.external_traffic_policy, "Cluster");
    assert_eq!(config.aws_region, "eu-central-1");
    assert_eq!(
        config.logical_backup_s3_bucket.as_deref(),
        Some("my-bucket-url")
    );
    assert_eq!(config.logical_backup_s3_sse.as_deref(), Some("AES256"));
    assert!(config.debug_logging && config.enable_database_access);
    assert!(!config.enable_teams_api);
    assert_eq!(
        config.protected_role_names,
        strings(&["admin", "cron_admin"])
    );
    assert_eq!(
        config.team_api_role_configuration,
        map(&[("log_statement", "all")])
    );
    assert_eq!(config.api_port, 8080);
    assert_eq!(
        config.connection_pooler_image,
        "ghcr.io/zalando/postgres-operator/pgbouncer:v2.0.1"
    );
    assert_eq!(config.connection_pooler_number_of_instances, 2);
    assert!(!config.enable_patroni_failsafe_mode);
    assert_eq!(config.etcd_host, None, "etcd_host: \"\" is unset");
}

/// The two sample files agree except on three keys they both set and five
/// that only the ConfigMap sets; nothing else differs.
#[test]
fn zalando_default_configuration_matches_the_sample_config_map() {
    if corpus_missing("zalando_default_configuration_matches_the_sample_config_map") {
        return;
    }
    let from_crd = from_operator_configuration(&default_configuration()).unwrap();
    let from_cm = zalando_config_map();

    let crd_json = effective_config_json(&from_crd);
    let cm_json = effective_config_json(&from_cm);
    let differing: BTreeSet<&str> = crd_json
        .as_object()
        .unwrap()
        .iter()
        .filter(|(key, value)| cm_json[key.as_str()] != **value)
        .map(|(key, _)| key.as_str())
        .collect();
    assert_eq!(
        differing,
        BTreeSet::from([
            // Both files set these, to different values.
            "enable_spilo_wal_path_compat",
            "kubernetes_use_configmaps",
            "ready_wait_interval",
            // Only the ConfigMap sets these (the CRD sample has them
            // commented out or not at all); the CRD form gets the defaults.
            "min_cpu_limit",
            "min_memory_limit",
            "postgres_superuser_teams",
            "teams_api_url",
            "watched_namespace",
        ])
    );

    assert!(!from_crd.enable_spilo_wal_path_compat && from_cm.enable_spilo_wal_path_compat);
    assert!(from_crd.kubernetes_use_configmaps && !from_cm.kubernetes_use_configmaps);
    assert_eq!(from_crd.ready_wait_interval, Duration::from_secs(4));
    assert_eq!(from_cm.ready_wait_interval, Duration::from_secs(3));
    assert_eq!(from_crd.min_cpu_limit, None);
    assert_eq!(from_cm.min_cpu_limit.as_deref(), Some("250m"));
    assert_eq!(from_crd.min_memory_limit, None);
    assert_eq!(from_cm.min_memory_limit.as_deref(), Some("250Mi"));
    assert_eq!(from_crd.postgres_superuser_teams, Vec::<String>::new());
    assert_eq!(
        from_cm.postgres_superuser_teams,
        strings(&["postgres_superusers"])
    );
    assert_eq!(from_crd.teams_api_url, "https://teams.example.com/api/");
    assert_eq!(
        from_cm.teams_api_url,
        "http://fake-teams-api.default.svc.cluster.local"
    );
    assert_eq!(from_crd.watched_namespace, None);
    assert_eq!(from_cm.watched_namespace.as_deref(), Some("*"));

    // With those fields taken from the ConfigMap, the configurations are
    // equal, credentials included.
    let patched = OperatorConfig {
        enable_spilo_wal_path_compat: from_cm.enable_spilo_wal_path_compat,
        kubernetes_use_configmaps: from_cm.kubernetes_use_configmaps,
        ready_wait_interval: from_cm.ready_wait_interval,
        min_cpu_limit: from_cm.min_cpu_limit.clone(),
        min_memory_limit: from_cm.min_memory_limit.clone(),
        postgres_superuser_teams: from_cm.postgres_superuser_teams.clone(),
        teams_api_url: from_cm.teams_api_url.clone(),
        watched_namespace: from_cm.watched_namespace.clone(),
        ..from_crd
    };
    assert_eq!(patched, from_cm);
}

#[test]
fn flat_data_reads_back_to_the_same_configuration() {
    if corpus_missing("flat_data_reads_back_to_the_same_configuration") {
        return;
    }
    let value = default_configuration();
    let flat = flatten_operator_configuration(&value).unwrap();
    assert_eq!(
        flat.get("cluster_labels").map(String::as_str),
        Some("application:spilo")
    );
    assert_eq!(
        flat.get("protected_role_names").map(String::as_str),
        Some("admin,cron_admin")
    );
    assert_eq!(
        flat.get("kubernetes_use_configmaps").map(String::as_str),
        Some("true")
    );
    assert_eq!(flat.get("max_instances").map(String::as_str), Some("-1"));
    assert_eq!(
        flat.get("pod_terminate_grace_period").map(String::as_str),
        Some("5m")
    );
    assert_eq!(flat.get("etcd_host"), None, "\"\" means not set");
    assert!(flat.keys().all(|k| KNOWN_KEYS.contains(&k.as_str())));

    let via_flat = from_config_map_data(&flat).unwrap();
    assert_eq!(via_flat, from_operator_configuration(&value).unwrap());

    // Only the configuration, without the resource around it: the same.
    let configuration = value["configuration"].clone();
    assert_eq!(
        flatten_operator_configuration(&configuration).unwrap(),
        flat
    );
    assert_eq!(
        from_operator_configuration(&configuration).unwrap(),
        via_flat
    );
}

/// The file's commented-out keys are Zalando's examples of each type. One of
/// them is a string where the schema wants a boolean (the API server would
/// refuse it too); fixed, they all load, and only the keys pgop has no field
/// for are unknown.
#[test]
fn zalando_default_configuration_commented_examples() {
    if corpus_missing("zalando_default_configuration_commented_examples") {
        return;
    }
    let text = uncommented_default_configuration();
    let err = from_operator_configuration(&yaml(&text)).unwrap_err();
    assert_eq!(
        err,
        ConfigError::InvalidValue {
            key: "configuration.kubernetes.enable_cross_namespace_secret".into(),
            value: "false".into(),
            reason: "expected a boolean (true or false), got a string".into(),
        }
    );

    let fixed = text.replace(
        "enable_cross_namespace_secret: \"false\"",
        "enable_cross_namespace_secret: false",
    );
    let value = yaml(&fixed);
    let config = from_operator_configuration(&value).expect("the fixed examples load");
    let unknown = strings(&[
        "configuration.kubernetes.liveness_probe",
        // The sample's name for replica_legacy_dns_name_format; Zalando's
        // schema does not know it either.
        "configuration.load_balancer.replica_dns_old_name_format",
    ]);
    assert_eq!(config.unknown_keys, unknown);
    assert_eq!(operator_configuration_unknown_keys(&value), unknown);

    assert_eq!(config.additional_owner_roles, strings(&["cron_admin"]));
    assert_eq!(config.crd_categories, strings(&["all"]));
    assert_eq!(
        config.maintenance_windows,
        strings(&["Sat:22:00-23:59", "Sun:00:00-01:00"])
    );
    assert_eq!(
        config.sidecars.as_deref(),
        Some(
            r#"[{"image":"image:123","name":"global-sidecar-1","ports":[{"containerPort":80,"protocol":"TCP"}]}]"#
        )
    );
    assert_eq!(
        config.major_version_upgrade_team_allow_list,
        strings(&["acid"])
    );
    assert_eq!(config.additional_pod_capabilities, strings(&["SYS_NICE"]));
    assert_eq!(
        config.custom_pod_annotations,
        map(&[("keya", "valuea"), ("keyb", "valueb")])
    );
    assert_eq!(
        config.downscaler_annotations,
        strings(&["deployment-time", "downscaler/*"])
    );
    assert_eq!(
        config.ignored_annotations,
        strings(&["k8s.v1.cni.cncf.io/network-status"])
    );
    assert_eq!(
        config.infrastructure_roles_secret_name.as_deref(),
        Some("postgresql-infrastructure-roles")
    );
    assert_eq!(
        config.infrastructure_roles_secrets.as_deref(),
        Some(
            "secretname:monitoring-roles,userkey:user,passwordkey:password,rolekey:inrole;\
             secretname:other-infrastructure-role,userkey:other-user-key,\
             passwordkey:other-password-key"
        )
    );
    assert_eq!(config.node_readiness_label, map(&[("status", "ready")]));
    assert_eq!(config.node_readiness_label_merge, "OR");
    assert_eq!(
        config.pod_environment_configmap.as_deref(),
        Some("default/my-custom-config")
    );
    assert_eq!(
        config.pod_priority_class_name.as_deref(),
        Some("postgres-pod-priority")
    );
    assert_eq!(config.pod_service_account_definition, None, "\"\" is unset");
    assert_eq!(
        (config.spilo_runasuser, config.spilo_fsgroup),
        (Some(101), Some(103))
    );
    assert_eq!(
        config.toleration,
        map(&[
            ("key", "db-only"),
            ("operator", "Exists"),
            ("effect", "NoSchedule")
        ])
    );
    assert_eq!(config.max_memory_request.as_deref(), Some("4Gi"));
    assert_eq!(
        config.custom_service_annotations,
        map(&[("keyx", "valuex"), ("keyy", "valuey")])
    );
    assert_eq!(
        config.db_hosted_zone, "db.example.com",
        "\"\" keeps the default"
    );
    assert_eq!(
        config.additional_secret_mount.as_deref(),
        Some("some-secret-name")
    );
    assert_eq!(config.logical_backup_s3_bucket_prefix, "spilo");
    assert_eq!(
        config.postgres_superuser_teams,
        strings(&["postgres_superusers"])
    );
    assert_eq!(config.teams_api_url, "https://teams.example.com/api/");
    assert_eq!(config.watched_namespace, None);

    // The flat data carries the unknown keys too, for whoever reads it next.
    let flat = flatten_operator_configuration(&value).unwrap();
    assert_eq!(from_config_map_data(&flat).unwrap(), config);
}

/// Every key of Zalando's CRD schema, given a value of its schema type,
/// lands under the ConfigMap key of the same name; the schema keys pgop has
/// no field for are unknown keys, and every ConfigMap key but one has a place
/// in the resource.
#[test]
fn every_schema_key_has_its_place() {
    if corpus_missing("every_schema_key_has_its_place") {
        return;
    }
    let crd = yaml(&read("operatorconfiguration.crd.yaml"));
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
        ["configuration"]["properties"];
    let mut schema_paths = BTreeMap::new();
    for (name, property) in schema.as_object().unwrap() {
        match property.get("properties").and_then(Value::as_object) {
            Some(members) => {
                for (key, member) in members {
                    schema_paths.insert(format!("configuration.{name}.{key}"), member.clone());
                }
            }
            None => {
                schema_paths.insert(format!("configuration.{name}"), property.clone());
            }
        }
    }
    assert!(
        schema_paths.len() > 180,
        "{} schema keys",
        schema_paths.len()
    );

    let sample = |path: &str, property: &Value| -> Value {
        if path == "configuration.sidecars" {
            // `type: object` in the schema, a container list in Zalando's Go
            // type and sample.
            return json!([{"name": "sidecar", "image": "busybox"}]);
        }
        if let Some(default) = property.get("default").filter(|d| *d != "") {
            return default.clone();
        }
        if let Some(first) = property["enum"].get(0) {
            return first.clone();
        }
        match property["type"].as_str().unwrap() {
            "boolean" => json!(true),
            "integer" => json!(1),
            "string" => json!("x"),
            "array" if property["items"]["type"] == "object" => json!([{"secretname": "x"}]),
            "array" => json!(["x"]),
            "object" => json!({"k": "v"}),
            other => panic!("{path}: schema type {other}"),
        }
    };
    let set = |root: &mut Value, path: &str, value: Value| {
        let mut at = root;
        let parts: Vec<&str> = path.split('.').collect();
        for part in &parts[..parts.len() - 1] {
            at = at
                .as_object_mut()
                .unwrap()
                .entry(part.to_string())
                .or_insert_with(|| json!({}));
        }
        at[parts[parts.len() - 1]] = value;
    };

    let mut everything = json!({});
    for (path, property) in &schema_paths {
        set(&mut everything, path, sample(path, property));
    }
    let config = from_operator_configuration(&everything).expect("schema-typed values load");
    let not_in_pgop = strings(&[
        "configuration.kubernetes.liveness_probe",
        "configuration.load_balancer.enable_master_node_port",
        "configuration.load_balancer.enable_master_pooler_node_port",
        "configuration.load_balancer.enable_replica_node_port",
        "configuration.load_balancer.enable_replica_pooler_node_port",
        "configuration.logical_backup.logical_backup_failed_jobs_history_limit",
        "configuration.logical_backup.logical_backup_successful_jobs_history_limit",
        "configuration.logical_backup.logical_backup_ttl_seconds_after_finished",
    ]);
    assert_eq!(config.unknown_keys, not_in_pgop);
    assert_eq!(
        operator_configuration_unknown_keys(&everything),
        not_in_pgop
    );

    // Each known schema key lands under the ConfigMap key of its name.
    let flat = flatten_operator_configuration(&everything).unwrap();
    for path in schema_paths.keys().filter(|p| !not_in_pgop.contains(p)) {
        let key = path.rsplit('.').next().unwrap();
        assert!(flat.contains_key(key), "{path} is not in the flat data");
        assert_eq!(
            operator_configuration_path(key).as_deref(),
            Some(path.as_str())
        );
    }

    // Every ConfigMap key has a place, in the schema or (for keys Zalando's
    // Go type reads but its schema lacks) beside it.
    let not_in_schema = [
        "enable_crd_validation",
        "enable_ebs_gp3_migration",
        "enable_ebs_gp3_migration_max_size",
    ];
    for key in KNOWN_KEYS {
        match operator_configuration_path(key) {
            Some(path) if not_in_schema.contains(key) => {
                assert!(!schema_paths.contains_key(&path), "{path}")
            }
            Some(path) => assert!(schema_paths.contains_key(&path), "{key}: {path}"),
            None => assert_eq!(*key, "enable_load_balancer", "{key} has no place"),
        }
    }
    assert_eq!(
        operator_configuration_path("enable_ebs_gp3_migration").as_deref(),
        Some("configuration.aws_or_gcp.enable_ebs_gp3_migration")
    );
}

#[test]
fn lists_and_maps_become_config_map_strings() {
    let cases: &[(Value, &str, Option<&str>)] = &[
        (json!({"teams_api": {"protected_role_names": ["admin", "cron_admin"]}}), "protected_role_names", Some("admin,cron_admin")),
        (json!({"teams_api": {"protected_role_names": [" a ", "", "b"]}}), "protected_role_names", Some("a,b")),
        (json!({"teams_api": {"protected_role_names": []}}), "protected_role_names", None),
        (json!({"teams_api": {"protected_role_names": null}}), "protected_role_names", None),
        (json!({"crd_categories": ["all", "postgres"]}), "crd_categories", Some("all,postgres")),
        (json!({"kubernetes": {"cluster_labels": {"application": "spilo", "team": "acid"}}}), "cluster_labels", Some("application:spilo,team:acid")),
        (json!({"kubernetes": {"cluster_labels": {}}}), "cluster_labels", None),
        (json!({"sidecar_docker_images": {"exporter": "quay.io/org/image:v1"}}), "sidecar_docker_images", Some("exporter:quay.io/org/image:v1")),
        (json!({"teams_api": {"team_api_role_configuration": {"log_statement": "all", "search_path": "'\"$user\", public'"}}}), "team_api_role_configuration", Some("log_statement:all,search_path:'\"$user\", public'")),
        (json!({"kubernetes": {"toleration": {"key": "db-only", "operator": "Exists", "effect": "NoSchedule"}}}), "toleration", Some("effect:NoSchedule,key:db-only,operator:Exists")),
        (json!({"kubernetes": {"enable_sidecars": false}}), "enable_sidecars", Some("false")),
        (json!({"kubernetes": {"spilo_runasuser": 101}}), "spilo_runasuser", Some("101")),
        (json!({"timeouts": {"ready_wait_timeout": "1m30s"}}), "ready_wait_timeout", Some("1m30s")),
        (json!({"docker_image": ""}), "docker_image", None),
        (json!({"docker_image": null}), "docker_image", None),
        (json!({"kubernetes": null}), "pod_role_label", None),
        (json!({"kubernetes": {"infrastructure_roles_secrets": [{"secretname": "ns/roles", "userkey": "user", "passwordkey": "password", "template": true}, {}]}}), "infrastructure_roles_secrets", Some("secretname:ns/roles,userkey:user,passwordkey:password,template:true")),
        (json!({"kubernetes": {"infrastructure_roles_secrets": [{"secretname": "a", "userkey": "u", "passwordkey": "p"}, {"secretname": "b", "defaultuservalue": "x", "passwordkey": "p", "details": "d"}]}}), "infrastructure_roles_secrets", Some("secretname:a,userkey:u,passwordkey:p;secretname:b,passwordkey:p,defaultuservalue:x,details:d")),
    ];
    for (configuration, key, want) in cases {
        let flat = flatten_operator_configuration(configuration)
            .unwrap_or_else(|e| panic!("{configuration}: {e}"));
        assert_eq!(flat.get(*key).map(String::as_str), *want, "{configuration}");
    }

    let config = from_operator_configuration(&json!({
        "teams_api": {
            "team_api_role_configuration": {"search_path": "'\"$user\", public'", "work_mem": "'4GB'"},
            "protected_role_names": [],
        },
        "kubernetes": {"cluster_labels": {}, "pod_role_label": ""},
        "crd_categories": [],
    }))
    .unwrap();
    assert_eq!(
        config.team_api_role_configuration,
        map(&[
            ("search_path", "'\"$user\", public'"),
            ("work_mem", "'4GB'")
        ])
    );
    let defaults = OperatorConfig::default();
    assert_eq!(
        config.protected_role_names, defaults.protected_role_names,
        "[] keeps the default"
    );
    assert_eq!(
        config.cluster_labels, defaults.cluster_labels,
        "{{}} keeps the default"
    );
    assert_eq!(
        config.pod_role_label, "spilo-role",
        "\"\" keeps the default"
    );
    assert_eq!(config.crd_categories, strings(&["all"]));
}

/// Keys whose names the two forms share but whose place or shape differ.
#[test]
fn grouped_and_reshaped_keys() {
    let config = from_operator_configuration(&resource(json!({
        "enable_shm_volume": false,
        "users": {"super_username": "root", "additional_owner_roles": ["cron_admin"]},
        "kubernetes": {
            "pod_environment_configmap": "default/my-custom-config",
            "oauth_token_secret_name": "ops/teams-token",
            "infrastructure_roles_secret_name": "postgresql-infrastructure-roles",
            "watched_namespace": "team-a,team-b",
            "master_pod_move_timeout": "30m",
            "pod_management_policy": "parallel",
        },
        "aws_or_gcp": {"enable_ebs_gp3_migration": true, "enable_ebs_gp3_migration_max_size": 500},
        "debug": {"enable_database_access": false},
        "patroni": {"enable_patroni_failsafe_mode": true},
        "logging_rest_api": {"api_port": 9090},
        "scalyr": {"scalyr_image": "scalyr/agent"},
    })))
    .unwrap();
    assert!(!config.enable_shm_volume);
    assert_eq!(config.super_username, "root");
    assert_eq!(config.additional_owner_roles, strings(&["cron_admin"]));
    assert_eq!(
        config.pod_environment_configmap.as_deref(),
        Some("default/my-custom-config")
    );
    assert_eq!(config.oauth_token_secret_name, "ops/teams-token");
    assert_eq!(
        config.infrastructure_roles_secret_name.as_deref(),
        Some("postgresql-infrastructure-roles")
    );
    assert_eq!(config.watched_namespace.as_deref(), Some("team-a,team-b"));
    assert_eq!(config.master_pod_move_timeout, Duration::from_secs(30 * 60));
    assert_eq!(config.pod_management_policy, "parallel");
    assert!(config.enable_ebs_gp3_migration);
    assert_eq!(config.enable_ebs_gp3_migration_max_size, 500);
    assert!(!config.enable_database_access);
    assert!(config.enable_patroni_failsafe_mode);
    assert_eq!(config.api_port, 9090);
    assert_eq!(config.scalyr_image.as_deref(), Some("scalyr/agent"));

    for (key, path) in [
        (
            "pod_environment_configmap",
            "configuration.kubernetes.pod_environment_configmap",
        ),
        (
            "infrastructure_roles_secrets",
            "configuration.kubernetes.infrastructure_roles_secrets",
        ),
        (
            "oauth_token_secret_name",
            "configuration.kubernetes.oauth_token_secret_name",
        ),
        (
            "default_cpu_request",
            "configuration.postgres_pod_resources.default_cpu_request",
        ),
        (
            "ready_wait_timeout",
            "configuration.timeouts.ready_wait_timeout",
        ),
        (
            "master_pod_move_timeout",
            "configuration.kubernetes.master_pod_move_timeout",
        ),
        (
            "enable_master_load_balancer",
            "configuration.load_balancer.enable_master_load_balancer",
        ),
        ("wal_s3_bucket", "configuration.aws_or_gcp.wal_s3_bucket"),
        (
            "logical_backup_s3_bucket",
            "configuration.logical_backup.logical_backup_s3_bucket",
        ),
        ("debug_logging", "configuration.debug.debug_logging"),
        (
            "enable_teams_api",
            "configuration.teams_api.enable_teams_api",
        ),
        (
            "ring_log_lines",
            "configuration.logging_rest_api.ring_log_lines",
        ),
        (
            "connection_pooler_image",
            "configuration.connection_pooler.connection_pooler_image",
        ),
        (
            "enable_patroni_failsafe_mode",
            "configuration.patroni.enable_patroni_failsafe_mode",
        ),
        (
            "target_major_version",
            "configuration.major_version_upgrade.target_major_version",
        ),
        ("super_username", "configuration.users.super_username"),
        ("scalyr_api_key", "configuration.scalyr.scalyr_api_key"),
        ("docker_image", "configuration.docker_image"),
        ("enable_shm_volume", "configuration.enable_shm_volume"),
        ("sidecars", "configuration.sidecars"),
    ] {
        assert_eq!(
            operator_configuration_path(key).as_deref(),
            Some(path),
            "{key}"
        );
    }
    assert_eq!(operator_configuration_path("enable_load_balancer"), None);
    assert_eq!(operator_configuration_path("no_such_key"), None);
}

#[test]
fn bad_values_name_the_path_and_say_what_was_expected() {
    let cases: &[(Value, &str, &str, &str)] = &[
        // (configuration, key in the error, value in the error, part of the reason)
        (
            json!({"kubernetes": {"enable_sidecars": "yes"}}),
            "configuration.kubernetes.enable_sidecars",
            "yes",
            "expected a boolean (true or false), got a string",
        ),
        (
            json!({"debug": {"debug_logging": 1}}),
            "configuration.debug.debug_logging",
            "1",
            "expected a boolean (true or false), got a number",
        ),
        (
            json!({"workers": "8"}),
            "configuration.workers",
            "8",
            "expected a whole number, got a string",
        ),
        (
            json!({"workers": 8.5}),
            "configuration.workers",
            "8.5",
            "expected a whole number, got a number with a fraction",
        ),
        (
            json!({"workers": 0}),
            "configuration.workers",
            "0",
            "must be at least 1",
        ),
        (
            json!({"workers": -1}),
            "configuration.workers",
            "-1",
            "must be at least 1",
        ),
        (
            json!({"min_instances": -2}),
            "configuration.min_instances",
            "-2",
            "must be at least -1",
        ),
        (
            json!({"connection_pooler": {"connection_pooler_number_of_instances": 0}}),
            "configuration.connection_pooler.connection_pooler_number_of_instances",
            "0",
            "must be at least 1",
        ),
        (
            json!({"logging_rest_api": {"api_port": 70000}}),
            "configuration.logging_rest_api.api_port",
            "70000",
            "expected a whole number",
        ),
        (
            json!({"users": {"password_rotation_interval": -5}}),
            "configuration.users.password_rotation_interval",
            "-5",
            "expected a whole number",
        ),
        (
            json!({"kubernetes": {"spilo_runasuser": "101"}}),
            "configuration.kubernetes.spilo_runasuser",
            "101",
            "expected a whole number, got a string",
        ),
        (
            json!({"resync_period": 30}),
            "configuration.resync_period",
            "30",
            "expected a duration string such as \"30s\", \"5m\" or \"1h30m\", got a number",
        ),
        (
            json!({"resync_period": "30"}),
            "configuration.resync_period",
            "30",
            "missing unit",
        ),
        (
            json!({"timeouts": {"ready_wait_timeout": "5x"}}),
            "configuration.timeouts.ready_wait_timeout",
            "5x",
            "unknown unit \"x\"",
        ),
        (
            json!({"kubernetes": {"pod_terminate_grace_period": "-5m"}}),
            "configuration.kubernetes.pod_terminate_grace_period",
            "-5m",
            "cannot be negative",
        ),
        (
            json!({"major_version_upgrade": {"target_major_version": 18}}),
            "configuration.major_version_upgrade.target_major_version",
            "18",
            "expected a string, got a number",
        ),
        (
            json!({"docker_image": ["a"]}),
            "configuration.docker_image",
            "[\"a\"]",
            "expected a string, got a list",
        ),
        (
            json!({"kubernetes": {"pod_management_policy": "random"}}),
            "configuration.kubernetes.pod_management_policy",
            "random",
            "expected one of \"ordered_ready\", \"parallel\"",
        ),
        (
            json!({"kubernetes": {"storage_resize_mode": "PVC"}}),
            "configuration.kubernetes.storage_resize_mode",
            "PVC",
            "expected one of \"ebs\", \"mixed\", \"pvc\", \"off\"",
        ),
        (
            json!({"kubernetes": {"node_readiness_label_merge": "or"}}),
            "configuration.kubernetes.node_readiness_label_merge",
            "or",
            "expected one of \"AND\", \"OR\"",
        ),
        (
            json!({"load_balancer": {"external_traffic_policy": "local"}}),
            "configuration.load_balancer.external_traffic_policy",
            "local",
            "expected one of \"Cluster\", \"Local\"",
        ),
        (
            json!({"connection_pooler": {"connection_pooler_mode": "statement"}}),
            "configuration.connection_pooler.connection_pooler_mode",
            "statement",
            "expected one of \"session\", \"transaction\"",
        ),
        (
            json!({"major_version_upgrade": {"major_version_upgrade_mode": "auto"}}),
            "configuration.major_version_upgrade.major_version_upgrade_mode",
            "auto",
            "expected one of \"off\", \"manual\", \"full\"",
        ),
        (
            json!({"logical_backup": {"logical_backup_provider": "aws"}}),
            "configuration.logical_backup.logical_backup_provider",
            "aws",
            "expected one of \"az\", \"gcs\", \"s3\"",
        ),
        (
            json!({"kubernetes": {"pod_management_policy": true}}),
            "configuration.kubernetes.pod_management_policy",
            "true",
            "expected one of \"ordered_ready\", \"parallel\", got a boolean",
        ),
        (
            json!({"kubernetes": {"cluster_labels": "application:spilo"}}),
            "configuration.kubernetes.cluster_labels",
            "application:spilo",
            "expected a map of strings (key: value), got a string",
        ),
        (
            json!({"kubernetes": {"cluster_labels": {"version": 1}}}),
            "configuration.kubernetes.cluster_labels.version",
            "1",
            "expected a string, got a number",
        ),
        (
            json!({"kubernetes": {"custom_pod_annotations": {"a:b": "v"}}}),
            "configuration.kubernetes.custom_pod_annotations.a:b",
            "v",
            "cannot be written in the ConfigMap form",
        ),
        (
            json!({"teams_api": {"team_api_role_configuration": {"search_path": "\"$user\", public"}}}),
            "configuration.teams_api.team_api_role_configuration.search_path",
            "\"$user\", public",
            "cannot be written in the ConfigMap form",
        ),
        (
            json!({"teams_api": {"team_api_role_configuration": {"k": "'open"}}}),
            "configuration.teams_api.team_api_role_configuration.k",
            "'open",
            "unmatched quote",
        ),
        (
            json!({"teams_api": {"protected_role_names": "admin"}}),
            "configuration.teams_api.protected_role_names",
            "admin",
            "expected a list of strings, got a string",
        ),
        (
            json!({"teams_api": {"protected_role_names": ["admin", 1]}}),
            "configuration.teams_api.protected_role_names[1]",
            "1",
            "expected a string, got a number",
        ),
        (
            json!({"kubernetes": {"inherited_labels": ["a,b"]}}),
            "configuration.kubernetes.inherited_labels[0]",
            "a,b",
            "cannot contain a comma",
        ),
        (
            json!({"kubernetes": {"infrastructure_roles_secrets": {"secretname": "x"}}}),
            "configuration.kubernetes.infrastructure_roles_secrets",
            "{\"secretname\":\"x\"}",
            "expected a list of role definitions",
        ),
        (
            json!({"kubernetes": {"infrastructure_roles_secrets": ["x"]}}),
            "configuration.kubernetes.infrastructure_roles_secrets[0]",
            "x",
            "expected a role definition (an object), got a string",
        ),
        (
            json!({"kubernetes": {"infrastructure_roles_secrets": [{"secretname": "a,b"}]}}),
            "configuration.kubernetes.infrastructure_roles_secrets[0].secretname",
            "a,b",
            "cannot contain ','",
        ),
        (
            json!({"kubernetes": {"infrastructure_roles_secrets": [{"secretname": "a", "template": "true"}]}}),
            "configuration.kubernetes.infrastructure_roles_secrets[0].template",
            "true",
            "expected a boolean, got a string",
        ),
        (
            json!({"sidecars": {"name": "x"}}),
            "configuration.sidecars",
            "{\"name\":\"x\"}",
            "expected a list of containers, got an object",
        ),
        (
            json!({"sidecars": ["busybox"]}),
            "configuration.sidecars[0]",
            "busybox",
            "expected a container (an object), got a string",
        ),
        (
            json!({"kubernetes": "postgres-pod"}),
            "configuration.kubernetes",
            "postgres-pod",
            "expected an object (a group of keys), got a string",
        ),
        (
            json!({"kubernetes": [{"pod_role_label": "x"}]}),
            "configuration.kubernetes",
            "[{\"pod_role_label\":\"x\"}]",
            "expected an object (a group of keys), got a list",
        ),
        (
            json!({"configuration": ["x"]}),
            "configuration",
            "[\"x\"]",
            "expected an object, got a list",
        ),
        (
            json!("workers: 4"),
            "configuration",
            "workers: 4",
            "expected an OperatorConfiguration or its configuration (an object), got a string",
        ),
        (
            json!({"kind": "ConfigMap", "data": {}}),
            "kind",
            "ConfigMap",
            "expected an OperatorConfiguration",
        ),
        (
            json!({"apiVersion": "v1", "configuration": {}}),
            "apiVersion",
            "v1",
            "expected acid.zalan.do/v1",
        ),
    ];
    for (value, key, shown, reason) in cases {
        let err =
            from_operator_configuration(value).expect_err(&format!("{value} must be rejected"));
        match &err {
            ConfigError::InvalidValue {
                key: k,
                value: v,
                reason: r,
            } => {
                assert_eq!((k.as_str(), v.as_str()), (*key, *shown), "{value}: {err}");
                assert!(r.contains(reason), "{value}: {r:?} lacks {reason:?}");
            }
            other => panic!("{value}: unexpected {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains(key), "{message}");
        assert_eq!(
            flatten_operator_configuration(value).unwrap_err(),
            err,
            "flattening checks the same"
        );
    }

    // Cross-key checks are the ConfigMap's.
    let err = from_operator_configuration(&json!({
        "users": {"super_username": "pooler"},
    }))
    .unwrap_err();
    assert!(
        matches!(&err, ConfigError::Inconsistent(m) if m.contains("connection_pooler_user")),
        "{err}"
    );
    let err =
        from_operator_configuration(&json!({"min_instances": 5, "max_instances": 3})).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Inconsistent(m) if m.contains("min_instances")),
        "{err}"
    );
}

#[test]
fn bad_credentials_are_not_shown_in_errors() {
    let secret = "AKIA-do-not-show-1234";
    for (group, key) in [
        ("logical_backup", "logical_backup_s3_access_key_id"),
        ("logical_backup", "logical_backup_s3_secret_access_key"),
        ("logical_backup", "logical_backup_azure_storage_account_key"),
        ("scalyr", "scalyr_api_key"),
    ] {
        for bad in [
            json!([secret]),
            json!({"k": secret}),
            json!(12345678987654321u64),
        ] {
            let err = from_operator_configuration(&json!({group: {key: bad}})).unwrap_err();
            let message = err.to_string();
            assert!(message.contains(key), "{message}");
            assert!(
                !message.contains(secret) && !message.contains("12345678987654321"),
                "{message}"
            );
            assert!(message.contains("<redacted>"), "{message}");
        }
    }
}

#[test]
fn unknown_keys_are_collected_not_rejected() {
    let value = json!({
        "apiVersion": "acid.zalan.do/v1",
        "kind": "OperatorConfiguration",
        "metadata": {"name": "x"},
        "status": {},
        "spec": {"workers": 2},
        "configuration": {
            "workers": 4,
            "pod_service_account_name": "misplaced",
            "some_future_group": {"a": 1},
            "kubernetes": {
                "workers": 3,
                "liveness_probe": {"httpGet": {"port": 8008}},
                "pod_role_label": "role",
                "infrastructure_roles_secrets": [{"secretname": "r", "extra": "x"}],
            },
            "load_balancer": {"enable_load_balancer": true},
        },
    });
    let unknown = strings(&[
        "configuration.kubernetes.infrastructure_roles_secrets[0].extra",
        "configuration.kubernetes.liveness_probe",
        "configuration.kubernetes.workers",
        "configuration.load_balancer.enable_load_balancer",
        "configuration.pod_service_account_name",
        "configuration.some_future_group",
        "spec",
    ]);
    let config = from_operator_configuration(&value).unwrap();
    assert_eq!(config.unknown_keys, unknown);
    assert_eq!(operator_configuration_unknown_keys(&value), unknown);
    assert_eq!(config.workers, 4, "only configuration.workers counts");
    assert_eq!(
        config.pod_service_account_name, "postgres-pod",
        "misplaced keys are ignored"
    );
    assert_eq!(config.pod_role_label, "role");
    assert_eq!(config.enable_load_balancer, None);
    assert_eq!(
        config.infrastructure_roles_secrets.as_deref(),
        Some("secretname:r")
    );

    // The flat data keeps the unknown keys under their paths (not the fields
    // beside `configuration`), with their values as JSON text.
    let flat = flatten_operator_configuration(&value).unwrap();
    assert_eq!(
        flat.get("configuration.kubernetes.liveness_probe")
            .map(String::as_str),
        Some(r#"{"httpGet":{"port":8008}}"#)
    );
    assert_eq!(
        flat.get("configuration.pod_service_account_name")
            .map(String::as_str),
        Some("misplaced")
    );
    assert!(!flat.contains_key("spec"));
    let via_flat = from_config_map_data(&flat).unwrap();
    assert_eq!(via_flat.unknown_keys, unknown[..unknown.len() - 1]);
    assert_eq!(
        OperatorConfig {
            unknown_keys: unknown,
            ..via_flat
        },
        config
    );

    // Unknown keys are listed even when a value is bad.
    let bad = json!({"workers": "four", "kubernetes": {"liveness_probe": {}}});
    assert!(from_operator_configuration(&bad).is_err());
    assert_eq!(
        operator_configuration_unknown_keys(&bad),
        strings(&["configuration.kubernetes.liveness_probe"])
    );
}

#[test]
fn the_resource_may_be_empty() {
    for value in [
        json!({}),
        json!({"apiVersion": "acid.zalan.do/v1", "kind": "OperatorConfiguration", "metadata": {"name": "x"}}),
        resource(Value::Null),
        resource(json!({})),
        resource(json!({"kubernetes": null, "timeouts": {}})),
    ] {
        assert_eq!(
            from_operator_configuration(&value).unwrap(),
            OperatorConfig::default(),
            "{value}"
        );
        assert_eq!(
            flatten_operator_configuration(&value).unwrap(),
            BTreeMap::new(),
            "{value}"
        );
    }
}

/// `/config/` shows every key, credentials redacted: no credential's value
/// appears anywhere in the JSON, whichever form set it.
#[test]
fn effective_config_json_redacts_every_credential() {
    let secrets = [
        (
            "logical_backup",
            "logical_backup_s3_access_key_id",
            "AKIA-ID-VALUE-1",
        ),
        (
            "logical_backup",
            "logical_backup_s3_secret_access_key",
            "s3-secret-value-2",
        ),
        (
            "logical_backup",
            "logical_backup_azure_storage_account_key",
            "azure-secret-value-3",
        ),
        ("scalyr", "scalyr_api_key", "scalyr-secret-value-4"),
    ];
    let mut configuration = json!({"logical_backup": {}, "scalyr": {}, "workers": 3});
    for (group, key, secret) in secrets {
        configuration[group][key] = json!(secret);
    }
    let from_crd = from_operator_configuration(&resource(configuration)).unwrap();
    let from_cm = from_config_map_data(&map(&[
        ("logical_backup_s3_access_key_id", "AKIA-ID-VALUE-1"),
        ("logical_backup_s3_secret_access_key", "s3-secret-value-2"),
        (
            "logical_backup_azure_storage_account_key",
            "azure-secret-value-3",
        ),
        ("scalyr_api_key", "scalyr-secret-value-4"),
        ("workers", "3"),
    ]))
    .unwrap();
    assert_eq!(from_crd, from_cm);
    assert_eq!(
        from_crd.scalyr_api_key.as_ref().map(|s| s.expose()),
        Some("scalyr-secret-value-4"),
        "the credential itself is there for whoever needs it"
    );

    let json = effective_config_json(&from_crd);
    let text = json.to_string();
    let pretty = serde_json::to_string_pretty(&json).unwrap();
    for (_, key, secret) in secrets {
        assert!(
            !text.contains(secret) && !pretty.contains(secret),
            "{secret} shown"
        );
        assert_eq!(json[key], "<redacted>", "{key}");
    }
    assert_eq!(json["workers"], 3);
    assert_eq!(json["resync_period"], "30m");

    // Unset credentials are null; every key is there, and nothing else but
    // unknown_keys.
    let defaults = effective_config_json(&OperatorConfig::default());
    for key in SECRET_KEYS {
        assert_eq!(defaults[key], Value::Null, "{key}");
    }
    let mut keys: Vec<&str> = defaults
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.retain(|k| *k != "unknown_keys");
    keys.sort_unstable();
    let mut known = KNOWN_KEYS.to_vec();
    known.sort_unstable();
    assert_eq!(keys, known);

    // Apart from the credentials, it is the configuration's own JSON.
    let mut plain = json.clone();
    for key in SECRET_KEYS {
        plain.as_object_mut().unwrap().remove(*key);
    }
    assert_eq!(plain, serde_json::to_value(&from_crd).unwrap());
}
