//! The statements that turn what a server has ([`Current`]) into what is desired
//! ([`Desired`]), in an order that works: roles (created, attributes, passwords, settings),
//! then memberships, then databases, then inside each database its schemas, their `USAGE`
//! grants, default privileges and extensions. Only what differs gets a statement, so a sync
//! of a cluster in sync issues none; nothing is ever dropped or revoked (Zalando's
//! `ProduceSyncRequests`, `syncDatabases`, `syncPreparedDatabases`, `syncExtensions`).
//!
//! Passwords travel as SCRAM-SHA-256 verifiers computed here (never in clear text); a role
//! whose stored verifier already matches its Secret's password is left alone, and an md5
//! verifier counts as different, so that it is replaced by a SCRAM one.
use std::collections::{BTreeMap, BTreeSet};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::current::{Current, DatabaseState, ObjectType, Privilege};
use super::desired::{AccessRoles, AttributeRules, DatabaseSpec, Desired};
use super::{Attribute, RoleFlags, RoleProblem};

/// Stored verifiers with more iterations are not recomputed (treated as different, so the
/// password is set again with PostgreSQL's default of 4096).
pub const MAX_SCRAM_ITERATIONS: u32 = 1_000_000;

/// One SQL statement pgop runs; [`super::sql::render`] turns it into SQL. Its `Debug` is
/// the SQL with verifiers redacted.
#[derive(Clone, PartialEq, Eq)]
pub enum Statement {
    /// `CREATE ROLE` with every attribute spelled out and the password's verifier
    /// (`PASSWORD NULL` without one).
    CreateRole {
        name: String,
        flags: RoleFlags,
        verifier: Option<String>,
    },
    /// `ALTER ROLE` setting (`true`) or removing (`false`) attributes.
    AlterRoleFlags {
        name: String,
        changes: Vec<(Attribute, bool)>,
    },
    SetPassword {
        name: String,
        verifier: String,
    },
    /// `ALTER ROLE … SET` (cluster-wide).
    SetParameter {
        role: String,
        name: String,
        value: ParameterValue,
    },
    /// `ALTER ROLE … RESET`: a setting no longer asked for, when the role has settings.
    ResetParameter {
        role: String,
        name: String,
    },
    /// `GRANT role TO member` (`WITH ADMIN OPTION`).
    GrantMembership {
        role: String,
        member: String,
        admin_option: bool,
    },
    /// Cannot run inside a transaction block.
    CreateDatabase {
        name: String,
        owner: String,
    },
    AlterDatabaseOwner {
        name: String,
        owner: String,
    },
    /// `CREATE SCHEMA IF NOT EXISTS … AUTHORIZATION owner`.
    CreateSchema {
        database: String,
        name: String,
        owner: String,
    },
    GrantSchemaUsage {
        database: String,
        schema: String,
        grantees: Vec<String>,
    },
    /// `ALTER DEFAULT PRIVILEGES FOR ROLE owner [IN SCHEMA schema] GRANT … ON <objects>`.
    AlterDefaultPrivileges {
        database: String,
        owner: String,
        schema: Option<String>,
        object: ObjectType,
        privileges: Vec<Privilege>,
        grantees: Vec<String>,
    },
    /// `CREATE EXTENSION IF NOT EXISTS … SCHEMA …`.
    CreateExtension {
        database: String,
        name: String,
        schema: String,
    },
    AlterExtensionSchema {
        database: String,
        name: String,
        schema: String,
    },
    /// `GRANT … ON ALL <objects> IN SCHEMA …`: objects an extension just created, for the
    /// roles of its schema (Zalando's `extensionPostCreateSQL`).
    GrantOnAllInSchema {
        database: String,
        schema: String,
        object: ObjectType,
        privileges: Vec<Privilege>,
        grantees: Vec<String>,
    },
    /// `ALTER ROLE … RENAME TO …`: a former team member's role set aside (or restored).
    RenameRole {
        from: String,
        to: String,
    },
    /// `DROP ROLE IF EXISTS`: a dated password-rotation role past its retention.
    DropRole {
        name: String,
    },
    /// pgbouncer's `auth_query` function `<schema>.user_lookup(text)` in one database:
    /// `SECURITY DEFINER`, executable by the pooler's role only (Zalando's
    /// `connection_pooler_schema` lookup function).
    CreatePoolerLookup {
        database: String,
        schema: String,
        user: String,
    },
}

impl std::fmt::Debug for Statement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Statement({})", super::sql::redacted(self))
    }
}

impl Statement {
    /// The database the statement must run in; None: any (pgop uses `postgres`). Role and
    /// database statements are cluster-wide.
    pub fn database(&self) -> Option<&str> {
        match self {
            Statement::CreateRole { .. }
            | Statement::AlterRoleFlags { .. }
            | Statement::SetPassword { .. }
            | Statement::SetParameter { .. }
            | Statement::ResetParameter { .. }
            | Statement::GrantMembership { .. }
            | Statement::RenameRole { .. }
            | Statement::DropRole { .. }
            | Statement::CreateDatabase { .. }
            | Statement::AlterDatabaseOwner { .. } => None,
            Statement::CreateSchema { database, .. }
            | Statement::GrantSchemaUsage { database, .. }
            | Statement::AlterDefaultPrivileges { database, .. }
            | Statement::CreateExtension { database, .. }
            | Statement::AlterExtensionSchema { database, .. }
            | Statement::GrantOnAllInSchema { database, .. }
            | Statement::CreatePoolerLookup { database, .. } => Some(database),
        }
    }

    /// A short name of the statement's kind, for metrics (`create_role`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Statement::CreateRole { .. } => "create_role",
            Statement::AlterRoleFlags { .. } => "alter_role",
            Statement::SetPassword { .. } => "set_password",
            Statement::SetParameter { .. } => "set_parameter",
            Statement::ResetParameter { .. } => "reset_parameter",
            Statement::GrantMembership { .. } => "grant_membership",
            Statement::RenameRole { .. } => "rename_role",
            Statement::DropRole { .. } => "drop_role",
            Statement::CreateDatabase { .. } => "create_database",
            Statement::AlterDatabaseOwner { .. } => "alter_database_owner",
            Statement::CreateSchema { .. } => "create_schema",
            Statement::GrantSchemaUsage { .. } => "grant_schema_usage",
            Statement::AlterDefaultPrivileges { .. } => "alter_default_privileges",
            Statement::CreateExtension { .. } => "create_extension",
            Statement::AlterExtensionSchema { .. } => "alter_extension_schema",
            Statement::GrantOnAllInSchema { .. } => "grant_on_all_in_schema",
            Statement::CreatePoolerLookup { .. } => "create_pooler_lookup",
        }
    }

    #[cfg(test)]
    /// Whether the statement may run inside a transaction block (`CREATE DATABASE` may not).
    pub fn transactional(&self) -> bool {
        !matches!(self, Statement::CreateDatabase { .. })
    }
}

/// The value of a role setting as sent: one string, or the elements of a list setting
/// (`search_path`), each sent as its own literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParameterValue {
    Single(String),
    List(Vec<String>),
}

/// Settings PostgreSQL reads as lists (`GUC_LIST_INPUT`) that a role may set.
const LIST_PARAMETERS: [&str; 4] = [
    "search_path",
    "temp_tablespaces",
    "local_preload_libraries",
    "session_preload_libraries",
];

fn is_list_parameter(name: &str) -> bool {
    LIST_PARAMETERS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// Strips one pair of enclosing quotes (`'…'` or `"…"`), undoubling the quote inside.
fn unquote(value: &str) -> Option<String> {
    for quote in ['\'', '"'] {
        if value.len() >= 2 && value.starts_with(quote) && value.ends_with(quote) {
            let inner = &value[1..value.len() - 1];
            let doubled = format!("{quote}{quote}");
            return Some(inner.replace(&doubled, &quote.to_string()));
        }
    }
    None
}

/// Splits a list on commas outside double quotes; elements are trimmed and unquoted.
fn split_list(value: &str) -> Vec<String> {
    let mut elements = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => elements.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    elements.push(current);
    elements
        .into_iter()
        .map(|e| {
            let e = e.trim();
            unquote(e).unwrap_or_else(|| e.to_string())
        })
        .collect()
}

/// A setting as configured (Zalando keeps quotes in values: `'all'`, `"$user", data`,
/// `'$user, public'`) turned into what is sent: list settings become their elements, other
/// values lose one pair of enclosing quotes.
pub fn parameter_value(name: &str, raw: &str) -> ParameterValue {
    let trimmed = raw.trim();
    if is_list_parameter(name) {
        // Zalando strips enclosing single quotes from a search_path before using it.
        let list = match trimmed
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
        {
            Some(inner) if trimmed.len() >= 2 => inner.to_string(),
            _ => trimmed.to_string(),
        };
        ParameterValue::List(split_list(&list))
    } else {
        ParameterValue::Single(unquote(trimmed).unwrap_or_else(|| trimmed.to_string()))
    }
}

/// Whether a stored setting (`pg_db_role_setting`: list elements quoted as identifiers
/// where needed) already has the configured value.
pub fn parameter_matches(name: &str, raw: &str, stored: &str) -> bool {
    match parameter_value(name, raw) {
        ParameterValue::Single(value) => value == stored,
        ParameterValue::List(elements) => elements == split_list(stored),
    }
}

/// A SCRAM-SHA-256 verifier of `password` with a random salt (PostgreSQL's format and
/// default of 4096 iterations).
pub fn scram_verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// PBKDF2-HMAC-SHA-256 with one block (SCRAM's `Hi`).
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut previous = hmac_sha256(password, &block);
    let mut result = previous.clone();
    for _ in 1..iterations {
        previous = hmac_sha256(password, &previous);
        for (r, p) in result.iter_mut().zip(&previous) {
            *r ^= p;
        }
    }
    result
}

/// The parts of a stored SCRAM-SHA-256 verifier.
struct Scram {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl Scram {
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64 parts.
    fn parse(verifier: &str) -> Option<Scram> {
        let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
        let (parameters, keys) = rest.split_once('$')?;
        let (iterations, salt) = parameters.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        Some(Scram {
            iterations: iterations.parse().ok()?,
            salt: STANDARD.decode(salt).ok()?,
            stored_key: STANDARD.decode(stored_key).ok()?,
            server_key: STANDARD.decode(server_key).ok()?,
        })
    }
}

/// Whether `verifier` (`rolpassword`) is the SCRAM-SHA-256 verifier of `password`
/// (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`), recomputed with its salt
/// and iteration count; the password is SASLprep-normalized as PostgreSQL does. An md5
/// verifier never matches, so that a sync replaces it with a SCRAM one.
pub fn password_matches(verifier: &str, password: &str) -> bool {
    let Some(Scram {
        iterations,
        salt,
        stored_key,
        server_key,
    }) = Scram::parse(verifier)
    else {
        return false;
    };
    if iterations == 0 || iterations > MAX_SCRAM_ITERATIONS {
        return false;
    }
    let prepared = match stringprep::saslprep(password) {
        Ok(prepared) => prepared.into_owned(),
        Err(_) => password.to_string(),
    };
    let salted = salted_password(prepared.as_bytes(), &salt, iterations);
    let client_key = hmac_sha256(&salted, b"Client Key");
    let computed_stored = Sha256::digest(&client_key);
    let computed_server = hmac_sha256(&salted, b"Server Key");
    // Compare without an early exit.
    let same = |a: &[u8], b: &[u8]| {
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    };
    same(computed_stored.as_slice(), &stored_key) & same(&computed_server, &server_key)
}

/// Reader and writer grants of Zalando's default privileges: (objects, privileges, reader
/// gets them, writer gets them).
const DEFAULT_GRANTS: [(ObjectType, &[Privilege], bool, bool); 6] = [
    (ObjectType::Schemas, &[Privilege::Usage], true, true),
    (ObjectType::Tables, &[Privilege::Select], true, false),
    (ObjectType::Sequences, &[Privilege::Select], true, false),
    (
        ObjectType::Tables,
        &[Privilege::Insert, Privilege::Update, Privilege::Delete],
        false,
        true,
    ),
    (
        ObjectType::Sequences,
        &[Privilege::Usage, Privilege::Update],
        false,
        true,
    ),
    (ObjectType::Functions, &[Privilege::Execute], true, true),
];
/// `USAGE` on types for both, kept apart from the table above for its length.
const TYPE_GRANT: (ObjectType, &[Privilege], bool, bool) =
    (ObjectType::Types, &[Privilege::Usage], true, true);

/// Grants on the objects an extension creates (Zalando's `extensionPostCreateSQL`):
/// (objects, privileges, owner, reader, writer).
const EXTENSION_GRANTS: [(ObjectType, &[Privilege], bool, bool, bool); 5] = [
    (ObjectType::Tables, &[Privilege::Select], true, true, false),
    (
        ObjectType::Sequences,
        &[Privilege::Select],
        true,
        true,
        false,
    ),
    (
        ObjectType::Tables,
        &[Privilege::Insert, Privilege::Update, Privilege::Delete],
        true,
        false,
        true,
    ),
    (
        ObjectType::Sequences,
        &[Privilege::Usage, Privilege::Update],
        true,
        false,
        true,
    ),
    (
        ObjectType::Functions,
        &[Privilege::Execute],
        true,
        true,
        true,
    ),
];

struct Differ<'a> {
    desired: &'a Desired,
    current: &'a Current,
    out: Vec<Statement>,
}

impl Differ<'_> {
    /// Whether a role is there after the role statements ran.
    fn exists(&self, role: &str) -> bool {
        self.current.roles.contains_key(role) || self.desired.roles.contains_key(role)
    }

    fn roles(&mut self) {
        for (name, spec) in &self.desired.roles {
            let Some(have) = self.current.roles.get(name) else {
                self.out.push(Statement::CreateRole {
                    name: name.clone(),
                    flags: spec.flags.clone(),
                    verifier: spec.password.as_deref().map(scram_verifier),
                });
                continue;
            };
            let rules = self
                .desired
                .attributes
                .get(name)
                .cloned()
                .unwrap_or_else(|| AttributeRules {
                    ensure: spec.flags.clone(),
                    revoke: RoleFlags::default(),
                });
            let changes: Vec<(Attribute, bool)> = Attribute::ALL
                .into_iter()
                .filter_map(|a| {
                    let has = have.flags.get(a);
                    if rules.ensure.get(a) && !has {
                        Some((a, true))
                    } else if rules.revoke.get(a) && has {
                        Some((a, false))
                    } else {
                        None
                    }
                })
                .collect();
            if !changes.is_empty() {
                self.out.push(Statement::AlterRoleFlags {
                    name: name.clone(),
                    changes,
                });
            }
            if let Some(password) = &spec.password {
                let matches = have
                    .verifier
                    .as_deref()
                    .is_some_and(|v| password_matches(v, password));
                if !matches {
                    self.out.push(Statement::SetPassword {
                        name: name.clone(),
                        verifier: scram_verifier(password),
                    });
                }
            }
        }
    }

    /// Zalando resets every setting of a role whose settings differ and sets the desired
    /// ones; this sets the differing ones and resets those no longer asked for. A role
    /// without desired settings keeps its own.
    fn parameters(&mut self) {
        for (role, spec) in &self.desired.roles {
            if spec.parameters.is_empty() {
                continue;
            }
            let stored: BTreeMap<String, &String> = self
                .current
                .roles
                .get(role)
                .map(|r| {
                    r.parameters
                        .iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v))
                        .collect()
                })
                .unwrap_or_default();
            let wanted: BTreeSet<String> = spec
                .parameters
                .keys()
                .map(|k| k.to_ascii_lowercase())
                .collect();
            if let Some(have) = self.current.roles.get(role) {
                for name in have.parameters.keys() {
                    if !wanted.contains(&name.to_ascii_lowercase()) {
                        self.out.push(Statement::ResetParameter {
                            role: role.clone(),
                            name: name.clone(),
                        });
                    }
                }
            }
            for (name, raw) in &spec.parameters {
                let same = stored
                    .get(&name.to_ascii_lowercase())
                    .is_some_and(|s| parameter_matches(name, raw, s));
                if !same {
                    self.out.push(Statement::SetParameter {
                        role: role.clone(),
                        name: name.clone(),
                        value: parameter_value(name, raw),
                    });
                }
            }
        }
    }

    fn memberships(&mut self) {
        for (name, spec) in &self.desired.roles {
            let have = self.current.roles.get(name);
            for group in &spec.member_of {
                if group == name || !self.exists(group) {
                    continue;
                }
                if have.is_some_and(|h| h.member_of.contains(group)) {
                    continue;
                }
                self.out.push(Statement::GrantMembership {
                    role: group.clone(),
                    member: name.clone(),
                    admin_option: false,
                });
            }
        }
        for (role, admin) in &self.desired.admins {
            if role == admin || !self.desired.roles.contains_key(role) || !self.exists(admin) {
                continue;
            }
            let held = self
                .current
                .roles
                .get(admin)
                .is_some_and(|a| a.admin_of.contains(role));
            if !held {
                self.out.push(Statement::GrantMembership {
                    role: role.clone(),
                    member: admin.clone(),
                    admin_option: true,
                });
            }
        }
    }

    fn databases(&mut self) {
        for (name, spec) in &self.desired.databases {
            if !self.exists(&spec.owner) {
                continue;
            }
            match self.current.databases.get(name) {
                None => self.out.push(Statement::CreateDatabase {
                    name: name.clone(),
                    owner: spec.owner.clone(),
                }),
                Some(owner) if spec.correct_owner && *owner != spec.owner => {
                    self.out.push(Statement::AlterDatabaseOwner {
                        name: name.clone(),
                        owner: spec.owner.clone(),
                    })
                }
                Some(_) => {}
            }
        }
    }

    fn inside_databases(&mut self) {
        let empty = DatabaseState::default();
        for (database, spec) in &self.desired.databases {
            if !self.exists(&spec.owner) {
                continue;
            }
            let state = self.current.per_database.get(database).unwrap_or(&empty);
            self.schemas(database, spec, state);
            self.default_privileges(database, spec, state);
            self.extensions(database, spec, state);
        }
    }

    fn schemas(&mut self, database: &str, spec: &DatabaseSpec, state: &DatabaseState) {
        for (schema, schema_spec) in &spec.schemas {
            if !state.schemas.contains_key(schema) && self.exists(&schema_spec.owner) {
                self.out.push(Statement::CreateSchema {
                    database: database.to_string(),
                    name: schema.clone(),
                    owner: schema_spec.owner.clone(),
                });
            }
        }
        for (schema, schema_spec) in &spec.schemas {
            let granted = state.schemas.get(schema).map(|s| &s.usage);
            let mut grantees: Vec<String> = Vec::new();
            for access in &schema_spec.default_privileges {
                for role in [&access.reader, &access.writer] {
                    let missing = !granted.is_some_and(|g| g.contains(role));
                    if missing && self.exists(role) && !grantees.contains(role) {
                        grantees.push(role.clone());
                    }
                }
            }
            if !grantees.is_empty() {
                self.out.push(Statement::GrantSchemaUsage {
                    database: database.to_string(),
                    schema: schema.clone(),
                    grantees,
                });
            }
        }
    }

    fn default_privileges(&mut self, database: &str, spec: &DatabaseSpec, state: &DatabaseState) {
        let mut sets: Vec<(Option<&String>, &AccessRoles)> = spec
            .default_privileges
            .iter()
            .map(|access| (None, access))
            .collect();
        for (schema, schema_spec) in &spec.schemas {
            sets.extend(
                schema_spec
                    .default_privileges
                    .iter()
                    .map(|a| (Some(schema), a)),
            );
        }
        // (owner, schema, objects, grantee) → missing privileges, in a stable order.
        let mut missing: BTreeMap<(String, Option<String>, ObjectType, String), Vec<Privilege>> =
            BTreeMap::new();
        for (schema, access) in sets {
            if !self.exists(&access.owner) {
                continue;
            }
            for (object, privileges, reader, writer) in
                DEFAULT_GRANTS.iter().chain(std::iter::once(&TYPE_GRANT))
            {
                if schema.is_some() && *object == ObjectType::Schemas {
                    continue; // IN SCHEMA takes no SCHEMAS; GrantSchemaUsage covers it.
                }
                let grantees = [(&access.reader, *reader), (&access.writer, *writer)];
                for (grantee, wanted) in grantees {
                    if !wanted || !self.exists(grantee) {
                        continue;
                    }
                    for privilege in privileges.iter() {
                        let present = state.default_privileges.iter().any(|p| {
                            p.owner == access.owner
                                && p.schema.as_ref() == schema
                                && p.object == *object
                                && p.grantee == *grantee
                                && p.privilege == *privilege
                        });
                        if present {
                            continue;
                        }
                        let entry = missing
                            .entry((
                                access.owner.clone(),
                                schema.cloned(),
                                *object,
                                grantee.clone(),
                            ))
                            .or_default();
                        if !entry.contains(privilege) {
                            entry.push(*privilege);
                        }
                    }
                }
            }
        }
        for ((owner, schema, object, grantee), privileges) in missing {
            self.out.push(Statement::AlterDefaultPrivileges {
                database: database.to_string(),
                owner,
                schema,
                object,
                privileges,
                grantees: vec![grantee],
            });
        }
    }

    fn extensions(&mut self, database: &str, spec: &DatabaseSpec, state: &DatabaseState) {
        for (extension, schema) in &spec.extensions {
            let statement = match state.extensions.get(extension) {
                None => Statement::CreateExtension {
                    database: database.to_string(),
                    name: extension.clone(),
                    schema: schema.clone(),
                },
                Some(have) if have != schema => Statement::AlterExtensionSchema {
                    database: database.to_string(),
                    name: extension.clone(),
                    schema: schema.clone(),
                },
                Some(_) => continue,
            };
            self.out.push(statement);
            let access = spec
                .schemas
                .get(schema)
                .map(|s| &s.access)
                .or(spec.access.as_ref());
            let Some(access) = access else { continue };
            for (object, privileges, owner, reader, writer) in EXTENSION_GRANTS {
                let grantees: Vec<String> = [
                    (&access.owner, owner),
                    (&access.reader, reader),
                    (&access.writer, writer),
                ]
                .into_iter()
                .filter(|(role, wanted)| *wanted && self.exists(role))
                .map(|(role, _)| role.clone())
                .collect();
                if !grantees.is_empty() {
                    self.out.push(Statement::GrantOnAllInSchema {
                        database: database.to_string(),
                        schema: schema.clone(),
                        object,
                        privileges: privileges.to_vec(),
                        grantees,
                    });
                }
            }
        }
    }
}

/// The statements that bring `current` to `desired`, in the order they must run.
pub fn diff(desired: &Desired, current: &Current) -> Vec<Statement> {
    let mut differ = Differ {
        desired,
        current,
        out: Vec::new(),
    };
    differ.roles();
    differ.parameters();
    differ.memberships();
    differ.databases();
    differ.inside_databases();
    differ.out
}

/// Memberships [`diff`] skips because the role to grant (or the administering role) exists
/// neither on the server nor among the desired roles (e.g. `cron_admin` or `admin` where
/// the image does not create them).
pub fn unresolved_memberships(desired: &Desired, current: &Current) -> Vec<RoleProblem> {
    let exists = |r: &str| current.roles.contains_key(r) || desired.roles.contains_key(r);
    let mut problems = Vec::new();
    for (name, spec) in &desired.roles {
        for group in spec.member_of.iter().filter(|g| !exists(g)) {
            problems.push(RoleProblem {
                role: name.clone(),
                reason: format!("membership in {group:?} skipped: no such role"),
            });
        }
    }
    for (role, admin) in &desired.admins {
        if desired.roles.contains_key(role) && !exists(admin) {
            problems.push(RoleProblem {
                role: role.clone(),
                reason: format!("admin role {admin:?} skipped: no such role"),
            });
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::roles::current::{CurrentRole, DefaultPrivilege, SchemaState};
    use crate::pure::roles::desired::desired;
    use crate::pure::roles::desired::tests::manifest;
    use crate::pure::roles::sql::{redacted, render};
    use crate::pure::roles::{Origin, RoleSpec};
    use pgop_common::config::OperatorConfig;
    use pgop_common::crd::Postgresql;

    fn s(v: &str) -> String {
        v.to_string()
    }

    fn pg(spec: &str) -> Postgresql {
        manifest(
            "acid-test",
            &format!("  teamId: acid\n  numberOfInstances: 1\n  volume: {{size: 1Gi}}\n  postgresql: {{version: \"15\"}}\n{spec}"),
        )
    }

    /// A server that has exactly `desired` (as a sync would leave it): every role with its
    /// attributes, verifier, memberships, admin grants and settings; every database with
    /// its schemas, grants, default privileges and extensions.
    fn in_sync(desired: &Desired) -> Current {
        let mut roles: BTreeMap<String, CurrentRole> = desired
            .roles
            .values()
            .map(|r| {
                let parameters = r
                    .parameters
                    .iter()
                    .map(|(k, v)| {
                        let stored = match parameter_value(k, v) {
                            ParameterValue::Single(v) => v,
                            ParameterValue::List(e) => e
                                .iter()
                                .map(|e| {
                                    if e.bytes().all(|c| c.is_ascii_lowercase() || c == b'_') {
                                        e.clone()
                                    } else {
                                        postgres_protocol::escape::escape_identifier(e)
                                    }
                                })
                                .collect::<Vec<_>>()
                                .join(", "),
                        };
                        (k.clone(), stored)
                    })
                    .collect();
                let role = CurrentRole::new(
                    &r.name,
                    r.flags.clone(),
                    r.password.as_deref().map(scram_verifier),
                    r.member_of.iter().cloned(),
                    parameters,
                );
                (r.name.clone(), role)
            })
            .collect();
        for (role, admin) in &desired.admins {
            let entry = roles.entry(admin.clone()).or_insert_with(|| {
                CurrentRole::new(admin, RoleFlags::nologin(), None, [], BTreeMap::new())
            });
            *entry = entry.clone().with_admin_of([role.clone()]);
        }
        for r in desired.roles.values() {
            for group in &r.member_of {
                roles.entry(group.clone()).or_insert_with(|| {
                    CurrentRole::new(group, RoleFlags::nologin(), None, [], BTreeMap::new())
                });
            }
        }
        let mut current = Current::new(
            roles.into_values(),
            desired
                .databases
                .iter()
                .map(|(name, db)| (name.clone(), db.owner.clone())),
        );
        for (name, db) in &desired.databases {
            let mut state = DatabaseState::default();
            for (schema, spec) in &db.schemas {
                let usage: BTreeSet<String> = spec
                    .default_privileges
                    .iter()
                    .flat_map(|a| [a.reader.clone(), a.writer.clone()])
                    .collect();
                state.schemas.insert(
                    schema.clone(),
                    SchemaState {
                        owner: spec.owner.clone(),
                        usage,
                    },
                );
            }
            state.extensions = db.extensions.clone();
            let sets =
                db.default_privileges
                    .iter()
                    .map(|a| (None, a))
                    .chain(db.schemas.iter().flat_map(|(s, spec)| {
                        spec.default_privileges
                            .iter()
                            .map(move |a| (Some(s.clone()), a))
                    }));
            for (schema, access) in sets {
                for (object, privileges, reader, writer) in
                    DEFAULT_GRANTS.iter().chain(std::iter::once(&TYPE_GRANT))
                {
                    for (grantee, wanted) in [(&access.reader, reader), (&access.writer, writer)] {
                        for privilege in privileges.iter().filter(|_| *wanted) {
                            state.default_privileges.insert(DefaultPrivilege {
                                owner: access.owner.clone(),
                                schema: schema.clone(),
                                object: *object,
                                grantee: grantee.clone(),
                                privilege: *privilege,
                            });
                        }
                    }
                }
            }
            current.per_database.insert(name.clone(), state);
        }
        current
    }

    fn complete() -> Postgresql {
        pg("  users:\n    zalando: [superuser, createdb]\n    foo_user: []\n    reader: [nologin]\n  databases:\n    foo: zalando\n  preparedDatabases:\n    bar:\n      defaultUsers: true\n      schemas:\n        data: {}\n        history: {defaultRoles: false}\n      extensions:\n        pg_partman: data\n")
    }

    fn passwords() -> BTreeMap<String, String> {
        [
            "postgres",
            "standby",
            "zalando",
            "foo_user",
            "bar_owner_user",
            "bar_reader_user",
            "bar_writer_user",
        ]
        .into_iter()
        .map(|u| (s(u), format!("pw-{u}")))
        .collect()
    }

    fn kinds(statements: &[Statement]) -> Vec<&'static str> {
        statements.iter().map(Statement::kind).collect()
    }

    #[test]
    fn from_an_empty_server() {
        let config = OperatorConfig {
            additional_owner_roles: vec![s("cron_admin")],
            ..OperatorConfig::default()
        };
        let desired = desired(&complete(), &config, &passwords(), Vec::new());
        assert!(desired.problems.is_empty(), "{:?}", desired.problems);
        // Only the superuser exists (it is the connection's role); admin and cron_admin
        // do not: their grants are skipped and reported.
        let current = Current::new(
            [CurrentRole::new(
                "postgres",
                desired.roles["postgres"].flags.clone(),
                None,
                [],
                BTreeMap::new(),
            )],
            [(s("postgres"), s("postgres"))],
        );
        let statements = diff(&desired, &current);
        let sql: Vec<String> = statements.iter().map(redacted).collect();
        let text = sql.join(";\n");

        // Order: roles, settings, memberships, databases, then inside databases.
        let kinds = kinds(&statements);
        let rank = |k: &str| match k {
            "create_role" | "alter_role" | "set_password" => 0,
            "set_parameter" | "reset_parameter" => 1,
            "grant_membership" => 2,
            "create_database" | "alter_database_owner" => 3,
            _ => 4,
        };
        assert!(
            kinds.windows(2).all(|w| rank(w[0]) <= rank(w[1])),
            "{kinds:?}"
        );
        assert!(statements
            .iter()
            .all(|s| rank(s.kind()) < 4 || s.database() == Some("bar")));

        assert!(
            sql.contains(&s("ALTER ROLE \"postgres\" PASSWORD '<redacted>'")),
            "{text}"
        );
        assert!(sql.contains(&s(
            "CREATE ROLE \"zalando\" SUPERUSER INHERIT LOGIN NOCREATEROLE CREATEDB NOREPLICATION NOBYPASSRLS PASSWORD '<redacted>'"
        )), "{text}");
        assert!(sql.contains(&s(
            "CREATE ROLE \"reader\" NOSUPERUSER INHERIT NOLOGIN NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS PASSWORD NULL"
        )), "{text}");
        assert!(sql.contains(&s(
            "CREATE ROLE \"standby\" NOSUPERUSER INHERIT LOGIN NOCREATEROLE NOCREATEDB REPLICATION NOBYPASSRLS PASSWORD '<redacted>'"
        )), "{text}");
        assert!(
            sql.contains(&s(
                "ALTER ROLE \"bar_owner\" SET \"search_path\" TO '$user', 'data', 'history'"
            )),
            "{text}"
        );
        assert!(
            sql.contains(&s("GRANT \"bar_reader\" TO \"bar_writer\"")),
            "{text}"
        );
        assert!(
            sql.contains(&s("GRANT \"bar_owner\" TO \"bar_owner_user\"")),
            "{text}"
        );
        assert!(
            sql.contains(&s(
                "GRANT \"bar_data_owner\" TO \"bar_owner\" WITH ADMIN OPTION"
            )),
            "{text}"
        );
        assert!(
            !text.contains("TO \"admin\""),
            "admin does not exist: {text}"
        );
        assert!(
            !text.contains("cron_admin"),
            "cron_admin does not exist: {text}"
        );
        assert!(
            sql.contains(&s("CREATE DATABASE \"foo\" OWNER \"zalando\"")),
            "{text}"
        );
        assert!(
            sql.contains(&s("CREATE DATABASE \"bar\" OWNER \"bar_owner\"")),
            "{text}"
        );
        assert!(
            sql.contains(&s(
                "CREATE SCHEMA IF NOT EXISTS \"data\" AUTHORIZATION \"bar_data_owner\""
            )),
            "{text}"
        );
        assert!(
            sql.contains(&s(
                "CREATE SCHEMA IF NOT EXISTS \"history\" AUTHORIZATION \"bar_owner\""
            )),
            "{text}"
        );
        assert!(sql.contains(&s("GRANT USAGE ON SCHEMA \"data\" TO \"bar_reader\", \"bar_writer\", \"bar_data_reader\", \"bar_data_writer\"")), "{text}");
        assert!(sql.contains(&s("ALTER DEFAULT PRIVILEGES FOR ROLE \"bar_owner\" GRANT USAGE ON SCHEMAS TO \"bar_reader\"")), "{text}");
        assert!(sql.contains(&s("ALTER DEFAULT PRIVILEGES FOR ROLE \"bar_owner_user\" GRANT INSERT, UPDATE, DELETE ON TABLES TO \"bar_writer\"")), "{text}");
        assert!(sql.contains(&s("ALTER DEFAULT PRIVILEGES FOR ROLE \"bar_data_owner\" IN SCHEMA \"data\" GRANT SELECT ON SEQUENCES TO \"bar_data_reader\"")), "{text}");
        assert!(sql.contains(&s("ALTER DEFAULT PRIVILEGES FOR ROLE \"bar_owner\" IN SCHEMA \"history\" GRANT EXECUTE ON FUNCTIONS TO \"bar_writer\"")), "{text}");
        assert!(
            sql.contains(&s(
                "CREATE EXTENSION IF NOT EXISTS \"pg_partman\" SCHEMA \"data\""
            )),
            "{text}"
        );
        assert!(sql.contains(&s("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA \"data\" TO \"bar_data_owner\", \"bar_data_reader\", \"bar_data_writer\"")), "{text}");
        assert!(!text.contains("pw-"), "no password in clear text: {text}");

        // Every password travels as a verifier of the Secret's password.
        for statement in &statements {
            match statement {
                Statement::CreateRole {
                    name,
                    verifier: Some(v),
                    ..
                }
                | Statement::SetPassword { name, verifier: v } => {
                    assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
                    assert!(password_matches(v, &format!("pw-{name}")), "{name}");
                }
                _ => {}
            }
        }

        let unresolved = unresolved_memberships(&desired, &current);
        assert!(unresolved
            .iter()
            .any(|p| p.role == "zalando" && p.reason.contains("cron_admin")));
        assert!(unresolved
            .iter()
            .any(|p| p.role == "bar_owner" && p.reason.contains("\"admin\"")));
    }

    #[test]
    fn in_sync_server_gets_nothing() {
        let config = OperatorConfig {
            additional_owner_roles: vec![s("cron_admin")],
            ..OperatorConfig::default()
        };
        let extra = vec![RoleSpec {
            name: s("jdoe"),
            flags: RoleFlags {
                superuser: true,
                ..RoleFlags::login()
            },
            password: None,
            member_of: BTreeSet::from([s("zalandos")]),
            parameters: BTreeMap::from([
                (s("log_statement"), s("all")),
                (s("search_path"), s("'$user', public")),
                (s("statement_timeout"), s("'5min'")),
            ]),
            origin: Origin::Team,
        }];
        let desired = desired(&complete(), &config, &passwords(), extra);
        let current = in_sync(&desired);
        let statements = diff(&desired, &current);
        assert_eq!(
            statements,
            [],
            "{:?}",
            statements.iter().map(redacted).collect::<Vec<_>>()
        );
        assert!(unresolved_memberships(&desired, &current).is_empty());

        // Extra attributes, memberships and settings-free roles on the server stay.
        let mut richer = current.clone();
        let zalando = richer.roles.get_mut("zalando").unwrap();
        zalando.flags.createrole = true;
        zalando.member_of.insert(s("pg_monitor"));
        zalando.parameters.insert(s("work_mem"), s("64MB"));
        richer.roles.insert(
            s("stranger"),
            CurrentRole::new("stranger", RoleFlags::login(), None, [], BTreeMap::new()),
        );
        richer.databases.insert(s("other"), s("stranger"));
        assert_eq!(diff(&desired, &richer), []);
    }

    #[test]
    fn attribute_changes() {
        let desired = desired(
            &pg(
                "  users:\n    app: [createdb, NOSUPERUSER]\n    group: [nologin]\n    plain: []\n",
            ),
            &OperatorConfig::default(),
            &BTreeMap::new(),
            Vec::new(),
        );
        let role =
            |name: &str, flags: RoleFlags| CurrentRole::new(name, flags, None, [], BTreeMap::new());
        let base = in_sync(&desired);
        type Case<'a> = (&'a str, RoleFlags, Vec<(Attribute, bool)>);
        let cases: Vec<Case> = vec![
            // createdb is ensured, superuser removed (explicit NOSUPERUSER).
            (
                "app",
                RoleFlags {
                    superuser: true,
                    ..RoleFlags::login()
                },
                vec![(Attribute::Superuser, false), (Attribute::CreateDb, true)],
            ),
            (
                "app",
                RoleFlags {
                    login: false,
                    ..RoleFlags::nologin()
                },
                vec![(Attribute::Login, true), (Attribute::CreateDb, true)],
            ),
            // nologin is explicit: LOGIN goes.
            ("group", RoleFlags::login(), vec![(Attribute::Login, false)]),
            // Attributes not asked for stay; INHERIT was not asked for explicitly.
            (
                "plain",
                RoleFlags {
                    createrole: true,
                    inherit: false,
                    ..RoleFlags::login()
                },
                vec![],
            ),
            (
                "plain",
                RoleFlags::nologin(),
                vec![(Attribute::Login, true)],
            ),
        ];
        for (name, have, want) in cases {
            let mut current = base.clone();
            current.roles.insert(s(name), role(name, have.clone()));
            let statements = diff(&desired, &current);
            let got: Vec<(Attribute, bool)> = statements
                .iter()
                .filter_map(|s| match s {
                    Statement::AlterRoleFlags { name: n, changes } if n == name => {
                        Some(changes.clone())
                    }
                    _ => None,
                })
                .flatten()
                .collect();
            assert_eq!(got, want, "{name} {have:?}");
        }
        // System roles keep Patroni's attributes.
        let mut current = base.clone();
        current
            .roles
            .insert(s("standby"), role("standby", RoleFlags::nologin()));
        assert_eq!(diff(&desired, &current), []);
    }

    #[test]
    fn passwords_unchanged_changed_and_md5() {
        let desired = desired(
            &pg("  users:\n    app: []\n"),
            &OperatorConfig::default(),
            &BTreeMap::from([(s("app"), s("s3cr3t"))]),
            Vec::new(),
        );
        let with_verifier = |verifier: Option<String>| {
            let mut current = in_sync(&desired);
            current.roles.get_mut("app").unwrap().verifier = verifier;
            diff(&desired, &current)
        };
        // A verifier with another salt and iteration count still matches.
        let other_salt = "SCRAM-SHA-256$10000:c2FsdHNhbHRzYWx0c2FsdA==$".to_string();
        let cases: Vec<(Option<String>, bool)> = vec![
            (Some(scram_verifier("s3cr3t")), false),
            (Some(scram_verifier("old")), true),
            (
                Some(postgres_protocol::password::md5(b"s3cr3t", "app")),
                true,
            ),
            (None, true),
            (Some(s("s3cr3t")), true),
            (Some(format!("{other_salt}garbage")), true),
        ];
        for (verifier, changes) in cases {
            let statements = with_verifier(verifier.clone());
            match (changes, statements.as_slice()) {
                (false, []) => {}
                (true, [Statement::SetPassword { name, verifier: v }]) => {
                    assert_eq!(name, "app");
                    assert!(password_matches(v, "s3cr3t"));
                }
                _ => panic!("{verifier:?}: {statements:?}"),
            }
        }
        // A role without a Secret password keeps whatever it has.
        let without = desired_of("  users:\n    app: []\n");
        let mut current = in_sync(&without);
        current.roles.get_mut("app").unwrap().verifier = Some(s("md5deadbeef"));
        assert_eq!(diff(&without, &current), []);
    }

    fn desired_of(spec: &str) -> Desired {
        desired(
            &pg(spec),
            &OperatorConfig::default(),
            &BTreeMap::new(),
            Vec::new(),
        )
    }

    #[test]
    fn scram_verification() {
        let verifier = scram_verifier("pässwörd ");
        assert!(password_matches(&verifier, "pässwörd "));
        assert!(!password_matches(&verifier, "pässwörd"));
        // SASLprep: a non-ASCII space (U+00A0) maps to a space, soft hyphen to nothing.
        let verifier = scram_verifier("a b\u{00AD}c");
        assert!(password_matches(&verifier, "a\u{00A0}bc"));
        let md5 = postgres_protocol::password::md5(b"password", "app");
        assert!(md5.starts_with("md5") && !password_matches(&md5, "password"));
        for malformed in [
            "",
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$4096:$:",
            "SCRAM-SHA-256$x:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$0:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$4000000000:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$4096:!!!$AAAA:AAAA",
        ] {
            assert!(!password_matches(malformed, "password"), "{malformed}");
        }
        // Two verifiers of one password differ (random salts) and both match.
        let (a, b) = (scram_verifier("pw"), scram_verifier("pw"));
        assert_ne!(a, b);
        assert!(password_matches(&a, "pw") && password_matches(&b, "pw"));
    }

    #[test]
    fn known_scram_vector() {
        // RFC 7677's SCRAM-SHA-256 example: user "user", password "pencil", salt
        // W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations; the ServerSignature of the exchange
        // proves the ServerKey, and the StoredKey is H(ClientKey).
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = salted_password(b"pencil", &salt, 4096);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let server_key = hmac_sha256(&salted, b"Server Key");
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let server_signature = hmac_sha256(&server_key, auth_message.as_bytes());
        assert_eq!(
            STANDARD.encode(server_signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let verifier = format!(
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==${}:{}",
            STANDARD.encode(Sha256::digest(&client_key)),
            STANDARD.encode(&server_key)
        );
        assert!(password_matches(&verifier, "pencil"));
        assert!(!password_matches(&verifier, "pencil "));
    }

    #[test]
    fn owner_correction() {
        let desired = desired_of(
            "  users:\n    app: []\n    other: []\n  databases:\n    foo: app\n  preparedDatabases:\n    bar: {}\n",
        );
        let mut current = in_sync(&desired);
        current.databases.insert(s("foo"), s("other"));
        current.databases.insert(s("bar"), s("other"));
        let statements = diff(&desired, &current);
        assert_eq!(
            statements,
            [Statement::AlterDatabaseOwner {
                name: s("foo"),
                owner: s("app")
            }],
            "a prepared database keeps its owner, as in Zalando"
        );
        assert_eq!(
            render(&statements[0]),
            "ALTER DATABASE \"foo\" OWNER TO \"app\""
        );
        // A database pgop does not know is never touched, a missing one is created.
        current.databases.remove("foo");
        current.databases.insert(s("foo_old"), s("app"));
        assert_eq!(
            diff(&desired, &current),
            [Statement::CreateDatabase {
                name: s("foo"),
                owner: s("app")
            }]
        );
    }

    #[test]
    fn memberships_and_admin_grants() {
        let desired = desired_of("  users:\n    app: []\n  preparedDatabases:\n    bar: {}\n");
        let mut current = in_sync(&desired);
        // bar_writer lost its membership; admin has app without ADMIN OPTION.
        current
            .roles
            .get_mut("bar_writer")
            .unwrap()
            .member_of
            .clear();
        let admin = current.roles.get_mut("admin").unwrap();
        admin.admin_of.remove("app");
        let statements: Vec<String> = diff(&desired, &current).iter().map(render).collect();
        assert_eq!(
            statements,
            [
                "GRANT \"bar_reader\" TO \"bar_writer\"",
                "GRANT \"app\" TO \"admin\" WITH ADMIN OPTION",
            ]
        );
    }

    #[test]
    fn settings() {
        let cases = [
            (
                "search_path",
                "\"$user\", \"data\"",
                "\"$user\", data",
                true,
            ),
            ("search_path", "'$user, public'", "\"$user\", public", true),
            (
                "search_path",
                "\"$user\", data",
                "\"$user\", data, public",
                false,
            ),
            ("search_path", "\"My Schema\", x", "\"My Schema\", x", true),
            ("statement_timeout", "'5min'", "5min", true),
            ("statement_timeout", "5min", "5min", true),
            ("statement_timeout", "5min", "10min", false),
            ("log_statement", "\"all\"", "all", true),
            ("application_name", "'it''s'", "it's", true),
        ];
        for (name, raw, stored, same) in cases {
            assert_eq!(
                parameter_matches(name, raw, stored),
                same,
                "{name}={raw} vs {stored}"
            );
        }
        assert_eq!(
            parameter_value("SEARCH_PATH", "'$user', public"),
            ParameterValue::List(vec![s("$user"), s("public")])
        );
        assert_eq!(
            parameter_value("work_mem", " 64MB "),
            ParameterValue::Single(s("64MB"))
        );

        let extra = |parameters: BTreeMap<String, String>| {
            vec![RoleSpec {
                name: s("jdoe"),
                flags: RoleFlags::login(),
                password: None,
                member_of: BTreeSet::new(),
                parameters,
                origin: Origin::Team,
            }]
        };
        let want = BTreeMap::from([(s("log_statement"), s("all")), (s("work_mem"), s("'64MB'"))]);
        let desired = desired(
            &pg(""),
            &OperatorConfig::default(),
            &BTreeMap::new(),
            extra(want),
        );
        let mut current = in_sync(&desired);
        let jdoe = current.roles.get_mut("jdoe").unwrap();
        jdoe.parameters = BTreeMap::from([
            (s("log_statement"), s("ddl")),
            (s("work_mem"), s("64MB")),
            (s("lock_timeout"), s("1s")),
        ]);
        let statements: Vec<String> = diff(&desired, &current).iter().map(render).collect();
        assert_eq!(
            statements,
            [
                "ALTER ROLE \"jdoe\" RESET \"lock_timeout\"",
                "ALTER ROLE \"jdoe\" SET \"log_statement\" TO 'all'",
            ]
        );
    }

    #[test]
    fn prepared_database_partly_there() {
        let desired = desired_of(
            "  preparedDatabases:\n    bar:\n      schemas:\n        data: {}\n      extensions:\n        pg_trgm: data\n        hstore: public\n",
        );
        let mut current = in_sync(&desired);
        let state = current.per_database.get_mut("bar").unwrap();
        state.extensions = BTreeMap::from([(s("pg_trgm"), s("public"))]);
        state
            .schemas
            .get_mut("data")
            .unwrap()
            .usage
            .remove("bar_data_writer");
        let removed = DefaultPrivilege {
            owner: s("bar_data_owner"),
            schema: Some(s("data")),
            object: ObjectType::Tables,
            grantee: s("bar_data_writer"),
            privilege: Privilege::Update,
        };
        assert!(state.default_privileges.remove(&removed));
        let statements: Vec<String> = diff(&desired, &current).iter().map(render).collect();
        assert_eq!(
            statements,
            [
                "GRANT USAGE ON SCHEMA \"data\" TO \"bar_data_writer\"",
                "ALTER DEFAULT PRIVILEGES FOR ROLE \"bar_data_owner\" IN SCHEMA \"data\" GRANT UPDATE ON TABLES TO \"bar_data_writer\"",
                "CREATE EXTENSION IF NOT EXISTS \"hstore\" SCHEMA \"public\"",
                "GRANT SELECT ON ALL TABLES IN SCHEMA \"public\" TO \"bar_owner\", \"bar_reader\"",
                "GRANT SELECT ON ALL SEQUENCES IN SCHEMA \"public\" TO \"bar_owner\", \"bar_reader\"",
                "GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"public\" TO \"bar_owner\", \"bar_writer\"",
                "GRANT USAGE, UPDATE ON ALL SEQUENCES IN SCHEMA \"public\" TO \"bar_owner\", \"bar_writer\"",
                "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA \"public\" TO \"bar_owner\", \"bar_reader\", \"bar_writer\"",
                "ALTER EXTENSION \"pg_trgm\" SET SCHEMA \"data\"",
                "GRANT SELECT ON ALL TABLES IN SCHEMA \"data\" TO \"bar_data_owner\", \"bar_data_reader\"",
                "GRANT SELECT ON ALL SEQUENCES IN SCHEMA \"data\" TO \"bar_data_owner\", \"bar_data_reader\"",
                "GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"data\" TO \"bar_data_owner\", \"bar_data_writer\"",
                "GRANT USAGE, UPDATE ON ALL SEQUENCES IN SCHEMA \"data\" TO \"bar_data_owner\", \"bar_data_writer\"",
                "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA \"data\" TO \"bar_data_owner\", \"bar_data_reader\", \"bar_data_writer\"",
            ]
        );
        for statement in diff(&desired, &current) {
            assert_eq!(statement.database(), Some("bar"));
            assert!(statement.transactional());
        }
    }

    #[test]
    fn malicious_names_produce_no_statements() {
        let evil = [
            "x\"; DROP ROLE postgres; --",
            "x'; DROP ROLE postgres; --",
            "robert\\\"); DROP TABLE students;--",
            "a b",
        ];
        for name in evil {
            let yaml_name = name.replace('\\', "\\\\").replace('"', "\\\"");
            let spec = format!(
                "  users:\n    \"{yaml_name}\": [superuser]\n    app: []\n  databases:\n    \"{yaml_name}\": app\n    ok: \"{yaml_name}\"\n  preparedDatabases:\n    \"{yaml_name}\": {{}}\n    good:\n      schemas:\n        \"{yaml_name}\": {{}}\n      extensions:\n        \"{yaml_name}\": data\n"
            );
            let desired = desired_of(&spec);
            assert!(!desired.roles.contains_key(name), "{name}");
            assert!(!desired.databases.contains_key(name), "{name}");
            assert!(
                desired.problems.len() >= 6,
                "{name}: {:?}",
                desired.problems
            );
            let statements = diff(&desired, &Current::default());
            for statement in &statements {
                let sql = render(statement);
                assert!(!sql.contains(name), "{name}: {sql}");
                assert!(!sql.contains("DROP"), "{name}: {sql}");
            }
            assert!(statements
                .iter()
                .any(|s| render(s) == "CREATE DATABASE \"good\" OWNER \"good_owner\""));
        }
    }

    #[test]
    fn statement_databases() {
        let role_level = Statement::GrantMembership {
            role: s("a"),
            member: s("b"),
            admin_option: false,
        };
        assert_eq!(role_level.database(), None);
        let create = Statement::CreateDatabase {
            name: s("x"),
            owner: s("o"),
        };
        assert_eq!(create.database(), None);
        assert!(!create.transactional());
        let schema = Statement::CreateSchema {
            database: s("x"),
            name: s("s"),
            owner: s("o"),
        };
        assert_eq!(schema.database(), Some("x"));
    }
}
