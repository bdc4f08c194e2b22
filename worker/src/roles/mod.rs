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
