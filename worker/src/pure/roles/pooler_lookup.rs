//! pgbouncer's `auth_query` in every database of a cluster with a connection pooler: the
//! schema (Zalando's `connection_pooler_schema`, default `pooler`) owned by the superuser,
//! `USAGE` on it for the pooler's role (`connection_pooler_user`, default `pooler`), and the
//! `SECURITY DEFINER` function `<schema>.user_lookup(text)` only that role may execute.
//!
//! [`LOOKUP_QUERY`] reads what one database has, [`statements`] turns it into what is
//! missing. Pure, except that [`LookupState::from_row`] reads a `tokio_postgres` row.
use super::diff::Statement;

/// In one database, with `$1` = the schema (text) and `$2` = the pooler's role (text): one
/// row of three `bool` columns, never `NULL` and never an error when the schema, the role
/// or the function is missing:
/// 1. the schema exists;
/// 2. the role exists and has `USAGE` on the schema;
/// 3. `<schema>.user_lookup(text)` exists, is `SECURITY DEFINER`, the role exists and may
///    execute it, and `PUBLIC` may not (no `proacl` means `PUBLIC` may).
///
/// Names are only compared with the parameters, never formatted into the SQL; the
/// privilege functions get catalog oids, found in the same snapshot.
pub const LOOKUP_QUERY: &str = "\
WITH n AS (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1::text), \
r AS (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $2::text), \
f AS (SELECT p.oid, p.prosecdef, \
COALESCE(p.proacl, pg_catalog.acldefault('f', p.proowner)) AS acl \
FROM pg_catalog.pg_proc p JOIN n ON p.pronamespace = n.oid \
WHERE p.proname = 'user_lookup' AND p.pronargs = 1 \
AND p.proargtypes[0] = 'pg_catalog.text'::pg_catalog.regtype::pg_catalog.oid) \
SELECT EXISTS (SELECT 1 FROM n), \
COALESCE((SELECT pg_catalog.has_schema_privilege(r.oid, n.oid, 'USAGE') FROM n, r), false), \
COALESCE((SELECT f.prosecdef \
AND pg_catalog.has_function_privilege(r.oid, f.oid, 'EXECUTE') \
AND NOT EXISTS (SELECT 1 FROM pg_catalog.aclexplode(f.acl) a \
WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE') \
FROM f, r), false)";

/// What one database has of the lookup (the row of [`LOOKUP_QUERY`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LookupState {
    pub schema_exists: bool,
    /// The pooler's role has `USAGE` on the schema.
    pub usage_granted: bool,
    /// `<schema>.user_lookup(text)` exists, is `SECURITY DEFINER` and the pooler's role (and
    /// not `PUBLIC`) may execute it.
    pub function_ok: bool,
}

impl LookupState {
    /// The row of [`LOOKUP_QUERY`].
    pub fn from_row(row: &tokio_postgres::Row) -> Result<Self, tokio_postgres::Error> {
        Ok(LookupState {
            schema_exists: row.try_get(0)?,
            usage_granted: row.try_get(1)?,
            function_ok: row.try_get(2)?,
        })
    }

    #[cfg(test)]
    /// Nothing to do.
    pub fn in_sync(&self) -> bool {
        self.schema_exists && self.usage_granted && self.function_ok
    }
}

/// The databases that get the lookup: every one but the templates (`template0`,
/// `template1`); like Zalando, `postgres` included. Sorted, without duplicates.
pub fn databases_to_prepare(all: impl IntoIterator<Item = String>) -> Vec<String> {
    all.into_iter()
        .filter(|name| name != "template0" && name != "template1")
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// What `database` is missing of the lookup. `state` None: the database was not read (or
/// does not exist yet), so everything. Without the schema, everything (a new schema has
/// neither grant nor function); otherwise only the missing grant and/or function.
pub fn statements(
    database: &str,
    schema: &str,
    pooler_user: &str,
    superuser: &str,
    state: Option<&LookupState>,
) -> Vec<Statement> {
    let state = state.copied().unwrap_or_default();
    let mut out = Vec::new();
    if !state.schema_exists {
        out.push(Statement::CreateSchema {
            database: database.to_string(),
            name: schema.to_string(),
            owner: superuser.to_string(),
        });
    }
    if !state.schema_exists || !state.usage_granted {
        out.push(Statement::GrantSchemaUsage {
            database: database.to_string(),
            schema: schema.to_string(),
            grantees: vec![pooler_user.to_string()],
        });
    }
    if !state.schema_exists || !state.function_ok {
        out.push(Statement::CreatePoolerLookup {
            database: database.to_string(),
            schema: schema.to_string(),
            user: pooler_user.to_string(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::roles::sql::render;

    fn s(v: &str) -> String {
        v.to_string()
    }

    fn create_schema(database: &str) -> Statement {
        Statement::CreateSchema {
            database: s(database),
            name: s("pooler"),
            owner: s("postgres"),
        }
    }

    fn grant_usage(database: &str) -> Statement {
        Statement::GrantSchemaUsage {
            database: s(database),
            schema: s("pooler"),
            grantees: vec![s("pooler")],
        }
    }

    fn lookup(database: &str) -> Statement {
        Statement::CreatePoolerLookup {
            database: s(database),
            schema: s("pooler"),
            user: s("pooler"),
        }
    }

    fn state(schema_exists: bool, usage_granted: bool, function_ok: bool) -> LookupState {
        LookupState {
            schema_exists,
            usage_granted,
            function_ok,
        }
    }

    #[test]
    fn statements_issue_only_what_is_missing() {
        let table: Vec<(&str, Option<LookupState>, Vec<Statement>)> = vec![
            (
                "not read",
                None,
                vec![create_schema("foo"), grant_usage("foo"), lookup("foo")],
            ),
            (
                "empty database",
                Some(state(false, false, false)),
                vec![create_schema("foo"), grant_usage("foo"), lookup("foo")],
            ),
            (
                // Cannot happen from the query, but without a schema nothing else counts.
                "no schema, stale flags",
                Some(state(false, true, true)),
                vec![create_schema("foo"), grant_usage("foo"), lookup("foo")],
            ),
            (
                "schema only",
                Some(state(true, false, false)),
                vec![grant_usage("foo"), lookup("foo")],
            ),
            (
                "usage missing",
                Some(state(true, false, true)),
                vec![grant_usage("foo")],
            ),
            (
                "function not ok",
                Some(state(true, true, false)),
                vec![lookup("foo")],
            ),
            ("in sync", Some(state(true, true, true)), vec![]),
        ];
        for (name, current, want) in table {
            assert_eq!(
                statements("foo", "pooler", "pooler", "postgres", current.as_ref()),
                want,
                "{name}"
            );
            assert_eq!(
                current.is_some_and(|c| c.in_sync()),
                name == "in sync",
                "{name}"
            );
        }
    }

    #[test]
    fn statements_use_the_given_names() {
        assert_eq!(
            statements("app db", "conn_pool", "pgbouncer", "admin", None),
            vec![
                Statement::CreateSchema {
                    database: s("app db"),
                    name: s("conn_pool"),
                    owner: s("admin"),
                },
                Statement::GrantSchemaUsage {
                    database: s("app db"),
                    schema: s("conn_pool"),
                    grantees: vec![s("pgbouncer")],
                },
                Statement::CreatePoolerLookup {
                    database: s("app db"),
                    schema: s("conn_pool"),
                    user: s("pgbouncer"),
                },
            ]
        );
        for statement in statements("app db", "conn_pool", "pgbouncer", "admin", None) {
            assert_eq!(statement.database(), Some("app db"), "{statement:?}");
        }
    }

    #[test]
    fn databases_to_prepare_skip_templates() {
        let table: Vec<(Vec<&str>, Vec<&str>)> = vec![
            (vec![], vec![]),
            (vec!["template0", "template1"], vec![]),
            (vec!["template1", "postgres", "template0"], vec!["postgres"]),
            (
                vec!["foo", "postgres", "bar", "foo", "template0", "Template1"],
                vec!["Template1", "bar", "foo", "postgres"],
            ),
            (vec!["template2"], vec!["template2"]),
        ];
        for (all, want) in table {
            assert_eq!(
                databases_to_prepare(all.iter().map(|d| s(d))),
                want,
                "{all:?}"
            );
        }
    }

    #[test]
    fn the_lookup_function_is_quoted_and_private() {
        let sql = render(&Statement::CreatePoolerLookup {
            database: s("d"),
            schema: s("po\"oler"),
            user: s("pg\"bouncer"),
        });
        assert!(
            sql.contains("CREATE OR REPLACE FUNCTION \"po\"\"oler\".user_lookup("),
            "{sql}"
        );
        assert!(sql.contains("SECURITY DEFINER"), "{sql}");
        assert!(
            sql.contains("REVOKE ALL ON FUNCTION \"po\"\"oler\".user_lookup(text) FROM PUBLIC"),
            "{sql}"
        );
        assert!(
            sql.ends_with(
                "GRANT EXECUTE ON FUNCTION \"po\"\"oler\".user_lookup(text) TO \"pg\"\"bouncer\""
            ),
            "{sql}"
        );
        assert_eq!(sql.matches("GRANT ").count(), 1, "{sql}");
        // The names appear only quoted.
        assert_eq!(sql.matches("po\"oler").count(), 0, "{sql}");
        assert_eq!(sql.matches("pg\"bouncer").count(), 0, "{sql}");
    }

    #[test]
    fn the_query_takes_names_as_parameters_only() {
        assert!(LOOKUP_QUERY.contains("$1::text") && LOOKUP_QUERY.contains("$2::text"));
        assert!(!LOOKUP_QUERY.contains("$3"));
        assert!(!LOOKUP_QUERY.contains("pooler"), "{LOOKUP_QUERY}");
        assert!(!LOOKUP_QUERY.contains('"'), "{LOOKUP_QUERY}");
    }
}
