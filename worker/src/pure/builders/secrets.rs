//! Credentials Secrets: one per Postgres role that logs in with a password, named by
//! `secret_name_template` as Zalando names them, so that applications keep finding them.
//!
//! The roles are those of [`crate::pure::roles::desired::secret_users`]: the superuser, the
//! replication user, the manifest users that log in and the login users of prepared
//! databases (`<db>_owner_user`, …, with `defaultUsers`).
//!
//! With `enable_cross_namespace_secret`, the Secret of a manifest user named
//! `namespace.user` lives in `namespace`, and those of a prepared database's default users
//! in its `secretNamespace` (without owner references, which cannot cross namespaces); the
//! role keeps its full name. Infrastructure roles get no Secret (theirs is the source).
//! The connection pooler's Secret is created with the pooler.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use pgop_common::config::OperatorConfig;
use pgop_common::crd::Postgresql;

use super::labels::{inherited_annotations, object_labels};
use super::{cluster_name, non_empty, object_meta};

/// `{tprkind}` of the secret name template.
const CRD_KIND: &str = "postgresql";
/// `{tprgroup}` of the secret name template.
const CRD_GROUP: &str = "acid.zalan.do";

/// The roles that get a credentials Secret: the superuser, the replication user, the
/// manifest's login users in name order, then the login users of prepared databases in
/// name order. Like Zalando, manifest users that redefine a system or protected role, or
/// cannot log in (`NOLOGIN`), get none; neither do users pgop refuses (invalid names or
/// flags).
pub fn credential_users(pg: &Postgresql, config: &OperatorConfig) -> Vec<String> {
    crate::pure::roles::desired::secret_users(pg, config)
}

/// Where one role's credentials Secret lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSecret {
    pub user: String,
    pub namespace: String,
    pub name: String,
}

/// The credentials Secrets of [`credential_users`], each with its namespace and name.
pub fn credential_secrets(pg: &Postgresql, config: &OperatorConfig) -> Vec<CredentialSecret> {
    credential_users(pg, config)
        .into_iter()
        .map(|user| credential_secret(pg, config, &user))
        .collect()
}

/// The Secret of `user` (any role, including the pooler's).
pub fn credential_secret(pg: &Postgresql, config: &OperatorConfig, user: &str) -> CredentialSecret {
    CredentialSecret {
        namespace: secret_namespace(pg, config, user),
        name: secret_name(config, user, cluster_name(pg)),
        user: user.to_string(),
    }
}

/// The namespace of `user`'s Secret: the cluster's unless `enable_cross_namespace_secret`
/// names another one (a `namespace.user` manifest user; a default user of a prepared
/// database with `secretNamespace`, matched by the longest database prefix).
fn secret_namespace(pg: &Postgresql, config: &OperatorConfig, user: &str) -> String {
    let own = pg.metadata.namespace.clone().unwrap_or_default();
    if !config.enable_cross_namespace_secret {
        return own;
    }
    if pg.spec.users.contains_key(user) {
        return match user.split_once('.') {
            Some((namespace, _)) if !namespace.is_empty() => namespace.to_string(),
            _ => own,
        };
    }
    crate::pure::roles::desired::prepared_databases(pg)
        .into_iter()
        .filter(|(db, _)| user.starts_with(&format!("{db}_")))
        .max_by_key(|(db, _)| db.len())
        .and_then(|(_, spec)| spec.secret_namespace)
        .filter(|namespace| !namespace.is_empty())
        .unwrap_or(own)
}

/// The name of `username`'s credentials Secret in `cluster`. Underscores become dashes, as
/// Secret names do not allow them.
pub fn secret_name(config: &OperatorConfig, username: &str, cluster: &str) -> String {
    config
        .secret_name_template
        .replace("{username}", &username.replace('_', "-"))
        .replace("{cluster}", cluster)
        .replace("{tprkind}", CRD_KIND)
        .replace("{tprgroup}", CRD_GROUP)
}

/// The credentials Secret of `username`: type Opaque, keys `username` and `password` in
/// `data` (what the API server returns, so a read-back compares equal; `stringData` is
/// write-only). The caller creates it only when absent and never overwrites a password.
pub fn desired_secret(
    pg: &Postgresql,
    config: &OperatorConfig,
    target: &CredentialSecret,
    password: &str,
) -> Secret {
    let username = target.user.as_str();
    let mut metadata = object_meta(pg, target.name.clone());
    metadata.labels = Some(object_labels(pg, config));
    metadata.annotations = non_empty(inherited_annotations(pg, config));
    if metadata.namespace.as_deref() == Some(target.namespace.as_str()) {
        metadata.owner_references = super::labels::owner_references(pg, config);
    } else {
        metadata.namespace = Some(target.namespace.clone());
    }
    let data = BTreeMap::from([
        (
            "username".to_string(),
            ByteString(username.as_bytes().to_vec()),
        ),
        (
            "password".to_string(),
            ByteString(password.as_bytes().to_vec()),
        ),
    ]);
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::builders::labels::tests::{manifest, minimal};

    #[test]
    fn secret_names() {
        let default = OperatorConfig::default();
        let custom = OperatorConfig {
            secret_name_template: "{cluster}-{username}-secret".into(),
            ..OperatorConfig::default()
        };
        let cases = [
            (
                &default,
                "postgres",
                "postgres.acid-minimal-cluster.credentials.postgresql.acid.zalan.do",
            ),
            (
                &default,
                "foo_user",
                "foo-user.acid-minimal-cluster.credentials.postgresql.acid.zalan.do",
            ),
            (
                &default,
                "a_b_c",
                "a-b-c.acid-minimal-cluster.credentials.postgresql.acid.zalan.do",
            ),
            (&custom, "foo_user", "acid-minimal-cluster-foo-user-secret"),
        ];
        for (config, user, want) in cases {
            assert_eq!(
                secret_name(config, user, "acid-minimal-cluster"),
                want,
                "{user}"
            );
        }
    }

    #[test]
    fn users_with_credentials() {
        let pg = manifest(
            "acid-users",
            "  teamId: acid\n  numberOfInstances: 1\n  volume: {size: 1Gi}\n  postgresql: {version: \"15\"}\n  users:\n    zalando: [superuser, createdb]\n    foo_user: []\n    app_reader: [NOLOGIN]\n    admin: []\n    standby: [replication]\n",
        );
        let cases: &[(OperatorConfig, &[&str])] = &[
            (
                OperatorConfig::default(),
                &["postgres", "standby", "foo_user", "zalando"],
            ),
            (
                OperatorConfig {
                    super_username: "root".into(),
                    protected_role_names: vec![],
                    ..OperatorConfig::default()
                },
                &["root", "standby", "admin", "foo_user", "zalando"],
            ),
        ];
        for (config, want) in cases {
            assert_eq!(credential_users(&pg, config), *want);
        }
        assert_eq!(
            credential_users(&minimal(), &OperatorConfig::default()),
            ["postgres", "standby"]
        );
        let prepared = manifest(
            "acid-prepared",
            "  teamId: acid\n  numberOfInstances: 1\n  volume: {size: 1Gi}\n  postgresql: {version: \"15\"}\n  users:\n    app: []\n    Bad: []\n  preparedDatabases:\n    foo:\n      defaultUsers: true\n    bar: {}\n",
        );
        assert_eq!(
            credential_users(&prepared, &OperatorConfig::default()),
            [
                "postgres",
                "standby",
                "app",
                "foo_owner_user",
                "foo_reader_user",
                "foo_writer_user"
            ]
        );
        assert_eq!(
            secret_name(
                &OperatorConfig::default(),
                "foo_owner_user",
                "acid-prepared"
            ),
            "foo-owner-user.acid-prepared.credentials.postgresql.acid.zalan.do"
        );
    }

    #[test]
    fn secret_object() {
        let config = OperatorConfig::default();
        let target = credential_secret(&minimal(), &config, "foo_user");
        let secret = desired_secret(&minimal(), &config, &target, "s3cr3t");
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some("foo-user.acid-minimal-cluster.credentials.postgresql.acid.zalan.do")
        );
        assert_eq!(secret.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        assert_eq!(
            secret.metadata.labels.as_ref().unwrap().get("team"),
            Some(&"ACID".to_string())
        );
        let data = secret.data.unwrap();
        assert_eq!(data["username"].0, b"foo_user");
        assert_eq!(data["password"].0, b"s3cr3t");
        assert!(secret.string_data.is_none());
    }

    #[test]
    fn cross_namespace_secrets() {
        let pg = manifest(
            "acid-x",
            "  teamId: acid\n  numberOfInstances: 1\n  volume: {size: 1Gi}\n  postgresql: {version: \"15\"}\n  users:\n    appspace.db_user: []\n    plain: []\n  preparedDatabases:\n    foo:\n      defaultUsers: true\n      secretNamespace: apps\n    foo_bar:\n      defaultUsers: true\n",
        );
        let place = |config: &OperatorConfig| -> Vec<(String, String)> {
            credential_secrets(&pg, config)
                .into_iter()
                .map(|s| (s.user, s.namespace))
                .collect()
        };
        let on = OperatorConfig {
            enable_cross_namespace_secret: true,
            ..OperatorConfig::default()
        };
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(u, n)| (u.to_string(), n.to_string()))
                .collect()
        };
        assert_eq!(
            place(&on),
            pairs(&[
                ("postgres", "default"),
                ("standby", "default"),
                ("appspace.db_user", "appspace"),
                ("plain", "default"),
                ("foo_bar_owner_user", "default"),
                ("foo_bar_reader_user", "default"),
                ("foo_bar_writer_user", "default"),
                ("foo_owner_user", "apps"),
                ("foo_reader_user", "apps"),
                ("foo_writer_user", "apps"),
            ])
        );
        // Off: everything in the cluster's namespace, the role keeps its dotted name.
        assert!(place(&OperatorConfig::default())
            .iter()
            .all(|(_, n)| n == "default"));

        let target = credential_secret(&pg, &on, "appspace.db_user");
        assert_eq!(
            target.name,
            "appspace.db-user.acid-x.credentials.postgresql.acid.zalan.do"
        );
        let secret = desired_secret(&pg, &on, &target, "pw");
        assert_eq!(secret.metadata.namespace.as_deref(), Some("appspace"));
        assert!(secret.metadata.owner_references.is_none());
        assert_eq!(secret.data.unwrap()["username"].0, b"appspace.db_user");
        let local = desired_secret(&pg, &on, &credential_secret(&pg, &on, "plain"), "pw");
        assert_eq!(local.metadata.namespace.as_deref(), Some("default"));
    }
}
