//! Patroni's REST API on a pod (port 8008): the cluster's members, switchover, the dynamic
//! configuration and restarts. Thin I/O; the decisions live in [`crate::pure::rolling`] and
//! [`crate::pure::patroni_config`].
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

pub use crate::pure::rolling::Member;

/// Patroni's REST port in every Spilo pod.
pub const PORT: u16 = 8008;
/// Patroni answers a switchover only once it is done (or failed): give it time.
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum PatroniError {
    #[error("Patroni on {address}: {source}")]
    Request {
        address: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("Patroni on {address} answered {status}: {body}")]
    Refused {
        address: String,
        status: u16,
        body: String,
    },
}

#[derive(Debug, Deserialize)]
struct ClusterAnswer {
    #[serde(default)]
    members: Vec<Member>,
}

/// What `GET /patroni` says about one member.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct MemberStatus {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub pending_restart: bool,
}

#[derive(Clone)]
pub struct Patroni {
    http: reqwest::Client,
}

impl Patroni {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }

    fn url(address: &str, path: &str) -> String {
        format!("http://{address}:{PORT}{path}")
    }

    async fn send(
        &self,
        address: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, PatroniError> {
        let failed = |source| PatroniError::Request {
            address: address.to_string(),
            source,
        };
        let response = request.send().await.map_err(failed)?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(PatroniError::Refused {
            address: address.to_string(),
            status: status.as_u16(),
            body: body.chars().take(300).collect(),
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        address: &str,
        path: &str,
    ) -> Result<T, PatroniError> {
        let request = self
            .http
            .get(Self::url(address, path))
            .timeout(REQUEST_TIMEOUT);
        self.send(address, request)
            .await?
            .json()
            .await
            .map_err(|source| PatroniError::Request {
                address: address.to_string(),
                source,
            })
    }

    /// The members as the pod at `address` sees them.
    pub async fn members(&self, address: &str) -> Result<Vec<Member>, PatroniError> {
        Ok(self
            .json::<ClusterAnswer>(address, "/cluster")
            .await?
            .members)
    }

    /// Switches the leadership from `leader` to `candidate` (member names); returns once
    /// Patroni reports it done.
    pub async fn switchover(
        &self,
        address: &str,
        leader: &str,
        candidate: &str,
    ) -> Result<(), PatroniError> {
        let request = self
            .http
            .post(Self::url(address, "/switchover"))
            .timeout(SWITCHOVER_TIMEOUT)
            .json(&serde_json::json!({"leader": leader, "candidate": candidate}));
        self.send(address, request).await.map(drop)
    }

    /// The dynamic configuration kept in the DCS.
    pub async fn config(&self, address: &str) -> Result<Value, PatroniError> {
        self.json(address, "/config").await
    }

    /// Merges `patch` into the dynamic configuration (`null` removes a key).
    pub async fn patch_config(&self, address: &str, patch: &Value) -> Result<(), PatroniError> {
        let request = self
            .http
            .patch(Self::url(address, "/config"))
            .timeout(REQUEST_TIMEOUT)
            .json(patch);
        self.send(address, request).await.map(drop)
    }

    /// The member at `address`: its state, role and whether it waits for a restart.
    pub async fn member(&self, address: &str) -> Result<MemberStatus, PatroniError> {
        self.json(address, "/patroni").await
    }

    /// Restarts PostgreSQL of the member at `address` (Patroni keeps running).
    pub async fn restart(&self, address: &str) -> Result<(), PatroniError> {
        let request = self
            .http
            .post(Self::url(address, "/restart"))
            .timeout(SWITCHOVER_TIMEOUT)
            .json(&serde_json::json!({"restart_pending": true}));
        self.send(address, request).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse_with_or_without_lag() {
        let answer: ClusterAnswer = serde_json::from_str(
            r#"{"members":[
                {"name":"a-0","role":"leader","state":"running","timeline":2},
                {"name":"a-1","role":"replica","state":"streaming","lag":0},
                {"name":"a-2","role":"sync_standby","state":"running","lag":"unknown"}
            ],"scope":"a"}"#,
        )
        .unwrap();
        let lags: Vec<_> = answer.members.iter().map(|m| m.lag).collect();
        assert_eq!(lags, vec![None, Some(0), None]);
        assert_eq!(answer.members[2].role, "sync_standby");
    }
}
