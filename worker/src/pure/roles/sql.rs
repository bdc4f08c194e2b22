//! SQL text of [`Statement`]s. Every name goes through `escape_identifier` and every value
//! through `escape_literal` (postgres-protocol's ports of libpq's `PQescapeIdentifier` and
//! `PQescapeLiteral`); keywords come from fixed tables. [`redacted`] is the form for logs
//! and Events: password verifiers replaced by `<redacted>`.
use postgres_protocol::escape::{escape_identifier, escape_literal};

use super::current::Privilege;
use super::diff::{ParameterValue, Statement};
use super::{Attribute, RoleFlags};

/// What stands in for a password verifier in [`redacted`].
pub const REDACTED: &str = "<redacted>";

/// The SQL of `statement`.
pub fn render(statement: &Statement) -> String {
    render_with(statement, false)
}

/// The SQL of `statement` with password verifiers replaced by `'<redacted>'`: for logs.
pub fn redacted(statement: &Statement) -> String {
    render_with(statement, true)
}

fn ident(name: &str) -> String {
    escape_identifier(name)
}

fn idents(names: &[String]) -> String {
    names
        .iter()
        .map(|n| escape_identifier(n))
        .collect::<Vec<_>>()
        .join(", ")
}

fn privileges(list: &[Privilege]) -> String {
    list.iter()
        .map(|p| p.keyword())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A setting name, `a.b` parts quoted one by one.
fn setting_name(name: &str) -> String {
    name.split('.').map(ident).collect::<Vec<_>>().join(".")
}

fn attributes(flags: &RoleFlags) -> String {
    Attribute::ALL
        .iter()
        .map(|a| a.sql(flags.get(*a)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn password(verifier: &str, redact: bool) -> String {
    escape_literal(if redact { REDACTED } else { verifier })
}

fn render_with(statement: &Statement, redact: bool) -> String {
    match statement {
        Statement::CreateRole {
            name,
            flags,
            verifier,
        } => {
            let password = match verifier {
                Some(verifier) => format!("PASSWORD {}", password(verifier, redact)),
                None => "PASSWORD NULL".to_string(),
            };
            format!(
                "CREATE ROLE {} {} {password}",
                ident(name),
                attributes(flags)
            )
        }
        Statement::AlterRoleFlags { name, changes } => {
            let changes: Vec<String> = changes.iter().map(|(a, on)| a.sql(*on)).collect();
            format!("ALTER ROLE {} {}", ident(name), changes.join(" "))
        }
        Statement::SetPassword { name, verifier } => format!(
            "ALTER ROLE {} PASSWORD {}",
            ident(name),
            password(verifier, redact)
        ),
        Statement::SetParameter { role, name, value } => {
            let value = match value {
                ParameterValue::Single(value) => escape_literal(value),
                ParameterValue::List(elements) => elements
                    .iter()
                    .map(|e| escape_literal(e))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            format!(
                "ALTER ROLE {} SET {} TO {value}",
                ident(role),
                setting_name(name)
            )
        }
        Statement::ResetParameter { role, name } => {
            format!("ALTER ROLE {} RESET {}", ident(role), setting_name(name))
        }
        Statement::GrantMembership {
            role,
            member,
            admin_option,
        } => format!(
            "GRANT {} TO {}{}",
            ident(role),
            ident(member),
            if *admin_option {
                " WITH ADMIN OPTION"
            } else {
                ""
            }
        ),
        Statement::CreateDatabase { name, owner } => {
            format!("CREATE DATABASE {} OWNER {}", ident(name), ident(owner))
        }
        Statement::AlterDatabaseOwner { name, owner } => {
            format!("ALTER DATABASE {} OWNER TO {}", ident(name), ident(owner))
        }
        Statement::CreateSchema { name, owner, .. } => format!(
            "CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}",
            ident(name),
            ident(owner)
        ),
        Statement::GrantSchemaUsage {
            schema, grantees, ..
        } => format!(
            "GRANT USAGE ON SCHEMA {} TO {}",
            ident(schema),
            idents(grantees)
        ),
        Statement::AlterDefaultPrivileges {
            owner,
            schema,
            object,
            privileges: list,
            grantees,
            ..
        } => {
            let in_schema = schema
                .as_deref()
                .map(|s| format!(" IN SCHEMA {}", ident(s)))
                .unwrap_or_default();
            format!(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {}{in_schema} GRANT {} ON {} TO {}",
                ident(owner),
                privileges(list),
                object.keyword(),
                idents(grantees)
            )
        }
        Statement::CreateExtension { name, schema, .. } => format!(
            "CREATE EXTENSION IF NOT EXISTS {} SCHEMA {}",
            ident(name),
            ident(schema)
        ),
        Statement::AlterExtensionSchema { name, schema, .. } => format!(
            "ALTER EXTENSION {} SET SCHEMA {}",
            ident(name),
            ident(schema)
        ),
        Statement::GrantOnAllInSchema {
            schema,
            object,
            privileges: list,
            grantees,
            ..
        } => format!(
            "GRANT {} ON ALL {} IN SCHEMA {} TO {}",
            privileges(list),
            object.keyword(),
            ident(schema),
            idents(grantees)
        ),
        Statement::RenameRole { from, to } => {
            format!("ALTER ROLE {} RENAME TO {}", ident(from), ident(to))
        }
        Statement::DropRole { name } => format!("DROP ROLE IF EXISTS {}", ident(name)),
        Statement::CreatePoolerLookup { schema, user, .. } => pooler_lookup(schema, user),
    }
}

/// The lookup function pgbouncer's `auth_query` calls: it reads `pg_shadow` as its owner
/// (the superuser), so the pooler's role sees verifiers without being superuser itself.
/// One batch: the function is replaced, then only the pooler's role may run it.
fn pooler_lookup(schema: &str, user: &str) -> String {
    let function = format!("{}.user_lookup(text)", ident(schema));
    format!(
        "CREATE OR REPLACE FUNCTION {}.user_lookup(i_username text, OUT uname text, OUT phash text) \
         RETURNS record LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS \
         $pgop$ BEGIN SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = i_username \
         INTO uname, phash; RETURN; END; $pgop$; \
         REVOKE ALL ON FUNCTION {function} FROM PUBLIC; \
         GRANT EXECUTE ON FUNCTION {function} TO {}",
        ident(schema),
        ident(user)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::roles::current::ObjectType;

    fn s(v: &str) -> String {
        v.to_string()
    }

    #[test]
    fn library_quoting() {
        // The exact output of postgres-protocol's escaping, which everything relies on.
        let cases = [
            ("plain", "\"plain\"", "'plain'"),
            (
                "x\"; DROP ROLE postgres; --",
                "\"x\"\"; DROP ROLE postgres; --\"",
                "'x\"; DROP ROLE postgres; --'",
            ),
            ("it's", "\"it's\"", "'it''s'"),
            ("back\\slash", "\"back\\slash\"", " E'back\\\\slash'"),
            ("\\'; DROP", "\"\\'; DROP\"", " E'\\\\''; DROP'"),
            ("$user", "\"$user\"", "'$user'"),
            ("", "\"\"", "''"),
            ("ünï", "\"ünï\"", "'ünï'"),
        ];
        for (input, identifier, literal) in cases {
            assert_eq!(escape_identifier(input), identifier, "{input}");
            assert_eq!(escape_literal(input), literal, "{input}");
        }
    }

    #[test]
    fn rendering() {
        let evil = s("x\"; DROP ROLE postgres; --");
        let cases: Vec<(Statement, &str)> = vec![
            (
                Statement::CreateRole {
                    name: evil.clone(),
                    flags: RoleFlags::login(),
                    verifier: Some(s("SCRAM-SHA-256$4096:c2FsdA==$a:b")),
                },
                "CREATE ROLE \"x\"\"; DROP ROLE postgres; --\" NOSUPERUSER INHERIT LOGIN NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a:b'",
            ),
            (
                Statement::CreateRole {
                    name: s("group"),
                    flags: RoleFlags::nologin(),
                    verifier: None,
                },
                "CREATE ROLE \"group\" NOSUPERUSER INHERIT NOLOGIN NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS PASSWORD NULL",
            ),
            (
                Statement::AlterRoleFlags {
                    name: s("app"),
                    changes: vec![(Attribute::Superuser, false), (Attribute::CreateDb, true)],
                },
                "ALTER ROLE \"app\" NOSUPERUSER CREATEDB",
            ),
            (
                Statement::SetPassword { name: s("o'neil"), verifier: s("SCRAM-SHA-256$1:AA==$A:B") },
                "ALTER ROLE \"o'neil\" PASSWORD 'SCRAM-SHA-256$1:AA==$A:B'",
            ),
            (
                Statement::SetParameter {
                    role: s("app"),
                    name: s("search_path"),
                    value: ParameterValue::List(vec![s("$user"), s("my'schema"), s("back\\slash")]),
                },
                "ALTER ROLE \"app\" SET \"search_path\" TO '$user', 'my''schema',  E'back\\\\slash'",
            ),
            (
                Statement::SetParameter {
                    role: s("app"),
                    name: s("auto_explain.log_min_duration"),
                    value: ParameterValue::Single(s("1s'; DROP ROLE x; --")),
                },
                "ALTER ROLE \"app\" SET \"auto_explain\".\"log_min_duration\" TO '1s''; DROP ROLE x; --'",
            ),
            (
                Statement::ResetParameter { role: s("app"), name: s("work_mem") },
                "ALTER ROLE \"app\" RESET \"work_mem\"",
            ),
            (
                Statement::GrantMembership { role: evil.clone(), member: s("b"), admin_option: true },
                "GRANT \"x\"\"; DROP ROLE postgres; --\" TO \"b\" WITH ADMIN OPTION",
            ),
            (
                Statement::CreateDatabase { name: s("my\"db"), owner: s("o") },
                "CREATE DATABASE \"my\"\"db\" OWNER \"o\"",
            ),
            (
                Statement::CreateSchema { database: s("d"), name: s("data"), owner: s("d_owner") },
                "CREATE SCHEMA IF NOT EXISTS \"data\" AUTHORIZATION \"d_owner\"",
            ),
            (
                Statement::GrantSchemaUsage { database: s("d"), schema: s("data"), grantees: vec![s("r"), s("w")] },
                "GRANT USAGE ON SCHEMA \"data\" TO \"r\", \"w\"",
            ),
            (
                Statement::AlterDefaultPrivileges {
                    database: s("d"),
                    owner: s("o"),
                    schema: None,
                    object: ObjectType::Types,
                    privileges: vec![Privilege::Usage],
                    grantees: vec![s("r")],
                },
                "ALTER DEFAULT PRIVILEGES FOR ROLE \"o\" GRANT USAGE ON TYPES TO \"r\"",
            ),
            (
                Statement::CreateExtension { database: s("d"), name: s("uuid-ossp"), schema: s("public") },
                "CREATE EXTENSION IF NOT EXISTS \"uuid-ossp\" SCHEMA \"public\"",
            ),
            (
                Statement::AlterExtensionSchema { database: s("d"), name: s("hstore"), schema: s("data") },
                "ALTER EXTENSION \"hstore\" SET SCHEMA \"data\"",
            ),
        ];
        for (statement, want) in cases {
            assert_eq!(render(&statement), want);
        }
    }

    #[test]
    fn redaction() {
        let verifier = s("SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy");
        let statements = [
            Statement::SetPassword {
                name: s("app"),
                verifier: verifier.clone(),
            },
            Statement::CreateRole {
                name: s("app"),
                flags: RoleFlags::login(),
                verifier: Some(verifier.clone()),
            },
        ];
        for statement in &statements {
            assert!(render(statement).contains(&verifier));
            let logged = redacted(statement);
            assert!(
                !logged.contains("c3RvcmVk") && !logged.contains("SCRAM"),
                "{logged}"
            );
            assert!(logged.contains("PASSWORD '<redacted>'"), "{logged}");
        }
        let plain = Statement::CreateDatabase {
            name: s("d"),
            owner: s("o"),
        };
        assert_eq!(redacted(&plain), render(&plain));
    }
}
