//! Roles and databases inside PostgreSQL: what the manifest and the configuration ask for
//! (`desired`), what the server has (`current`), and the statements that close the gap
//! (`diff`, rendered with library quoting in `sql`). Pure, except `infrastructure`/`teams`
//! readers and the runtime that connects (elsewhere).
pub mod current;
pub mod desired;
pub mod diff;
pub mod infrastructure;
pub mod sql;
pub mod teams;

use std::collections::{BTreeMap, BTreeSet};

/// Where a role's definition comes from; on a name clash the higher origin wins
/// (Zalando's priorities: system > team > infrastructure > manifest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    Manifest,
    PreparedDatabase,
    Infrastructure,
    Team,
    System,
}

/// Role attributes pgop manages (PostgreSQL's `CREATE ROLE` options).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleFlags {
    pub superuser: bool,
    pub inherit: bool,
    pub login: bool,
    pub createrole: bool,
    pub createdb: bool,
    pub replication: bool,
    pub bypassrls: bool,
}

/// A role as pgop wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSpec {
    pub name: String,
    pub flags: RoleFlags,
    /// The password from the role's Secret (the source of truth); None: no password.
    pub password: Option<String>,
    /// Roles this one is a member of.
    pub member_of: BTreeSet<String>,
    /// `ALTER ROLE … SET key = value`.
    pub parameters: BTreeMap<String, String>,
    pub origin: Origin,
}

/// A role definition pgop refuses, with the reason (shown in the status and an Event).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("role {role:?}: {reason}")]
pub struct RoleProblem {
    pub role: String,
    pub reason: String,
}

/// The databases a manifest asks for: `databases`, and the prepared ones (`preparedDatabases:
/// {}` prepares one named after the cluster, `-` replaced by `_`), sorted.
pub fn database_names(pg: &pgop_common::crd::Postgresql) -> Vec<String> {
    let mut names: BTreeSet<String> = pg.spec.databases.keys().cloned().collect();
    match &pg.spec.prepared_databases {
        Some(prepared) if prepared.is_empty() => {
            names.insert(crate::builders::cluster_name(pg).replace('-', "_"));
        }
        Some(prepared) => names.extend(prepared.keys().cloned()),
        None => {}
    }
    names.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_include_prepared_ones() {
        let pg = |prepared: serde_json::Value| -> pgop_common::crd::Postgresql {
            let mut spec = serde_json::json!({"teamId": "acid", "numberOfInstances": 1,
                "volume": {"size": "1Gi"}, "postgresql": {"version": "15"},
                "databases": {"foo": "zalando"}});
            if !prepared.is_null() {
                spec["preparedDatabases"] = prepared;
            }
            serde_json::from_value(serde_json::json!({
                "apiVersion": "acid.zalan.do/v1", "kind": "postgresql",
                "metadata": {"name": "acid-min", "namespace": "ns"}, "spec": spec}))
            .expect("manifest")
        };
        let table = [
            (serde_json::Value::Null, vec!["foo"]),
            (serde_json::json!({}), vec!["acid_min", "foo"]),
            (serde_json::json!({"bar": {}}), vec!["bar", "foo"]),
        ];
        for (prepared, want) in table {
            assert_eq!(database_names(&pg(prepared.clone())), want, "{prepared}");
        }
    }
}
