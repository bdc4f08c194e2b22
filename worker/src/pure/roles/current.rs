//! What a server has: the queries that read roles, databases and, per database, schemas,
//! extensions and default privileges, and the plain values they become. Zalando reads the
//! same catalogs (`getUserSQL`, `getDatabasesSQL`, `getSchemasSQL`, `getExtensionsSQL` in
//! `pkg/cluster/database.go`); pgop also reads memberships with their admin option, schema
//! `USAGE` grants and `pg_default_acl`, so that a sync of a cluster in sync issues nothing.
//!
//! Every query takes no parameters and returns only `text`, `text[]` and `bool` columns, in
//! the order the `from_row` functions read them. `ROLES_QUERY` reads `pg_authid` and
//! needs a superuser connection; the per-database queries run in the database they
//! describe.
use std::collections::{BTreeMap, BTreeSet};

use super::RoleFlags;

/// Every role: name, `rolsuper`, `rolinherit`, `rolcanlogin`, `rolcreaterole`,
/// `rolcreatedb`, `rolreplication`, `rolbypassrls`, the password verifier (`NULL`: none),
/// the cluster-wide settings (`pg_db_role_setting`, `key=value`), the roles it is a member
/// of, and those of them it holds with `ADMIN OPTION`.
pub const ROLES_QUERY: &str = "\
SELECT a.rolname::text, a.rolsuper, a.rolinherit, a.rolcanlogin, a.rolcreaterole, \
a.rolcreatedb, a.rolreplication, a.rolbypassrls, a.rolpassword::text, \
COALESCE(s.setconfig, '{}'::text[])::text[], \
ARRAY(SELECT DISTINCT g.rolname::text FROM pg_catalog.pg_auth_members m \
JOIN pg_catalog.pg_authid g ON g.oid = m.roleid WHERE m.member = a.oid ORDER BY 1), \
ARRAY(SELECT DISTINCT g.rolname::text FROM pg_catalog.pg_auth_members m \
JOIN pg_catalog.pg_authid g ON g.oid = m.roleid WHERE m.member = a.oid AND m.admin_option \
ORDER BY 1) \
FROM pg_catalog.pg_authid a \
LEFT JOIN pg_catalog.pg_db_role_setting s ON s.setrole = a.oid AND s.setdatabase = 0 \
ORDER BY 1";

/// Every database with its owner.
pub const DATABASES_QUERY: &str = "\
SELECT d.datname::text, pg_catalog.pg_get_userbyid(d.datdba)::text \
FROM pg_catalog.pg_database d ORDER BY 1";

/// In one database: every schema but the system ones, its owner, and the roles granted
/// `USAGE` on it.
pub const SCHEMAS_QUERY: &str = "\
SELECT n.nspname::text, pg_catalog.pg_get_userbyid(n.nspowner)::text, \
ARRAY(SELECT DISTINCT pg_catalog.pg_get_userbyid(a.grantee)::text \
FROM pg_catalog.aclexplode(n.nspacl) a WHERE a.privilege_type = 'USAGE' AND a.grantee <> 0 \
ORDER BY 1) \
FROM pg_catalog.pg_namespace n \
WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' ORDER BY 1";

/// In one database: every extension and the schema it lives in.
pub const EXTENSIONS_QUERY: &str = "\
SELECT e.extname::text, n.nspname::text FROM pg_catalog.pg_extension e \
JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace ORDER BY 1";

/// In one database: the default privileges, one row per grant: the role whose new objects
/// they apply to, the schema (`NULL`: database-wide), the object type (`pg_default_acl`'s
/// `r`, `S`, `f`, `T`, `n`), the grantee (`PUBLIC` for everyone) and the privilege.
pub const DEFAULT_PRIVILEGES_QUERY: &str = "\
SELECT pg_catalog.pg_get_userbyid(d.defaclrole)::text, n.nspname::text, \
d.defaclobjtype::text, \
CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END, \
a.privilege_type::text \
FROM pg_catalog.pg_default_acl d \
LEFT JOIN pg_catalog.pg_namespace n ON n.oid = d.defaclnamespace \
CROSS JOIN LATERAL pg_catalog.aclexplode(d.defaclacl) a \
ORDER BY 1, 2, 3, 4, 5";

/// What the server has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Current {
    pub roles: BTreeMap<String, CurrentRole>,
    /// Database → owner.
    pub databases: BTreeMap<String, String>,
    /// The state inside the databases that were read (those pgop prepares); a database
    /// missing here is treated as empty.
    pub per_database: BTreeMap<String, DatabaseState>,
}

impl Current {
    pub fn new(
        roles: impl IntoIterator<Item = CurrentRole>,
        databases: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        Current {
            roles: roles.into_iter().map(|r| (r.name.clone(), r)).collect(),
            databases: databases.into_iter().collect(),
            per_database: BTreeMap::new(),
        }
    }

    /// Adds what was read inside `database`.
    pub fn with_database_state(mut self, database: &str, state: DatabaseState) -> Self {
        self.per_database.insert(database.to_string(), state);
        self
    }

    /// A database row of [`DATABASES_QUERY`]: (name, owner).
    pub fn database_from_row(
        row: &tokio_postgres::Row,
    ) -> Result<(String, String), tokio_postgres::Error> {
        Ok((row.try_get(0)?, row.try_get(1)?))
    }
}

/// A role as the server has it. Its `Debug` never shows the verifier.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CurrentRole {
    pub name: String,
    pub flags: RoleFlags,
    /// `rolpassword`: a SCRAM or md5 verifier; None: no password.
    pub verifier: Option<String>,
    /// Roles this one is a member of.
    pub member_of: BTreeSet<String>,
    /// Roles this one is a member of with `ADMIN OPTION` (a subset of `member_of`).
    pub admin_of: BTreeSet<String>,
    /// Cluster-wide `ALTER ROLE … SET` settings, as stored (`search_path` →
    /// `"$user", data`).
    pub parameters: BTreeMap<String, String>,
}

impl std::fmt::Debug for CurrentRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentRole")
            .field("name", &self.name)
            .field("flags", &self.flags)
            .field(
                "verifier",
                &self.verifier.as_ref().map(|_| super::sql::REDACTED),
            )
            .field("member_of", &self.member_of)
            .field("admin_of", &self.admin_of)
            .field("parameters", &self.parameters)
            .finish()
    }
}

impl CurrentRole {
    pub fn new(
        name: &str,
        flags: RoleFlags,
        verifier: Option<String>,
        member_of: impl IntoIterator<Item = String>,
        parameters: BTreeMap<String, String>,
    ) -> Self {
        CurrentRole {
            name: name.to_string(),
            flags,
            verifier,
            member_of: member_of.into_iter().collect(),
            admin_of: BTreeSet::new(),
            parameters,
        }
    }

    /// Marks memberships held `WITH ADMIN OPTION` (they count as memberships too).
    pub fn with_admin_of(mut self, roles: impl IntoIterator<Item = String>) -> Self {
        for role in roles {
            self.member_of.insert(role.clone());
            self.admin_of.insert(role);
        }
        self
    }

    /// A row of [`ROLES_QUERY`].
    pub fn from_row(row: &tokio_postgres::Row) -> Result<Self, tokio_postgres::Error> {
        let flags = RoleFlags {
            superuser: row.try_get(1)?,
            inherit: row.try_get(2)?,
            login: row.try_get(3)?,
            createrole: row.try_get(4)?,
            createdb: row.try_get(5)?,
            replication: row.try_get(6)?,
            bypassrls: row.try_get(7)?,
        };
        let setconfig: Vec<String> = row.try_get(9)?;
        let member_of: Vec<String> = row.try_get(10)?;
        let admin_of: Vec<String> = row.try_get(11)?;
        Ok(CurrentRole::new(
            row.try_get::<_, &str>(0)?,
            flags,
            row.try_get(8)?,
            member_of,
            parse_setconfig(&setconfig),
        )
        .with_admin_of(admin_of))
    }
}

/// `pg_db_role_setting.setconfig` entries (`key=value`) as a map; the value is everything
/// after the first `=`.
pub fn parse_setconfig(entries: &[String]) -> BTreeMap<String, String> {
    entries
        .iter()
        .filter_map(|entry| entry.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

/// What one database has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatabaseState {
    pub schemas: BTreeMap<String, SchemaState>,
    /// Extension → schema.
    pub extensions: BTreeMap<String, String>,
    pub default_privileges: BTreeSet<DefaultPrivilege>,
}

impl DatabaseState {
    pub fn new(
        schemas: impl IntoIterator<Item = (String, SchemaState)>,
        extensions: impl IntoIterator<Item = (String, String)>,
        default_privileges: impl IntoIterator<Item = DefaultPrivilege>,
    ) -> Self {
        DatabaseState {
            schemas: schemas.into_iter().collect(),
            extensions: extensions.into_iter().collect(),
            default_privileges: default_privileges.into_iter().collect(),
        }
    }

    /// A row of [`SCHEMAS_QUERY`].
    pub fn schema_from_row(
        row: &tokio_postgres::Row,
    ) -> Result<(String, SchemaState), tokio_postgres::Error> {
        let usage: Vec<String> = row.try_get(2)?;
        Ok((
            row.try_get(0)?,
            SchemaState {
                owner: row.try_get(1)?,
                usage: usage.into_iter().collect(),
            },
        ))
    }

    /// A row of [`EXTENSIONS_QUERY`]: (extension, schema).
    pub fn extension_from_row(
        row: &tokio_postgres::Row,
    ) -> Result<(String, String), tokio_postgres::Error> {
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// A row of [`DEFAULT_PRIVILEGES_QUERY`]; None for object types and privileges pgop
    /// never grants.
    pub fn default_privilege_from_row(
        row: &tokio_postgres::Row,
    ) -> Result<Option<DefaultPrivilege>, tokio_postgres::Error> {
        Ok(DefaultPrivilege::parse(
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
            row.try_get(4)?,
        ))
    }
}

/// A schema as the server has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaState {
    pub owner: String,
    /// Roles granted `USAGE` explicitly.
    pub usage: BTreeSet<String>,
}

/// Object types of default privileges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObjectType {
    Tables,
    Sequences,
    Functions,
    Types,
    Schemas,
}

impl ObjectType {
    /// `pg_default_acl.defaclobjtype`.
    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "r" => Some(ObjectType::Tables),
            "S" => Some(ObjectType::Sequences),
            "f" => Some(ObjectType::Functions),
            "T" => Some(ObjectType::Types),
            "n" => Some(ObjectType::Schemas),
            _ => None,
        }
    }

    /// The keyword of `ALTER DEFAULT PRIVILEGES … ON <keyword>` and `GRANT … ON ALL
    /// <keyword> IN SCHEMA`.
    pub fn keyword(self) -> &'static str {
        match self {
            ObjectType::Tables => "TABLES",
            ObjectType::Sequences => "SEQUENCES",
            ObjectType::Functions => "FUNCTIONS",
            ObjectType::Types => "TYPES",
            ObjectType::Schemas => "SCHEMAS",
        }
    }
}

/// Privileges pgop grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Privilege {
    Select,
    Insert,
    Update,
    Delete,
    Usage,
    Execute,
}

impl Privilege {
    pub fn from_keyword(keyword: &str) -> Option<Self> {
        match keyword {
            "SELECT" => Some(Privilege::Select),
            "INSERT" => Some(Privilege::Insert),
            "UPDATE" => Some(Privilege::Update),
            "DELETE" => Some(Privilege::Delete),
            "USAGE" => Some(Privilege::Usage),
            "EXECUTE" => Some(Privilege::Execute),
            _ => None,
        }
    }

    pub fn keyword(self) -> &'static str {
        match self {
            Privilege::Select => "SELECT",
            Privilege::Insert => "INSERT",
            Privilege::Update => "UPDATE",
            Privilege::Delete => "DELETE",
            Privilege::Usage => "USAGE",
            Privilege::Execute => "EXECUTE",
        }
    }
}

/// One grant of `pg_default_acl`: objects `owner` creates (in `schema`, or anywhere) of
/// type `object` get `privilege` for `grantee`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DefaultPrivilege {
    pub owner: String,
    pub schema: Option<String>,
    pub object: ObjectType,
    pub grantee: String,
    pub privilege: Privilege,
}

impl DefaultPrivilege {
    /// From the text columns of [`DEFAULT_PRIVILEGES_QUERY`]; None for object types and
    /// privileges pgop never grants.
    pub fn parse(
        owner: String,
        schema: Option<String>,
        object: &str,
        grantee: String,
        privilege: &str,
    ) -> Option<Self> {
        Some(DefaultPrivilege {
            owner,
            schema,
            object: ObjectType::from_code(object)?,
            grantee,
            privilege: Privilege::from_keyword(privilege)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setconfig() {
        let entries = [
            "search_path=\"$user\", data".to_string(),
            "statement_timeout=5min".to_string(),
            "application_name=a=b".to_string(),
            "malformed".to_string(),
        ];
        let parsed = parse_setconfig(&entries);
        assert_eq!(parsed["search_path"], "\"$user\", data");
        assert_eq!(parsed["statement_timeout"], "5min");
        assert_eq!(parsed["application_name"], "a=b");
        assert_eq!(parsed.len(), 3);
    }

    #[test]
    fn constructors() {
        let role = CurrentRole::new(
            "app",
            RoleFlags::login(),
            Some("md5abc".into()),
            ["readers".to_string()],
            BTreeMap::new(),
        )
        .with_admin_of(["app_owner".to_string()]);
        assert_eq!(
            role.member_of,
            BTreeSet::from(["readers".to_string(), "app_owner".to_string()])
        );
        assert_eq!(role.admin_of, BTreeSet::from(["app_owner".to_string()]));
        let current = Current::new([role], [("app".to_string(), "app".to_string())])
            .with_database_state("app", DatabaseState::default());
        assert!(current.roles.contains_key("app"));
        assert_eq!(current.databases["app"], "app");
        assert!(current.per_database.contains_key("app"));
    }

    #[test]
    fn default_privilege_rows() {
        let cases = [
            ("r", "SELECT", Some((ObjectType::Tables, Privilege::Select))),
            (
                "S",
                "USAGE",
                Some((ObjectType::Sequences, Privilege::Usage)),
            ),
            (
                "f",
                "EXECUTE",
                Some((ObjectType::Functions, Privilege::Execute)),
            ),
            ("T", "USAGE", Some((ObjectType::Types, Privilege::Usage))),
            ("n", "USAGE", Some((ObjectType::Schemas, Privilege::Usage))),
            ("n", "CREATE", None),
            ("r", "TRUNCATE", None),
            ("L", "SELECT", None),
        ];
        for (code, privilege, want) in cases {
            let got =
                DefaultPrivilege::parse("owner".into(), None, code, "PUBLIC".into(), privilege)
                    .map(|p| (p.object, p.privilege));
            assert_eq!(got, want, "{code} {privilege}");
        }
    }

    #[test]
    fn queries_are_static() {
        assert!(ROLES_QUERY.contains("pg_authid") && ROLES_QUERY.contains("admin_option"));
        for query in [
            ROLES_QUERY,
            DATABASES_QUERY,
            SCHEMAS_QUERY,
            EXTENSIONS_QUERY,
            DEFAULT_PRIVILEGES_QUERY,
        ] {
            assert!(!query.contains('$'), "no parameters: {query}");
            assert!(
                !query.contains("  "),
                "line continuations kept a space: {query}"
            );
            assert_eq!(
                query.matches('(').count(),
                query.matches(')').count(),
                "{query}"
            );
        }
    }
}
