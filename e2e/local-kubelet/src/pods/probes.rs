//! Readiness: httpGet and tcpSocket probes against the pod's address.
use std::net::Ipv4Addr;
use std::time::Duration;

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

/// The readiness check for a container: its readinessProbe, else `fallback`.
pub fn readiness_of(container: &Container, fallback: Readiness) -> Readiness {
    let Some(Probe {
        http_get,
        tcp_socket,
        ..
    }) = container.readiness_probe.as_ref()
    else {
        return fallback;
    };
    if let Some(http) = http_get {
        if let Some(port) = port_of(container, &http.port) {
            return Readiness::Http {
                port,
                path: http.path.clone().unwrap_or_else(|| "/".into()),
            };
        }
    }
    if let Some(tcp) = tcp_socket {
        if let Some(port) = port_of(container, &tcp.port) {
            return Readiness::Tcp { port };
        }
    }
    // exec probes would need the container's filesystem: treat as ready while running.
    Readiness::Running
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
}
