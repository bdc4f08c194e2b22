//! Keeps Patroni's dynamic configuration as the manifest asks ([`crate::pure::patroni_config`]):
//! one `PATCH /config` on the master, then the members whose parameters wait for a restart
//! are restarted through Patroni, one per pass, in the order the change needs. Pods are
//! never recreated for this.
use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use pgop_common::config::OperatorConfig;
use pgop_common::crd::Postgresql;
use pgop_proto::v1::PodState;
use tokio::time::Instant;

use crate::clients::patroni::PatroniError;
use crate::cluster::context::Context;
use crate::pure::builders::spilo_env::dynamic_configuration;
use crate::pure::patroni_config::config_patch;

/// How long after a patch pgop looks for pending restarts: Patroni applies a new dynamic
/// configuration within its `loop_wait` (10 s by default).
const SETTLE_MARGIN: Duration = Duration::from_secs(5);
const DEFAULT_LOOP_WAIT: u64 = 10;

/// Where the cluster's Patroni configuration stands after this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatroniProgress {
    InSync,
    /// A patch or a restart was made (described).
    Acted(String),
    /// Patroni is still applying the last patch.
    Settling,
}

#[derive(Default)]
pub struct PatroniSync {
    /// Restart the master before the replicas (a lowered `max_connections`, …).
    master_first: bool,
    /// Until when pending restarts are looked for after a patch.
    settling_until: Option<Instant>,
    /// Members restarted for the last patch.
    restarted: BTreeSet<String>,
}

impl PatroniSync {
    pub async fn advance(
        &mut self,
        ctx: &Context,
        reference: &ObjectReference,
        pods: &[PodState],
        pg: &Postgresql,
        config: &OperatorConfig,
    ) -> Result<PatroniProgress, PatroniError> {
        let live: Vec<&PodState> = pods
            .iter()
            .filter(|p| !p.deleted && !p.pod_ip.is_empty())
            .collect();
        let Some(master) = live
            .iter()
            .find(|p| matches!(p.role.as_str(), "master" | "primary"))
        else {
            return Ok(PatroniProgress::InSync);
        };
        let current = ctx.patroni.config(&master.pod_ip).await?;
        if let Some(patch) = config_patch(&dynamic_configuration(pg, config), &current) {
            ctx.patroni
                .patch_config(&master.pod_ip, &patch.body)
                .await?;
            self.master_first = patch.master_restarts_first();
            self.restarted.clear();
            let loop_wait = current
                .get("loop_wait")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(DEFAULT_LOOP_WAIT);
            self.settling_until =
                Some(Instant::now() + Duration::from_secs(loop_wait) + SETTLE_MARGIN);
            let note = format!("Patroni configuration patched: {}", patch.summary());
            ctx.event(reference, "PatroniConfiguration", note.clone())
                .await;
            return Ok(PatroniProgress::Acted(note));
        }

        // Restarts follow pgop's own patches only (a DBA's ALTER SYSTEM is theirs to
        // restart for), each member once per patch.
        if self.settling_until.is_none() {
            return Ok(PatroniProgress::InSync);
        }
        // Replicas first, unless the change must reach the master first.
        let mut order: Vec<&PodState> = live
            .iter()
            .copied()
            .filter(|p| p.name != master.name)
            .collect();
        order.sort_by(|a, b| a.name.cmp(&b.name));
        if self.master_first {
            order.insert(0, master);
        } else {
            order.push(master);
        }
        for pod in order {
            if self.restarted.contains(&pod.name) {
                continue;
            }
            if ctx.patroni.member(&pod.pod_ip).await?.pending_restart {
                self.restarted.insert(pod.name.clone());
                ctx.patroni.restart(&pod.pod_ip).await?;
                let note = format!(
                    "restarted PostgreSQL on {} for a changed parameter",
                    pod.name
                );
                ctx.event(reference, "PatroniConfiguration", note.clone())
                    .await;
                return Ok(PatroniProgress::Acted(note));
            }
        }
        match self.settling_until {
            Some(until) if Instant::now() < until => Ok(PatroniProgress::Settling),
            _ => {
                self.settling_until = None;
                self.master_first = false;
                self.restarted.clear();
                Ok(PatroniProgress::InSync)
            }
        }
    }
}
