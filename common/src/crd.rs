//! The `postgresql` custom resource (`acid.zalan.do/v1`), field for field compatible with
//! Zalando's manifests. Kubernetes types embedded in the spec (containers, tolerations,
//! affinity, volume sources, ...) are typed here but kept schemaless in the CRD
//! (`x-kubernetes-preserve-unknown-fields`), which keeps the CRD small and valid on every
//! Kubernetes version; pgop checks them when it parses the manifest.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EnvFromSource, EnvVar, NodeAffinity, Probe, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Status values Zalando's operator writes, which tools and dashboards match on.
pub mod cluster_status {
    pub const CREATING: &str = "Creating";
    pub const UPDATING: &str = "Updating";
    pub const RUNNING: &str = "Running";
    pub const CREATE_FAILED: &str = "CreateFailed";
    pub const UPDATE_FAILED: &str = "UpdateFailed";
    pub const SYNC_FAILED: &str = "SyncFailed";
    pub const INVALID: &str = "Invalid";
}

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "acid.zalan.do",
    version = "v1",
    kind = "postgresql",
    root = "Postgresql",
    plural = "postgresqls",
    singular = "postgresql",
    shortname = "pg",
    category = "all",
    namespaced,
    status = "PostgresStatus",
    printcolumn = r#"{"name": "Team", "type": "string", "jsonPath": ".spec.teamId", "description": "Team responsible for Postgres cluster"}"#,
    printcolumn = r#"{"name": "Version", "type": "string", "jsonPath": ".spec.postgresql.version", "description": "PostgreSQL version"}"#,
    printcolumn = r#"{"name": "Pods", "type": "integer", "jsonPath": ".spec.numberOfInstances", "description": "Number of Pods per Postgres cluster"}"#,
    printcolumn = r#"{"name": "Volume", "type": "string", "jsonPath": ".spec.volume.size", "description": "Size of the bound volume"}"#,
    printcolumn = r#"{"name": "CPU-Request", "type": "string", "jsonPath": ".spec.resources.requests.cpu", "description": "Requested CPU for Postgres containers"}"#,
    printcolumn = r#"{"name": "Memory-Request", "type": "string", "jsonPath": ".spec.resources.requests.memory", "description": "Requested memory for Postgres containers"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp", "description": "Age of the PostgreSQL cluster"}"#,
    printcolumn = r#"{"name": "Status", "type": "string", "jsonPath": ".status.PostgresClusterStatus", "description": "Current sync status of postgresql resource"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSpec {
    pub team_id: String,
    #[schemars(range(min = 0))]
    pub number_of_instances: i32,
    pub volume: Volume,
    pub postgresql: PostgresqlParam,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patroni: Option<Patroni>,

    /// Role name → role flags (`superuser`, `createdb`, `nologin`, ... in any case).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub users: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users_with_secret_rotation: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users_with_in_place_secret_rotation: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users_ignoring_secret_rotation: Vec<String>,
    /// Database name → owner role.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub databases: BTreeMap<String, String>,
    /// `Some({})` (written `preparedDatabases: {}`) prepares one database named after the
    /// cluster, so an empty map is not the same as none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared_databases: Option<BTreeMap<String, PreparedDatabase>>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_master_load_balancer: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_replica_load_balancer: Option<bool>,
    /// Deprecated predecessor of `enableMasterLoadBalancer`: counts only when neither new
    /// flag is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_load_balancer: Option<bool>,
    /// Deprecated predecessor of `enableReplicaLoadBalancer` (same rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_load_balancer: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_master_node_port: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_replica_node_port: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_node_port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_node_port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_connection_pooler: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_replica_connection_pooler: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_master_pooler_load_balancer: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_replica_pooler_load_balancer: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_master_pooler_node_port: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_replica_pooler_node_port: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_pooler_node_port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_pooler_node_port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pooler: Option<ConnectionPooler>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_source_ranges: Vec<String>,

    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub master_service_annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub replica_service_annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_shm_volume: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_logical_backup: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_backup_schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_backup_retention: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance_windows: Vec<String>,

    #[serde(
        default,
        rename = "spiloRunAsUser",
        skip_serializing_if = "Option::is_none"
    )]
    pub spilo_run_as_user: Option<i64>,
    #[serde(
        default,
        rename = "spiloRunAsGroup",
        skip_serializing_if = "Option::is_none"
    )]
    pub spilo_run_as_group: Option<i64>,
    #[serde(
        default,
        rename = "spiloFSGroup",
        skip_serializing_if = "Option::is_none"
    )]
    pub spilo_fs_group: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_priority_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<String>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "preserved_array")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "preserved_array")]
    pub env_from: Vec<EnvFromSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "preserved_array")]
    pub init_containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "preserved_array")]
    pub sidecars: Vec<Container>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub liveness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "preserved_array")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub node_affinity: Option<NodeAffinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "preserved_array")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_volumes: Vec<AdditionalVolume>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone: Option<CloneDescription>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<StandbyDescription>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<Stream>,
}

/// `status.PostgresClusterStatus`, as Zalando's operator writes it, and why the cluster is
/// `Invalid` or `*Failed` (pgop's additions; a CRD that doesn't list them prunes them).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct PostgresStatus {
    #[serde(rename = "PostgresClusterStatus", default)]
    pub postgres_cluster_status: String,
    /// Why the cluster is `Invalid` or `*Failed`: the field and what is wrong, never a value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When a failed sync is tried again (RFC 3339); absent for an `Invalid` manifest, which
    /// only a change of the manifest or of the operator configuration can help.
    #[serde(rename = "nextRetry", default, skip_serializing_if = "Option::is_none")]
    pub next_retry: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub size: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_sub_path_expr: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<i64>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub selector: Option<LabelSelector>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct PostgresqlParam {
    pub version: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ResourceDescription>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceDescription>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ResourceDescription {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(
        default,
        rename = "hugepages-2Mi",
        skip_serializing_if = "Option::is_none"
    )]
    pub hugepages_2mi: Option<String>,
    #[serde(
        default,
        rename = "hugepages-1Gi",
        skip_serializing_if = "Option::is_none"
    )]
    pub hugepages_1gi: Option<String>,
}

/// Patroni settings of the manifest; keys are Patroni's own (snake_case).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Patroni {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub initdb: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pg_hba: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loop_wait: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_timeout: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_lag_on_failover: Option<i64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub slots: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous_mode: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous_mode_strict: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous_node_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failsafe_mode: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreparedDatabase {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub schemas: BTreeMap<String, PreparedSchema>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_users: Option<bool>,
    /// Extension → schema it is created in.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extensions: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_namespace: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreparedSchema {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_users: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_roles: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPooler {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub number_of_instances: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_image: Option<String>,
    #[serde(
        default,
        rename = "maxDBConnections",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_db_connections: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdditionalVolume {
    pub name: String,
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_sub_path_expr: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_containers: Vec<String>,
    /// A Kubernetes volume source (`emptyDir`, `persistentVolumeClaim`, ...), kept as
    /// written: Zalando's operator also accepts capitalised keys (`PersistentVolumeClaim`).
    #[schemars(schema_with = "preserved_object")]
    pub volume_source: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tls {
    pub secret_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_name: Option<String>,
}

/// Clone source; keys are snake_case in Zalando's manifests.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct CloneDescription {
    #[serde(default)]
    pub cluster: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_wal_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_secret_access_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_force_path_style: Option<bool>,
}

/// Standby source; keys are snake_case in Zalando's manifests.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct StandbyDescription {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_wal_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gs_wal_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_primary_slot_name: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stream {
    pub application_id: String,
    pub database: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tables: BTreeMap<String, StreamTable>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filter: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_recovery: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamTable {
    pub event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_column: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_column: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_recovery: Option<bool>,
}

fn preserved_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

fn preserved_array(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}})
}

impl Postgresql {
    /// `namespace/name`, the key every pgop process uses for a cluster.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }
}

/// The CRD pgop installs. The schema carries no `default`s: the API server would inject
/// them into users' objects, and 1.20 rejects the `null` ones schemars derives.
pub fn crd(
) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    let mut crd = Postgresql::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            let mut value = serde_json::to_value(&*schema).unwrap_or_default();
            strip_defaults(&mut value);
            if let Ok(stripped) = serde_json::from_value(value) {
                *schema = stripped;
            }
        }
    }
    crd
}

fn strip_defaults(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.remove("default");
            map.values_mut().for_each(strip_defaults);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_defaults),
        _ => {}
    }
}

/// The CRD as YAML, with a header saying where it comes from.
pub fn crd_yaml() -> String {
    let yaml = serde_yaml::to_string(&crd()).unwrap_or_default();
    format!("# Generated from pgop-common's Rust types: cargo run -p pgop-common --bin pgop-crdgen\n{yaml}")
}
