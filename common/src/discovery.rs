//! Which API versions the cluster serves for kinds whose GA version is newer than the
//! oldest Kubernetes pgop supports (1.20): PodDisruptionBudgets (policy/v1 since 1.21) and
//! CronJobs (batch/v1 since 1.21). The same schema is written under either version.
use kube::Client;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedVersions {
    /// `v1` or `v1beta1` of the policy group.
    pub pod_disruption_budget: String,
    /// `v1` or `v1beta1` of the batch group.
    pub cron_job: String,
}

impl Default for ServedVersions {
    fn default() -> Self {
        Self {
            pod_disruption_budget: "v1".into(),
            cron_job: "v1".into(),
        }
    }
}

/// `v1` when `group/v1` serves `resource`, else `v1beta1`.
pub fn choose(v1_resources: &[String], resource: &str) -> &'static str {
    if v1_resources.iter().any(|r| r == resource) {
        "v1"
    } else {
        "v1beta1"
    }
}

async fn v1_resources(client: &Client, group: &str) -> Result<Vec<String>, kube::Error> {
    match client
        .list_api_group_resources(&format!("{group}/v1"))
        .await
    {
        Ok(list) => Ok(list.resources.into_iter().map(|r| r.name).collect()),
        // The group has no v1 at all on this cluster.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

pub async fn discover(client: &Client) -> Result<ServedVersions, kube::Error> {
    let policy = v1_resources(client, "policy").await?;
    let batch = v1_resources(client, "batch").await?;
    Ok(ServedVersions {
        pod_disruption_budget: choose(&policy, "poddisruptionbudgets").into(),
        cron_job: choose(&batch, "cronjobs").into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_only_when_served() {
        let served = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(
            choose(&served(&["jobs", "jobs/status"]), "cronjobs"),
            "v1beta1"
        );
        assert_eq!(choose(&served(&["jobs", "cronjobs"]), "cronjobs"), "v1");
        assert_eq!(choose(&[], "poddisruptionbudgets"), "v1beta1");
    }
}
