//! Credentials Secrets: one per Postgres role that logs in with a password, named by
//! `secret_name_template` as Zalando names them, so that applications keep finding them.
//!
//! The roles are those of [`crate::roles::desired::secret_users`]: the superuser, the
//! replication user, the manifest users that log in and the login users of prepared
//! databases (`<db>_owner_user`, …, with `defaultUsers`).
//!
//! Not covered yet (Zalando creates these too): infrastructure roles, cross-namespace
//! secrets of `namespace.role` users and of `preparedDatabases.secretNamespace`, and
//! password rotation. The connection pooler's Secret is created with the pooler.
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
    crate::roles::desired::secret_users(pg, config)
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
    username: &str,
    password: &str,
) -> Secret {
    let mut metadata = object_meta(pg, secret_name(config, username, cluster_name(pg)));
    metadata.labels = Some(object_labels(pg, config));
    metadata.annotations = non_empty(inherited_annotations(pg, config));
    metadata.owner_references = super::labels::owner_references(pg, config);
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
    use crate::builders::labels::tests::{manifest, minimal};

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
        let secret = desired_secret(&minimal(), &config, "foo_user", "s3cr3t");
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
}
