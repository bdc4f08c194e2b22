//! The cluster lifecycle with real Patroni pods: rolling updates with one switchover while
//! clients write, surviving a worker killed mid-rotation.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Pod};
use kube::api::{ListParams, ObjectMeta};
use kube::{Api, Client};
use pgop_e2e::pgop::{Kubeconfigs, Pgop};
use pgop_e2e::wait;

use super::operator::{events_of, master_login, operator_namespace, wait_running};
use super::{connect, env, is_ready, namespace, pg_patch};

/// The operator ConfigMap `postgres-operator` in `system_ns`, applied (created or changed).
fn operator_config(system_ns: &str, data: &[(&str, &str)]) -> Result<()> {
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("postgres-operator".into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    };
    env().apply(system_ns, &serde_json::to_string(&cm)?)?;
    Ok(())
}

/// The operator's namespace with its configuration (`watched_namespace: ns` and `config`),
/// the clusters' namespace, and pgop with one worker running as the admin.
async fn start_pgop(
    client: &Client,
    name: &str,
    system_ns: &str,
    ns: &str,
    config: &[(&str, &str)],
    scheduler_settings: &[(&str, String)],
) -> Result<Pgop> {
    operator_namespace(client, system_ns).await?;
    namespace(client, ns).await?;
    let mut data = vec![("watched_namespace", ns)];
    data.extend_from_slice(config);
    operator_config(system_ns, &data)?;
    Pgop::start_with(
        name,
        system_ns,
        1,
        &env().state_dir,
        &Kubeconfigs::admin(&env().kubeconfig),
        None,
        scheduler_settings,
    )
}

fn manifest(ns: &str, name: &str, instances: u32) -> String {
    format!(
        "apiVersion: acid.zalan.do/v1\nkind: postgresql\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
         spec:\n  teamId: acid\n  numberOfInstances: {instances}\n  volume:\n    size: 1Gi\n\
         \x20 postgresql:\n    version: \"15\"\n"
    )
}

/// What one writing client saw.
#[derive(Debug, Default)]
struct Writes {
    /// Rows whose INSERT was acknowledged.
    acknowledged: Vec<i64>,
    /// The longest time between two acknowledged writes.
    longest_gap: Duration,
    failed: u32,
}

/// The master's address as the master Service has it (Patroni keeps the Service's
/// Endpoints pointing at the leader; there is no kube-proxy here to route the Service IP).
async fn service_master(client: &Client, ns: &str, cluster: &str) -> Option<String> {
    let endpoints = Api::<Endpoints>::namespaced(client.clone(), ns)
        .get_opt(cluster)
        .await
        .ok()??;
    endpoints
        .subsets?
        .into_iter()
        .flat_map(|s| s.addresses.unwrap_or_default())
        .map(|a| a.ip)
        .next()
}

/// Inserts a row every 100 ms into `rolled` through the master Service until `stop`.
async fn write_continuously(
    client: Client,
    ns: String,
    cluster: String,
    password: String,
    stop: Arc<AtomicBool>,
) -> Writes {
    let mut writes = Writes::default();
    let mut connection: Option<tokio_postgres::Client> = None;
    let mut last_ack = Instant::now();
    let mut id = 0i64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if connection.is_none() {
            let Some(ip) = service_master(&client, &ns, &cluster).await else {
                continue;
            };
            connection = tokio::time::timeout(Duration::from_secs(2), connect(&ip, &password))
                .await
                .ok()
                .and_then(Result::ok);
            if connection.is_none() {
                continue;
            }
        }
        let Some(db) = connection.as_ref() else {
            continue;
        };
        id += 1;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
        let insert = db.execute("INSERT INTO rolled (id) VALUES ($1)", &params);
        match tokio::time::timeout(Duration::from_secs(2), insert).await {
            Ok(Ok(_)) => {
                writes.acknowledged.push(id);
                writes.longest_gap = writes.longest_gap.max(last_ack.elapsed());
                last_ack = Instant::now();
            }
            _ => {
                writes.failed += 1;
                connection = None;
            }
        }
    }
    writes
}

/// The image of each pod of `cluster`: name → (uid, image, ready).
async fn pod_images(
    pods: &Api<Pod>,
    cluster: &str,
) -> Result<BTreeMap<String, (String, String, bool)>> {
    let list = pods
        .list(&ListParams::default().labels(&format!("cluster-name={cluster}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let image = p
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            let ready = is_ready(&p);
            (
                p.metadata.name.unwrap_or_default(),
                (p.metadata.uid.unwrap_or_default(), image, ready),
            )
        })
        .collect())
}

/// Done when 1: a new image in the operator configuration rolls two 3-instance clusters,
/// one at a time (the fleet's limit is one), while a client writes to each master every
/// 100 ms: no acknowledged row is lost, one switchover per cluster, and a worker killed
/// mid-rotation finishes it after a restart without recreating pods already updated.
pub async fn rolling_update_loses_no_row() -> Result<()> {
    let (system_ns, ns) = ("e2e-roll-system", "e2e-roll");
    let clusters = ["acid-roll-a", "acid-roll-b"];
    let (old_image, new_image) = (
        "registry.local/spilo-15:e2e-1",
        "registry.local/spilo-15:e2e-2",
    );
    let client = env().client().await?;
    let mut pgop = start_pgop(
        &client,
        "roll",
        system_ns,
        ns,
        &[("docker_image", old_image)],
        // One cluster of the fleet replaces pods at a time.
        &[("PGOP_ROLLING_UPDATES", "1".into())],
    )
    .await?;
    for cluster in clusters {
        env().apply(ns, &manifest(ns, cluster, 3))?;
    }
    for cluster in clusters {
        wait_running(ns, cluster, Duration::from_secs(180)).await?;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for cluster in clusters {
        wait::until(
            &format!("3 Ready pods of {cluster}"),
            Duration::from_secs(120),
            || async {
                let images = pod_images(&pods, cluster).await?;
                Ok(
                    (images.len() == 3 && images.values().all(|(_, _, ready)| *ready))
                        .then_some(()),
                )
            },
        )
        .await?;
    }

    // A client per cluster, writing through the master Service.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for cluster in clusters {
        let (ip, password) = master_login(&client, ns, cluster).await?;
        connect(&ip, &password)
            .await?
            .batch_execute("CREATE TABLE rolled (id bigint PRIMARY KEY)")
            .await?;
        writers.push(tokio::spawn(write_continuously(
            client.clone(),
            ns.into(),
            cluster.into(),
            password,
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    operator_config(
        system_ns,
        &[("watched_namespace", ns), ("docker_image", new_image)],
    )?;
    // Kill the worker once the first pods run the new image, then bring it back.
    let updated_at_kill = wait::until(
        "the first pod recreated with the new image",
        Duration::from_secs(120),
        || async {
            let mut updated = BTreeMap::new();
            for cluster in clusters {
                for (name, (uid, image, ready)) in pod_images(&pods, cluster).await? {
                    if image == new_image && ready {
                        updated.insert(name, uid);
                    }
                }
            }
            Ok((!updated.is_empty()).then_some(updated))
        },
    )
    .await?;
    let first: BTreeSet<&str> = updated_at_kill
        .keys()
        .filter_map(|pod| {
            clusters
                .iter()
                .copied()
                .find(|c| pod.starts_with(&format!("{c}-")))
        })
        .collect();
    ensure!(
        first.len() == 1,
        "with one turn in the fleet, one cluster starts rolling first: {updated_at_kill:?}"
    );
    pgop.workers[0].kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    pgop.workers[0].start_again()?;

    for cluster in clusters {
        wait::until(
            &format!("every pod of {cluster} on the new image"),
            Duration::from_secs(300),
            || async {
                let images = pod_images(&pods, cluster).await?;
                let done = images.len() == 3
                    && images
                        .values()
                        .all(|(_, image, ready)| image == new_image && *ready);
                if done {
                    Ok(Some(()))
                } else {
                    bail!("pods: {images:?}")
                }
            },
        )
        .await?;
        wait_running(ns, cluster, Duration::from_secs(60)).await?;
    }
    let rolled_in = started.elapsed();
    stop.store(true, Ordering::Relaxed);

    let mut now = BTreeMap::new();
    for cluster in clusters {
        for (name, (uid, _, _)) in pod_images(&pods, cluster).await? {
            now.insert(name, uid);
        }
    }
    for (name, uid) in &updated_at_kill {
        ensure!(
            now.get(name) == Some(uid),
            "pod {name}, already updated when the worker was killed, was recreated again"
        );
    }

    for (cluster, writer) in clusters.into_iter().zip(writers) {
        let writes = writer.await?;
        ensure!(
            writes.acknowledged.len() > 50,
            "{cluster}: only {} writes acknowledged",
            writes.acknowledged.len()
        );
        let (ip, password) = master_login(&client, ns, cluster).await?;
        let rows: BTreeSet<i64> = connect(&ip, &password)
            .await?
            .query("SELECT id FROM rolled", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let lost: Vec<&i64> = writes
            .acknowledged
            .iter()
            .filter(|id| !rows.contains(id))
            .collect();
        ensure!(
            lost.is_empty(),
            "{cluster}: acknowledged rows lost: {lost:?}"
        );
        let events = events_of(ns, cluster)?;
        let switchovers = events
            .lines()
            .filter(|l| l.contains("RollingUpdate switched over"))
            .count();
        ensure!(
            switchovers == 1,
            "{cluster}: {switchovers} switchovers, one expected:\n{events}"
        );
        eprintln!(
            "[e2e] rolling update of {cluster}: {} rows acknowledged, none lost, {} writes failed, longest write gap {:.1}s (whole rotation of both clusters {:.0}s)",
            writes.acknowledged.len(),
            writes.failed,
            writes.longest_gap.as_secs_f64(),
            rolled_in.as_secs_f64()
        );
    }
    for cluster in clusters {
        env().kubectl(&["delete", "pg", "-n", ns, cluster])?;
    }
    for cluster in clusters {
        super::operator::wait_gone(&client, ns, cluster)
            .await
            .context("deleting the rolled clusters")?;
    }
    drop(pgop);
    Ok(())
}

/// `SHOW name` on the pod at `ip`.
async fn show(ip: &str, password: &str, name: &str) -> Result<String> {
    let db = connect(ip, password).await?;
    let row = db.query_one(&format!("SHOW {name}"), &[]).await?;
    Ok(row.get(0))
}

/// Patroni's member names as the pod at `ip` lists them.
async fn patroni_members(ip: &str) -> Result<Vec<String>> {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://{ip}:8008/cluster"),
        ])
        .output()?;
    let body: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("Patroni /cluster: {}", String::from_utf8_lossy(&out.stdout)))?;
    let mut names: Vec<String> = body["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

/// A 2-instance cluster follows its manifest without new pods where none are needed: a
/// Patroni parameter changed live (restart through Patroni, same pods), scaling 2→3→2 with
/// Patroni's membership following, a volume resize, and a shrink refused with a message.
pub async fn manifest_changes_without_new_pods() -> Result<()> {
    let (system_ns, ns, cluster) = ("e2e-change-system", "e2e-change", "acid-change");
    let client = env().client().await?;
    let pgop = start_pgop(&client, "change", system_ns, ns, &[], &[]).await?;
    env().apply(ns, &manifest(ns, cluster, 2))?;
    wait_running(ns, cluster, Duration::from_secs(180)).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let ready_pods = |count: usize| {
        let pods = pods.clone();
        async move {
            let images = pod_images(&pods, cluster).await?;
            Ok(
                (images.len() == count && images.values().all(|(_, _, ready)| *ready)).then(|| {
                    images
                        .into_iter()
                        .map(|(name, (uid, _, _))| (name, uid))
                        .collect::<BTreeMap<_, _>>()
                }),
            )
        }
    };
    let before = wait::until("2 Ready pods", Duration::from_secs(120), || ready_pods(2)).await?;
    let (_, password) = master_login(&client, ns, cluster).await?;

    // A parameter Patroni keeps in its DCS that needs a restart, and one that does not.
    pg_patch(
        ns,
        cluster,
        serde_json::json!({"spec": {"postgresql": {"parameters": {"max_connections": "120", "work_mem": "8MB"}}}}),
    )?;
    for pod in before.keys() {
        let ip = pod_images(&pods, cluster)
            .await?
            .contains_key(pod)
            .then(|| pod.clone())
            .context("pod gone")?;
        let ip = pods
            .get(&ip)
            .await?
            .status
            .and_then(|s| s.pod_ip)
            .context("pod without IP")?;
        wait::until(
            &format!("max_connections 120 and work_mem 8MB on {pod}"),
            Duration::from_secs(90),
            || async {
                let max = show(&ip, &password, "max_connections").await?;
                let work_mem = show(&ip, &password, "work_mem").await?;
                Ok((max == "120" && work_mem == "8MB").then_some(()))
            },
        )
        .await?;
    }
    wait_running(ns, cluster, Duration::from_secs(60)).await?;
    let after = ready_pods(2)
        .await?
        .context("pods after the parameter change")?;
    ensure!(
        after == before,
        "pods were recreated: {before:?} → {after:?}"
    );
    let events = events_of(ns, cluster)?;
    ensure!(
        events.contains("PatroniConfiguration Patroni configuration patched")
            && events.contains("PatroniConfiguration restarted PostgreSQL"),
        "no Patroni configuration events:\n{events}"
    );
    ensure!(
        !events.contains("RollingUpdate"),
        "a parameter change rolled pods:\n{events}"
    );

    // Scaling up and down; Patroni's membership follows.
    pg_patch(
        ns,
        cluster,
        serde_json::json!({"spec": {"numberOfInstances": 3}}),
    )?;
    let three = wait::until("3 Ready pods", Duration::from_secs(120), || ready_pods(3)).await?;
    let (master_ip, _) = master_login(&client, ns, cluster).await?;
    wait::until("3 Patroni members", Duration::from_secs(60), || async {
        Ok((patroni_members(&master_ip).await?.len() == 3).then_some(()))
    })
    .await?;
    // The master on the pod that scaling down removes: it hands over first.
    let leaving = format!("{cluster}-2");
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "60",
            "-XPOST",
            &format!("http://{master_ip}:8008/switchover"),
            "-d",
            &serde_json::json!({"leader": format!("{cluster}-0"), "candidate": leaving})
                .to_string(),
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "switchover to {leaving}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait::until(
        &format!("{leaving} labelled master"),
        Duration::from_secs(60),
        || async {
            let pod = pods.get(&leaving).await?;
            Ok((super::role(&pod) == Some("master") && is_ready(&pod)).then_some(()))
        },
    )
    .await?;
    pg_patch(
        ns,
        cluster,
        serde_json::json!({"spec": {"numberOfInstances": 2}}),
    )?;
    let two = wait::until("back to 2 Ready pods", Duration::from_secs(120), || {
        ready_pods(2)
    })
    .await?;
    let events = events_of(ns, cluster)?;
    ensure!(
        events.contains(&format!("ScaleDown switched over from {leaving} to")),
        "no switchover before scaling down:\n{events}"
    );
    ensure!(
        two.keys().all(|name| three.get(name) == two.get(name)),
        "scaling down recreated pods: {three:?} → {two:?}"
    );
    let (master_ip, _) = master_login(&client, ns, cluster).await?;
    wait::until("2 Patroni members", Duration::from_secs(90), || async {
        let members = patroni_members(&master_ip).await?;
        Ok((members == vec![format!("{cluster}-0"), format!("{cluster}-1")]).then_some(()))
    })
    .await?;
    wait_running(ns, cluster, Duration::from_secs(60)).await?;

    // The volume grows; a smaller size is refused with a message.
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(client.clone(), ns);
    pg_patch(
        ns,
        cluster,
        serde_json::json!({"spec": {"volume": {"size": "2Gi"}}}),
    )?;
    for i in 0..2 {
        let name = format!("pgdata-{cluster}-{i}");
        wait::until(
            &format!("{name} resized to 2Gi"),
            Duration::from_secs(60),
            || async {
                let claim = claims.get(&name).await?;
                let capacity = claim
                    .status
                    .and_then(|s| s.capacity)
                    .and_then(|c| c.get("storage").map(|q| q.0.clone()));
                Ok((capacity.as_deref() == Some("2Gi")).then_some(()))
            },
        )
        .await?;
    }
    pg_patch(
        ns,
        cluster,
        serde_json::json!({"spec": {"volume": {"size": "1Gi"}}}),
    )?;
    wait::until("the shrink refused", Duration::from_secs(60), || async {
        let events = events_of(ns, cluster)?;
        Ok(events
            .contains("Warning Refused volume.size 1Gi is smaller than the volume claim")
            .then_some(()))
    })
    .await?;
    let requested = claims
        .get(&format!("pgdata-{cluster}-0"))
        .await?
        .spec
        .and_then(|s| s.resources)
        .and_then(|r| r.requests)
        .and_then(|r| r.get("storage").map(|q| q.0.clone()));
    ensure!(
        requested.as_deref() == Some("2Gi"),
        "the claim was shrunk: {requested:?}"
    );
    let after_all = ready_pods(2).await?.context("pods at the end")?;
    ensure!(
        after_all == two,
        "volume changes recreated pods: {two:?} → {after_all:?}"
    );

    env().kubectl(&["delete", "pg", "-n", ns, cluster])?;
    super::operator::wait_gone(&client, ns, cluster).await?;
    drop(pgop);
    Ok(())
}

fn http_post(addr: &str, path: &str) -> Result<(u16, serde_json::Value)> {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-XPOST",
            "-w",
            "\n%{http_code}",
            &format!("http://{addr}{path}"),
        ])
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    let (body, code) = text.rsplit_once('\n').context("curl without a status")?;
    Ok((code.trim().parse()?, serde_json::from_str(body)?))
}

fn replicas(ns: &str, cluster: &str) -> Result<String> {
    env().kubectl(&[
        "get",
        "statefulset",
        "-n",
        ns,
        cluster,
        "-o",
        "jsonpath={.spec.replicas}",
    ])
}

/// Pausing a cluster, syncing one now (REST), its logs and history (REST), and delete
/// protection: a deletion without the annotations keeps the objects, one with them
/// removes everything.
pub async fn pause_sync_history_and_delete_protection() -> Result<()> {
    let (system_ns, ns, cluster) = ("e2e-ctl-system", "e2e-ctl", "acid-ctl");
    let client = env().client().await?;
    let pgop = start_pgop(
        &client,
        "ctl",
        system_ns,
        ns,
        &[
            ("delete_annotation_date_key", "delete-date"),
            ("delete_annotation_name_key", "delete-clustername"),
            ("enable_persistent_volume_claim_deletion", "true"),
        ],
        &[],
    )
    .await?;
    env().apply(ns, &manifest(ns, cluster, 1))?;
    wait_running(ns, cluster, Duration::from_secs(180)).await?;
    let gateway = pgop.gateway_addr.clone();

    // Paused: a change is not carried out until the annotation goes.
    env().kubectl(&["annotate", "pg", "-n", ns, cluster, "pgop.io/paused=true"])?;
    wait::until("the cluster paused", Duration::from_secs(30), || async {
        let (_, status) =
            super::operator::http_get(&gateway, &format!("/clusters/{ns}/{cluster}/"))?;
        Ok(status["Message"]
            .as_str()
            .is_some_and(|m| m.starts_with("paused"))
            .then_some(()))
    })
    .await?;
    pg_patch(
        ns,
        cluster,
        serde_json::json!({"spec": {"numberOfInstances": 2}}),
    )?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    ensure!(
        replicas(ns, cluster)? == "1",
        "a paused cluster was changed"
    );
    env().kubectl(&["annotate", "pg", "-n", ns, cluster, "pgop.io/paused-"])?;
    wait::until(
        "the change carried out once resumed",
        Duration::from_secs(30),
        || async { Ok((replicas(ns, cluster)? == "2").then_some(())) },
    )
    .await?;

    // A Service removed behind pgop's back comes back at once: its watch says so.
    env().kubectl(&["delete", "service", "-n", ns, &format!("{cluster}-repl")])?;
    wait::until(
        "the replica Service recreated",
        Duration::from_secs(20),
        || async {
            let found = Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), ns)
                .get_opt(&format!("{cluster}-repl"))
                .await?;
            Ok(found.map(|_| ()))
        },
    )
    .await?;
    // Sync now: a pass on request, even with nothing to do.
    let passes = || -> Result<u64> {
        let (_, status) =
            super::operator::http_get(&gateway, &format!("/clusters/{ns}/{cluster}/"))?;
        status["Reconciles"].as_u64().context("Reconciles")
    };
    let before = passes()?;
    let (code, body) = http_post(&gateway, &format!("/clusters/{ns}/{cluster}/sync/"))?;
    ensure!(code == 202, "sync request: {code} {body}");
    wait::until("a pass on request", Duration::from_secs(20), || async {
        Ok((passes()? > before).then_some(()))
    })
    .await?;

    // Logs and history over REST.
    let (code, history) =
        super::operator::http_get(&gateway, &format!("/clusters/{ns}/{cluster}/history/"))?;
    ensure!(code == 200, "history: {code} {history}");
    let entries = history.as_array().context("history is a list")?;
    // Trigger None: any event.
    let has = |kind: &str, trigger: Option<&str>, detail: &str| {
        entries.iter().any(|e| {
            e["Kind"] == kind
                && trigger.is_none_or(|t| e["Trigger"] == t)
                && e["Detail"].as_str().is_some_and(|d| d.contains(detail))
        })
    };
    ensure!(
        has("status", None, "Running")
            && has("paused", Some("UPDATE"), "")
            && has(
                "written",
                Some(&format!("Service/{cluster}-repl")),
                &format!("Service/{cluster}-repl")
            ),
        "history lacks entries: {history:#}"
    );
    let (code, logs) =
        super::operator::http_get(&gateway, &format!("/clusters/{ns}/{cluster}/logs/"))?;
    ensure!(code == 200, "logs: {code} {logs}");
    ensure!(
        logs.as_array()
            .is_some_and(|lines| lines.iter().any(|l| l["Message"]
                .as_str()
                .is_some_and(|m| m.contains("objects written")))),
        "logs lack the writes: {logs:#}"
    );

    // Delete protection: without the annotations the objects stay.
    env().kubectl(&["delete", "pg", "-n", ns, cluster])?;
    wait::until("the deletion refused", Duration::from_secs(30), || async {
        Ok(events_of(ns, cluster)?
            .contains("Warning DeleteRefused annotation delete-date is not set")
            .then_some(()))
    })
    .await?;
    ensure!(
        replicas(ns, cluster)? == "2",
        "the StatefulSet of a protected cluster was removed"
    );
    // With them (and the manifest back), everything goes.
    let today = today_utc()?;
    let annotated = manifest(ns, cluster, 2).replace(
        "metadata:\n",
        &format!(
            "metadata:\n  annotations:\n    delete-date: \"{today}\"\n    delete-clustername: {cluster}\n"
        ),
    );
    env().apply(ns, &annotated)?;
    wait_running(ns, cluster, Duration::from_secs(120)).await?;
    env().kubectl(&["delete", "pg", "-n", ns, cluster])?;
    super::operator::wait_gone(&client, ns, cluster).await?;
    drop(pgop);
    Ok(())
}

/// Today as `YYYY-MM-DD` in UTC.
fn today_utc() -> Result<String> {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()?;
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// The process kubelet's nodes, labelled ready for `label` (the simulated ones are not).
async fn label_nodes(label: &str) -> Result<Vec<String>> {
    let nodes = env().kubectl(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}",
    ])?;
    let names: Vec<String> = nodes
        .lines()
        .filter(|n| n.starts_with("pgop-node-"))
        .map(str::to_string)
        .collect();
    for name in &names {
        env().kubectl(&[
            "label",
            "node",
            name,
            &format!("{label}=true"),
            "--overwrite",
        ])?;
    }
    Ok(names)
}

/// Done when: a node that hosts a master loses its readiness label; the master is switched
/// over to a replica on a ready node and the old master's pod moves off the node.
pub async fn node_losing_readiness_moves_the_master() -> Result<()> {
    let (system_ns, ns, cluster) = ("e2e-drain-system", "e2e-drain", "acid-drain");
    let label = "pgop-e2e-ready";
    let client = env().client().await?;
    label_nodes(label).await?;
    let pgop = start_pgop(
        &client,
        "drain",
        system_ns,
        ns,
        &[
            ("node_readiness_label", &format!("{label}:true")),
            ("enable_pod_antiaffinity", "true"),
        ],
        &[],
    )
    .await?;
    env().apply(ns, &manifest(ns, cluster, 2))?;
    wait_running(ns, cluster, Duration::from_secs(180)).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let placement = || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("cluster-name={cluster}")))
            .await?;
        Ok::<_, anyhow::Error>(
            list.items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .map(|p| {
                    let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
                    let ready = is_ready(&p);
                    let role = super::role(&p).map(str::to_string);
                    (p.metadata.name.unwrap_or_default(), node, role, ready)
                })
                .collect::<Vec<_>>(),
        )
    };
    let before = wait::until(
        "2 Ready pods with roles",
        Duration::from_secs(120),
        || async {
            let now = placement().await?;
            Ok((now.len() == 2
                && now
                    .iter()
                    .all(|(_, n, r, ready)| n.is_some() && r.is_some() && *ready))
            .then_some(now))
        },
    )
    .await?;
    let (master, node) = before
        .iter()
        .find(|(_, _, role, _)| role.as_deref() == Some("master"))
        .map(|(name, node, _, _)| (name.clone(), node.clone().unwrap_or_default()))
        .context("no master")?;

    let restore_label = || {
        env().kubectl(&[
            "label",
            "node",
            &node,
            &format!("{label}=true"),
            "--overwrite",
        ])
    };
    // A maintenance window that is not now holds the master's move back.
    let today = std::process::Command::new("date")
        .args(["-u", "+%a"])
        .output()?;
    let today = String::from_utf8(today.stdout)?.trim().to_string();
    let other_day = if today == "Mon" { "Tue" } else { "Mon" };
    pg_patch(
        ns,
        cluster,
        serde_json::json!({"spec": {"maintenanceWindows": [format!("{other_day}:00:00-23:59")]}}),
    )?;
    env().kubectl(&["label", "node", &node, &format!("{label}-")])?;
    let held = wait::until(
        "the master move held back",
        Duration::from_secs(30),
        || async {
            let (_, status) = super::operator::http_get(
                &pgop.gateway_addr,
                &format!("/clusters/{ns}/{cluster}/"),
            )?;
            Ok(status["Message"]
                .as_str()
                .is_some_and(|m| m.contains("waits for the maintenance window"))
                .then_some(()))
        },
    )
    .await;
    let still = placement().await?;
    ensure!(
        still
            .iter()
            .any(|(name, n, _, _)| *name == master && n.as_deref() == Some(node.as_str())),
        "the master moved outside the maintenance window: {still:?}"
    );
    if let Err(e) = held {
        restore_label()?;
        return Err(e);
    }
    pg_patch(
        ns,
        cluster,
        serde_json::json!({"spec": {"maintenanceWindows": ["00:00-23:59"]}}),
    )?;
    let moved = wait::until(
        &format!("the master off {node} and no pod left there"),
        Duration::from_secs(120),
        || async {
            let now = placement().await?;
            let off = now
                .iter()
                .all(|(_, n, _, _)| n.as_deref() != Some(node.as_str()));
            let whole = now.len() == 2
                && now
                    .iter()
                    .all(|(_, n, r, ready)| n.is_some() && r.is_some() && *ready);
            let master_elsewhere = now.iter().any(|(_, n, r, _)| {
                r.as_deref() == Some("master") && n.as_deref() != Some(node.as_str())
            });
            if off && whole && master_elsewhere {
                Ok(Some(now))
            } else {
                bail!("pods: {now:?}")
            }
        },
    )
    .await;
    // The node gets its label back whatever happened.
    restore_label()?;
    let moved = moved?;
    let events = events_of(ns, cluster)?;
    ensure!(
        events.contains(&format!("NodeDecommission switched over from {master} to")),
        "no switchover before the move:\n{events}\n{moved:?}"
    );
    wait_running(ns, cluster, Duration::from_secs(60)).await?;
    env().kubectl(&["delete", "pg", "-n", ns, cluster])?;
    super::operator::wait_gone(&client, ns, cluster).await?;
    drop(pgop);
    Ok(())
}
