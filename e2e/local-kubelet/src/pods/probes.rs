//! Readiness: httpGet and tcpSocket probes against the pod's address.
use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::time::Instant;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// What decides a container's readiness.
#[derive(Debug, Clone, PartialEq)]
pub enum Readiness {
    /// Ready while running.
    Running,
    Http {
        port: u16,
        path: String,
    },
    Tcp {
        port: u16,
    },
}

fn port_of(container: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// The check a probe makes; None for exec probes, which would need the container's file
/// system.
fn check_of(container: &Container, probe: &Probe) -> Option<Readiness> {
    if let Some(http) = &probe.http_get {
        if let Some(port) = port_of(container, &http.port) {
            return Some(Readiness::Http {
                port,
                path: http.path.clone().unwrap_or_else(|| "/".into()),
            });
        }
    }
    if let Some(tcp) = &probe.tcp_socket {
        if let Some(port) = port_of(container, &tcp.port) {
            return Some(Readiness::Tcp { port });
        }
    }
    None
}

/// The readiness check for a container: its readinessProbe, else `fallback`.
pub fn readiness_of(container: &Container, fallback: Readiness) -> Readiness {
    match container.readiness_probe.as_ref() {
        None => fallback,
        // exec probes would need the container's filesystem: treat as ready while running.
        Some(probe) => check_of(container, probe).unwrap_or(Readiness::Running),
    }
}

/// A container's livenessProbe: a running container failing it `failure_threshold` times in
/// a row, `period` apart and not before `initial_delay`, is killed and restarted.
#[derive(Debug, Clone, PartialEq)]
pub struct Liveness {
    pub check: Readiness,
    pub initial_delay: Duration,
    pub period: Duration,
    pub failure_threshold: u32,
}

/// Kubernetes' defaults: every 10 s, three failures; exec probes are not run (see
/// `check_of`).
pub fn liveness_of(container: &Container) -> Option<Liveness> {
    let probe = container.liveness_probe.as_ref()?;
    let seconds = |s: Option<i32>, default: i32| {
        Duration::from_secs(u64::try_from(s.unwrap_or(default)).unwrap_or(0))
    };
    Some(Liveness {
        check: check_of(container, probe)?,
        initial_delay: seconds(probe.initial_delay_seconds, 0),
        period: seconds(probe.period_seconds, 10).max(Duration::from_secs(1)),
        failure_threshold: u32::try_from(probe.failure_threshold.unwrap_or(3))
            .unwrap_or(3)
            .max(1),
    })
}

/// Where a running container's liveness stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LivenessState {
    /// Started; the first probe is due at `next`.
    Probing { next: Instant, failures: u32 },
    /// Failed `failure_threshold` times: being killed, no more probes for this run.
    Failed,
}

impl LivenessState {
    pub fn started(liveness: &Liveness, at: Instant) -> Self {
        Self::Probing {
            next: at + liveness.initial_delay,
            failures: 0,
        }
    }

    pub fn due(&self, now: Instant) -> bool {
        matches!(self, Self::Probing { next, .. } if *next <= now)
    }

    /// The state after a probe's result at `now`.
    pub fn observe(self, liveness: &Liveness, alive: bool, now: Instant) -> Self {
        match self {
            Self::Failed => Self::Failed,
            Self::Probing { failures, .. } => {
                let failures = if alive { 0 } else { failures + 1 };
                if failures >= liveness.failure_threshold {
                    Self::Failed
                } else {
                    Self::Probing {
                        next: now + liveness.period,
                        failures,
                    }
                }
            }
        }
    }
}

pub async fn check(http: &reqwest::Client, ip: Ipv4Addr, readiness: &Readiness) -> bool {
    match readiness {
        Readiness::Running => true,
        Readiness::Http { port, path } => {
            let url = format!("http://{ip}:{port}{path}");
            matches!(http.get(url).timeout(Duration::from_secs(2)).send().await, Ok(r) if r.status().is_success())
        }
        Readiness::Tcp { port } => matches!(
            tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::TcpStream::connect((ip, *port))
            )
            .await,
            Ok(Ok(_))
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_table() {
        let cases = [
            (
                serde_json::json!({"name": "c"}),
                Readiness::Http {
                    port: 8008,
                    path: "/readiness".into(),
                },
            ),
            (
                serde_json::json!({"name": "c", "readinessProbe": {"httpGet": {"path": "/health", "port": 8008}}}),
                Readiness::Http {
                    port: 8008,
                    path: "/health".into(),
                },
            ),
            (
                serde_json::json!({"name": "c", "ports": [{"name": "patroni", "containerPort": 8009}], "readinessProbe": {"httpGet": {"port": "patroni"}}}),
                Readiness::Http {
                    port: 8009,
                    path: "/".into(),
                },
            ),
            (
                serde_json::json!({"name": "c", "readinessProbe": {"tcpSocket": {"port": 5432}}}),
                Readiness::Tcp { port: 5432 },
            ),
            (
                serde_json::json!({"name": "c", "readinessProbe": {"exec": {"command": ["true"]}}}),
                Readiness::Running,
            ),
        ];
        for (container, want) in cases {
            let c: Container = serde_json::from_value(container.clone()).unwrap();
            assert_eq!(
                readiness_of(
                    &c,
                    Readiness::Http {
                        port: 8008,
                        path: "/readiness".into()
                    }
                ),
                want,
                "{container}"
            );
        }
    }

    #[test]
    fn liveness_probes_and_their_defaults() {
        let c: Container = serde_json::from_value(serde_json::json!({"name": "c", "ports": [{"name": "admin", "containerPort": 9090}], "livenessProbe": {"httpGet": {"path": "/livez", "port": "admin"}, "initialDelaySeconds": 10}})).unwrap();
        assert_eq!(
            liveness_of(&c),
            Some(Liveness {
                check: Readiness::Http {
                    port: 9090,
                    path: "/livez".into()
                },
                initial_delay: Duration::from_secs(10),
                period: Duration::from_secs(10),
                failure_threshold: 3,
            })
        );
        let exec: Container = serde_json::from_value(
            serde_json::json!({"name": "c", "livenessProbe": {"exec": {"command": ["true"]}}}),
        )
        .unwrap();
        assert_eq!(liveness_of(&exec), None);
        let none: Container = serde_json::from_value(serde_json::json!({"name": "c"})).unwrap();
        assert_eq!(liveness_of(&none), None);
    }

    #[test]
    fn liveness_fails_after_the_threshold_in_a_row_only() {
        let liveness = Liveness {
            check: Readiness::Tcp { port: 1 },
            initial_delay: Duration::from_secs(5),
            period: Duration::from_secs(2),
            failure_threshold: 2,
        };
        let t0 = Instant::now();
        let s = LivenessState::started(&liveness, t0);
        assert!(
            !s.due(t0 + Duration::from_secs(4)),
            "not before the initial delay"
        );
        assert!(s.due(t0 + Duration::from_secs(5)));
        let at = |secs| t0 + Duration::from_secs(secs);
        let s = s.observe(&liveness, false, at(5));
        assert_eq!(
            s,
            LivenessState::Probing {
                next: at(7),
                failures: 1
            }
        );
        assert!(!s.due(at(6)), "one period between probes");
        let s = s.observe(&liveness, true, at(7));
        assert_eq!(
            s,
            LivenessState::Probing {
                next: at(9),
                failures: 0
            },
            "a success resets"
        );
        let s = s.observe(&liveness, false, at(9));
        let s = s.observe(&liveness, false, at(11));
        assert_eq!(s, LivenessState::Failed);
        assert!(!s.due(at(100)), "a failed container is not probed again");
        assert_eq!(s.observe(&liveness, true, at(100)), LivenessState::Failed);
    }
}
