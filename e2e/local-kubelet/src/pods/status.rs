//! The kubelet's record of a pod's containers and the PodStatus it reports (pure).
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// Now, to the second (what the API server keeps).
pub fn now() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH))
}

#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Time,
    },
    Terminated {
        exit_code: i32,
        signal: Option<i32>,
        started_at: Option<Time>,
        finished_at: Time,
    },
}

impl RunState {
    pub fn waiting(reason: &str, message: Option<String>) -> Self {
        RunState::Waiting {
            reason: reason.to_string(),
            message,
        }
    }

    fn to_k8s(&self) -> ContainerState {
        match self {
            RunState::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..Default::default()
            },
            RunState::Running { started_at } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(started_at.clone()),
                }),
                ..Default::default()
            },
            RunState::Terminated {
                exit_code,
                signal,
                started_at,
                finished_at,
            } => ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: *exit_code,
                    signal: *signal,
                    reason: Some(
                        if *exit_code == 0 {
                            "Completed"
                        } else {
                            "Error"
                        }
                        .to_string(),
                    ),
                    started_at: started_at.clone(),
                    finished_at: Some(finished_at.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    pub restart_count: i32,
    pub state: RunState,
    pub last_state: Option<RunState>,
    pub ready: bool,
}

impl ContainerRecord {
    pub fn new(name: &str, image: &str) -> Self {
        Self {
            name: name.to_string(),
            image: image.to_string(),
            restart_count: 0,
            state: RunState::waiting("ContainerCreating", None),
            last_state: None,
            ready: false,
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self.state, RunState::Running { .. })
    }

    pub fn started_at(&self) -> Option<Time> {
        match &self.state {
            RunState::Running { started_at } => Some(started_at.clone()),
            _ => None,
        }
    }

    fn to_k8s(&self) -> ContainerStatus {
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: format!("pgop-local://{}", self.image),
            container_id: Some(format!("pgop-local://{}", self.name)),
            restart_count: self.restart_count,
            ready: self.ready,
            started: Some(self.is_running()),
            state: Some(self.state.to_k8s()),
            last_state: self.last_state.as_ref().map(RunState::to_k8s),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("Never") => RestartPolicy::Never,
            Some("OnFailure") => RestartPolicy::OnFailure,
            _ => RestartPolicy::Always,
        }
    }

    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PodRecord {
    pub ip: Ipv4Addr,
    pub start_time: Time,
    pub restart_policy: RestartPolicy,
    pub init: Vec<ContainerRecord>,
    pub containers: Vec<ContainerRecord>,
    pub init_done: bool,
    /// Condition type → (status, last transition).
    conditions: BTreeMap<&'static str, (bool, Time)>,
}

impl PodRecord {
    pub fn new(
        ip: Ipv4Addr,
        restart_policy: RestartPolicy,
        init: Vec<ContainerRecord>,
        containers: Vec<ContainerRecord>,
    ) -> Self {
        let init_done = init.is_empty();
        let mut record = Self {
            ip,
            start_time: now(),
            restart_policy,
            init,
            containers,
            init_done,
            conditions: BTreeMap::new(),
        };
        record.update_conditions();
        record
    }

    pub fn phase(&self) -> &'static str {
        let failed = |c: &ContainerRecord| matches!(c.state, RunState::Terminated { exit_code, .. } if exit_code != 0);
        if !self.init_done {
            if self.restart_policy == RestartPolicy::Never && self.init.iter().any(failed) {
                return "Failed";
            }
            return "Pending";
        }
        let all_terminated = !self.containers.is_empty()
            && self
                .containers
                .iter()
                .all(|c| matches!(c.state, RunState::Terminated { .. }));
        if all_terminated && self.restart_policy != RestartPolicy::Always {
            let any_failed = self.containers.iter().any(failed);
            if !any_failed {
                return "Succeeded";
            }
            if self.restart_policy == RestartPolicy::Never {
                return "Failed";
            }
        }
        if self
            .containers
            .iter()
            .any(|c| c.is_running() || matches!(c.state, RunState::Terminated { .. }))
        {
            "Running"
        } else {
            "Pending"
        }
    }

    /// Re-evaluates the conditions; a transition time changes only when a status does.
    pub fn update_conditions(&mut self) {
        let ready = self.init_done
            && !self.containers.is_empty()
            && self.containers.iter().all(|c| c.ready);
        let values = [
            ("PodScheduled", true),
            ("Initialized", self.init_done),
            ("ContainersReady", ready),
            ("Ready", ready),
        ];
        for (kind, status) in values {
            match self.conditions.get(kind) {
                Some((old, _)) if *old == status => {}
                _ => {
                    self.conditions.insert(kind, (status, now()));
                }
            }
        }
    }

    pub fn is_ready(&self) -> bool {
        self.conditions.get("Ready").is_some_and(|(s, _)| *s)
    }

    pub fn status(&self) -> PodStatus {
        let ip = self.ip.to_string();
        PodStatus {
            phase: Some(self.phase().to_string()),
            host_ip: Some("127.0.0.1".to_string()),
            pod_ip: Some(ip.clone()),
            pod_ips: Some(vec![PodIP { ip }]),
            start_time: Some(self.start_time.clone()),
            conditions: Some(
                ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
                    .iter()
                    .filter_map(|kind| {
                        self.conditions.get(kind).map(|(status, at)| PodCondition {
                            type_: kind.to_string(),
                            status: if *status { "True" } else { "False" }.to_string(),
                            last_transition_time: Some(at.clone()),
                            ..Default::default()
                        })
                    })
                    .collect(),
            ),
            container_statuses: Some(
                self.containers
                    .iter()
                    .map(ContainerRecord::to_k8s)
                    .collect(),
            ),
            init_container_statuses: (!self.init.is_empty())
                .then(|| self.init.iter().map(ContainerRecord::to_k8s).collect()),
            qos_class: Some("BestEffort".to_string()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(policy: RestartPolicy, states: &[RunState]) -> PodRecord {
        let containers = states
            .iter()
            .enumerate()
            .map(|(i, s)| ContainerRecord {
                state: s.clone(),
                ..ContainerRecord::new(&format!("c{i}"), "img")
            })
            .collect();
        PodRecord::new(Ipv4Addr::new(127, 1, 0, 2), policy, vec![], containers)
    }

    fn terminated(code: i32) -> RunState {
        RunState::Terminated {
            exit_code: code,
            signal: None,
            started_at: None,
            finished_at: now(),
        }
    }

    #[test]
    fn phase_table() {
        let running = RunState::Running { started_at: now() };
        let creating = RunState::waiting("ContainerCreating", None);
        let cases = [
            (RestartPolicy::Always, vec![creating.clone()], "Pending"),
            (
                RestartPolicy::Always,
                vec![running.clone(), creating.clone()],
                "Running",
            ),
            (RestartPolicy::Always, vec![terminated(1)], "Running"),
            (RestartPolicy::Never, vec![terminated(0)], "Succeeded"),
            (RestartPolicy::Never, vec![terminated(2)], "Failed"),
            (
                RestartPolicy::OnFailure,
                vec![terminated(0), terminated(0)],
                "Succeeded",
            ),
            (RestartPolicy::OnFailure, vec![terminated(3)], "Running"),
            (
                RestartPolicy::Never,
                vec![terminated(0), running],
                "Running",
            ),
        ];
        for (policy, states, want) in cases {
            assert_eq!(
                record(policy, &states).phase(),
                want,
                "{policy:?} {states:?}"
            );
        }
    }

    #[test]
    fn ready_needs_every_container_ready_and_keeps_transition_times() {
        let running = RunState::Running { started_at: now() };
        let mut r = record(RestartPolicy::Always, &[running.clone(), running]);
        r.containers[0].ready = true;
        r.update_conditions();
        assert!(!r.is_ready());
        let before = r.status();
        r.update_conditions();
        assert_eq!(r.status(), before, "no change, no new status");
        r.containers[1].ready = true;
        r.update_conditions();
        assert!(r.is_ready());
        let status = r.status();
        let ready = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(status.pod_ip.as_deref(), Some("127.1.0.2"));
    }

    #[test]
    fn restart_policy_table() {
        let cases = [
            (RestartPolicy::Always, 0, true),
            (RestartPolicy::Always, 1, true),
            (RestartPolicy::OnFailure, 0, false),
            (RestartPolicy::OnFailure, 1, true),
            (RestartPolicy::Never, 1, false),
        ];
        for (policy, code, want) in cases {
            assert_eq!(policy.restarts(code), want, "{policy:?} {code}");
        }
    }
}
