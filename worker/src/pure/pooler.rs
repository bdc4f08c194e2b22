//! The connection poolers a manifest asks for and the role they log in as: what the pooler's
//! objects (`builders::pooler`) and the cluster's roles (`roles`) both go by.
use pgop_common::config::OperatorConfig;
use pgop_common::crd::{ConnectionPooler, Postgresql};

/// Which Service a pooler sits in front of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PoolerRole {
    Master,
    Replica,
}

impl PoolerRole {
    pub const ALL: [PoolerRole; 2] = [PoolerRole::Master, PoolerRole::Replica];

    /// `master` or `replica`: the value of the pod role label on the pooler's objects and
    /// the role argument of the cluster's Service builders.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolerRole::Master => "master",
            PoolerRole::Replica => "replica",
        }
    }
}

/// Whether the manifest asks for the pooler of `role` (Zalando's
/// `needMasterConnectionPoolerWorker` / `needReplicaConnectionPoolerWorker`). The operator
/// configuration has no say.
pub fn pooler_enabled(pg: &Postgresql, _config: &OperatorConfig, role: PoolerRole) -> bool {
    let spec = &pg.spec;
    match role {
        PoolerRole::Master => match spec.enable_connection_pooler {
            Some(enabled) => enabled,
            None => spec.connection_pooler.is_some(),
        },
        PoolerRole::Replica => spec.enable_replica_connection_pooler == Some(true),
    }
}

/// The role the poolers log in as, when any pooler is enabled: `connectionPooler.user`,
/// else `connection_pooler_user`. As in Zalando, a manifest naming the superuser, the
/// replication user or a protected role gets `connection_pooler_user` instead.
pub fn pooler_user(pg: &Postgresql, config: &OperatorConfig) -> Option<String> {
    PoolerRole::ALL
        .into_iter()
        .any(|role| pooler_enabled(pg, config, role))
        .then(|| effective_user(pg, config))
}

/// The schema of pgbouncer's lookup function: the manifest's `connectionPooler.schema`,
/// else `connection_pooler_schema`.
pub fn pooler_schema(pg: &Postgresql, config: &OperatorConfig) -> String {
    section(pg)
        .and_then(|s| s.schema.clone())
        .filter(|schema| !schema.is_empty())
        .unwrap_or_else(|| config.connection_pooler_schema.clone())
}

pub(crate) fn effective_user(pg: &Postgresql, config: &OperatorConfig) -> String {
    let reserved = |user: &String| {
        *user == config.super_username
            || *user == config.replication_username
            || config.protected_role_names.contains(user)
    };
    section(pg)
        .and_then(|s| s.user.clone())
        .filter(|user| !user.is_empty() && !reserved(user))
        .unwrap_or_else(|| config.connection_pooler_user.clone())
}

pub(crate) fn section(pg: &Postgresql) -> Option<&ConnectionPooler> {
    pg.spec.connection_pooler.as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::builders::labels::{MASTER_ROLE, REPLICA_ROLE};

    #[test]
    fn pooler_roles_are_the_pod_role_label_values() {
        assert_eq!(PoolerRole::Master.as_str(), MASTER_ROLE);
        assert_eq!(PoolerRole::Replica.as_str(), REPLICA_ROLE);
    }
}
