//! The rolling update as a pure decision: given the pods as they are (and Patroni's view of
//! the members), the one next step. Replicas are recreated first, one at a time, each back
//! and streaming before the next; then the leadership is switched over to the best
//! replica, and the old master is recreated last. A single-instance cluster has no one to
//! switch over to: its pod is recreated in place.
//!
//! Each step is taken by a separate reconcile pass, so waiting never holds a reconcile slot,
//! and every decision is made from observed state: a worker that restarts (or another that
//! takes over) continues where the rotation stood.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use pgop_common::config::OperatorConfig;
use pgop_common::crd::Postgresql;
use pgop_proto::v1::{NodeState, PodState};

use serde::Deserialize;
use serde_json::Value;

use crate::pure::builders::restart::{flag_set, TemplateHashes, ROLLING_UPDATE_FLAG};

/// One member of `GET /cluster`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Member {
    pub name: String,
    pub role: String,
    #[serde(default)]
    pub state: String,
    /// Bytes behind the leader; absent or "unknown" when Patroni cannot tell.
    #[serde(default, deserialize_with = "lag")]
    pub lag: Option<u64>,
}

fn lag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(Value::deserialize(d)?.as_u64())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No pod is outdated.
    Done,
    /// Flag these outdated pods first (Zalando's annotation), so the plan is visible on the
    /// pods and survives a change of the template before they are recreated.
    Flag(Vec<String>),
    /// Nothing to do until the cluster is whole and healthy again.
    Wait(String),
    /// Delete this pod (by name and uid); the StatefulSet recreates it from the new template.
    Recreate { pod: String, uid: String },
    /// Hand the leadership from the master to the candidate before recreating the master.
    Switchover { master: String, candidate: String },
    /// The rotation cannot go on without help (no replica to switch over to).
    Blocked(String),
}

fn is_master(pod: &PodState) -> bool {
    matches!(pod.role.as_str(), "master" | "primary")
}

/// Whether `pod` must be recreated: it carries Zalando's flag, or hashes other than the
/// template's.
pub fn outdated(pod: &PodState, desired: &TemplateHashes) -> bool {
    flagged(pod) || desired.outdated(&pod.annotations)
}

fn flagged(pod: &PodState) -> bool {
    pod.annotations
        .get(ROLLING_UPDATE_FLAG)
        .is_some_and(|v| flag_set(v))
}

/// Patroni states of a replica that follows its leader.
fn following(member: &Member) -> bool {
    matches!(member.state.as_str(), "running" | "streaming")
}

/// The member to hand the leadership to: a synchronous standby if there is one, else a
/// following replica; the least lag wins, unknown lag last; never a pod that is `leaving`.
pub fn switchover_candidate<'a>(
    members: &'a [Member],
    pods: &[&PodState],
    leaving: &dyn Fn(&PodState) -> bool,
) -> Option<&'a Member> {
    let eligible = |m: &&Member| {
        !matches!(m.role.as_str(), "leader" | "master" | "standby_leader")
            && following(m)
            && pods
                .iter()
                .any(|p| p.name == m.name && p.ready && !leaving(p))
    };
    let best = |sync: bool| {
        members
            .iter()
            .filter(eligible)
            .filter(|m| (m.role == "sync_standby") == sync)
            .min_by_key(|m| m.lag.unwrap_or(u64::MAX))
    };
    best(true).or_else(|| best(false))
}

/// The next step of the rolling update of a cluster of `instances` pods. `members` is
/// Patroni's view (None when it could not be asked); it is needed only to tell whether
/// replicas follow the leader and whom to switch over to.
pub fn next_step(
    pods: &[PodState],
    instances: u32,
    desired: &TemplateHashes,
    members: Option<&[Member]>,
) -> Step {
    plan(
        pods,
        instances,
        members,
        &|p: &PodState| outdated(p, desired),
        true,
    )
}

/// The next step of moving a cluster's pods off the nodes `leaving_node` names (drained,
/// tainted NoExecute, or without the readiness labels): the master hands over to a replica
/// on a node that stays, and each pod there is recreated elsewhere, one at a time.
pub fn next_move(
    pods: &[PodState],
    instances: u32,
    members: Option<&[Member]>,
    leaving_node: &dyn Fn(&str) -> bool,
) -> Step {
    plan(
        pods,
        instances,
        members,
        &|p: &PodState| !p.node_name.is_empty() && leaving_node(&p.node_name),
        false,
    )
}

/// The one next step that replaces every pod `leaving` says must go, keeping the cluster
/// whole: replicas first, then a switchover, then the old master. With `flag_first`, pods
/// to replace are flagged with Zalando's annotation before anything else.
fn plan(
    pods: &[PodState],
    instances: u32,
    members: Option<&[Member]>,
    leaving: &dyn Fn(&PodState) -> bool,
    flag_first: bool,
) -> Step {
    let mut live: Vec<&PodState> = pods.iter().filter(|p| !p.deleted).collect();
    live.sort_by(|a, b| a.name.cmp(&b.name));
    let stale: Vec<&PodState> = live.iter().copied().filter(|p| leaving(p)).collect();
    if stale.is_empty() {
        return Step::Done;
    }
    let unflagged: Vec<String> = stale
        .iter()
        .filter(|p| !flagged(p))
        .map(|p| p.name.clone())
        .collect();
    if flag_first && !unflagged.is_empty() {
        return Step::Flag(unflagged);
    }

    // Only a whole, healthy cluster loses a pod: not while it scales, not while a pod stops.
    if live.len() as u32 != instances {
        return Step::Wait(format!("{} of {instances} pods exist", live.len()));
    }
    if let Some(pod) = live
        .iter()
        .find(|p| !p.ready || p.role.is_empty() || p.terminating)
    {
        return Step::Wait(format!("pod {} is not ready", pod.name));
    }
    let masters: Vec<&&PodState> = live.iter().filter(|p| is_master(p)).collect();
    let [master] = masters.as_slice() else {
        return Step::Wait(format!("{} masters, waiting for one", masters.len()));
    };
    if live.len() > 1 {
        let Some(members) = members else {
            return Step::Wait("Patroni's member list is not available".into());
        };
        // Right after a switchover the labels lag behind Patroni: wait until they agree.
        if let Some(leader) = members
            .iter()
            .find(|m| matches!(m.role.as_str(), "leader" | "master") && m.name != master.name)
        {
            return Step::Wait(format!(
                "Patroni's leader is {}, the pod labelled master is {}",
                leader.name, master.name
            ));
        }
        for pod in live.iter().filter(|p| !is_master(p)) {
            match members.iter().find(|m| m.name == pod.name) {
                Some(m) if following(m) => {}
                Some(m) => {
                    return Step::Wait(format!("replica {} is {}", pod.name, m.state));
                }
                None => return Step::Wait(format!("replica {} is not a member yet", pod.name)),
            }
        }
    }

    if let Some(replica) = stale.iter().find(|p| !is_master(p)) {
        return Step::Recreate {
            pod: replica.name.clone(),
            uid: replica.uid.clone(),
        };
    }
    // Only the master is left.
    if live.len() == 1 {
        return Step::Recreate {
            pod: master.name.clone(),
            uid: master.uid.clone(),
        };
    }
    match members.and_then(|m| switchover_candidate(m, &live, leaving)) {
        Some(candidate) => Step::Switchover {
            master: master.name.clone(),
            candidate: candidate.name.clone(),
        },
        None => Step::Blocked(format!(
            "no replica of master {} can take over (none ready, following and staying)",
            master.name
        )),
    }
}

/// Whether pods must leave the node `name`: it is cordoned, has a NoExecute taint the pods
/// do not tolerate (`tolerated` says which keys they do), or lacks one of the readiness
/// labels the pods require. A node not reported (yet) is not.
pub fn leaving_node(
    nodes: &BTreeMap<String, NodeState>,
    readiness: &BTreeMap<String, String>,
    tolerated: &dyn Fn(&str) -> bool,
    name: &str,
) -> bool {
    nodes.get(name).is_some_and(|node| {
        node.unschedulable
            || node.no_execute.iter().any(|key| !tolerated(key))
            || readiness
                .iter()
                .any(|(key, value)| node.labels.get(key) != Some(value))
    })
}

/// What decides which nodes a cluster's pods must leave: the readiness labels its pods
/// require (none when `node_readiness_label_merge: OR` lets the manifest's own node affinity
/// stand instead) and the NoExecute taints its pods tolerate.
pub struct NodeRules {
    pub readiness: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
}

impl NodeRules {
    pub fn of(pg: &Postgresql, config: &OperatorConfig) -> Self {
        let or_affinity = config.node_readiness_label_merge.eq_ignore_ascii_case("OR")
            && pg.spec.node_affinity.is_some();
        Self {
            readiness: if or_affinity {
                BTreeMap::new()
            } else {
                config.node_readiness_label.clone()
            },
            tolerations: crate::pure::builders::statefulset::tolerations(pg, config)
                .unwrap_or_default(),
        }
    }

    /// Whether the pods tolerate a NoExecute taint with `key` (whatever its value).
    pub fn tolerates(&self, key: &str) -> bool {
        self.tolerations.iter().any(|t| {
            let effect = t.effect.as_deref().unwrap_or_default();
            let any_key = t.key.as_deref().unwrap_or_default().is_empty()
                && t.operator.as_deref() == Some("Exists");
            (effect.is_empty() || effect == "NoExecute")
                && (any_key || t.key.as_deref() == Some(key))
        })
    }

    /// [`leaving_node`] under these rules.
    pub fn leaving(&self, nodes: &BTreeMap<String, NodeState>, name: &str) -> bool {
        leaving_node(nodes, &self.readiness, &|key| self.tolerates(key), name)
    }
}

/// The pod's ordinal in its StatefulSet (`acid-a-2` → 2).
fn ordinal(pod: &PodState) -> Option<u32> {
    pod.name.rsplit_once('-')?.1.parse().ok()
}

/// Whether the master is among the pods a StatefulSet of `instances` pods removes.
pub fn master_leaves(pods: &[PodState], instances: u32) -> bool {
    pods.iter()
        .filter(|p| !p.deleted && is_master(p))
        .any(|p| ordinal(p).is_some_and(|o| o >= instances))
}

/// Before a StatefulSet shrinks to `instances` pods: a master among the pods about to go
/// hands the leadership to a replica that stays (Zalando's `preScaleDown`), so scaling
/// down costs a switchover, not a failover. None when the master stays (or nobody fits).
pub fn scale_down_handover(pods: &[PodState], instances: u32, members: &[Member]) -> Option<Step> {
    if !master_leaves(pods, instances) {
        return None;
    }
    let live: Vec<&PodState> = pods.iter().filter(|p| !p.deleted).collect();
    // One master, the one Patroni names leader: right after a handover the labels lag.
    let masters: Vec<&&PodState> = live.iter().filter(|p| is_master(p)).collect();
    let [master] = masters.as_slice() else {
        return None;
    };
    let leader_agrees = members
        .iter()
        .filter(|m| matches!(m.role.as_str(), "leader" | "master"))
        .all(|m| m.name == master.name);
    if !leader_agrees {
        return None;
    }
    let staying: Vec<&PodState> = live
        .iter()
        .copied()
        .filter(|p| ordinal(p).is_some_and(|o| o < instances))
        .collect();
    members
        .iter()
        .filter(|m| {
            !matches!(m.role.as_str(), "leader" | "master" | "standby_leader")
                && following(m)
                && staying.iter().any(|p| p.name == m.name && p.ready)
        })
        .min_by_key(|m| m.lag.unwrap_or(u64::MAX))
        .map(|candidate| Step::Switchover {
            master: master.name.clone(),
            candidate: candidate.name.clone(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::pure::builders::restart::RESTART_HASH_ANNOTATION;

    fn new() -> TemplateHashes {
        TemplateHashes {
            restart: "new".into(),
            images: String::new(),
            lazy_images: false,
        }
    }

    /// `name:role:hash[:flag][:notready]`
    fn pod(spec: &str) -> PodState {
        let parts: Vec<&str> = spec.split(':').collect();
        let mut pod = PodState {
            name: parts[0].into(),
            uid: format!("uid-{}", parts[0]),
            role: parts[1].into(),
            ready: !parts.contains(&"notready"),
            ..Default::default()
        };
        if !parts[2].is_empty() {
            pod.annotations
                .insert(RESTART_HASH_ANNOTATION.into(), parts[2].into());
        }
        if parts.contains(&"flag") {
            pod.annotations
                .insert(ROLLING_UPDATE_FLAG.into(), "true".into());
        }
        pod
    }

    fn member(name: &str, role: &str, state: &str, lag: Option<u64>) -> Member {
        Member {
            name: name.into(),
            role: role.into(),
            state: state.into(),
            lag,
        }
    }

    fn healthy() -> Vec<Member> {
        vec![
            member("a-0", "leader", "running", None),
            member("a-1", "replica", "streaming", Some(0)),
            member("a-2", "replica", "streaming", Some(10)),
        ]
    }

    fn recreate(name: &str) -> Step {
        Step::Recreate {
            pod: name.into(),
            uid: format!("uid-{name}"),
        }
    }

    #[test]
    fn steps() {
        let members = healthy();
        let lagging = vec![
            member("a-0", "leader", "running", None),
            member("a-1", "replica", "streaming", Some(500)),
            member("a-2", "replica", "streaming", Some(10)),
        ];
        let sync = vec![
            member("a-0", "leader", "running", None),
            member("a-1", "replica", "streaming", Some(0)),
            member("a-2", "sync_standby", "streaming", Some(90)),
        ];
        let restarting = vec![
            member("a-0", "leader", "running", None),
            member("a-1", "replica", "starting", None),
            member("a-2", "replica", "streaming", Some(0)),
        ];
        let switched = vec![
            member("a-0", "replica", "streaming", Some(0)),
            member("a-1", "leader", "running", None),
            member("a-2", "replica", "streaming", Some(0)),
        ];
        // (what, pods, instances, members, next step)
        type Case<'a> = (&'a str, Vec<&'a str>, u32, Option<&'a [Member]>, Step);
        let table: Vec<Case> = vec![
            (
                "all up to date",
                vec!["a-0:master:new", "a-1:replica:new", "a-2:replica:new"],
                3,
                Some(&members),
                Step::Done,
            ),
            (
                "pods without a hash are not pgop's to roll",
                vec!["a-0:master:", "a-1:replica:"],
                2,
                Some(&members),
                Step::Done,
            ),
            (
                "outdated pods are flagged first",
                vec!["a-0:master:old", "a-1:replica:old:flag", "a-2:replica:new"],
                3,
                Some(&members),
                Step::Flag(vec!["a-0".into()]),
            ),
            (
                "a flag set by hand rolls an up-to-date pod",
                vec!["a-0:master:new", "a-1:replica:new:flag", "a-2:replica:new"],
                3,
                Some(&members),
                recreate("a-1"),
            ),
            (
                "replicas first, in name order",
                vec![
                    "a-0:master:old:flag",
                    "a-1:replica:old:flag",
                    "a-2:replica:old:flag",
                ],
                3,
                Some(&members),
                recreate("a-1"),
            ),
            (
                "a missing pod is waited for",
                vec!["a-0:master:old:flag", "a-2:replica:old:flag"],
                3,
                Some(&members),
                Step::Wait("2 of 3 pods exist".into()),
            ),
            (
                "a pod not ready is waited for",
                vec![
                    "a-0:master:old:flag",
                    "a-1:replica:new:notready",
                    "a-2:replica:old:flag",
                ],
                3,
                Some(&members),
                Step::Wait("pod a-1 is not ready".into()),
            ),
            (
                "a pod without its role is waited for",
                vec!["a-0:master:old:flag", "a-1::new", "a-2:replica:old:flag"],
                3,
                Some(&members),
                Step::Wait("pod a-1 is not ready".into()),
            ),
            (
                "a replica that does not follow yet is waited for",
                vec![
                    "a-0:master:old:flag",
                    "a-1:replica:new",
                    "a-2:replica:old:flag",
                ],
                3,
                Some(&restarting),
                Step::Wait("replica a-1 is starting".into()),
            ),
            (
                "no member list, no step",
                vec!["a-0:master:old:flag", "a-1:replica:new"],
                2,
                None,
                Step::Wait("Patroni's member list is not available".into()),
            ),
            (
                "two masters are waited out",
                vec!["a-0:master:old:flag", "a-1:master:new"],
                2,
                Some(&members),
                Step::Wait("2 masters, waiting for one".into()),
            ),
            (
                "then the switchover, to the least lag",
                vec!["a-0:master:old:flag", "a-1:replica:new", "a-2:replica:new"],
                3,
                Some(&lagging),
                Step::Switchover {
                    master: "a-0".into(),
                    candidate: "a-2".into(),
                },
            ),
            (
                "a synchronous standby first",
                vec!["a-0:master:old:flag", "a-1:replica:new", "a-2:replica:new"],
                3,
                Some(&sync),
                Step::Switchover {
                    master: "a-0".into(),
                    candidate: "a-2".into(),
                },
            ),
            (
                "after the switchover the old master is a replica like any other",
                vec!["a-0:replica:old:flag", "a-1:master:new", "a-2:replica:new"],
                3,
                Some(&switched),
                recreate("a-0"),
            ),
            (
                "labels not yet following a switchover",
                vec!["a-0:master:old:flag", "a-1:replica:new", "a-2:replica:new"],
                3,
                Some(&switched),
                Step::Wait("Patroni's leader is a-1, the pod labelled master is a-0".into()),
            ),
            (
                "a single instance is recreated in place",
                vec!["a-0:master:old:flag"],
                1,
                None,
                recreate("a-0"),
            ),
            (
                "a replica-less master of a larger cluster waits for its replicas",
                vec!["a-0:master:old:flag"],
                2,
                Some(&members),
                Step::Wait("1 of 2 pods exist".into()),
            ),
        ];
        for (what, pods, instances, members, want) in table {
            let pods: Vec<PodState> = pods.into_iter().map(pod).collect();
            assert_eq!(next_step(&pods, instances, &new(), members), want, "{what}");
        }
    }

    #[test]
    fn no_candidate_blocks_the_master() {
        let pods: Vec<PodState> = ["a-0:master:old:flag", "a-1:replica:new"]
            .into_iter()
            .map(pod)
            .collect();
        let members = vec![
            member("a-0", "leader", "running", None),
            // Following, but an unknown member name: not one of our pods.
            member("a-1", "replica", "running", Some(0)),
        ];
        let mut stray = members.clone();
        stray[1].name = "elsewhere".into();
        assert!(matches!(
            next_step(&pods, 2, &new(), Some(&stray)),
            Step::Wait(_)
        ));
        assert_eq!(
            switchover_candidate(
                &members,
                &pods.iter().collect::<Vec<_>>(),
                &|p: &PodState| outdated(p, &new())
            )
            .map(|m| m.name.as_str()),
            Some("a-1")
        );
        // The only replica is itself outdated (flagged by hand after its recreation).
        let pods: Vec<PodState> = ["a-0:master:old:flag", "a-1:replica:new:flag"]
            .into_iter()
            .map(pod)
            .collect();
        assert_eq!(next_step(&pods, 2, &new(), Some(&members)), recreate("a-1"));
        assert!(switchover_candidate(
            &members,
            &pods.iter().collect::<Vec<_>>(),
            &|p: &PodState| outdated(p, &new())
        )
        .is_none());
        // Patroni names the only replica a standby leader (a standby cluster's view):
        // nobody to hand over to.
        let pods: Vec<PodState> = ["a-0:master:old:flag", "a-1:replica:new"]
            .into_iter()
            .map(pod)
            .collect();
        let mut confused = members.clone();
        confused[1].role = "standby_leader".into();
        assert!(matches!(
            next_step(&pods, 2, &new(), Some(&confused)),
            Step::Blocked(_)
        ));
    }

    #[test]
    fn a_master_about_to_go_hands_over_first() {
        let pods: Vec<PodState> = ["a-0:replica:new", "a-1:replica:new", "a-2:master:new"]
            .into_iter()
            .map(pod)
            .collect();
        let members = vec![
            member("a-0", "replica", "streaming", Some(40)),
            member("a-1", "replica", "streaming", Some(0)),
            member("a-2", "leader", "running", None),
        ];
        assert_eq!(
            scale_down_handover(&pods, 2, &members),
            Some(Step::Switchover {
                master: "a-2".into(),
                candidate: "a-1".into()
            })
        );
        assert_eq!(
            scale_down_handover(&pods, 1, &members),
            Some(Step::Switchover {
                master: "a-2".into(),
                candidate: "a-0".into()
            }),
            "only a pod that stays can take over"
        );
        assert_eq!(
            scale_down_handover(&pods, 3, &members),
            None,
            "no scale-down"
        );
        let master_stays: Vec<PodState> = ["a-0:master:new", "a-1:replica:new", "a-2:replica:new"]
            .into_iter()
            .map(pod)
            .collect();
        assert_eq!(scale_down_handover(&master_stays, 2, &members), None);
    }

    #[test]
    fn pods_leave_draining_nodes_master_last() {
        let on = |spec: &str, node: &str| {
            let mut p = pod(spec);
            p.node_name = node.into();
            p
        };
        let pods = vec![
            on("a-0:master:h", "n1"),
            on("a-1:replica:h", "n2"),
            on("a-2:replica:h", "n3"),
        ];
        let members = healthy();
        let draining = |names: &'static [&'static str]| move |n: &str| names.contains(&n);
        assert_eq!(
            next_move(&pods, 3, Some(&members), &draining(&[])),
            Step::Done
        );
        assert_eq!(
            next_move(&pods, 3, Some(&members), &draining(&["n3"])),
            recreate("a-2"),
            "a replica on a leaving node is recreated elsewhere, no flag first"
        );
        assert_eq!(
            next_move(&pods, 3, Some(&members), &draining(&["n1"])),
            Step::Switchover {
                master: "a-0".into(),
                candidate: "a-1".into()
            },
            "the master hands over to the best replica that stays"
        );
        assert_eq!(
            next_move(&pods, 3, Some(&members), &draining(&["n1", "n2"])),
            recreate("a-1"),
            "replicas first"
        );
        assert!(matches!(
            next_move(&pods[..2], 2, Some(&members[..2]), &draining(&["n1", "n2"])),
            Step::Recreate { .. }
        ));
        let all = next_move(&pods[..2], 2, Some(&members[..2]), &draining(&["n1"]));
        assert_eq!(
            all,
            Step::Switchover {
                master: "a-0".into(),
                candidate: "a-1".into()
            }
        );
        let alone = vec![on("a-0:master:h", "n1")];
        assert_eq!(
            next_move(&alone, 1, None, &draining(&["n1"])),
            recreate("a-0"),
            "a single instance moves with downtime"
        );
    }

    #[test]
    fn nodes_pods_must_leave() {
        let node =
            |name: &str, unschedulable: bool, no_execute: &[&str], labels: &[(&str, &str)]| {
                (
                    name.to_string(),
                    NodeState {
                        name: name.into(),
                        unschedulable,
                        no_execute: no_execute.iter().map(|k| k.to_string()).collect(),
                        labels: labels
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        deleted: false,
                    },
                )
            };
        let nodes: BTreeMap<String, NodeState> = [
            node("ready", false, &[], &[("lifecycle", "ready")]),
            node("cordoned", true, &[], &[("lifecycle", "ready")]),
            node(
                "tainted",
                false,
                &["maintenance"],
                &[("lifecycle", "ready")],
            ),
            node("dedicated", false, &["postgres"], &[("lifecycle", "ready")]),
            node("unlabelled", false, &[], &[]),
        ]
        .into();
        let readiness = BTreeMap::from([("lifecycle".to_string(), "ready".to_string())]);
        let none = BTreeMap::new();
        // The pods tolerate the taint `postgres` (dedicated nodes).
        let tolerated = |key: &str| key == "postgres";
        for (name, with_label, without) in [
            ("ready", false, false),
            ("cordoned", true, true),
            ("tainted", true, true),
            ("dedicated", false, false),
            ("unlabelled", true, false),
            ("unknown", false, false),
        ] {
            assert_eq!(
                leaving_node(&nodes, &readiness, &tolerated, name),
                with_label,
                "{name}"
            );
            assert_eq!(
                leaving_node(&nodes, &none, &tolerated, name),
                without,
                "{name} without readiness labels"
            );
        }
    }

    #[test]
    fn node_rules_follow_the_manifest() {
        let spec = |extra: &str| {
            crate::pure::roles::desired::tests::manifest(
                "acid-n",
                &format!("  teamId: acid\n  numberOfInstances: 1\n  volume: {{size: 1Gi}}\n  postgresql: {{version: \"15\"}}\n{extra}"),
            )
        };
        let config = OperatorConfig {
            node_readiness_label: BTreeMap::from([("ready".to_string(), "true".to_string())]),
            ..OperatorConfig::default()
        };
        let tolerant =
            spec("  tolerations:\n  - {key: postgres, operator: Exists, effect: NoExecute}\n");
        let rules = NodeRules::of(&tolerant, &config);
        assert!(rules.tolerates("postgres") && !rules.tolerates("maintenance"));
        assert_eq!(rules.readiness.len(), 1);
        let affinity = spec("  nodeAffinity:\n    requiredDuringSchedulingIgnoredDuringExecution:\n      nodeSelectorTerms:\n      - matchExpressions:\n        - {key: disk, operator: In, values: [ssd]}\n");
        let or = OperatorConfig {
            node_readiness_label_merge: "OR".into(),
            ..config.clone()
        };
        assert!(
            NodeRules::of(&affinity, &or).readiness.is_empty(),
            "with OR the manifest's affinity may place pods on unlabelled nodes"
        );
        let and = OperatorConfig {
            node_readiness_label_merge: "AND".into(),
            ..config.clone()
        };
        assert_eq!(NodeRules::of(&affinity, &and).readiness.len(), 1);
    }
}
