//! Leader election through a `coordination.k8s.io/v1` Lease, for the processes that run as
//! an active and a warm standby (the watcher, later the scheduler).
//!
//! Written on kube's own primitives rather than a leader-election crate because of fencing:
//! a leader must stop acting as soon as its lease may have passed to someone else, even when
//! it cannot reach the API server to learn so. Crates such as kube-lease-manager report a
//! change of leadership only from a successful API call, so a leader cut off from the API
//! server would go on believing it leads after its lease expired. Here the leader counts its
//! lease from the moment it sent the last successful renewal and gives it up by itself a
//! safety margin before it can expire; the standby takes over only after the full duration.
//! The loop polls the one Lease (GET every `retry`), as client-go's leader election does.
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How the lease is held.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This process, unique among the candidates (the pod's name).
    pub identity: String,
    /// How long a lease lasts after its last renewal.
    pub duration: Duration,
}

impl LeaseSettings {
    /// How often the leader renews and a standby looks.
    fn retry(&self) -> Duration {
        self.duration / 3
    }

    /// How long before the lease could expire the leader gives it up by itself.
    fn margin(&self) -> Duration {
        self.duration / 5
    }
}

/// What the Lease says when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub identity: String,
    pub renewed: Timestamp,
    pub duration: Duration,
}

/// What a candidate does after reading the Lease at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nobody holds it (or the holder let it lapse, or released it): take it.
    Acquire,
    /// It is ours: renew it.
    Renew,
    /// Someone else holds it until this time.
    Follow { leader: String, until: Timestamp },
}

/// The decision, from the Lease as read (None: it does not exist yet).
pub fn step(holder: Option<&Holder>, me: &str, now: Timestamp) -> Step {
    let Some(holder) = holder else {
        return Step::Acquire;
    };
    if holder.identity == me {
        return Step::Renew;
    }
    let until = holder
        .renewed
        .checked_add(holder.duration)
        .unwrap_or(holder.renewed);
    if holder.identity.is_empty() || until <= now {
        Step::Acquire
    } else {
        Step::Follow {
            leader: holder.identity.clone(),
            until,
        }
    }
}

fn holder_of(lease: &Lease) -> Option<Holder> {
    let spec = lease.spec.as_ref()?;
    Some(Holder {
        identity: spec.holder_identity.clone().unwrap_or_default(),
        renewed: spec
            .renew_time
            .as_ref()
            .or(spec.acquire_time.as_ref())
            .map(|t| t.0)
            .unwrap_or(Timestamp::UNIX_EPOCH),
        duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64),
    })
}

/// The candidate's identity: the configured one, else the pod's name (`POD_NAME`), else
/// `<process>-<pid>`.
pub fn identity(configured: &str, process: &str) -> String {
    if !configured.is_empty() {
        return configured.to_string();
    }
    std::env::var("POD_NAME").unwrap_or_else(|_| format!("{process}-{}", std::process::id()))
}

/// Leadership for a process that runs alone: always leading.
pub fn always() -> watch::Receiver<bool> {
    let (leading, rx) = watch::channel(true);
    // The sender lives as long as anyone looks: a closed channel would read as "lost".
    tokio::spawn(async move { leading.closed().await });
    rx
}

/// Whether this process leads, as a watch channel: true from the moment the lease is taken
/// until it may no longer be ours (fenced: before it can expire, whatever the API server
/// says); false after `shutdown`, once the lease is released for the standby to take at
/// once.
pub fn run(
    client: Client,
    settings: LeaseSettings,
    shutdown: CancellationToken,
) -> watch::Receiver<bool> {
    let (leading, rx) = watch::channel(false);
    tokio::spawn(hold(client, settings, leading, shutdown));
    rx
}

async fn hold(
    client: Client,
    settings: LeaseSettings,
    leading: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    // Until when this process may act as the leader (local monotonic clock).
    let mut valid_until: Option<Instant> = None;
    let mut last_leader = String::new();
    loop {
        let attempt = Instant::now();
        match try_once(&api, &settings).await {
            Ok(Outcome::Leading) => {
                valid_until = Some(attempt + settings.duration - settings.margin());
                if !*leading.borrow() {
                    tracing::info!(lease = %settings.name, identity = %settings.identity, "leading");
                    let _ = leading.send(true);
                }
            }
            Ok(Outcome::Following(leader)) => {
                valid_until = None;
                if *leading.borrow() {
                    tracing::warn!(lease = %settings.name, %leader, "lost the lease");
                    let _ = leading.send(false);
                }
                if leader != last_leader {
                    tracing::info!(lease = %settings.name, %leader, "standing by");
                    last_leader = leader;
                }
            }
            Err(e) => tracing::warn!(lease = %settings.name, "lease: {e}"),
        }
        let wake = Instant::now() + settings.retry();
        let fence_at = valid_until.filter(|t| *t < wake);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(wake), if fence_at.is_none() => {}
            _ = tokio::time::sleep_until(fence_at.unwrap_or(wake)), if fence_at.is_some() => {
                // No renewal got through in time: stop acting before anyone else may start.
                tracing::warn!(lease = %settings.name, "could not renew the lease in time: no longer leading");
                valid_until = None;
                let _ = leading.send(false);
            }
        }
    }
    let was_leading = *leading.borrow();
    let _ = leading.send(false);
    if was_leading {
        if let Err(e) = release(&api, &settings).await {
            tracing::warn!(lease = %settings.name, "releasing the lease: {e}");
        }
    }
}

enum Outcome {
    Leading,
    Following(String),
}

async fn try_once(api: &Api<Lease>, settings: &LeaseSettings) -> Result<Outcome, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(&settings.name).await?;
    let holder = current.as_ref().and_then(holder_of);
    let next = match (&current, step(holder.as_ref(), &settings.identity, now)) {
        (_, Step::Follow { leader, .. }) => return Ok(Outcome::Following(leader)),
        (None, _) => None,
        (Some(lease), step) => Some((lease.clone(), step)),
    };
    let seconds = settings.duration.as_secs().max(1) as i32;
    let result = match next {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(settings.name.clone()),
                    namespace: Some(settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(settings.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await
        }
        Some((mut lease, step)) => {
            // A replace carries the resourceVersion read: two candidates taking an expired
            // lease at once cannot both succeed.
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if step == Step::Acquire {
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.holder_identity = Some(settings.identity.clone());
            spec.lease_duration_seconds = Some(seconds);
            spec.renew_time = Some(MicroTime(now));
            api.replace(&settings.name, &PostParams::default(), &lease)
                .await
        }
    };
    match result {
        Ok(_) => Ok(Outcome::Leading),
        // Someone else wrote it first: they lead, for now.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            Ok(Outcome::Following("another candidate".into()))
        }
        Err(e) => Err(e),
    }
}

/// Gives the lease up (an empty holder), so a standby takes it on its next look instead of
/// waiting for it to expire.
async fn release(api: &Api<Lease>, settings: &LeaseSettings) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&settings.name).await? else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    api.replace(&settings.name, &PostParams::default(), &lease)
        .await
        .map(|_| tracing::info!(lease = %settings.name, "released the lease"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn held(by: &str, renewed: i64) -> Holder {
        Holder {
            identity: by.into(),
            renewed: at(renewed),
            duration: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_candidate_takes_a_lease_only_when_nobody_holds_it() {
        let table: &[(Option<Holder>, i64, Step)] = &[
            (None, 0, Step::Acquire),
            (Some(held("me", 0)), 5, Step::Renew),
            // Our own, even expired: renewing it is taking it back.
            (Some(held("me", 0)), 50, Step::Renew),
            (
                Some(held("other", 0)),
                9,
                Step::Follow {
                    leader: "other".into(),
                    until: at(10),
                },
            ),
            // Expired: the standby takes over.
            (Some(held("other", 0)), 10, Step::Acquire),
            (Some(held("other", 0)), 11, Step::Acquire),
            // Released on shutdown: at once.
            (Some(held("", 0)), 1, Step::Acquire),
        ];
        for (holder, now, want) in table {
            assert_eq!(
                &step(holder.as_ref(), "me", at(*now)),
                want,
                "{holder:?} at {now}"
            );
        }
    }

    #[test]
    fn the_leader_gives_up_before_a_standby_may_take_over() {
        let settings = LeaseSettings {
            namespace: "ns".into(),
            name: "pgop-watcher".into(),
            identity: "me".into(),
            duration: Duration::from_secs(15),
        };
        // Renewed at t: the leader acts until t + duration - margin, a standby waits until
        // t + duration, and renewals come several times within that.
        assert!(settings.margin() > Duration::ZERO);
        assert!(settings.retry() * 2 < settings.duration - settings.margin());
    }

    #[test]
    fn the_lease_as_kubernetes_keeps_it() {
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "pgop-watcher"},
            "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15,
                     "renewTime": "2027-01-15T08:00:00.000000Z"}
        }))
        .unwrap();
        let holder = holder_of(&lease).unwrap();
        assert_eq!(holder.identity, "pod-a");
        assert_eq!(holder.duration, Duration::from_secs(15));
        assert_eq!(
            holder.renewed,
            "2027-01-15T08:00:00Z".parse::<Timestamp>().unwrap()
        );
    }
}
