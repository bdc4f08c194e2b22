//! Carries out the rolling update's next step ([`crate::pure::rolling::next_step`]) for one
//! cluster: flag outdated pods, recreate one pod, or switch the leadership over. One step
//! per reconcile pass; the pass after it sees the result in the pods' events.
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::Api;
use pgop_proto::v1::PodState;
use pgop_proto::v1::{worker_message, RollingTurn, WorkerMessage};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::clients::apply::FIELD_MANAGER;
use crate::clients::patroni::Member;
use crate::clients::patroni::PatroniError;
use crate::cluster::context::Context;
use crate::pure::builders::restart::{TemplateHashes, ROLLING_UPDATE_FLAG};
use crate::pure::rolling::{master_leaves, next_move, next_step, scale_down_handover, Step};

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("rolling update: {what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("rolling update: {0}")]
    Patroni(#[from] PatroniError),
    #[error("rolling update blocked: {0}")]
    Blocked(String),
    #[error("rolling update stuck for {}s: {reason}", .waited.as_secs())]
    Stuck { reason: String, waited: Duration },
}

/// Where the rolling update of a cluster stands after this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollingProgress {
    /// No pod is outdated.
    Done,
    /// A step was taken (described).
    Acted(String),
    /// Waiting for the cluster (described); bounded by the timeout.
    Waiting(String),
    /// Held back until a maintenance window (described); not bounded.
    Held(String),
}

/// What the pods of a cluster should be: `instances` pods from the template with
/// `template`'s hashes, none on a node `leaving_node` names.
pub struct PodGoal<'a> {
    pub pods: &'a [PodState],
    pub instances: u32,
    pub template: &'a TemplateHashes,
    pub leaving_node: &'a (dyn Fn(&str) -> bool + Sync),
    /// A master may move off its node now (a maintenance window is open, or none is set).
    pub window_open: bool,
    /// How long one wait may last before it is reported as stuck.
    pub timeout: Duration,
}

/// The cluster's turn among the fleet's rolling updates (the scheduler grants them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    None,
    Asked,
    Granted,
}

/// What a cluster task keeps between passes of its rolling update.
pub struct Rollout {
    cluster: String,
    /// Where turns are asked for and given back: the scheduler session.
    outbound: mpsc::UnboundedSender<WorkerMessage>,
    turn: Turn,
    /// The pod (name, uid) last deleted: until it is gone, it is not deleted again.
    recreating: Option<(String, String)>,
    /// What the rotation waits for, and since when.
    waiting: Option<(String, Instant)>,
}

impl Drop for Rollout {
    /// A task that ends (released, deleted, fenced) gives its turn back.
    fn drop(&mut self) {
        self.give_turn_back();
    }
}

impl Rollout {
    pub fn new(cluster: String, outbound: mpsc::UnboundedSender<WorkerMessage>) -> Self {
        Self {
            cluster,
            outbound,
            turn: Turn::None,
            recreating: None,
            waiting: None,
        }
    }

    /// Takes the next step towards `goal`; waiting for the same thing longer than its
    /// timeout is an error (the replacement goes on at the next pass all the same).
    pub async fn advance(
        &mut self,
        ctx: &Context,
        reference: &ObjectReference,
        goal: &PodGoal<'_>,
    ) -> Result<RollingProgress, RolloutError> {
        let progress = match self.step(ctx, reference, goal).await {
            Ok(progress) => progress,
            Err(e) => {
                // A blocked or failing rotation does not keep the fleet's turn from others.
                self.give_turn_back();
                return Err(e);
            }
        };
        let RollingProgress::Waiting(reason) = &progress else {
            self.waiting = None;
            return Ok(progress);
        };
        let since = match &self.waiting {
            Some((waited_for, since)) if waited_for == reason => *since,
            _ => self.waiting.insert((reason.clone(), Instant::now())).1,
        };
        if since.elapsed() > goal.timeout {
            self.waiting = None;
            self.give_turn_back();
            return Err(RolloutError::Stuck {
                reason: reason.clone(),
                waited: since.elapsed(),
            });
        }
        Ok(progress)
    }

    async fn step(
        &mut self,
        ctx: &Context,
        reference: &ObjectReference,
        goal: &PodGoal<'_>,
    ) -> Result<RollingProgress, RolloutError> {
        let PodGoal {
            pods,
            instances,
            template,
            leaving_node,
            window_open,
            ..
        } = *goal;
        // Rolling updates first; moves off leaving nodes once the pods are up to date.
        let plan = |members: Option<&[Member]>| match next_step(pods, instances, template, members)
        {
            Step::Done => (Why::Move, next_move(pods, instances, members, leaving_node)),
            step => (Why::Update, step),
        };
        // Most passes find nothing to do: no Patroni request for those.
        let (why, step) = plan(None);
        if step == Step::Done {
            self.give_turn_back();
            self.recreating = None;
            return Ok(RollingProgress::Done);
        }
        // A rolling update waits for the cluster's turn before anything else (the grant
        // wakes the task); flagging the pods needs none.
        if why == Why::Update && !matches!(step, Step::Flag(_)) && !self.take_turn() {
            return Ok(no_turn());
        }
        if let Some((name, uid)) = &self.recreating {
            if pods.iter().any(|p| &p.name == name && &p.uid == uid) {
                return Ok(RollingProgress::Waiting(format!(
                    "pod {name} is being recreated"
                )));
            }
            self.recreating = None;
        }
        let live = pods.iter().filter(|p| !p.deleted);
        let members = match master_address(pods) {
            Some(address) if live.count() > 1 => ctx.patroni.members(&address).await.ok(),
            _ => None,
        };
        let namespace = reference.namespace.clone().unwrap_or_default();
        let (why, step) = plan(members.as_deref());
        match step {
            Step::Done => {
                self.give_turn_back();
                Ok(RollingProgress::Done)
            }
            Step::Flag(names) => {
                flag(ctx, &namespace, &names).await?;
                Ok(RollingProgress::Acted(format!(
                    "pods to recreate: {}",
                    names.join(", ")
                )))
            }
            Step::Wait(reason) => Ok(RollingProgress::Waiting(reason)),
            Step::Blocked(reason) => Err(RolloutError::Blocked(reason)),
            Step::Recreate { pod, uid } => {
                // Moving off a leaving node does not wait for the rolling updates' turns.
                if why == Why::Update && !self.take_turn() {
                    return Ok(no_turn());
                }
                let is_master = pods
                    .iter()
                    .any(|p| p.name == pod && matches!(p.role.as_str(), "master" | "primary"));
                if why == Why::Move && is_master && !window_open {
                    return Ok(RollingProgress::Held(format!(
                        "moving master {pod} off its node waits for the maintenance window"
                    )));
                }
                self.recreate(ctx, &namespace, &pod, uid).await?;
                let note = match why {
                    Why::Update => format!("recreating pod {pod} from the new template"),
                    Why::Move => format!("recreating pod {pod} to move it off its node"),
                };
                ctx.event(reference, why.reason(), note.clone()).await;
                Ok(RollingProgress::Acted(note))
            }
            Step::Switchover { master, candidate } => {
                if why == Why::Update && !self.take_turn() {
                    return Ok(no_turn());
                }
                if why == Why::Move && !window_open {
                    return Ok(RollingProgress::Held(format!(
                        "moving master {master} off its node waits for the maintenance window"
                    )));
                }
                let address = pods
                    .iter()
                    .find(|p| p.name == master)
                    .map(|p| p.pod_ip.clone())
                    .unwrap_or_default();
                ctx.patroni
                    .switchover(&address, &master, &candidate)
                    .await?;
                let note = format!("switched over from {master} to {candidate}");
                ctx.event(reference, why.reason(), note.clone()).await;
                Ok(RollingProgress::Acted(note))
            }
        }
    }

    /// Before the StatefulSet shrinks to `instances` pods: when the master is among the
    /// pods about to go, hand its leadership to a replica that stays. Some(what was done).
    pub async fn hand_over_before_scale_down(
        &mut self,
        ctx: &Context,
        reference: &ObjectReference,
        pods: &[PodState],
        instances: u32,
    ) -> Result<Option<String>, RolloutError> {
        let live = pods.iter().filter(|p| !p.deleted).count() as u32;
        let Some(address) = master_address(pods).filter(|_| live > instances) else {
            return Ok(None);
        };
        // Only a master about to go costs a Patroni request.
        if !master_leaves(pods, instances) {
            return Ok(None);
        }
        let members = ctx.patroni.members(&address).await?;
        let Some(Step::Switchover { master, candidate }) =
            scale_down_handover(pods, instances, &members)
        else {
            // No replica that stays is ready and following yet, or the labels still lag
            // behind Patroni: the next pass looks again.
            return Ok(Some(
                "scaling down waits for a replica that stays to take over from the master".into(),
            ));
        };
        ctx.patroni
            .switchover(&address, &master, &candidate)
            .await?;
        let note = format!("switched over from {master} to {candidate} before scaling down");
        ctx.event(reference, "ScaleDown", note.clone()).await;
        Ok(Some(note))
    }

    /// The cluster's turn among the fleet's rolling updates; false while it must wait (the
    /// scheduler's grant wakes the task).
    fn take_turn(&mut self) -> bool {
        if self.turn == Turn::None {
            self.send_turn(false);
            self.turn = Turn::Asked;
        }
        self.turn == Turn::Granted
    }

    /// The scheduler granted the cluster's turn.
    pub fn granted(&mut self) {
        self.turn = Turn::Granted;
    }

    pub fn give_turn_back(&mut self) {
        if self.turn != Turn::None {
            self.send_turn(true);
            self.turn = Turn::None;
        }
    }

    fn send_turn(&self, done: bool) {
        // A closed session fences the worker: its turns end with it at the scheduler.
        let _ = self.outbound.send(WorkerMessage {
            message: Some(worker_message::Message::RollingTurn(RollingTurn {
                cluster: self.cluster.clone(),
                done,
            })),
        });
    }

    async fn recreate(
        &mut self,
        ctx: &Context,
        namespace: &str,
        pod: &str,
        uid: String,
    ) -> Result<(), RolloutError> {
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
        let params = DeleteParams {
            // A pod recreated meanwhile (same name, new uid) is not touched.
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(pod, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409) => {}
            Err(source) => {
                return Err(RolloutError::Kube {
                    what: format!("deleting pod {pod}"),
                    source,
                })
            }
        }
        self.recreating = Some((pod.to_string(), uid));
        Ok(())
    }
}

/// Why pods are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// Their template changed.
    Update,
    /// Their node is drained, tainted NoExecute or lost its readiness labels.
    Move,
}

impl Why {
    fn reason(self) -> &'static str {
        match self {
            Why::Update => "RollingUpdate",
            Why::Move => "NodeDecommission",
        }
    }
}

fn no_turn() -> RollingProgress {
    RollingProgress::Held(
        "waiting for a turn: the fleet's limit of clusters replacing pods at once is reached"
            .into(),
    )
}

/// Sets Zalando's rolling-update flag on the pods `names`.
async fn flag(ctx: &Context, namespace: &str, names: &[String]) -> Result<(), RolloutError> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    for name in names {
        let patch = Pod {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([(
                    ROLLING_UPDATE_FLAG.to_string(),
                    "true".to_string(),
                )])),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        };
        match api.patch(name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => {}
            // Gone meanwhile: its replacement comes from the new template.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(RolloutError::Kube {
                    what: format!("flagging pod {name}"),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// The address of the pod labelled master.
pub fn master_address(pods: &[PodState]) -> Option<String> {
    pods.iter()
        .find(|p| !p.deleted && matches!(p.role.as_str(), "master" | "primary"))
        .map(|p| p.pod_ip.clone())
        .filter(|ip| !ip.is_empty())
}
