//! The `PostgresClusterStatus` a reconcile leads to, as Zalando's operator writes it. Pure,
//! so every transition is table-tested.
use pgop_common::crd::cluster_status as s;
use pgop_proto::v1::PodState;

/// How one reconcile ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncResult {
    /// Every object is as desired; `pods_ready` when the pods carry their roles.
    Synced { pods_ready: bool },
    /// The objects are as desired and a change is being rolled out to the pods.
    Updating(String),
    /// The manifest cannot be acted on; a user has to change it.
    Invalid(String),
    /// A step failed; it is retried.
    Failed(String),
}

/// True until the cluster has been Running once: failures then read CreateFailed.
fn still_creating(previous: &str) -> bool {
    matches!(previous, "" | s::CREATING | s::CREATE_FAILED | s::INVALID)
}

pub fn next_status(previous: &str, result: &SyncResult) -> &'static str {
    match result {
        SyncResult::Invalid(_) => s::INVALID,
        SyncResult::Failed(_) if still_creating(previous) => s::CREATE_FAILED,
        SyncResult::Failed(_) if previous == s::UPDATING => s::UPDATE_FAILED,
        SyncResult::Failed(_) => s::SYNC_FAILED,
        SyncResult::Synced { pods_ready: false } | SyncResult::Updating(_)
            if still_creating(previous) =>
        {
            s::CREATING
        }
        SyncResult::Updating(_) => s::UPDATING,
        SyncResult::Synced { .. } => s::RUNNING,
    }
}

fn is_master(role: &str) -> bool {
    matches!(role, "master" | "primary")
}

/// All `instances` pods exist and carry a role label, exactly one of them the master.
pub fn pods_ready(pods: &[&PodState], instances: u32) -> bool {
    let live: Vec<_> = pods.iter().filter(|p| !p.deleted).collect();
    let with_role = live.iter().filter(|p| !p.role.is_empty()).count();
    let masters = live.iter().filter(|p| is_master(&p.role)).count();
    instances == 0 || (with_role >= instances as usize && masters == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        let synced = SyncResult::Synced { pods_ready: true };
        let starting = SyncResult::Synced { pods_ready: false };
        let failed = SyncResult::Failed("x".into());
        let invalid = SyncResult::Invalid("x".into());
        let updating = SyncResult::Updating("x".into());
        let table: &[(&str, &SyncResult, &str)] = &[
            ("", &starting, s::CREATING),
            ("", &synced, s::RUNNING),
            ("", &failed, s::CREATE_FAILED),
            ("", &invalid, s::INVALID),
            (s::CREATING, &starting, s::CREATING),
            (s::CREATING, &synced, s::RUNNING),
            (s::CREATE_FAILED, &starting, s::CREATING),
            (s::INVALID, &starting, s::CREATING),
            (s::RUNNING, &starting, s::RUNNING),
            (s::RUNNING, &failed, s::SYNC_FAILED),
            (s::RUNNING, &invalid, s::INVALID),
            (s::UPDATING, &failed, s::UPDATE_FAILED),
            (s::SYNC_FAILED, &starting, s::RUNNING),
            (s::SYNC_FAILED, &failed, s::SYNC_FAILED),
            (s::RUNNING, &updating, s::UPDATING),
            (s::SYNC_FAILED, &updating, s::UPDATING),
            (s::UPDATE_FAILED, &updating, s::UPDATING),
            (s::CREATING, &updating, s::CREATING),
            (s::UPDATING, &updating, s::UPDATING),
            (s::UPDATING, &synced, s::RUNNING),
            (s::UPDATING, &starting, s::RUNNING),
        ];
        for (previous, result, want) in table {
            assert_eq!(
                next_status(previous, result),
                *want,
                "{previous:?} + {result:?}"
            );
        }
    }

    fn pod(name: &str, role: &str, deleted: bool) -> PodState {
        PodState {
            name: name.into(),
            role: role.into(),
            deleted,
            ..Default::default()
        }
    }

    #[test]
    fn readiness_needs_every_pod_with_a_role_and_one_master() {
        // (role, deleted) per pod, instances, ready?
        type Case<'a> = (&'a [(&'a str, bool)], u32, bool);
        let table: &[Case] = &[
            (&[("master", false), ("replica", false)], 2, true),
            (&[("primary", false), ("replica", false)], 2, true),
            (&[("master", false), ("", false)], 2, false),
            (&[("master", false)], 2, false),
            (&[("replica", false), ("replica", false)], 2, false),
            (&[("master", false), ("master", false)], 2, false),
            (&[("master", false), ("replica", true)], 2, false),
            (&[], 0, true),
            (
                &[("master", false), ("replica", false), ("replica", false)],
                2,
                true,
            ),
        ];
        for (pods, instances, want) in table {
            let pods: Vec<PodState> = pods
                .iter()
                .enumerate()
                .map(|(i, (role, deleted))| pod(&format!("p{i}"), role, *deleted))
                .collect();
            let refs: Vec<&PodState> = pods.iter().collect();
            assert_eq!(
                pods_ready(&refs, *instances),
                *want,
                "{pods:?} / {instances}"
            );
        }
    }
}
