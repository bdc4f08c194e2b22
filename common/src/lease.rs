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
use std::sync::{Arc, Mutex};
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

/// What the Lease says when it was read, and how long this candidate has seen it unchanged
/// (its own clock: the holder's timestamps are another machine's, so they are never compared
/// with this one's, as in client-go).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub identity: String,
    pub duration: Duration,
    /// Since the record (its resourceVersion) last changed, as seen here.
    pub unchanged_for: Duration,
}

/// What a candidate does after reading the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nobody holds it (or the holder let it lapse, or released it): take it.
    Acquire,
    /// It is ours: renew it.
    Renew,
    /// Someone else holds it; it may be taken once unrenewed for this much longer.
    Follow { leader: String, left: Duration },
}

/// The decision, from the Lease as read (None: it does not exist yet).
pub fn step(holder: Option<&Holder>, me: &str) -> Step {
    let Some(holder) = holder else {
        return Step::Acquire;
    };
    if holder.identity == me {
        return Step::Renew;
    }
    if holder.identity.is_empty() || holder.unchanged_for >= holder.duration {
        Step::Acquire
    } else {
        Step::Follow {
            leader: holder.identity.clone(),
            left: holder.duration - holder.unchanged_for,
        }
    }
}

/// The candidate's identity: the configured one, else the pod's name (`POD_NAME`, else
/// `HOSTNAME`, which Kubernetes sets to it). Two replicas with one identity would both lead,
/// so without one leader election does not start.
pub fn identity(configured: &str) -> Option<String> {
    [
        Some(configured.to_string()),
        std::env::var("POD_NAME").ok(),
        std::env::var("HOSTNAME").ok(),
    ]
    .into_iter()
    .flatten()
    .find(|id| !id.is_empty())
}

/// Whether this replica leads: announced changes on a watch channel, and the deadline of
/// the lease it holds, so that a process that was stopped (SIGSTOP, a frozen VM) and wakes
/// after its lease expired acts on nothing before its lease loop has even run.
#[derive(Clone, Debug)]
pub struct Leadership {
    announced: watch::Receiver<bool>,
    until: Arc<Mutex<Option<Instant>>>,
}

impl Leadership {
    /// Leading now: announced, and the lease not past its fencing deadline.
    pub fn leads(&self) -> bool {
        *self.announced.borrow()
            && self
                .until
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .is_none_or(|until| Instant::now() < until)
    }

    /// The announcements (true: leading), to wait for a change.
    pub fn changes(&self) -> watch::Receiver<bool> {
        self.announced.clone()
    }
}

/// Leadership for a process that runs alone: always leading.
pub fn always() -> Leadership {
    let (leading, rx) = watch::channel(true);
    // The sender lives as long as anyone looks: a closed channel would read as "lost".
    tokio::spawn(async move { leading.closed().await });
    Leadership {
        announced: rx,
        until: Arc::new(Mutex::new(None)),
    }
}

/// Whether this process leads, as a watch channel: true from the moment the lease is taken
/// until it may no longer be ours (fenced: a fifth of the duration before anyone else may
/// take it, whatever the API server says or however long it takes to answer); false after
/// `shutdown`. The task ends once the lease is released (await it before exiting, so that a
/// standby takes over at once instead of waiting for the lease to expire).
pub fn run(
    client: Client,
    settings: LeaseSettings,
    shutdown: CancellationToken,
) -> (Leadership, tokio::task::JoinHandle<()>) {
    let (leading, rx) = watch::channel(false);
    let until = Arc::new(Mutex::new(Some(Instant::now())));
    let task = tokio::spawn(hold(client, settings, leading, until.clone(), shutdown));
    (
        Leadership {
            announced: rx,
            until,
        },
        task,
    )
}

async fn hold(
    client: Client,
    settings: LeaseSettings,
    leading: watch::Sender<bool>,
    deadline: Arc<Mutex<Option<Instant>>>,
    shutdown: CancellationToken,
) {
    let set_deadline = |until: Instant| {
        *deadline
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(until);
    };
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    // Until when this process may act as the leader (local monotonic clock), counted from
    // the moment its last successful renewal was sent.
    let mut valid_until: Option<Instant> = None;
    let mut seen = Seen::default();
    let mut last_leader = String::new();
    loop {
        let attempt = Instant::now();
        let fence_at = valid_until.unwrap_or(attempt + settings.duration);
        // Every request is bounded, and the fence holds while one is under way.
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(fence_at), if valid_until.is_some() => None,
            r = tokio::time::timeout(settings.retry(), try_once(&api, &settings, &mut seen)) => Some(r),
        };
        match outcome {
            None => {}
            Some(Ok(Ok(Outcome::Leading))) => {
                let until = attempt + settings.duration - settings.margin();
                if until > Instant::now() {
                    valid_until = Some(until);
                    set_deadline(until);
                    if !*leading.borrow() {
                        tracing::info!(lease = %settings.name, identity = %settings.identity, "leading");
                        let _ = leading.send(true);
                    }
                }
            }
            Some(Ok(Ok(Outcome::Following(leader)))) => {
                valid_until = None;
                set_deadline(Instant::now());
                if *leading.borrow() {
                    tracing::warn!(lease = %settings.name, %leader, "lost the lease");
                    let _ = leading.send(false);
                }
                if leader != last_leader {
                    tracing::info!(lease = %settings.name, %leader, "standing by");
                    last_leader = leader;
                }
            }
            Some(Ok(Err(e))) => tracing::warn!(lease = %settings.name, "lease: {e}"),
            Some(Err(_)) => {
                tracing::warn!(lease = %settings.name, "lease: the API server did not answer in time")
            }
        }
        if valid_until.is_some_and(|t| t <= Instant::now()) {
            // No renewal got through in time: stop acting before anyone else may start.
            tracing::warn!(lease = %settings.name, "could not renew the lease in time: no longer leading");
            valid_until = None;
            let _ = leading.send(false);
        }
        let wake = attempt + settings.retry();
        let fence_at = valid_until.filter(|t| *t < wake);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(fence_at.unwrap_or(wake)) => {}
        }
    }
    let was_leading = *leading.borrow();
    let _ = leading.send(false);
    if was_leading {
        match tokio::time::timeout(settings.retry(), release(&api, &settings)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(lease = %settings.name, "releasing the lease: {e}"),
            Err(_) => {
                tracing::warn!(lease = %settings.name, "releasing the lease: no answer in time")
            }
        }
    }
}

/// When this candidate last saw the Lease record change.
#[derive(Default)]
struct Seen {
    version: Option<String>,
    at: Option<Instant>,
}

impl Seen {
    fn unchanged_for(&mut self, version: Option<&str>) -> Duration {
        let now = Instant::now();
        if self.version.as_deref() != version || self.at.is_none() {
            self.version = version.map(str::to_string);
            self.at = Some(now);
        }
        now - self.at.unwrap_or(now)
    }
}

fn holder_of(lease: &Lease, unchanged_for: Duration) -> Option<Holder> {
    let spec = lease.spec.as_ref()?;
    Some(Holder {
        identity: spec.holder_identity.clone().unwrap_or_default(),
        duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64),
        unchanged_for,
    })
}

enum Outcome {
    Leading,
    Following(String),
}

async fn try_once(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    seen: &mut Seen,
) -> Result<Outcome, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(&settings.name).await?;
    let unchanged_for = seen.unchanged_for(
        current
            .as_ref()
            .and_then(|l| l.metadata.resource_version.as_deref()),
    );
    let holder = current.as_ref().and_then(|l| holder_of(l, unchanged_for));
    let next = match (&current, step(holder.as_ref(), &settings.identity)) {
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

    fn held(by: &str, unchanged_for: u64) -> Holder {
        Holder {
            identity: by.into(),
            duration: Duration::from_secs(10),
            unchanged_for: Duration::from_secs(unchanged_for),
        }
    }

    #[test]
    fn a_candidate_takes_a_lease_only_when_nobody_holds_it() {
        let table: &[(Option<Holder>, Step)] = &[
            (None, Step::Acquire),
            (Some(held("me", 5)), Step::Renew),
            // Our own, even lapsed (the same pod restarted): renewing it is taking it back.
            (Some(held("me", 50)), Step::Renew),
            (
                Some(held("other", 1)),
                Step::Follow {
                    leader: "other".into(),
                    left: Duration::from_secs(9),
                },
            ),
            // Unrenewed for its whole duration, by this candidate's own clock: taken over.
            (Some(held("other", 10)), Step::Acquire),
            (Some(held("other", 11)), Step::Acquire),
            // Released on shutdown: at once.
            (Some(held("", 0)), Step::Acquire),
        ];
        for (holder, want) in table {
            assert_eq!(&step(holder.as_ref(), "me"), want, "{holder:?}");
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
        // Renewed at t: the leader acts until t + duration - margin, a standby waits until it
        // has seen no change for the duration; a request is cut after `retry`, and renewals
        // come at least twice within the leader's time.
        assert!(settings.margin() > Duration::ZERO);
        assert!(settings.retry() * 2 < settings.duration - settings.margin());
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_counts_as_unchanged_from_when_it_was_first_seen_here() {
        let mut seen = Seen::default();
        assert_eq!(seen.unchanged_for(Some("1")), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(seen.unchanged_for(Some("1")), Duration::from_secs(4));
        // Renewed: a new resourceVersion starts the count again.
        assert_eq!(seen.unchanged_for(Some("2")), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(seen.unchanged_for(Some("2")), Duration::from_secs(1));
    }

    #[test]
    fn the_lease_as_kubernetes_keeps_it() {
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "pgop-watcher", "resourceVersion": "7"},
            "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15,
                     "renewTime": "2027-01-15T08:00:00.000000Z"}
        }))
        .unwrap();
        let holder = holder_of(&lease, Duration::from_secs(3)).unwrap();
        assert_eq!(
            holder,
            Holder {
                identity: "pod-a".into(),
                duration: Duration::from_secs(15),
                unchanged_for: Duration::from_secs(3),
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_past_its_deadline_does_not_lead_even_before_its_loop_notices() {
        let (announce, announced) = watch::channel(true);
        let until = Arc::new(Mutex::new(Some(Instant::now() + Duration::from_secs(12))));
        let leadership = Leadership {
            announced,
            until: until.clone(),
        };
        assert!(leadership.leads());
        // Frozen past the deadline: nothing announced yet, and still not leading.
        tokio::time::advance(Duration::from_secs(13)).await;
        assert!(!leadership.leads());
        *until.lock().unwrap() = Some(Instant::now() + Duration::from_secs(12));
        assert!(leadership.leads());
        announce.send(false).unwrap();
        assert!(!leadership.leads());
        assert!(always().leads());
    }

    #[test]
    fn an_identity_is_required() {
        assert_eq!(identity("pod-a"), Some("pod-a".into()));
    }
}
