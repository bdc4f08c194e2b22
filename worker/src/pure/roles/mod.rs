//! Roles and databases inside PostgreSQL: what the manifest and the configuration ask for
//! (`desired`), what the server has (`current`), and the statements that close the gap
//! (`diff`, rendered with library quoting in `sql`). Pure, except `infrastructure`/`teams`
//! readers and the runtime that connects (elsewhere).
pub mod current;
pub mod desired;
pub mod diff;
pub mod infrastructure;
pub mod pooler_lookup;
pub mod rotation;
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

/// A role as pgop wants it. Its `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
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

impl std::fmt::Debug for RoleSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleSpec")
            .field("name", &self.name)
            .field("flags", &self.flags)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("member_of", &self.member_of)
            .field("parameters", &self.parameters)
            .field("origin", &self.origin)
            .finish()
    }
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
            names.insert(crate::pure::manifest::cluster_name(pg).replace('-', "_"));
        }
        Some(prepared) => names.extend(prepared.keys().cloned()),
        None => {}
    }
    names.into_iter().collect()
}

/// One role attribute of [`RoleFlags`] (`SUPERUSER`/`NOSUPERUSER`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Attribute {
    Superuser,
    Inherit,
    Login,
    CreateRole,
    CreateDb,
    Replication,
    BypassRls,
}

impl Attribute {
    pub const ALL: [Attribute; 7] = [
        Attribute::Superuser,
        Attribute::Inherit,
        Attribute::Login,
        Attribute::CreateRole,
        Attribute::CreateDb,
        Attribute::Replication,
        Attribute::BypassRls,
    ];

    /// The `CREATE ROLE` keyword granting the attribute (`SUPERUSER`, `CREATEDB`, …).
    pub fn keyword(self) -> &'static str {
        match self {
            Attribute::Superuser => "SUPERUSER",
            Attribute::Inherit => "INHERIT",
            Attribute::Login => "LOGIN",
            Attribute::CreateRole => "CREATEROLE",
            Attribute::CreateDb => "CREATEDB",
            Attribute::Replication => "REPLICATION",
            Attribute::BypassRls => "BYPASSRLS",
        }
    }

    /// The keyword for `on` (`SUPERUSER`) or off (`NOSUPERUSER`).
    pub fn sql(self, on: bool) -> String {
        if on {
            self.keyword().to_string()
        } else {
            format!("NO{}", self.keyword())
        }
    }
}

impl RoleFlags {
    /// A role that logs in, with PostgreSQL's defaults otherwise (`INHERIT`). Note that
    /// `RoleFlags::default()` has `inherit: false`, i.e. `NOINHERIT`.
    pub fn login() -> Self {
        RoleFlags {
            inherit: true,
            login: true,
            ..RoleFlags::default()
        }
    }

    /// A group role (`NOLOGIN`), with PostgreSQL's defaults otherwise (`INHERIT`).
    pub fn nologin() -> Self {
        RoleFlags {
            inherit: true,
            ..RoleFlags::default()
        }
    }

    pub fn get(&self, attribute: Attribute) -> bool {
        match attribute {
            Attribute::Superuser => self.superuser,
            Attribute::Inherit => self.inherit,
            Attribute::Login => self.login,
            Attribute::CreateRole => self.createrole,
            Attribute::CreateDb => self.createdb,
            Attribute::Replication => self.replication,
            Attribute::BypassRls => self.bypassrls,
        }
    }

    pub fn set(&mut self, attribute: Attribute, on: bool) {
        let field = match attribute {
            Attribute::Superuser => &mut self.superuser,
            Attribute::Inherit => &mut self.inherit,
            Attribute::Login => &mut self.login,
            Attribute::CreateRole => &mut self.createrole,
            Attribute::CreateDb => &mut self.createdb,
            Attribute::Replication => &mut self.replication,
            Attribute::BypassRls => &mut self.bypassrls,
        };
        *field = on;
    }
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

    #[test]
    fn a_role_spec_never_shows_its_password() {
        let role = RoleSpec {
            name: "app".into(),
            flags: RoleFlags::login(),
            password: Some("s3cr3t-Pa55".into()),
            member_of: BTreeSet::new(),
            parameters: BTreeMap::new(),
            origin: Origin::Manifest,
        };
        let shown = format!("{role:?}");
        assert!(
            !shown.contains("s3cr3t") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn statements_and_current_roles_never_show_verifiers() {
        let verifier = "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy".to_string();
        let shown = [
            format!(
                "{:?}",
                diff::Statement::SetPassword {
                    name: "app".into(),
                    verifier: verifier.clone(),
                }
            ),
            format!(
                "{:?}",
                current::CurrentRole {
                    name: "app".into(),
                    verifier: Some(verifier.clone()),
                    ..Default::default()
                }
            ),
        ];
        for shown in shown {
            assert!(
                !shown.contains("c3RvcmVk") && shown.contains("<redacted>"),
                "{shown}"
            );
        }
    }
}
