//! What the manifest and the operator configuration ask for inside PostgreSQL: roles with
//! their attributes, passwords, memberships and settings, databases with their owners, and
//! for `preparedDatabases` the default roles, schemas, default privileges and extensions.
//!
//! Behaviour follows Zalando's `initUsers` (`pkg/cluster/cluster.go`) and
//! `normalizeUserFlags`/`isValidUsername` (`pkg/cluster/util.go`):
//!
//! - Priorities on a name clash: system > team > infrastructure > prepared database >
//!   manifest ([`Origin`]). A manifest user, infrastructure or team role named like a
//!   system role (`super_username`, `replication_username`, the pooler's role) or one of
//!   `protected_role_names` is refused with a [`RoleProblem`]; the rest of the cluster is
//!   synced anyway (Zalando fails the whole sync on some of these).
//! - Manifest users log in unless `nologin`; their flags are case-insensitive, the `no…`
//!   forms are honoured, contradicting flags are a problem. Names must match Zalando's
//!   user name pattern; anything else is refused before any SQL exists for it.
//! - With `enable_admin_role_for_users`, `team_admin_role` administers every manifest user
//!   (Zalando's `CREATE ROLE … ADMIN`); database owners become members of
//!   `additional_owner_roles`.
//! - Attributes of existing roles are only added, as Zalando does; an attribute is removed
//!   only when asked for explicitly (`nosuperuser`, …, and `NOLOGIN` of prepared group
//!   roles). See [`AttributeRules`].
//! - `preparedDatabases` (`{}` prepares one database named after the cluster, `-` → `_`):
//!   per database `<db>_owner`, `<db>_reader`, `<db>_writer` (member of the reader) group
//!   roles, with `defaultUsers` the `…_user` login roles that are members of them; per
//!   schema (default `data`) the same set named `<db>_<schema>_…` unless
//!   `defaultRoles: false`; `search_path` per role; Zalando's default privileges (readers
//!   `SELECT`, writers also `INSERT`/`UPDATE`/`DELETE`, both `USAGE`/`EXECUTE`) for every
//!   owner role, globally and per schema; extensions created in their schema.
use std::collections::{BTreeMap, BTreeSet};

use pgop_common::config::OperatorConfig;
use pgop_common::crd::{Postgresql, PreparedDatabase, PreparedSchema};

use super::{Attribute, Origin, RoleFlags, RoleProblem, RoleSpec};

/// PostgreSQL's identifier limit (`NAMEDATALEN - 1`): longer names are truncated by the
/// server, which would make a role or database never match its definition.
pub const MAX_IDENTIFIER_BYTES: usize = 63;
/// The schema of a prepared database that lists none.
pub const DEFAULT_SCHEMA: &str = "data";
/// The role that administers the owner roles of prepared databases (Zalando hard-codes it;
/// Spilo creates it).
pub const PREPARED_ADMIN_ROLE: &str = "admin";
/// The first element of the `search_path` of prepared roles.
const USER_SEARCH_PATH: &str = "\"$user\"";

const OWNER: &str = "_owner";
const READER: &str = "_reader";
const WRITER: &str = "_writer";
const USER: &str = "_user";

/// Everything a sync should find in PostgreSQL, plus what was refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub roles: BTreeMap<String, RoleSpec>,
    pub databases: BTreeMap<String, DatabaseSpec>,
    pub problems: Vec<RoleProblem>,
    /// Role → the role that administers it (`GRANT role TO admin WITH ADMIN OPTION`,
    /// Zalando's `CREATE ROLE … ADMIN admin`).
    pub admins: BTreeMap<String, String>,
    /// How attributes of roles that already exist are synced; a role without an entry
    /// gets every attribute its spec has set ensured and none removed.
    pub attributes: BTreeMap<String, AttributeRules>,
}

/// How a sync treats the attributes of a role that already exists. Zalando never strips an
/// attribute it did not ask to strip: a DBA's `ALTER ROLE … CREATEDB` survives a sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttributeRules {
    /// Attributes set when missing (`true` fields).
    pub ensure: RoleFlags,
    /// Attributes removed when present (`true` fields): the explicit `no…` forms.
    pub revoke: RoleFlags,
}

impl AttributeRules {
    /// Rules that leave an existing role's attributes alone (system roles: Patroni's).
    pub fn none() -> Self {
        AttributeRules::default()
    }
}

/// A database pgop creates when missing (never drops).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseSpec {
    pub owner: String,
    pub schemas: BTreeMap<String, SchemaSpec>,
    /// Extension → the schema it lives in.
    pub extensions: BTreeMap<String, String>,
    /// Listed in `preparedDatabases`.
    pub prepared: bool,
    /// Whether an existing database with another owner gets this one (`spec.databases`).
    /// A database only in `preparedDatabases` gets its owner at creation, as in Zalando.
    pub correct_owner: bool,
    /// `ALTER DEFAULT PRIVILEGES FOR ROLE <owner> GRANT …` database-wide, one per role that
    /// creates objects.
    pub default_privileges: Vec<AccessRoles>,
    /// The roles objects of an extension are granted to when it is created in a schema
    /// that is not one of `schemas` (prepared databases only).
    pub access: Option<AccessRoles>,
}

/// A schema of a prepared database, created when missing with this owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaSpec {
    pub owner: String,
    /// `ALTER DEFAULT PRIVILEGES FOR ROLE <owner> IN SCHEMA … GRANT …` and `GRANT USAGE ON
    /// SCHEMA` to their reader and writer, one per role that creates objects.
    pub default_privileges: Vec<AccessRoles>,
    /// The roles objects of extensions created in the schema are granted to.
    pub access: AccessRoles,
}

/// An owner (object creator), reader and writer role: Zalando's grants give the reader
/// `SELECT` on tables and sequences, the writer also `INSERT`/`UPDATE`/`DELETE` on tables
/// and `USAGE`/`UPDATE` on sequences, both `EXECUTE` on functions and `USAGE` on types
/// (and on schemas).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AccessRoles {
    pub owner: String,
    pub reader: String,
    pub writer: String,
}

impl AccessRoles {
    fn of(prefix: &str, owner: &str) -> Self {
        AccessRoles {
            owner: owner.to_string(),
            reader: format!("{prefix}{READER}"),
            writer: format!("{prefix}{WRITER}"),
        }
    }
}

// ---- validation ---------------------------------------------------------------------

/// Why `name` cannot be a PostgreSQL identifier pgop manages: empty, longer than 63 bytes
/// (the server would truncate it), or containing NUL. `None`: acceptable.
pub fn identifier_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("the name is empty".into())
    } else if name.len() > MAX_IDENTIFIER_BYTES {
        Some(format!(
            "the name is {} bytes long, PostgreSQL allows {MAX_IDENTIFIER_BYTES}",
            name.len()
        ))
    } else if name.contains('\0') {
        Some("the name contains a NUL character".into())
    } else {
        None
    }
}

/// Zalando's user name rule: dot-separated parts of lowercase letters, digits, `-` and
/// `_`, each starting and ending with a letter or digit
/// (`^[a-z0-9]([-_a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-_a-z0-9]*[a-z0-9])?)*$`), at most 63
/// bytes.
pub fn user_name_problem(name: &str) -> Option<String> {
    if let Some(problem) = identifier_problem(name) {
        return Some(problem);
    }
    if name.starts_with("pg_") {
        // PostgreSQL reserves the prefix for its own roles (pg_monitor, …).
        return Some("role names starting with \"pg_\" are reserved by PostgreSQL".into());
    }
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let valid = name.split('.').all(|part| {
        let bytes = part.as_bytes();
        match (bytes.first(), bytes.last()) {
            (Some(&first), Some(&last)) => {
                alnum(first)
                    && alnum(last)
                    && bytes.iter().all(|&c| alnum(c) || c == b'-' || c == b'_')
            }
            _ => false,
        }
    });
    (!valid).then(|| {
        "not a valid user name: lowercase letters, digits, '-' and '_' in '.'-separated \
         parts that start and end with a letter or digit"
            .to_string()
    })
}

/// Zalando's database and schema name rule: `^[a-zA-Z_][a-zA-Z0-9_]*$`, at most 63 bytes.
pub fn database_name_problem(name: &str) -> Option<String> {
    if let Some(problem) = identifier_problem(name) {
        return Some(problem);
    }
    let bytes = name.as_bytes();
    let valid = (bytes[0].is_ascii_alphabetic() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_');
    (!valid)
        .then(|| "not a valid name: letters, digits and '_', not starting with a digit".to_string())
}

/// Extension names: letters, digits, `_` and `-` (`uuid-ossp`), at most 63 bytes.
pub fn extension_name_problem(name: &str) -> Option<String> {
    if let Some(problem) = identifier_problem(name) {
        return Some(problem);
    }
    let valid = name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
    (!valid).then(|| "not a valid extension name: letters, digits, '_' and '-'".to_string())
}

/// Setting names (`search_path`, `auto_explain.log_min_duration`): dot-separated parts of
/// letters, digits, `_` and `$`, not starting with a digit or `$`.
pub fn parameter_name_problem(name: &str) -> Option<String> {
    if let Some(problem) = identifier_problem(name) {
        return Some(problem);
    }
    let valid = name.split('.').all(|part| {
        let bytes = part.as_bytes();
        !bytes.is_empty()
            && (bytes[0].is_ascii_alphabetic() || bytes[0] == b'_')
            && bytes
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'$')
    });
    (!valid).then(|| "not a valid setting name".to_string())
}

// ---- flags ----------------------------------------------------------------------------

/// Manifest flags turned into attributes: what a new role gets, and for an existing one
/// what is ensured and what removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFlags {
    /// The attributes of a new role: PostgreSQL's defaults (`INHERIT`), `LOGIN` unless
    /// `nologin`, then the flags.
    pub flags: RoleFlags,
    pub rules: AttributeRules,
}

/// Zalando's `normalizeUserFlags`: flags are alphanumeric words in any case, one of
/// `superuser, inherit, login, createrole, createdb, replication, bypassrls` or their
/// `no…` form; a flag and its negation together are a conflict; `LOGIN` unless `NOLOGIN`.
pub fn parse_flags(raw: &[String]) -> Result<ParsedFlags, String> {
    let mut flags = RoleFlags::login();
    let mut rules = AttributeRules {
        ensure: RoleFlags {
            login: true,
            ..RoleFlags::default()
        },
        revoke: RoleFlags::default(),
    };
    let mut seen: BTreeMap<Attribute, (bool, &str)> = BTreeMap::new();
    for flag in raw {
        if flag.is_empty() || !flag.bytes().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("flag {flag:?} is not alphanumeric"));
        }
        let upper = flag.to_ascii_uppercase();
        let (name, on) = match upper.strip_prefix("NO") {
            Some(rest) if Attribute::ALL.iter().any(|a| a.keyword() == rest) => (rest, false),
            _ => (upper.as_str(), true),
        };
        let attribute = Attribute::ALL
            .into_iter()
            .find(|a| a.keyword() == name)
            .ok_or_else(|| format!("flag {flag:?} is not one of {}", flag_names()))?;
        if let Some((before, original)) = seen.insert(attribute, (on, flag)) {
            if before != on {
                return Err(format!("conflicting flags {original:?} and {flag:?}"));
            }
        }
        flags.set(attribute, on);
        rules.ensure.set(attribute, on);
        rules.revoke.set(attribute, !on);
    }
    Ok(ParsedFlags { flags, rules })
}

fn flag_names() -> String {
    Attribute::ALL
        .iter()
        .map(|a| a.keyword().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(", ")
        + " (or their no… forms)"
}

// ---- the desired state ----------------------------------------------------------------

/// A role definition with what only the winning definition of a name brings along.
struct Candidate {
    spec: RoleSpec,
    admin: Option<String>,
    rules: AttributeRules,
}

struct Builder<'a> {
    config: &'a OperatorConfig,
    passwords: &'a BTreeMap<String, String>,
    system: BTreeSet<String>,
    roles: BTreeMap<String, Candidate>,
    problems: Vec<RoleProblem>,
}

impl Builder<'_> {
    fn problem(&mut self, role: &str, reason: impl Into<String>) {
        self.problems.push(RoleProblem {
            role: role.to_string(),
            reason: reason.into(),
        });
    }

    fn password(&self, name: &str) -> Option<String> {
        self.passwords.get(name).filter(|p| !p.is_empty()).cloned()
    }

    /// Refuses a non-system role named like a system or protected role (Zalando's
    /// `shouldAvoidProtectedOrSystemRole`).
    fn reserved(&mut self, name: &str, what: &str) -> bool {
        let reason = if self.system.contains(name) {
            "is a system role"
        } else if self.config.protected_role_names.iter().any(|p| p == name) {
            "is a protected role (protected_role_names)"
        } else {
            return false;
        };
        self.problem(name, format!("{what} refused: the name {reason}"));
        true
    }

    /// Adds a definition; on a clash the higher origin wins (Zalando's
    /// `resolveNameConflict`), two definitions of one origin are a problem.
    fn add(&mut self, candidate: Candidate) {
        let name = candidate.spec.name.clone();
        match self.roles.get(&name) {
            Some(existing) if existing.spec.origin > candidate.spec.origin => {}
            Some(existing) if existing.spec.origin == candidate.spec.origin => {
                let origin = candidate.spec.origin;
                self.problem(
                    &name,
                    format!("defined twice ({origin:?}); the first is kept"),
                );
            }
            _ => {
                self.roles.insert(name, candidate);
            }
        }
    }

    fn system_roles(&mut self, pg: &Postgresql) {
        let superuser = RoleFlags {
            superuser: true,
            inherit: true,
            login: true,
            createrole: true,
            createdb: true,
            replication: true,
            bypassrls: true,
        };
        let replication = RoleFlags {
            replication: true,
            ..RoleFlags::login()
        };
        let mut roles = vec![
            (
                self.config.super_username.clone(),
                superuser,
                AttributeRules::none(),
            ),
            (
                self.config.replication_username.clone(),
                replication,
                AttributeRules::none(),
            ),
        ];
        // The pooler logs in with its own role, which pgop creates (Zalando's
        // connection pooler system user).
        if let Some(pooler) = crate::pure::pooler::pooler_user(pg, self.config) {
            let rules = AttributeRules {
                ensure: RoleFlags {
                    login: true,
                    ..RoleFlags::default()
                },
                revoke: RoleFlags::default(),
            };
            roles.push((pooler, RoleFlags::login(), rules));
        }
        for (name, flags, rules) in roles {
            if let Some(problem) = identifier_problem(&name) {
                self.problem(&name, format!("system role refused: {problem}"));
                continue;
            }
            self.system.insert(name.clone());
            let password = self.password(&name);
            self.add(Candidate {
                spec: RoleSpec {
                    name,
                    flags,
                    password,
                    member_of: BTreeSet::new(),
                    parameters: BTreeMap::new(),
                    origin: Origin::System,
                },
                admin: None,
                rules,
            });
        }
    }

    fn manifest_users(&mut self, pg: &Postgresql) {
        let owners: BTreeSet<&String> = pg.spec.databases.values().collect();
        let admin = (self.config.enable_admin_role_for_users
            && !self.config.team_admin_role.is_empty())
        .then(|| self.config.team_admin_role.clone());
        for (name, raw_flags) in &pg.spec.users {
            if let Some(problem) = user_name_problem(name) {
                self.problem(name, format!("manifest user refused: {problem}"));
                continue;
            }
            if self.reserved(name, "manifest user") {
                continue;
            }
            let parsed = match parse_flags(raw_flags) {
                Ok(parsed) => parsed,
                Err(problem) => {
                    self.problem(name, format!("manifest user refused: {problem}"));
                    continue;
                }
            };
            let member_of = if owners.contains(name) {
                self.config.additional_owner_roles.iter().cloned().collect()
            } else {
                BTreeSet::new()
            };
            let password = if parsed.flags.login {
                self.password(name)
            } else {
                None
            };
            self.add(Candidate {
                spec: RoleSpec {
                    name: name.clone(),
                    flags: parsed.flags,
                    password,
                    member_of,
                    parameters: BTreeMap::new(),
                    origin: Origin::Manifest,
                },
                admin: admin.clone().filter(|a| a != name),
                rules: parsed.rules,
            });
        }
    }

    /// Infrastructure and team roles, resolved elsewhere.
    fn extra_roles(&mut self, extra: Vec<RoleSpec>) {
        for mut spec in extra {
            let name = spec.name.clone();
            let what = format!("{:?} role", spec.origin);
            let problem = if spec.origin == Origin::Infrastructure {
                user_name_problem(&name)
            } else {
                identifier_problem(&name)
            };
            if let Some(problem) = problem {
                self.problem(&name, format!("{what} refused: {problem}"));
                continue;
            }
            if spec.origin == Origin::System {
                self.problem(
                    &name,
                    format!("{what} refused: system roles come from the configuration"),
                );
                continue;
            }
            if self.reserved(&name, &what) {
                continue;
            }
            let invalid: Vec<String> = spec
                .member_of
                .iter()
                .filter(|m| identifier_problem(m).is_some() || **m == name)
                .cloned()
                .collect();
            for member in invalid {
                spec.member_of.remove(&member);
                self.problem(
                    &name,
                    format!("membership in {member:?} ignored: not a valid role"),
                );
            }
            let invalid: Vec<String> = spec
                .parameters
                .keys()
                .filter(|k| parameter_name_problem(k).is_some())
                .cloned()
                .collect();
            for key in invalid {
                spec.parameters.remove(&key);
                self.problem(
                    &name,
                    format!("setting {key:?} ignored: not a valid setting name"),
                );
            }
            if spec.password.as_deref().is_none_or(str::is_empty) {
                spec.password = if spec.flags.login {
                    self.password(&name)
                } else {
                    None
                };
            }
            let rules = AttributeRules {
                ensure: spec.flags.clone(),
                revoke: RoleFlags::default(),
            };
            self.add(Candidate {
                spec,
                admin: None,
                rules,
            });
        }
    }

    /// The owner, reader and writer roles (with `users` also their login users) of a
    /// prepared database or schema, named `<prefix>_owner`, … (Zalando's
    /// `initDefaultRoles`).
    fn default_roles(&mut self, prefix: &str, admin: &str, users: bool, search_path: &str) {
        let mut sets: Vec<(String, Option<String>, bool)> = vec![
            (OWNER.to_string(), None, false),
            (READER.to_string(), None, false),
            (WRITER.to_string(), Some(READER.to_string()), false),
        ];
        if users {
            for group in [OWNER, READER, WRITER] {
                sets.push((format!("{group}{USER}"), Some(group.to_string()), true));
            }
        }
        for (suffix, member_of, login) in sets {
            let name = format!("{prefix}{suffix}");
            if self.reserved(&name, "prepared database role") {
                continue;
            }
            let owner = suffix.starts_with(OWNER);
            let mut groups: BTreeSet<String> = member_of
                .map(|g| format!("{prefix}{g}"))
                .into_iter()
                .collect();
            if owner {
                groups.extend(self.config.additional_owner_roles.iter().cloned());
            }
            let admin = if owner {
                admin.to_string()
            } else {
                format!("{prefix}{OWNER}")
            };
            let (flags, rules) = if login {
                let rules = AttributeRules {
                    ensure: RoleFlags {
                        login: true,
                        ..RoleFlags::default()
                    },
                    revoke: RoleFlags::default(),
                };
                (RoleFlags::login(), rules)
            } else {
                let rules = AttributeRules {
                    ensure: RoleFlags::default(),
                    revoke: RoleFlags {
                        login: true,
                        ..RoleFlags::default()
                    },
                };
                (RoleFlags::nologin(), rules)
            };
            let password = if login { self.password(&name) } else { None };
            self.add(Candidate {
                spec: RoleSpec {
                    name: name.clone(),
                    flags,
                    password,
                    member_of: groups,
                    parameters: BTreeMap::from([(
                        "search_path".to_string(),
                        search_path.to_string(),
                    )]),
                    origin: Origin::PreparedDatabase,
                },
                admin: Some(admin).filter(|a| *a != name),
                rules,
            });
        }
    }

    /// Roles and the database of one prepared database; `None` when it is refused.
    fn prepared_database(&mut self, db: &str, spec: &PreparedDatabase) -> Option<DatabaseSpec> {
        let owner = format!("{db}{OWNER}");
        let users = spec.default_users.unwrap_or(false);
        let longest = format!("{db}{WRITER}{}", if users { USER } else { "" });
        if let Some(problem) = database_name_problem(db)
            .or_else(|| identifier_problem(&longest).map(|p| format!("role {longest:?}: {p}")))
        {
            self.problem(
                &owner,
                format!("prepared database {db:?} refused: {problem}"),
            );
            return None;
        }
        let defaults;
        let mut schemas: &BTreeMap<String, PreparedSchema> = &spec.schemas;
        if schemas.is_empty() {
            defaults = BTreeMap::from([(
                DEFAULT_SCHEMA.to_string(),
                PreparedSchema {
                    default_users: None,
                    default_roles: Some(true),
                },
            )]);
            schemas = &defaults;
        }
        let mut valid: BTreeMap<&String, &PreparedSchema> = BTreeMap::new();
        for (schema, schema_spec) in schemas {
            let roles = schema_spec.default_roles.unwrap_or(true);
            let schema_users = schema_spec.default_users.unwrap_or(false);
            let longest = format!(
                "{db}_{schema}{WRITER}{}",
                if schema_users { USER } else { "" }
            );
            let problem = database_name_problem(schema).or_else(|| {
                roles
                    .then(|| identifier_problem(&longest))
                    .flatten()
                    .map(|p| format!("role {longest:?}: {p}"))
            });
            match problem {
                Some(problem) => self.problem(
                    &owner,
                    format!("schema {schema:?} of prepared database {db:?} refused: {problem}"),
                ),
                None => {
                    valid.insert(schema, schema_spec);
                }
            }
        }

        let search_path = std::iter::once(USER_SEARCH_PATH.to_string())
            .chain(valid.keys().map(|s| format!("\"{s}\"")))
            .collect::<Vec<_>>()
            .join(", ");
        self.default_roles(db, PREPARED_ADMIN_ROLE, users, &search_path);

        let db_owner_user = format!("{owner}{USER}");
        let mut default_privileges = vec![AccessRoles::of(db, &owner)];
        if users {
            default_privileges.push(AccessRoles::of(db, &db_owner_user));
        }

        let mut schema_specs = BTreeMap::new();
        for (schema, schema_spec) in valid {
            let roles = schema_spec.default_roles.unwrap_or(true);
            let schema_users = schema_spec.default_users.unwrap_or(false);
            let prefix = format!("{db}_{schema}");
            let search_path = format!("{USER_SEARCH_PATH}, \"{schema}\"");
            let (schema_owner, access) = if roles {
                self.default_roles(&prefix, &owner, schema_users, &search_path);
                let schema_owner = format!("{prefix}{OWNER}");
                (
                    schema_owner.clone(),
                    AccessRoles::of(&prefix, &schema_owner),
                )
            } else {
                (owner.clone(), AccessRoles::of(db, &owner))
            };
            // Zalando's execCreateDatabaseSchema: the schema owner's objects for the
            // database-wide reader/writer; with schema roles, every owner's objects for
            // the schema's reader/writer.
            let mut privileges = vec![AccessRoles::of(db, &schema_owner)];
            if roles {
                let schema_owner_user = format!("{schema_owner}{USER}");
                if schema_users {
                    privileges.push(AccessRoles::of(db, &schema_owner_user));
                }
                let mut owners = vec![owner.clone()];
                if users {
                    owners.push(db_owner_user.clone());
                }
                owners.push(schema_owner.clone());
                if schema_users {
                    owners.push(schema_owner_user);
                }
                privileges.extend(owners.iter().map(|o| AccessRoles::of(&prefix, o)));
            } else if users {
                privileges.push(AccessRoles::of(db, &db_owner_user));
            }
            schema_specs.insert(
                schema.clone(),
                SchemaSpec {
                    owner: schema_owner,
                    default_privileges: privileges,
                    access,
                },
            );
        }

        let mut extensions = BTreeMap::new();
        for (extension, schema) in &spec.extensions {
            let problem = extension_name_problem(extension).or_else(|| {
                database_name_problem(schema).map(|p| format!("schema {schema:?}: {p}"))
            });
            match problem {
                Some(problem) => self.problem(
                    &owner,
                    format!(
                        "extension {extension:?} of prepared database {db:?} refused: {problem}"
                    ),
                ),
                None => {
                    extensions.insert(extension.clone(), schema.clone());
                }
            }
        }

        Some(DatabaseSpec {
            owner: owner.clone(),
            schemas: schema_specs,
            extensions,
            prepared: true,
            correct_owner: false,
            default_privileges,
            access: Some(AccessRoles::of(db, &owner)),
        })
    }
}

/// The databases of `preparedDatabases`; `{}` prepares one named after the cluster with
/// `-` replaced by `_` (Zalando's default).
pub fn prepared_databases(pg: &Postgresql) -> BTreeMap<String, PreparedDatabase> {
    match &pg.spec.prepared_databases {
        None => BTreeMap::new(),
        Some(map) if map.is_empty() => BTreeMap::from([(
            crate::pure::manifest::cluster_name(pg).replace('-', "_"),
            PreparedDatabase::default(),
        )]),
        Some(map) => map.clone(),
    }
}

/// What the manifest and the configuration ask for. `passwords`: role → password from its
/// credentials Secret (the source of truth; a role missing there keeps its current
/// password, and a new one gets none until its Secret exists). `extra`: infrastructure and
/// team roles, resolved by their readers (their own password wins over `passwords`).
pub fn desired(
    pg: &Postgresql,
    config: &OperatorConfig,
    passwords: &BTreeMap<String, String>,
    extra: Vec<RoleSpec>,
) -> Desired {
    let mut builder = Builder {
        config,
        passwords,
        system: BTreeSet::new(),
        roles: BTreeMap::new(),
        problems: Vec::new(),
    };
    builder.system_roles(pg);
    builder.extra_roles(extra);
    builder.manifest_users(pg);

    let mut databases = BTreeMap::new();
    for (db, spec) in prepared_databases(pg) {
        if let Some(database) = builder.prepared_database(&db, &spec) {
            databases.insert(db, database);
        }
    }

    for (db, owner) in &pg.spec.databases {
        if let Some(problem) = database_name_problem(db) {
            builder.problem(owner, format!("database {db:?} refused: {problem}"));
            continue;
        }
        if !builder.roles.contains_key(owner) {
            builder.problem(
                owner,
                format!("database {db:?} refused: its owner is not a role defined for the cluster"),
            );
            continue;
        }
        let database = databases.entry(db.clone()).or_insert_with(|| DatabaseSpec {
            owner: owner.clone(),
            schemas: BTreeMap::new(),
            extensions: BTreeMap::new(),
            prepared: false,
            correct_owner: true,
            default_privileges: Vec::new(),
            access: None,
        });
        database.owner = owner.clone();
        database.correct_owner = true;
    }

    let mut desired = Desired {
        problems: builder.problems,
        databases,
        ..Desired::default()
    };
    for (name, candidate) in builder.roles {
        if let Some(admin) = candidate.admin {
            desired.admins.insert(name.clone(), admin);
        }
        desired.attributes.insert(name.clone(), candidate.rules);
        desired.roles.insert(name, candidate.spec);
    }
    desired
}

/// Every role that gets a credentials Secret: the superuser and the replication user, the
/// manifest users that log in (in name order), then the login users of prepared databases
/// (in name order). Refused definitions get none.
pub fn secret_users(pg: &Postgresql, config: &OperatorConfig) -> Vec<String> {
    let desired = desired(pg, config, &BTreeMap::new(), Vec::new());
    let mut users: Vec<String> = Vec::new();
    for name in [&config.super_username, &config.replication_username] {
        if desired.roles.contains_key(name) && !users.contains(name) {
            users.push(name.clone());
        }
    }
    for origin in [Origin::Manifest, Origin::PreparedDatabase] {
        for role in desired.roles.values() {
            if role.origin == origin && role.flags.login && !users.contains(&role.name) {
                users.push(role.name.clone());
            }
        }
    }
    users
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A `postgresql` object from its name and the YAML lines of its spec.
    pub(crate) fn manifest(name: &str, yaml_spec: &str) -> Postgresql {
        let yaml = format!(
            "apiVersion: acid.zalan.do/v1\nkind: postgresql\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n{yaml_spec}"
        );
        serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }

    fn s(v: &str) -> String {
        v.to_string()
    }

    fn flags(list: &[&str]) -> Vec<String> {
        list.iter().map(|f| s(f)).collect()
    }

    fn with_users(users: &str) -> Postgresql {
        manifest(
            "acid-test",
            &format!("  teamId: acid\n  numberOfInstances: 1\n  volume: {{size: 1Gi}}\n  postgresql: {{version: \"15\"}}\n{users}"),
        )
    }

    fn problems_for<'a>(desired: &'a Desired, role: &str) -> Vec<&'a str> {
        desired
            .problems
            .iter()
            .filter(|p| p.role == role)
            .map(|p| p.reason.as_str())
            .collect()
    }

    #[test]
    fn flag_parsing() {
        let login = RoleFlags::login();
        let cases: &[(&[&str], Option<RoleFlags>)] = &[
            (&[], Some(login.clone())),
            (
                &["superuser"],
                Some(RoleFlags {
                    superuser: true,
                    ..login.clone()
                }),
            ),
            (
                &["SUPERUSER", "CreateDB"],
                Some(RoleFlags {
                    superuser: true,
                    createdb: true,
                    ..login.clone()
                }),
            ),
            (&["nologin"], Some(RoleFlags::nologin())),
            (&["NOLOGIN", "nologin"], Some(RoleFlags::nologin())),
            (&["LOGIN"], Some(login.clone())),
            (
                &["noinherit"],
                Some(RoleFlags {
                    inherit: false,
                    ..login.clone()
                }),
            ),
            (
                &["replication", "BypassRLS", "createrole"],
                Some(RoleFlags {
                    replication: true,
                    bypassrls: true,
                    createrole: true,
                    ..login.clone()
                }),
            ),
            (&["nosuperuser"], Some(login.clone())),
            (&["login", "nologin"], None),
            (&["superuser", "NOSUPERUSER"], None),
            (&["Inherit", "noinherit"], None),
            (&["drop"], None),
            (&["no"], None),
            (&["nosuch"], None),
            (&["super user"], None),
            (&["superuser;"], None),
            (&[""], None),
            (&["connection limit 1"], None),
        ];
        for (raw, want) in cases {
            let got = parse_flags(&flags(raw));
            match want {
                Some(want) => assert_eq!(&got.as_ref().unwrap().flags, want, "{raw:?}"),
                None => assert!(got.is_err(), "{raw:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn flag_rules() {
        let parsed = parse_flags(&flags(&["NOSUPERUSER", "createdb", "nologin"])).unwrap();
        assert_eq!(
            parsed.rules.ensure,
            RoleFlags {
                createdb: true,
                ..RoleFlags::default()
            }
        );
        assert_eq!(
            parsed.rules.revoke,
            RoleFlags {
                superuser: true,
                login: true,
                ..RoleFlags::default()
            }
        );
        // Without flags a user logs in; nothing is removed from an existing role.
        let parsed = parse_flags(&[]).unwrap();
        assert_eq!(
            parsed.rules.ensure,
            RoleFlags {
                login: true,
                ..RoleFlags::default()
            }
        );
        assert_eq!(parsed.rules.revoke, RoleFlags::default());
    }

    #[test]
    fn name_validation() {
        let users = [
            ("foo_user", true),
            ("zalando", true),
            ("a", true),
            ("0", true),
            ("my-app.reader", true),
            ("ns.user_1", true),
            ("Foo", false),
            ("_foo", false),
            ("foo_", false),
            ("foo-", false),
            ("foo..bar", false),
            (".foo", false),
            ("", false),
            ("x\"; DROP ROLE postgres; --", false),
            ("robert'); drop table students;--", false),
            ("with space", false),
            ("nul\0byte", false),
            ("tab\there", false),
            ("ünïcode", false),
            (&"a".repeat(63), true),
            (&"a".repeat(64), false),
        ];
        for (name, valid) in users {
            assert_eq!(user_name_problem(name).is_none(), valid, "{name:?}");
        }
        let databases = [
            ("foo", true),
            ("Foo_Bar1", true),
            ("_x", true),
            ("1db", false),
            ("my-db", false),
            ("db\"; DROP DATABASE postgres; --", false),
            ("", false),
            (&"d".repeat(64), false),
        ];
        for (name, valid) in databases {
            assert_eq!(database_name_problem(name).is_none(), valid, "{name:?}");
        }
        for (name, valid) in [
            ("uuid-ossp", true),
            ("pg_trgm", true),
            ("x\"y", false),
            ("a b", false),
        ] {
            assert_eq!(extension_name_problem(name).is_none(), valid, "{name:?}");
        }
        for (name, valid) in [
            ("search_path", true),
            ("auto_explain.log_min_duration", true),
            ("log_statement", true),
            ("x = 1; --", false),
            ("1x", false),
            ("a.", false),
        ] {
            assert_eq!(parameter_name_problem(name).is_none(), valid, "{name:?}");
        }
        assert!(
            identifier_problem("é".repeat(32).as_str()).is_some(),
            "64 bytes"
        );
        assert!(
            identifier_problem("é".repeat(31).as_str()).is_none(),
            "62 bytes"
        );
    }

    #[test]
    fn manifest_users_and_priorities() {
        let pg = with_users(
            "  users:\n    zalando: [superuser, createdb]\n    foo_user: []\n    app_reader: [NOLOGIN]\n    admin: []\n    cron_admin: [login]\n    postgres: [superuser]\n    standby: [replication]\n    bad_flags: [login, nologin]\n    unknown_flag: [superuserx]\n    \"x\\\"; DROP ROLE postgres; --\": []\n    Upper: []\n",
        );
        let config = OperatorConfig::default();
        let passwords = BTreeMap::from([
            (s("zalando"), s("pw-zalando")),
            (s("foo_user"), s("pw-foo")),
            (s("app_reader"), s("pw-reader")),
            (s("postgres"), s("pw-postgres")),
        ]);
        let desired = desired(&pg, &config, &passwords, Vec::new());
        let names: Vec<&str> = desired.roles.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["app_reader", "foo_user", "postgres", "standby", "zalando"]
        );

        let zalando = &desired.roles["zalando"];
        assert_eq!(zalando.origin, Origin::Manifest);
        assert_eq!(
            zalando.flags,
            RoleFlags {
                superuser: true,
                createdb: true,
                ..RoleFlags::login()
            }
        );
        assert_eq!(zalando.password.as_deref(), Some("pw-zalando"));
        assert_eq!(
            desired.admins.get("zalando").map(String::as_str),
            Some("admin")
        );

        let reader = &desired.roles["app_reader"];
        assert!(!reader.flags.login);
        assert_eq!(reader.password, None, "NOLOGIN roles get no password");

        // The system roles keep their definition and their Secret's password; the manifest's
        // redefinitions are problems.
        let postgres = &desired.roles["postgres"];
        assert_eq!(postgres.origin, Origin::System);
        assert!(postgres.flags.superuser);
        assert_eq!(postgres.password.as_deref(), Some("pw-postgres"));
        assert_eq!(desired.roles["standby"].password, None);
        assert_eq!(desired.attributes["postgres"], AttributeRules::none());
        for (role, fragment) in [
            ("postgres", "system role"),
            ("standby", "system role"),
            ("admin", "protected role"),
            ("cron_admin", "protected role"),
            ("bad_flags", "conflicting flags"),
            ("unknown_flag", "is not one of"),
            ("x\"; DROP ROLE postgres; --", "not a valid user name"),
            ("Upper", "not a valid user name"),
        ] {
            let problems = problems_for(&desired, role);
            assert_eq!(problems.len(), 1, "{role}: {problems:?}");
            assert!(problems[0].contains(fragment), "{role}: {problems:?}");
        }
        assert_eq!(desired.problems.len(), 8);
    }

    #[test]
    fn admin_role_and_owner_roles() {
        let pg = with_users(
            "  users:\n    zalando: [createdb]\n    app: []\n  databases:\n    foo: zalando\n",
        );
        let cases = [
            (OperatorConfig::default(), Some("admin"), vec![]),
            (
                OperatorConfig {
                    enable_admin_role_for_users: false,
                    ..OperatorConfig::default()
                },
                None,
                vec![],
            ),
            (
                OperatorConfig {
                    team_admin_role: s(""),
                    ..OperatorConfig::default()
                },
                None,
                vec![],
            ),
            (
                OperatorConfig {
                    team_admin_role: s("dba"),
                    additional_owner_roles: vec![s("cron_admin"), s("pg_monitor")],
                    ..OperatorConfig::default()
                },
                Some("dba"),
                vec!["cron_admin", "pg_monitor"],
            ),
        ];
        for (config, admin, owner_roles) in cases {
            let desired = desired(&pg, &config, &BTreeMap::new(), Vec::new());
            assert_eq!(desired.admins.get("zalando").map(String::as_str), admin);
            assert_eq!(desired.admins.get("app").map(String::as_str), admin);
            let member_of: Vec<&str> = desired.roles["zalando"]
                .member_of
                .iter()
                .map(String::as_str)
                .collect();
            assert_eq!(member_of, owner_roles, "the owner of foo");
            assert!(desired.roles["app"].member_of.is_empty(), "not an owner");
            assert!(desired.problems.is_empty(), "{:?}", desired.problems);
        }
    }

    fn extra(name: &str, origin: Origin, flags: RoleFlags, member_of: &[&str]) -> RoleSpec {
        RoleSpec {
            name: s(name),
            flags,
            password: None,
            member_of: member_of.iter().map(|m| s(m)).collect(),
            parameters: BTreeMap::new(),
            origin,
        }
    }

    #[test]
    fn extra_roles_priorities() {
        let pg = with_users("  users:\n    shared: [createdb]\n    robot: []\n");
        let config = OperatorConfig::default();
        let superuser = RoleFlags {
            superuser: true,
            ..RoleFlags::login()
        };
        let extra_roles = vec![
            RoleSpec {
                password: Some(s("infra-pw")),
                ..extra(
                    "shared",
                    Origin::Infrastructure,
                    RoleFlags::login(),
                    &["pg_monitor"],
                )
            },
            extra("jdoe", Origin::Team, superuser.clone(), &["zalandos"]),
            extra(
                "robot",
                Origin::Team,
                RoleFlags::login(),
                &["zalandos", "bad\0role"],
            ),
            extra("postgres", Origin::Team, superuser.clone(), &[]),
            extra("admin", Origin::Team, superuser.clone(), &[]),
            extra("Bad.Infra", Origin::Infrastructure, RoleFlags::login(), &[]),
            extra("sneaky", Origin::System, superuser.clone(), &[]),
            RoleSpec {
                parameters: BTreeMap::from([
                    (s("log_statement"), s("all")),
                    (s("x; DROP"), s("1")),
                ]),
                ..extra("withparams", Origin::Team, RoleFlags::login(), &[])
            },
        ];
        let passwords =
            BTreeMap::from([(s("shared"), s("secret-pw")), (s("robot"), s("robot-pw"))]);
        let desired = desired(&pg, &config, &passwords, extra_roles);

        let shared = &desired.roles["shared"];
        assert_eq!(
            shared.origin,
            Origin::Infrastructure,
            "infrastructure beats manifest"
        );
        assert_eq!(shared.password.as_deref(), Some("infra-pw"));
        assert!(!shared.flags.createdb);
        assert_eq!(
            desired.admins.get("shared"),
            None,
            "the manifest's admin went with it"
        );

        let robot = &desired.roles["robot"];
        assert_eq!(robot.origin, Origin::Team, "team beats manifest");
        assert_eq!(robot.member_of, BTreeSet::from([s("zalandos")]));
        assert_eq!(robot.password.as_deref(), Some("robot-pw"));
        assert_eq!(desired.attributes["jdoe"].ensure, superuser);

        assert_eq!(desired.roles["postgres"].origin, Origin::System);
        assert!(!desired.roles.contains_key("admin"));
        assert!(!desired.roles.contains_key("Bad.Infra"));
        assert!(!desired.roles.contains_key("sneaky"));
        assert_eq!(
            desired.roles["withparams"].parameters,
            BTreeMap::from([(s("log_statement"), s("all"))])
        );
        for role in [
            "postgres",
            "admin",
            "Bad.Infra",
            "sneaky",
            "robot",
            "withparams",
        ] {
            assert_eq!(
                problems_for(&desired, role).len(),
                1,
                "{role}: {:?}",
                desired.problems
            );
        }
    }

    #[test]
    fn databases_and_owners() {
        let pg = with_users(
            "  users:\n    zalando: []\n    nologin_owner: [nologin]\n  databases:\n    foo: zalando\n    bar: nobody\n    baz: nologin_owner\n    sys: postgres\n    \"evil\\\"; DROP DATABASE postgres; --\": zalando\n    1st: zalando\n",
        );
        let desired = desired(
            &pg,
            &OperatorConfig::default(),
            &BTreeMap::new(),
            Vec::new(),
        );
        let names: Vec<&str> = desired.databases.keys().map(String::as_str).collect();
        assert_eq!(names, ["baz", "foo", "sys"]);
        let foo = &desired.databases["foo"];
        assert_eq!(foo.owner, "zalando");
        assert!(foo.correct_owner && !foo.prepared);
        assert!(foo.schemas.is_empty() && foo.extensions.is_empty());
        let problems = problems_for(&desired, "nobody");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("\"bar\"") && problems[0].contains("not a role"));
        assert_eq!(
            problems_for(&desired, "zalando").len(),
            2,
            "{:?}",
            desired.problems
        );
    }

    fn prepared(spec: &str) -> Postgresql {
        manifest(
            "acid-prepared-db",
            &format!("  teamId: acid\n  numberOfInstances: 1\n  volume: {{size: 1Gi}}\n  postgresql: {{version: \"15\"}}\n{spec}"),
        )
    }

    #[test]
    fn prepared_default_database() {
        let pg = prepared("  preparedDatabases: {}\n");
        let desired = desired(
            &pg,
            &OperatorConfig::default(),
            &BTreeMap::new(),
            Vec::new(),
        );
        assert!(desired.problems.is_empty(), "{:?}", desired.problems);
        let db = &desired.databases["acid_prepared_db"];
        assert_eq!(desired.databases.len(), 1);
        assert_eq!(db.owner, "acid_prepared_db_owner");
        assert!(db.prepared && !db.correct_owner);
        assert_eq!(db.schemas.keys().collect::<Vec<_>>(), ["data"]);
        let names: Vec<&str> = desired
            .roles
            .values()
            .filter(|r| r.origin == Origin::PreparedDatabase)
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "acid_prepared_db_data_owner",
                "acid_prepared_db_data_reader",
                "acid_prepared_db_data_writer",
                "acid_prepared_db_owner",
                "acid_prepared_db_reader",
                "acid_prepared_db_writer",
            ]
        );
        let owner = &desired.roles["acid_prepared_db_owner"];
        assert_eq!(owner.flags, RoleFlags::nologin());
        assert_eq!(owner.password, None);
        assert_eq!(owner.parameters["search_path"], "\"$user\", \"data\"");
        assert_eq!(desired.admins["acid_prepared_db_owner"], "admin");
        assert_eq!(
            desired.admins["acid_prepared_db_reader"],
            "acid_prepared_db_owner"
        );
        assert_eq!(
            desired.admins["acid_prepared_db_data_owner"],
            "acid_prepared_db_owner"
        );
        assert_eq!(
            desired.admins["acid_prepared_db_data_writer"],
            "acid_prepared_db_data_owner"
        );
        assert_eq!(
            desired.roles["acid_prepared_db_writer"].member_of,
            BTreeSet::from([s("acid_prepared_db_reader")])
        );
        assert_eq!(
            desired.roles["acid_prepared_db_data_reader"].parameters["search_path"],
            "\"$user\", \"data\""
        );
        assert!(desired.attributes["acid_prepared_db_owner"].revoke.login);

        let data = &db.schemas["data"];
        assert_eq!(data.owner, "acid_prepared_db_data_owner");
        let privileges: Vec<(&str, &str)> = data
            .default_privileges
            .iter()
            .map(|p| (p.owner.as_str(), p.reader.as_str()))
            .collect();
        assert_eq!(
            privileges,
            [
                ("acid_prepared_db_data_owner", "acid_prepared_db_reader"),
                ("acid_prepared_db_owner", "acid_prepared_db_data_reader"),
                (
                    "acid_prepared_db_data_owner",
                    "acid_prepared_db_data_reader"
                ),
            ]
        );
        assert_eq!(
            db.default_privileges,
            [AccessRoles {
                owner: s("acid_prepared_db_owner"),
                reader: s("acid_prepared_db_reader"),
                writer: s("acid_prepared_db_writer"),
            }]
        );
        // Only the empty map prepares a database.
        let none = desired_of(&prepared(""));
        assert!(none.databases.is_empty() && none.roles.len() == 2);
    }

    fn desired_of(pg: &Postgresql) -> Desired {
        desired(pg, &OperatorConfig::default(), &BTreeMap::new(), Vec::new())
    }

    #[test]
    fn prepared_schemas_users_and_extensions() {
        let pg = prepared(
            "  preparedDatabases:\n    foo:\n      defaultUsers: true\n      schemas:\n        bar: {}\n        plain: {defaultRoles: false}\n        app: {defaultUsers: true}\n      extensions:\n        pg_partman: bar\n        uuid-ossp: public\n        \"evil\\\"ext\": bar\n",
        );
        let config = OperatorConfig {
            additional_owner_roles: vec![s("cron_admin")],
            ..OperatorConfig::default()
        };
        let passwords = BTreeMap::from([(s("foo_owner_user"), s("pw"))]);
        let desired = desired(&pg, &config, &passwords, Vec::new());
        let names: Vec<&str> = desired
            .roles
            .values()
            .filter(|r| r.origin == Origin::PreparedDatabase)
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "foo_app_owner",
                "foo_app_owner_user",
                "foo_app_reader",
                "foo_app_reader_user",
                "foo_app_writer",
                "foo_app_writer_user",
                "foo_bar_owner",
                "foo_bar_reader",
                "foo_bar_writer",
                "foo_owner",
                "foo_owner_user",
                "foo_reader",
                "foo_reader_user",
                "foo_writer",
                "foo_writer_user",
            ]
        );
        let user = &desired.roles["foo_owner_user"];
        assert_eq!(user.flags, RoleFlags::login());
        assert_eq!(user.password.as_deref(), Some("pw"));
        assert_eq!(
            user.member_of,
            BTreeSet::from([s("cron_admin"), s("foo_owner")])
        );
        assert_eq!(
            user.parameters["search_path"],
            "\"$user\", \"app\", \"bar\", \"plain\""
        );
        assert_eq!(desired.admins["foo_owner_user"], "admin");
        assert_eq!(desired.admins["foo_writer_user"], "foo_owner");
        assert_eq!(desired.admins["foo_app_owner_user"], "foo_owner");
        assert_eq!(
            desired.roles["foo_app_writer_user"].member_of,
            BTreeSet::from([s("foo_app_writer")])
        );
        assert_eq!(
            desired.roles["foo_bar_owner"].member_of,
            BTreeSet::from([s("cron_admin")])
        );
        assert!(desired.roles["foo_reader"].member_of.is_empty());

        let db = &desired.databases["foo"];
        assert_eq!(
            db.extensions,
            BTreeMap::from([(s("pg_partman"), s("bar")), (s("uuid-ossp"), s("public"))])
        );
        assert_eq!(desired.problems.len(), 1, "{:?}", desired.problems);
        assert!(desired.problems[0].reason.contains("evil"));
        assert_eq!(db.default_privileges.len(), 2);
        assert_eq!(db.schemas["plain"].owner, "foo_owner");
        let owners = |schema: &str| -> Vec<String> {
            db.schemas[schema]
                .default_privileges
                .iter()
                .map(|p| format!("{}>{}", p.owner, p.reader))
                .collect()
        };
        assert_eq!(
            owners("plain"),
            ["foo_owner>foo_reader", "foo_owner_user>foo_reader"]
        );
        assert_eq!(
            owners("app"),
            [
                "foo_app_owner>foo_reader",
                "foo_app_owner_user>foo_reader",
                "foo_owner>foo_app_reader",
                "foo_owner_user>foo_app_reader",
                "foo_app_owner>foo_app_reader",
                "foo_app_owner_user>foo_app_reader",
            ]
        );
        assert_eq!(db.schemas["bar"].access.reader, "foo_bar_reader");
        assert_eq!(db.schemas["plain"].access.reader, "foo_reader");
        assert_eq!(db.access.as_ref().unwrap().owner, "foo_owner");

        assert_eq!(
            secret_users(&pg, &config),
            [
                "postgres",
                "standby",
                "foo_app_owner_user",
                "foo_app_reader_user",
                "foo_app_writer_user",
                "foo_owner_user",
                "foo_reader_user",
                "foo_writer_user",
            ]
        );
    }

    #[test]
    fn prepared_refusals() {
        // <db>_writer_user must fit in 63 bytes: 52 + 12 does not, nor ok_<54>_writer.
        let long_db = "d".repeat(52);
        let long_schema = "s".repeat(54);
        let pg = prepared(&format!(
            "  preparedDatabases:\n    \"bad-name\": {{}}\n    {long_db}: {{defaultUsers: true}}\n    ok:\n      schemas:\n        \"x; DROP\": {{}}\n        {long_schema}: {{}}\n        fine: {{}}\n  databases:\n    ok: app\n  users:\n    app: []\n"
        ));
        let desired = desired_of(&pg);
        assert_eq!(desired.databases.keys().collect::<Vec<_>>(), ["ok"]);
        let ok = &desired.databases["ok"];
        assert_eq!(ok.schemas.keys().collect::<Vec<_>>(), ["fine"]);
        assert_eq!(ok.owner, "app", "spec.databases wins the owner");
        assert!(ok.prepared && ok.correct_owner);
        assert_eq!(desired.problems.len(), 4, "{:?}", desired.problems);
        assert!(desired
            .roles
            .keys()
            .all(|r| r.len() <= MAX_IDENTIFIER_BYTES));
        assert!(!desired
            .roles
            .keys()
            .any(|r| r.contains("bad") || r.contains("DROP")));
    }

    #[test]
    fn pooler_role() {
        let pg = with_users("  enableConnectionPooler: true\n  users:\n    pooler: []\n");
        let desired = desired_of(&pg);
        let pooler = &desired.roles["pooler"];
        assert_eq!(pooler.origin, Origin::System);
        assert!(pooler.flags.login);
        assert_eq!(problems_for(&desired, "pooler").len(), 1);
        assert_eq!(
            secret_users(&pg, &OperatorConfig::default()),
            ["postgres", "standby"]
        );
    }

    #[test]
    fn role_names_may_not_take_postgresqls_prefix() {
        assert!(user_name_problem("pg_monitor").is_some_and(|p| p.contains("reserved")));
        assert_eq!(user_name_problem("app_pg_user"), None);
        assert_eq!(extension_name_problem("pg_trgm"), None, "extensions may");
    }
}
