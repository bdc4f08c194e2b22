//! Patroni configuration from a Spilo container's environment, the way Spilo's
//! `configure_spilo.py` derives it, adapted to a pod that is a set of local processes:
//! PostgreSQL and the REST API listen on the pod's loopback address, the data directory is
//! the host directory behind the container's `PGROOT`, and the Kubernetes DCS reaches the
//! API server through a kubeconfig.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpiloError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("SPILO_CONFIGURATION is not valid JSON or YAML: {0}")]
    Configuration(String),
    #[error("{0} must be a JSON object")]
    NotAnObject(&'static str),
}

/// Everything the Patroni configuration depends on.
#[derive(Debug, Clone)]
pub struct SpiloInput<'a> {
    pub env: &'a BTreeMap<String, String>,
    pub pod_name: &'a str,
    pub namespace: &'a str,
    pub pod_ip: Ipv4Addr,
    /// Host directory behind the container's `PGROOT`.
    pub pgroot: PathBuf,
    pub run_dir: &'a Path,
    pub socket_dir: &'a Path,
    pub pg_bin_dir: &'a Path,
    /// Context Patroni selects in the kubeconfig it is given.
    pub kube_context: &'a str,
    /// (certificate, key) files for PostgreSQL's TLS.
    pub tls: (PathBuf, PathBuf),
}

/// Roles Spilo creates after bootstrap (`bootstrap.users` of SPILO_CONFIGURATION), which
/// Patroni 3 no longer creates itself.
#[derive(Debug, Clone, PartialEq)]
pub struct BootstrapUser {
    pub name: String,
    pub password: String,
    pub options: Vec<String>,
}

pub fn spilo_configuration(
    env: &BTreeMap<String, String>,
) -> Result<Map<String, Value>, SpiloError> {
    let Some(raw) = env
        .get("SPILO_CONFIGURATION")
        .filter(|s| !s.trim().is_empty())
    else {
        return Ok(Map::new());
    };
    // Spilo reads it as YAML, of which JSON is a subset.
    let value: Value =
        serde_yaml::from_str(raw).map_err(|e| SpiloError::Configuration(e.to_string()))?;
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        _ => Err(SpiloError::NotAnObject("SPILO_CONFIGURATION")),
    }
}

fn truthy(value: Option<&String>) -> bool {
    matches!(
        value.map(|s| s.to_ascii_lowercase()).as_deref(),
        Some("true" | "1" | "yes" | "on")
    )
}

/// Merges `overlay` into `base`: objects key by key, everything else replaced.
pub fn deep_merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                deep_merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The Patroni configuration document (JSON, which Patroni reads as YAML).
pub fn patroni_config(input: &SpiloInput) -> Result<Value, SpiloError> {
    let env = input.env;
    let get = |k: &str| env.get(k).filter(|v| !v.is_empty());
    let scope = get("SCOPE").ok_or(SpiloError::Missing("SCOPE"))?;
    let superuser = get("PGUSER_SUPERUSER")
        .map(String::as_str)
        .unwrap_or("postgres");
    let superuser_password =
        get("PGPASSWORD_SUPERUSER").ok_or(SpiloError::Missing("PGPASSWORD_SUPERUSER"))?;
    let standby = get("PGUSER_STANDBY")
        .map(String::as_str)
        .unwrap_or("standby");
    let standby_password =
        get("PGPASSWORD_STANDBY").ok_or(SpiloError::Missing("PGPASSWORD_STANDBY"))?;
    let spilo = spilo_configuration(env)?;
    let ip = input.pod_ip.to_string();

    let labels: Value = match get("KUBERNETES_LABELS") {
        Some(raw) => serde_json::from_str(raw)
            .map_err(|e| SpiloError::Configuration(format!("KUBERNETES_LABELS: {e}")))?,
        None => json!({"application": "spilo"}),
    };
    if !labels.is_object() {
        return Err(SpiloError::NotAnObject("KUBERNETES_LABELS"));
    }

    let mut dcs = json!({
        "ttl": 30,
        "loop_wait": 10,
        "retry_timeout": 10,
        "maximum_lag_on_failover": 33554432,
        "postgresql": {
            "use_pg_rewind": true,
            "use_slots": true,
            "parameters": {
                "wal_level": "replica",
                "wal_log_hints": "on",
                "hot_standby": "on",
                "max_connections": 100,
                "max_wal_senders": 10,
                "max_replication_slots": 10,
                "wal_keep_size": "128MB"
            }
        }
    });
    let bootstrap = spilo.get("bootstrap").cloned().unwrap_or(Value::Null);
    if let Some(overlay) = bootstrap.get("dcs") {
        deep_merge(&mut dcs, overlay);
    }
    let initdb = bootstrap.get("initdb").cloned().unwrap_or_else(
        || json!([{"auth-host": "md5"}, {"auth-local": "trust"}, {"encoding": "UTF8"}]),
    );

    let mut parameters = json!({
        "listen_addresses": ip,
        "unix_socket_directories": input.socket_dir,
        "ssl": "on",
        "ssl_cert_file": input.tls.0,
        "ssl_key_file": input.tls.1,
        "shared_buffers": "32MB",
        "log_destination": "stderr",
        "logging_collector": "off",
    });
    let local = spilo.get("postgresql").cloned().unwrap_or(Value::Null);
    if let Some(overlay) = local.get("parameters") {
        deep_merge(&mut parameters, overlay);
    }
    let pg_hba = local
        .get("pg_hba")
        .or_else(|| bootstrap.get("pg_hba"))
        .cloned()
        .unwrap_or_else(|| {
            json!([
                "local all all trust",
                format!("local replication {standby} trust"),
                format!("host replication {standby} all md5"),
                "host all all all md5",
            ])
        });

    let pgroot = &input.pgroot;
    let mut config = json!({
        "scope": scope,
        "name": input.pod_name,
        "log": {"level": "INFO"},
        "restapi": {"listen": format!("{ip}:8008"), "connect_address": format!("{ip}:8008")},
        "kubernetes": {
            "namespace": input.namespace,
            "context": input.kube_context,
            "labels": labels,
            "scope_label": get("KUBERNETES_SCOPE_LABEL").map(String::as_str).unwrap_or("cluster-name"),
            "role_label": get("KUBERNETES_ROLE_LABEL").map(String::as_str).unwrap_or("spilo-role"),
            "use_endpoints": !truthy(env.get("KUBERNETES_USE_CONFIGMAPS")),
            "pod_ip": ip,
            "ports": [{"name": "postgresql", "port": 5432}],
        },
        "bootstrap": {"dcs": dcs, "initdb": initdb},
        "postgresql": {
            "listen": format!("{ip}:5432"),
            "connect_address": format!("{ip}:5432"),
            "data_dir": pgroot.join("data"),
            "bin_dir": input.pg_bin_dir,
            "pgpass": input.run_dir.join("pgpass"),
            "use_unix_socket": true,
            "authentication": {
                "superuser": {"username": superuser, "password": superuser_password},
                "replication": {"username": standby, "password": standby_password},
            },
            "parameters": parameters,
            "pg_hba": pg_hba,
            "basebackup": [{"checkpoint": "fast"}],
        },
        "watchdog": {"mode": "off"},
    });
    // As Spilo, post-init always runs: it creates the bootstrap users and Spilo's own roles.
    bootstrap_users(env)?;
    config["bootstrap"]["post_init"] = json!(input.run_dir.join("post_init.sh"));
    Ok(config)
}

/// Role options Spilo passes through to CREATE ROLE; anything else is dropped.
const ROLE_OPTIONS: &[&str] = &[
    "SUPERUSER",
    "NOSUPERUSER",
    "CREATEDB",
    "NOCREATEDB",
    "CREATEROLE",
    "NOCREATEROLE",
    "INHERIT",
    "NOINHERIT",
    "LOGIN",
    "NOLOGIN",
    "REPLICATION",
    "NOREPLICATION",
    "BYPASSRLS",
    "NOBYPASSRLS",
];

pub fn bootstrap_users(env: &BTreeMap<String, String>) -> Result<Vec<BootstrapUser>, SpiloError> {
    let spilo = spilo_configuration(env)?;
    let users = spilo
        .get("bootstrap")
        .and_then(|b| b.get("users"))
        .and_then(Value::as_object);
    Ok(users
        .into_iter()
        .flatten()
        .map(|(name, def)| BootstrapUser {
            name: name.clone(),
            password: def
                .get("password")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            options: def
                .get("options")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_ascii_uppercase)
                .filter(|o| ROLE_OPTIONS.contains(&o.as_str()))
                .collect(),
        })
        .collect())
}

/// The roles Spilo's own post-init script creates in every cluster (operators grant them:
/// Zalando's `team_admin_role` is `admin`, its protected roles include `cron_admin`).
pub fn spilo_builtin_roles() -> Vec<BootstrapUser> {
    let role = |name: &str, options: &[&str]| BootstrapUser {
        name: name.to_string(),
        password: String::new(),
        options: options.iter().map(|o| o.to_string()).collect(),
    };
    vec![
        role("admin", &["CREATEDB", "NOLOGIN"]),
        role("cron_admin", &["NOLOGIN"]),
    ]
}

/// SQL creating the bootstrap users; names and passwords are quoted by postgres-protocol.
pub fn bootstrap_users_sql(users: &[BootstrapUser]) -> String {
    use postgres_protocol::escape::{escape_identifier, escape_literal};
    let mut sql = String::new();
    for user in users {
        let mut statement = format!("CREATE ROLE {}", escape_identifier(&user.name));
        for option in &user.options {
            statement.push(' ');
            statement.push_str(option);
        }
        if !user.password.is_empty() {
            statement.push_str(" PASSWORD ");
            statement.push_str(&escape_literal(&user.password));
        }
        sql.push_str(&statement);
        sql.push_str(";\n");
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = [
            ("SCOPE", "acid-minimal-cluster"),
            ("PGPASSWORD_SUPERUSER", "su-pass"),
            ("PGPASSWORD_STANDBY", "sb-pass"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in pairs {
            env.insert(k.to_string(), v.to_string());
        }
        env
    }

    fn build(env: &BTreeMap<String, String>) -> Result<Value, SpiloError> {
        patroni_config(&SpiloInput {
            env,
            pod_name: "acid-minimal-cluster-0",
            namespace: "default",
            pod_ip: Ipv4Addr::new(127, 1, 0, 3),
            pgroot: PathBuf::from("/data/pvc-1/pgroot"),
            run_dir: Path::new("/run/pod"),
            socket_dir: Path::new("/tmp/s"),
            pg_bin_dir: Path::new("/usr/lib/postgresql/15/bin"),
            kube_context: "pgop-local",
            tls: (
                PathBuf::from("/run/pod/server.crt"),
                PathBuf::from("/run/pod/server.key"),
            ),
        })
    }

    #[test]
    fn defaults_follow_spilo() {
        let c = build(&env(&[])).unwrap();
        let cases: &[(&str, Value)] = &[
            ("/scope", json!("acid-minimal-cluster")),
            ("/name", json!("acid-minimal-cluster-0")),
            ("/restapi/listen", json!("127.1.0.3:8008")),
            ("/postgresql/listen", json!("127.1.0.3:5432")),
            ("/postgresql/data_dir", json!("/data/pvc-1/pgroot/data")),
            (
                "/postgresql/authentication/superuser/username",
                json!("postgres"),
            ),
            (
                "/postgresql/authentication/superuser/password",
                json!("su-pass"),
            ),
            (
                "/postgresql/authentication/replication/username",
                json!("standby"),
            ),
            ("/kubernetes/namespace", json!("default")),
            ("/kubernetes/context", json!("pgop-local")),
            ("/kubernetes/labels", json!({"application": "spilo"})),
            ("/kubernetes/scope_label", json!("cluster-name")),
            ("/kubernetes/role_label", json!("spilo-role")),
            ("/kubernetes/use_endpoints", json!(true)),
            ("/kubernetes/pod_ip", json!("127.1.0.3")),
            ("/bootstrap/dcs/ttl", json!(30)),
            ("/postgresql/parameters/ssl", json!("on")),
        ];
        for (pointer, want) in cases {
            assert_eq!(c.pointer(pointer), Some(want), "{pointer}");
        }
        assert!(
            c.pointer("/bootstrap/post_init").is_some(),
            "Spilo's own roles are always created"
        );
    }

    #[test]
    fn environment_and_spilo_configuration_override_defaults() {
        let spilo = r#"{"postgresql":{"parameters":{"shared_buffers":"64MB","log_statement":"all"},"pg_hba":["local all all trust"]},
            "bootstrap":{"initdb":[{"auth-host":"md5"},"data-checksums"],"users":{"zalandos":{"password":"","options":["CREATEDB","nologin","; DROP"]}},
            "dcs":{"ttl":20,"postgresql":{"parameters":{"max_connections":"50"}}}}}"#;
        let e = env(&[
            ("SPILO_CONFIGURATION", spilo),
            ("PGUSER_SUPERUSER", "root"),
            ("KUBERNETES_LABELS", r#"{"application":"db"}"#),
            ("KUBERNETES_ROLE_LABEL", "role"),
            ("KUBERNETES_SCOPE_LABEL", "cluster"),
            ("KUBERNETES_USE_CONFIGMAPS", "true"),
        ]);
        let c = build(&e).unwrap();
        let cases: &[(&str, Value)] = &[
            ("/postgresql/parameters/shared_buffers", json!("64MB")),
            ("/postgresql/parameters/log_statement", json!("all")),
            ("/postgresql/parameters/ssl", json!("on")),
            ("/postgresql/pg_hba", json!(["local all all trust"])),
            ("/bootstrap/dcs/ttl", json!(20)),
            ("/bootstrap/dcs/loop_wait", json!(10)),
            (
                "/bootstrap/dcs/postgresql/parameters/max_connections",
                json!("50"),
            ),
            (
                "/bootstrap/dcs/postgresql/parameters/wal_level",
                json!("replica"),
            ),
            (
                "/bootstrap/initdb",
                json!([{"auth-host": "md5"}, "data-checksums"]),
            ),
            ("/bootstrap/post_init", json!("/run/pod/post_init.sh")),
            (
                "/postgresql/authentication/superuser/username",
                json!("root"),
            ),
            ("/kubernetes/labels", json!({"application": "db"})),
            ("/kubernetes/role_label", json!("role")),
            ("/kubernetes/scope_label", json!("cluster")),
            ("/kubernetes/use_endpoints", json!(false)),
        ];
        for (pointer, want) in cases {
            assert_eq!(c.pointer(pointer), Some(want), "{pointer}");
        }
        let users = bootstrap_users(&e).unwrap();
        assert_eq!(
            users,
            vec![BootstrapUser {
                name: "zalandos".into(),
                password: String::new(),
                options: vec!["CREATEDB".into(), "NOLOGIN".into()]
            }]
        );
    }

    #[test]
    fn missing_or_malformed_input_is_an_error() {
        let mut e = env(&[]);
        e.remove("SCOPE");
        assert_eq!(build(&e).unwrap_err(), SpiloError::Missing("SCOPE"));
        let e = env(&[("SPILO_CONFIGURATION", "{not json")]);
        assert!(matches!(
            build(&e).unwrap_err(),
            SpiloError::Configuration(_)
        ));
        let e = env(&[("SPILO_CONFIGURATION", "[1,2]")]);
        assert_eq!(
            build(&e).unwrap_err(),
            SpiloError::NotAnObject("SPILO_CONFIGURATION")
        );
    }

    #[test]
    fn bootstrap_sql_quotes_names_and_passwords() {
        let sql = bootstrap_users_sql(&[BootstrapUser {
            name: "we\"ird".into(),
            password: "it's".into(),
            options: vec!["LOGIN".into()],
        }]);
        assert_eq!(sql, "CREATE ROLE \"we\"\"ird\" LOGIN PASSWORD 'it''s';\n");
    }
}
