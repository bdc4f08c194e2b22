//! Roles and databases inside a running cluster: read the passwords from the Secrets, the
//! infrastructure roles and the team members, compute what the server should have (pure,
//! `roles::desired`), read what it has, and run only the statements that differ.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use kube::api::PostParams;
use kube::Api;
use pgop_common::config::OperatorConfig;
use pgop_common::crd::Postgresql;

use crate::cache::children::KnownSecrets;
use crate::clients::database::{connect, DbError};
use crate::cluster::context::{Context, SQL_STATEMENTS};
use crate::cluster::reconcile::random_password;
use crate::pure::builders::secrets::credential_secret;
use crate::pure::roles::current::{self, Current, CurrentRole, DatabaseState};
use crate::pure::roles::desired::{desired, secret_users};
use crate::pure::roles::diff::Statement;
use crate::pure::roles::diff::{diff, unresolved_memberships};
use crate::pure::roles::rotation::{self, Mode, SecretCredentials};
use crate::pure::roles::sql::{redacted, render};
use crate::pure::roles::{infrastructure, pooler_lookup, teams, Origin, RoleProblem, RoleSpec};

#[derive(Debug, thiserror::Error)]
pub enum RoleSyncError {
    #[error("reading {what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("the superuser's Secret has no password yet")]
    NoSuperuserPassword,
    #[error(transparent)]
    Connect(#[from] DbError),
    #[error("{what}: {}", sql_message(source))]
    Sql {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{} of {total} statements failed: {}", failed.len(), capped(&failed.join("; ")))]
    Statements { failed: Vec<String>, total: usize },
    #[error("teams API: {0}")]
    Teams(#[from] teams::TeamsError),
    #[error("the sync took longer than two minutes; retried")]
    TimedOut,
    #[error("computing the statements failed: {0}")]
    Diff(String),
}

/// What a sync did.
#[derive(Debug, Default)]
pub struct Report {
    pub statements: usize,
    /// Definitions refused or skipped, for the status message and an Event.
    pub problems: Vec<RoleProblem>,
}

/// Status messages stay readable however many statements fail.
fn capped(text: &str) -> String {
    const MAX: usize = 1000;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// The server's own message (`db error` alone says nothing).
fn sql_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

fn text(data: Option<BTreeMap<String, k8s_openapi::ByteString>>) -> BTreeMap<String, String> {
    data.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

fn kube_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> RoleSyncError {
    let what = what.into();
    move |source| RoleSyncError::Kube { what, source }
}

/// `[namespace/]name` with the operator's namespace as default.
fn split_name<'a>(value: &'a str, operator_namespace: &'a str) -> (&'a str, &'a str) {
    value.split_once('/').unwrap_or((operator_namespace, value))
}

async fn read_secret(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Option<Secret>, RoleSyncError> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    api.get_opt(name)
        .await
        .map_err(kube_error(format!("Secret {namespace}/{name}")))
}

async fn secret_data(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, RoleSyncError> {
    Ok(read_secret(ctx, namespace, name)
        .await?
        .map(|s| text(s.data)))
}

/// Writes rotated credentials into `secret` (as read: its resourceVersion makes a
/// concurrent edit fail the write, and the next sync decides again). Other keys stay.
async fn write_credentials(
    ctx: &Context,
    mut secret: Secret,
    credentials: &SecretCredentials,
) -> Result<(), RoleSyncError> {
    let namespace = secret.metadata.namespace.clone().unwrap_or_default();
    let name = secret.metadata.name.clone().unwrap_or_default();
    let data = secret.data.get_or_insert_with(BTreeMap::new);
    for key in [
        rotation::USERNAME_KEY,
        rotation::PASSWORD_KEY,
        rotation::NEXT_ROTATION_KEY,
    ] {
        data.remove(key);
    }
    data.extend(
        credentials
            .to_data()
            .into_iter()
            .map(|(k, v)| (k, ByteString(v.into_bytes()))),
    );
    secret.string_data = None;
    Api::<Secret>::namespaced(ctx.client.clone(), &namespace)
        .replace(&name, &PostParams::default(), &secret)
        .await
        .map_err(kube_error(format!(
            "Secret {namespace}/{name} (password rotation)"
        )))?;
    Ok(())
}

/// The passwords of the roles with Secrets, after rotating those that are due.
#[derive(Default)]
struct Credentials {
    /// Role → password, for roles whose Secret names them.
    passwords: BTreeMap<String, String>,
    /// User → (the dated role its Secret names, that role's password).
    rotated: BTreeMap<String, (String, String)>,
    /// User → the role its Secret names: dated roles of the user other than that one are
    /// dropped once past their retention.
    retention: BTreeMap<String, String>,
}

/// Reads every credentials Secret of the cluster and rotates the passwords that are due
/// (`enable_password_rotation`, the manifest's rotation lists), writing the Secrets first:
/// a sync that fails after the write finds the new credentials in the Secret next time.
async fn credentials(
    ctx: &Context,
    pg: &Postgresql,
    config: &OperatorConfig,
    known: &mut KnownSecrets<'_>,
    problems: &mut Vec<RoleProblem>,
) -> Result<Credentials, RoleSyncError> {
    let shape = desired(pg, config, &BTreeMap::new(), Vec::new());
    let now = chrono::Utc::now();
    let mut found = Credentials::default();
    let users = secret_users(pg, config)
        .into_iter()
        .chain(crate::pure::builders::pooler::pooler_user(pg, config));
    for user in users {
        let target = credential_secret(pg, config, &user);
        let secret = match known.recall(&target.namespace, &target.name) {
            Some(secret) => secret,
            None => {
                let Some(secret) = read_secret(ctx, &target.namespace, &target.name).await? else {
                    continue;
                };
                known.remember(&secret);
                secret
            }
        };
        let Some(stored) = SecretCredentials::from_data(&text(secret.data.clone())) else {
            continue;
        };
        let origin = shape.roles.get(&user).map_or(Origin::System, |r| r.origin);
        let owner = rotation::is_database_owner(&shape, &user);
        let (mode, problem) = rotation::mode(&user, origin, owner, pg, config);
        if let Some(reason) = problem {
            problems.push(RoleProblem {
                role: user.clone(),
                reason,
            });
        }
        let decision = rotation::decide(
            &user,
            mode,
            &stored,
            now,
            config.password_rotation_interval,
            &mut random_password,
        );
        if decision.write {
            known.forget(&target.name);
            write_credentials(ctx, secret, &decision.credentials).await?;
            tracing::info!(secret = %format!("{}/{}", target.namespace, target.name), reason = decision.reason.as_deref().unwrap_or_default(), "credentials Secret updated");
        }
        let credentials = decision.credentials;
        if mode == Mode::Dated || decision.check_retention {
            found
                .retention
                .insert(user.clone(), credentials.username.clone());
        }
        match rotation::rotated_role_name(&user, &credentials) {
            Some(role) => {
                found
                    .rotated
                    .insert(user.clone(), (role.to_string(), credentials.password));
            }
            None => {
                found.passwords.insert(user, credentials.password);
            }
        }
    }
    Ok(found)
}

/// The roles of the infrastructure role Secrets (and their companion ConfigMaps).
async fn infrastructure_roles(
    ctx: &Context,
    config: &OperatorConfig,
    problems: &mut Vec<RoleProblem>,
) -> Vec<RoleSpec> {
    let (sources, warnings) = infrastructure::sources_lenient(config);
    problems.extend(warnings.into_iter().map(|reason| RoleProblem {
        role: String::new(),
        reason,
    }));
    let mut lists = Vec::new();
    for source in &sources {
        let namespace = source.namespace(&ctx.operator_namespace);
        // A Secret pgop may not read (or that is missing) costs its roles, not the sync.
        let mut refused = |reason: String| {
            problems.push(RoleProblem {
                role: String::new(),
                reason,
            })
        };
        let data = match secret_data(ctx, namespace, &source.secret_name).await {
            Ok(Some(data)) => data,
            Ok(None) => {
                refused(format!(
                    "infrastructure roles Secret {namespace}/{} does not exist",
                    source.secret_name
                ));
                continue;
            }
            Err(e) => {
                refused(format!("infrastructure roles: {e}"));
                continue;
            }
        };
        let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
        let companion = match maps.get_opt(&source.secret_name).await {
            Ok(map) => map.map(|m| m.data.unwrap_or_default()),
            Err(e) => {
                refused(format!(
                    "infrastructure roles ConfigMap {namespace}/{}: {e}",
                    source.secret_name
                ));
                continue;
            }
        };
        let (roles, found) =
            infrastructure::roles_with_config_map(source, &data, companion.as_ref());
        problems.extend(found);
        lists.push(roles);
    }
    infrastructure::merge(lists)
}

/// The members of the teams the cluster's roles come from (`enable_teams_api`).
async fn team_roles(
    ctx: &Context,
    pg: &Postgresql,
    config: &OperatorConfig,
) -> Result<Vec<RoleSpec>, RoleSyncError> {
    if !config.enable_teams_api {
        return Ok(Vec::new());
    }
    let (namespace, name) = split_name(&config.oauth_token_secret_name, &ctx.operator_namespace);
    let data = secret_data(ctx, namespace, name).await?.unwrap_or_default();
    let token = teams::token_from_secret(&data)?;
    let mut fetched = Vec::new();
    for team in teams::teams_to_query(&pg.spec.team_id, config) {
        let members = crate::clients::teams_api::team_members(
            &ctx.http,
            &config.teams_api_url,
            &token,
            &team,
        )
        .await?;
        fetched.push((team, members));
    }
    Ok(teams::human_roles(&fetched, &pg.spec.team_id, config))
}

/// The rows of `query`, each read by `parse`.
async fn read_rows<T>(
    db: &tokio_postgres::Client,
    query: &str,
    what: &str,
    parse: fn(&tokio_postgres::Row) -> Result<T, tokio_postgres::Error>,
) -> Result<Vec<T>, RoleSyncError> {
    let error = |source| RoleSyncError::Sql {
        what: what.to_string(),
        source,
    };
    db.query(query, &[])
        .await
        .map_err(error)?
        .iter()
        .map(parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(error)
}

/// The server's state, and the connections opened to read it (kept for the writes).
async fn read_current(
    postgres: tokio_postgres::Client,
    master: &str,
    user: &str,
    password: &str,
    wanted: impl Iterator<Item = &String>,
) -> Result<(Current, BTreeMap<String, tokio_postgres::Client>), RoleSyncError> {
    let roles = read_rows(
        &postgres,
        current::ROLES_QUERY,
        "reading roles",
        CurrentRole::from_row,
    )
    .await?;
    let databases = read_rows(
        &postgres,
        current::DATABASES_QUERY,
        "reading databases",
        Current::database_from_row,
    )
    .await?;
    let mut state = Current::new(roles, databases);
    let mut connections = BTreeMap::from([("postgres".to_string(), postgres)]);
    // Inside each wanted database that exists: schemas, extensions, default privileges.
    for database in wanted {
        if !state.databases.contains_key(database) {
            continue;
        }
        let db = connect(master, user, password, database).await?;
        let what = format!("reading database {database}");
        let schemas = read_rows(
            &db,
            current::SCHEMAS_QUERY,
            &what,
            DatabaseState::schema_from_row,
        )
        .await?;
        let extensions = read_rows(
            &db,
            current::EXTENSIONS_QUERY,
            &what,
            DatabaseState::extension_from_row,
        )
        .await?;
        let privileges = read_rows(
            &db,
            current::DEFAULT_PRIVILEGES_QUERY,
            &what,
            DatabaseState::default_privilege_from_row,
        )
        .await?;
        state = state.with_database_state(
            database,
            DatabaseState::new(schemas, extensions, privileges.into_iter().flatten()),
        );
        connections.insert(database.clone(), db);
    }
    Ok((state, connections))
}

/// Brings roles and databases on the master at `master` (its address) to what `pg` and
/// `config` ask for. Statements are logged without passwords.
pub(crate) async fn sync(
    ctx: &Context,
    pg: &Postgresql,
    config: &OperatorConfig,
    master: &str,
    mut known: KnownSecrets<'_>,
) -> Result<Report, RoleSyncError> {
    let mut problems = Vec::new();
    let Credentials {
        passwords,
        rotated,
        retention,
    } = credentials(ctx, pg, config, &mut known, &mut problems).await?;
    let superuser = config.super_username.clone();
    let superuser_password = passwords
        .get(&superuser)
        .cloned()
        .ok_or(RoleSyncError::NoSuperuserPassword)?;

    let mut extra = infrastructure_roles(ctx, config, &mut problems).await;
    // An unreachable teams API (or a missing token) costs the team members' roles, not the
    // rest of the sync; the problem is shown like any refused definition.
    let teams_answered = match team_roles(ctx, pg, config).await {
        Ok(roles) => {
            extra.extend(roles);
            config.enable_teams_api
        }
        Err(e) => {
            problems.push(RoleProblem {
                role: String::new(),
                reason: e.to_string(),
            });
            false
        }
    };
    let mut wanted = desired(pg, config, &passwords, extra);
    rotation::add_rotated_roles(&mut wanted, &rotated);
    problems.extend(wanted.problems.iter().cloned());

    let postgres = connect(master, &superuser, &superuser_password, "postgres").await?;
    // Only databases with something inside to manage are opened (plain `spec.databases`
    // entries need nothing but their owner, read from pg_database).
    let inside = wanted
        .databases
        .iter()
        .filter(|(_, d)| {
            d.prepared
                || !d.schemas.is_empty()
                || !d.extensions.is_empty()
                || !d.default_privileges.is_empty()
        })
        .map(|(name, _)| name);
    let (mut current, mut connections) =
        read_current(postgres, master, &superuser, &superuser_password, inside).await?;
    problems.extend(unresolved_memberships(&wanted, &current));
    // Former team members are only known when the teams API answered.
    let mut statements = if teams_answered && config.enable_team_member_deprecation {
        teams::member_renames(&mut current, &wanted, config)
    } else {
        Vec::new()
    };
    // Dated roles past their retention (never the one a Secret names).
    let today = chrono::Utc::now().date_naive();
    let mut drops = Vec::new();
    for (user, in_use) in &retention {
        let roles = current
            .roles
            .values()
            .map(|r| (r.name.as_str(), &r.member_of));
        drops.extend(
            rotation::expired_rotation_roles(
                user,
                roles,
                in_use,
                today,
                config.password_rotation_user_retention,
            )
            .into_iter()
            .map(|name| Statement::DropRole { name }),
        );
    }
    // pgbouncer's lookup function in every database, once roles and databases exist.
    let lookups = match crate::pure::builders::pooler::pooler_user(pg, config) {
        Some(user) => {
            let schema = crate::pure::builders::pooler::pooler_schema(pg, config);
            let databases = pooler_lookup::databases_to_prepare(
                current
                    .databases
                    .keys()
                    .chain(wanted.databases.keys())
                    .cloned(),
            );
            let mut lookups = Vec::new();
            for database in databases {
                let state = if current.databases.contains_key(&database) {
                    let db = match connections.entry(database.clone()) {
                        std::collections::btree_map::Entry::Occupied(open) => open.into_mut(),
                        std::collections::btree_map::Entry::Vacant(slot) => slot.insert(
                            connect(master, &superuser, &superuser_password, &database).await?,
                        ),
                    };
                    let row = db
                        .query_one(pooler_lookup::LOOKUP_QUERY, &[&schema, &user])
                        .await
                        .map_err(|source| RoleSyncError::Sql {
                            what: format!("reading the pooler lookup in {database}"),
                            source,
                        })?;
                    Some(
                        pooler_lookup::LookupState::from_row(&row).map_err(|source| {
                            RoleSyncError::Sql {
                                what: format!("reading the pooler lookup in {database}"),
                                source,
                            }
                        })?,
                    )
                } else {
                    None
                };
                lookups.extend(pooler_lookup::statements(
                    &database,
                    &schema,
                    &user,
                    &superuser,
                    state.as_ref(),
                ));
            }
            lookups
        }
        None => Vec::new(),
    };
    // Checking SCRAM verifiers costs thousands of hash rounds per role: off the async
    // threads, so other clusters' tasks and the heartbeats are not held up.
    statements.extend(
        tokio::task::spawn_blocking(move || diff(&wanted, &current))
            .await
            .map_err(|e| RoleSyncError::Diff(e.to_string()))?,
    );
    statements.extend(lookups);
    statements.extend(drops);

    // One statement failing (an extension the image lacks) does not hold up the others.
    let mut failed = Vec::new();
    for statement in &statements {
        let database = statement.database().unwrap_or("postgres").to_string();
        if !connections.contains_key(&database) {
            match connect(master, &superuser, &superuser_password, &database).await {
                Ok(db) => {
                    connections.insert(database.clone(), db);
                }
                Err(e) => {
                    failed.push(format!("{}: {e}", redacted(statement)));
                    ctx.metrics.inc(
                        SQL_STATEMENTS,
                        vec![
                            ("kind", statement.kind().into()),
                            ("outcome", "failed".into()),
                        ],
                    );
                    continue;
                }
            }
        }
        let shown = redacted(statement);
        tracing::info!(%database, sql = %shown, "statement");
        let outcome = match connections[&database]
            .batch_execute(&render(statement))
            .await
        {
            Ok(()) => "ok",
            Err(e) => {
                tracing::warn!(sql = %shown, "statement failed: {}", sql_message(&e));
                failed.push(format!("{shown}: {}", sql_message(&e)));
                "failed"
            }
        };
        ctx.metrics.inc(
            SQL_STATEMENTS,
            vec![
                ("kind", statement.kind().into()),
                ("outcome", outcome.into()),
            ],
        );
    }
    if !failed.is_empty() {
        return Err(RoleSyncError::Statements {
            failed,
            total: statements.len(),
        });
    }
    Ok(Report {
        statements: statements.len(),
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_default_to_the_operators_namespace() {
        assert_eq!(split_name("ops/token", "pgop"), ("ops", "token"));
        assert_eq!(split_name("token", "pgop"), ("pgop", "token"));
    }
}
