//! Roles and databases inside PostgreSQL (the roles issue): manifest users, databases,
//! prepared databases, infrastructure roles in both formats and team members from a teams
//! API, checked in the master's catalogs; logins with the Secrets' passwords; a password
//! changed in its Secret; a sync with nothing to do issues no statement and no write; a
//! malicious role name is refused; a Secret in another namespace; password rotation;
//! a former team member set aside.
use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::Api;
use pgop_e2e::pgop::{counter, Kubeconfigs, Pgop};
use pgop_e2e::teams_api::TeamsApi;
use pgop_e2e::wait;

use super::operator::{events_of, master_login, operator_namespace, wait_gone, wait_running};
use super::{connect, connect_as, env, namespace, secret_value};

const MALICIOUS: &str = r#"x"; DROP ROLE postgres; --"#;
/// Where `enable_cross_namespace_secret` puts the Secret of the user `<APPS>.cross_user`.
const APPS: &str = "e2e-roles-apps";

fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        string_data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

fn rows(messages: Vec<tokio_postgres::SimpleQueryMessage>) -> Vec<Vec<String>> {
    messages
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The worker's log lines about database syncs of `cluster`, as "N statements".
fn sync_counts(log: &std::path::Path, cluster: &str) -> Vec<usize> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("database in sync") && l.contains(cluster))
        .filter_map(|l| {
            l.split("statements=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

pub async fn roles_and_databases() -> Result<()> {
    let (system_ns, ns, cluster) = ("e2e-roles-system", "e2e-roles", "acid-roles");
    let client = env().client().await?;
    operator_namespace(&client, system_ns).await?;
    namespace(&client, ns).await?;
    namespace(&client, APPS).await?;

    let teams = TeamsApi::start("e2e-token").await?;
    teams.set_members("acid", &["alice", "bob"]);
    let system_secrets: Api<Secret> = Api::namespaced(client.clone(), system_ns);
    for s in [
        secret(
            "teams-token",
            &[
                ("read-only-token-type", "Bearer"),
                ("read-only-token-secret", "e2e-token"),
            ],
        ),
        // Zalando's legacy format.
        secret(
            "infra-legacy",
            &[("user1", "robot_one"), ("password1", "robot-one-Pa55")],
        ),
        // The newer format, named in infrastructure_roles_secrets.
        secret(
            "infra-new",
            &[("user", "robot_two"), ("password", "robot-two-Pa55")],
        ),
    ] {
        system_secrets.create(&PostParams::default(), &s).await?;
    }
    let config = ConfigMap {
        metadata: ObjectMeta {
            name: Some("postgres-operator".into()),
            ..Default::default()
        },
        data: Some(
            [
                ("watched_namespace", ns.to_string()),
                ("enable_teams_api", "true".into()),
                ("teams_api_url", teams.url.clone()),
                ("oauth_token_secret_name", "teams-token".into()),
                ("infrastructure_roles_secret_name", "infra-legacy".into()),
                ("enable_cross_namespace_secret", "true".into()),
                ("enable_team_member_deprecation", "true".into()),
                (
                    "infrastructure_roles_secrets",
                    "secretname:infra-new,userkey:user,passwordkey:password".into(),
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        ),
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced(client.clone(), system_ns)
        .create(&PostParams::default(), &config)
        .await?;
    let pgop = Pgop::start(
        "roles",
        system_ns,
        1,
        &env().state_dir,
        &Kubeconfigs::admin(&env().kubeconfig),
        None,
    )?;
    let manifest = format!(
        r#"apiVersion: acid.zalan.do/v1
kind: postgresql
metadata: {{name: {cluster}}}
spec:
  teamId: acid
  numberOfInstances: 1
  volume: {{size: 1Gi}}
  postgresql: {{version: "15"}}
  users:
    zalando: [superuser, createdb]
    foo_user: []
    app_role: [nologin]
    rotated_user: []
    inplace_user: []
    {APPS}.cross_user: []
    '{malicious}': []
  usersWithSecretRotation: [rotated_user]
  usersWithInPlaceSecretRotation: [inplace_user]
  databases:
    foo: zalando
  preparedDatabases:
    bar:
      defaultUsers: true
      schemas:
        data: {{}}
      extensions:
        pgcrypto: data
"#,
        malicious = MALICIOUS.replace('\'', "''"),
    );
    env().apply(ns, &manifest)?;
    wait_running(ns, cluster, Duration::from_secs(240)).await?;

    let (ip, superuser) = master_login(&client, ns, cluster).await?;

    // The catalogs once the worker has synced (schemas get their own roles, as Zalando's
    // defaultRoles).
    let want_roles: BTreeSet<&str> = [
        "zalando",
        "foo_user",
        "app_role",
        "alice",
        "bob",
        "robot_one",
        "robot_two",
        "bar_owner",
        "bar_reader",
        "bar_writer",
        "bar_owner_user",
        "bar_reader_user",
        "bar_writer_user",
    ]
    .into_iter()
    .collect();
    let roles = wait::until(
        "every role in the master",
        Duration::from_secs(90),
        || async {
            let db = connect(&ip, &superuser).await?;
            let found = rows(
                db.simple_query(
                    "SELECT rolname, rolsuper, rolcreatedb, rolcanlogin FROM pg_roles ORDER BY 1",
                )
                .await?,
            );
            let names: BTreeSet<String> = found.iter().map(|r| r[0].clone()).collect();
            let missing: Vec<&&str> = want_roles.iter().filter(|r| !names.contains(**r)).collect();
            if missing.is_empty() {
                Ok(Some(found))
            } else {
                bail!("missing roles {missing:?}")
            }
        },
    )
    .await?;
    let flags = |name: &str| -> Option<Vec<String>> {
        roles.iter().find(|r| r[0] == name).map(|r| r[1..].to_vec())
    };
    ensure!(
        flags("zalando") == Some(vec!["t".into(), "t".into(), "t".into()]),
        "zalando {:?}",
        flags("zalando")
    );
    ensure!(
        flags("foo_user") == Some(vec!["f".into(), "f".into(), "t".into()]),
        "foo_user {:?}",
        flags("foo_user")
    );
    ensure!(
        flags("app_role").is_some_and(|f| f[2] == "f"),
        "app_role is NOLOGIN"
    );
    ensure!(
        flags("alice").is_some_and(|f| f[2] == "t"),
        "team member alice logs in"
    );
    ensure!(
        !roles.iter().any(|r| r[0].contains("DROP")),
        "the malicious role exists: {roles:?}"
    );

    let db = connect(&ip, &superuser).await?;
    let member_of_pam = rows(
        db.simple_query(
            "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member \
             JOIN pg_roles g ON g.oid = m.roleid WHERE g.rolname = 'zalandos' ORDER BY 1",
        )
        .await?,
    );
    ensure!(
        member_of_pam.iter().any(|r| r[0] == "alice"),
        "team members join pam_role_name: {member_of_pam:?}"
    );
    let databases = rows(
        db.simple_query(
            "SELECT datname, pg_get_userbyid(datdba) FROM pg_database \
             WHERE datname IN ('foo', 'bar') ORDER BY 1",
        )
        .await?,
    );
    ensure!(
        databases
            == vec![
                vec!["bar".to_string(), "bar_owner".into()],
                vec!["foo".into(), "zalando".into()]
            ],
        "databases {databases:?}"
    );
    let bar = connect_as(&ip, "postgres", &superuser, "bar").await?;
    let schema = rows(
        bar.simple_query(
            "SELECT nspname, pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'data'",
        )
        .await?,
    );
    ensure!(
        schema == vec![vec!["data".to_string(), "bar_data_owner".into()]],
        "schema {schema:?}"
    );
    let extension = rows(
        bar.simple_query(
            "SELECT e.extname, n.nspname FROM pg_extension e \
             JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pgcrypto'",
        )
        .await?,
    );
    ensure!(
        extension == vec![vec!["pgcrypto".to_string(), "data".into()]],
        "extension {extension:?}"
    );

    // Every manifest login role logs in with the password of its Secret.
    for (user, secret_user) in [
        ("zalando", "zalando"),
        ("foo_user", "foo-user"),
        ("bar_owner_user", "bar-owner-user"),
    ] {
        let password = secret_value(
            &client,
            ns,
            &format!("{secret_user}.{cluster}.credentials.postgresql.acid.zalan.do"),
            "password",
        )
        .await?;
        connect_as(&ip, user, &password, "postgres")
            .await
            .with_context(|| format!("{user} logs in"))?;
    }

    // The malicious name: refused with an Event, no Secret, no SQL.
    let events = events_of(ns, cluster)?;
    ensure!(
        events.contains("DROP ROLE"),
        "an Event names the refused role: {events}"
    );

    // A password changed in its Secret is the password at the next sync.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let foo_secret = format!("foo-user.{cluster}.credentials.postgresql.acid.zalan.do");
    secrets
        .patch(
            &foo_secret,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"stringData": {"password": "changed-Pa55word"}})),
        )
        .await?;
    let touch = |value: &str| {
        env().kubectl(&[
            "annotate",
            "pg",
            "-n",
            ns,
            cluster,
            "--overwrite",
            &format!("e2e/resync={value}"),
        ])
    };
    touch("1")?;
    wait::until(
        "the new password logs in",
        Duration::from_secs(60),
        || async {
            Ok(connect_as(&ip, "foo_user", "changed-Pa55word", "postgres")
                .await
                .ok()
                .map(|_| ()))
        },
    )
    .await?;

    // A deleted credentials Secret: its watch brings a pass that creates it again with a new
    // password, and sets the role's password to match.
    let bar_secret = format!("bar-owner-user.{cluster}.credentials.postgresql.acid.zalan.do");
    let old_password = secret_value(&client, ns, &bar_secret, "password").await?;
    secrets.delete(&bar_secret, &Default::default()).await?;
    let new_password = wait::until(
        "the deleted Secret recreated",
        Duration::from_secs(30),
        || async {
            Ok(secret_value(&client, ns, &bar_secret, "password")
                .await
                .ok()
                .filter(|p| *p != old_password))
        },
    )
    .await?;
    wait::until(
        "the recreated Secret's password logs in",
        Duration::from_secs(30),
        || async {
            Ok(connect_as(&ip, "bar_owner_user", &new_password, "postgres")
                .await
                .ok()
                .map(|_| ()))
        },
    )
    .await?;

    // Nothing to do: a sync issues no statement and writes nothing to Kubernetes.
    let log = env().state_dir.join("logs/roles-worker-0.log");
    let before = sync_counts(&log, cluster).len();
    let writes_before = pgop.kube_writes()?;
    ensure!(
        counter(
            &pgop.worker_metrics_addrs,
            "pgop_sql_statements_total",
            &[("kind", "create_role"), ("outcome", "ok")]
        )? > 0,
        "the worker counts the roles it created"
    );
    touch("2")?;
    let counts = wait::until("another database sync", Duration::from_secs(60), || async {
        let counts = sync_counts(&log, cluster);
        Ok((counts.len() > before).then_some(counts))
    })
    .await?;
    ensure!(counts.last() == Some(&0), "statements per sync: {counts:?}");
    ensure!(
        pgop.kube_writes()? == writes_before,
        "an in-sync resync wrote to Kubernetes: {writes_before} writes before, {} after",
        pgop.kube_writes()?
    );

    // A Secret in another namespace for `<namespace>.user`, without owner references.
    let cross_name = format!("{APPS}.cross-user.{cluster}.credentials.postgresql.acid.zalan.do");
    let cross = Api::<Secret>::namespaced(client.clone(), APPS)
        .get(&cross_name)
        .await?;
    ensure!(
        cross.metadata.owner_references.is_none(),
        "owner references across namespaces"
    );
    let cross_password = secret_value(&client, APPS, &cross_name, "password").await?;
    connect_as(
        &ip,
        &format!("{APPS}.cross_user"),
        &cross_password,
        "postgres",
    )
    .await
    .context("the cross-namespace user logs in")?;

    rotation(&client, ns, cluster, &ip, &superuser, touch).await?;

    // A member who left the team keeps a NOLOGIN role with the deletion suffix.
    teams.set_members("acid", &["alice"]);
    touch("4")?;
    wait::until("bob set aside", Duration::from_secs(60), || async {
        let db = connect(&ip, &superuser).await?;
        let found = rows(
            db.simple_query("SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname LIKE 'bob%'")
                .await?,
        );
        Ok((found == vec![vec!["bob_deleted".to_string(), "f".into()]]).then_some(()))
    })
    .await?;

    env().kubectl(&["delete", "pg", "-n", ns, cluster])?;
    wait_gone(&client, ns, cluster).await?;
    wait::until(
        "the cross-namespace Secret removed",
        Duration::from_secs(30),
        || async {
            let gone = Api::<Secret>::namespaced(client.clone(), APPS)
                .get_opt(&cross_name)
                .await?
                .is_none();
            Ok(gone.then_some(()))
        },
    )
    .await?;
    drop(pgop);
    Ok(())
}

/// Password rotation: a due dated rotation creates `<user>YYMMDD` (member of the user) and
/// points the Secret at it, an in-place one changes the user's password, and a dated role
/// past the retention is dropped.
async fn rotation(
    client: &kube::Client,
    ns: &str,
    cluster: &str,
    ip: &str,
    superuser: &str,
    touch: impl Fn(&str) -> Result<String>,
) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let name = |user: &str| format!("{user}.{cluster}.credentials.postgresql.acid.zalan.do");
    let field = |secret: &Secret, key: &str| -> Option<String> {
        secret
            .data
            .as_ref()?
            .get(key)
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
    };
    // The first syncs only schedule the rotation.
    for user in ["rotated-user", "inplace-user"] {
        let secret = secrets.get(&name(user)).await?;
        ensure!(
            field(&secret, "nextRotation").is_some_and(|d| d.ends_with('Z')),
            "{user}: nextRotation scheduled"
        );
    }
    let old_inplace = secret_value(client, ns, &name("inplace-user"), "password").await?;
    let db = connect(ip, superuser).await?;
    db.batch_execute("CREATE ROLE rotated_user240101 LOGIN IN ROLE rotated_user")
        .await?;
    for user in ["rotated-user", "inplace-user"] {
        secrets
            .patch(
                &name(user),
                &PatchParams::default(),
                &Patch::Merge(
                    serde_json::json!({"stringData": {"nextRotation": "2020-01-01T00:00:00Z"}}),
                ),
            )
            .await?;
    }
    touch("3")?;
    let dated = format!("rotated_user{}", today_yymmdd()?);
    let rotated = wait::until("the dated rotation", Duration::from_secs(60), || async {
        let secret = secrets.get(&name("rotated-user")).await?;
        Ok((field(&secret, "username").as_deref() == Some(dated.as_str())).then_some(secret))
    })
    .await?;
    let password = field(&rotated, "password").context("password")?;
    let next = field(&rotated, "nextRotation").context("nextRotation")?;
    ensure!(
        next.as_str() > "2026",
        "the next rotation is in the future: {next}"
    );
    wait::until(
        "the dated role logs in",
        Duration::from_secs(60),
        || async {
            Ok(connect_as(ip, &dated, &password, "postgres")
                .await
                .ok()
                .map(|_| ()))
        },
    )
    .await?;
    let membership = rows(
        db.simple_query(&format!(
            "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member \
             JOIN pg_roles g ON g.oid = m.roleid WHERE r.rolname = '{dated}'"
        ))
        .await?,
    );
    ensure!(
        membership == vec![vec!["rotated_user".to_string()]],
        "{dated} is in rotated_user: {membership:?}"
    );
    let inplace = wait::until("the in-place rotation", Duration::from_secs(60), || async {
        let password = secret_value(client, ns, &name("inplace-user"), "password").await?;
        Ok((password != old_inplace).then_some(password))
    })
    .await?;
    ensure!(
        secrets
            .get(&name("inplace-user"))
            .await
            .map(|s| field(&s, "username"))?
            == Some("inplace_user".into()),
        "in-place rotation keeps the user name"
    );
    wait::until(
        "the in-place password logs in",
        Duration::from_secs(60),
        || async {
            Ok(connect_as(ip, "inplace_user", &inplace, "postgres")
                .await
                .ok()
                .map(|_| ()))
        },
    )
    .await?;
    wait::until(
        "the expired dated role dropped",
        Duration::from_secs(60),
        || async {
            let left = rows(
                db.simple_query("SELECT 1 FROM pg_roles WHERE rolname = 'rotated_user240101'")
                    .await?,
            );
            Ok(left.is_empty().then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// Today as `YYMMDD` in UTC, as dated rotation roles are named.
fn today_yymmdd() -> Result<String> {
    let out = std::process::Command::new("date")
        .args(["-u", "+%y%m%d"])
        .output()
        .context("running date")?;
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}
