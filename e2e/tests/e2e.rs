//! End-to-end tests on a fresh local environment (real kube-apiserver, controller-manager,
//! scheduler, the local kubelet running Patroni/PostgreSQL as processes). One environment
//! per run; tests run in parallel, each in its own namespace.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, PersistentVolumeClaim, Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use libtest_mimic::{Arguments, Failed, Trial};
use pgop_e2e::pgop::{free_port, grpcurl, PgopProcess};
use pgop_e2e::{wait, Environment, EnvironmentOptions};

#[path = "e2e/compat.rs"]
mod compat;
#[path = "e2e/drift.rs"]
mod drift;
#[path = "e2e/ha.rs"]
mod ha;
#[path = "e2e/incluster.rs"]
mod incluster;
#[path = "e2e/invalid.rs"]
mod invalid;
#[path = "e2e/lifecycle.rs"]
mod lifecycle;
#[path = "e2e/operator.rs"]
mod operator;
#[path = "e2e/roles.rs"]
mod roles;

static ENV: OnceLock<Environment> = OnceLock::new();

fn env() -> &'static Environment {
    ENV.get().expect("environment started")
}

fn main() {
    let args = Arguments::from_args();
    type Test = (&'static str, fn() -> Result<()>);
    let tests: Vec<Test> = vec![
        (
            "spilo_statefulset_replicates_fails_over_and_cleans_up",
            || block_on(spilo_statefulset_lifecycle()),
        ),
        ("simulated_nodes_run_spilo_pods_without_processes", || {
            block_on(simulated_pods())
        }),
        (
            "stand_in_containers_report_exit_codes_and_fail_liveness",
            || block_on(stand_in_exit_codes()),
        ),
        ("claims_are_provisioned_resized_and_released", || {
            block_on(claim_lifecycle())
        }),
        (
            "crd_watcher_and_scheduler_lose_no_cluster_across_restarts",
            || block_on(control_plane_streams()),
        ),
        ("pgop_runs_the_minimal_manifest_end_to_end", || {
            block_on(operator::minimal_manifest_end_to_end())
        }),
        (
            "pgop_moves_clusters_between_workers_and_loses_no_event",
            || block_on(operator::clusters_move_between_workers()),
        ),
        (
            "zalando_complete_manifest_and_configuration_unchanged",
            || block_on(compat::zalando_complete_manifest()),
        ),
        ("roles_databases_and_passwords_inside_postgresql", || {
            block_on(roles::roles_and_databases())
        }),
        ("rolling_update_after_an_image_change_loses_no_row", || {
            block_on(lifecycle::rolling_update_loses_no_row())
        }),
        (
            "parameters_scaling_and_volumes_change_without_new_pods",
            || block_on(lifecycle::manifest_changes_without_new_pods()),
        ),
        ("pause_sync_now_history_and_delete_protection", || {
            block_on(lifecycle::pause_sync_history_and_delete_protection())
        }),
        ("a_node_losing_its_readiness_label_moves_the_master", || {
            block_on(lifecycle::node_losing_readiness_moves_the_master())
        }),
        ("invalid_manifests_cost_one_pass_and_one_event", || {
            block_on(invalid::invalid_manifests_cost_one_pass_and_one_event())
        }),
        (
            "drift_is_repaired_in_seconds_and_a_resync_in_sync_sends_nothing",
            || block_on(drift::drift_is_repaired_and_a_resync_in_sync_sends_nothing()),
        ),
        ("watcher_standby_takes_over_and_loses_no_change", || {
            block_on(ha::watcher_standby_takes_over_and_loses_no_change())
        }),
        (
            "scheduler_standby_takes_over_and_no_cluster_has_two_owners",
            || block_on(ha::scheduler_standby_takes_over_and_no_cluster_has_two_owners()),
        ),
        (
            "a_frozen_scheduler_is_fenced_and_stands_by_when_it_wakes",
            || block_on(ha::a_frozen_scheduler_is_fenced_and_stands_by_when_it_wakes()),
        ),
        (
            "pgop_deployed_with_kubectl_apply_k_scales_rolls_and_survives_its_leaders",
            || block_on(incluster::pgop_deployed_with_kubectl_apply_k()),
        ),
    ];
    let trials: Vec<Trial> = tests
        .into_iter()
        .map(|(name, f)| {
            Trial::test(name, move || {
                f().map_err(|e| Failed::from(format!("{e:#}")))
            })
        })
        .collect();
    // Listing or filtering everything out needs no environment.
    let selected = trials
        .iter()
        .any(|t| args.filter.as_deref().is_none_or(|f| t.name().contains(f)));
    if args.list || !selected {
        libtest_mimic::run(&args, trials).exit();
    }
    let state_dir = std::env::var_os("PGOP_E2E_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| pgop_e2e::env::workspace_root().join("target/e2e/state"));
    let started = Instant::now();
    let options = EnvironmentOptions {
        image_commands: vec![
            "e2e/exit-code=exit \"$EXIT_CODE\"".into(),
            "e2e/sleep=exec sleep 3600".into(),
        ],
        ..Default::default()
    };
    let environment = match Environment::start(&state_dir, options) {
        Ok(e) => e,
        Err(e) => {
            eprintln!(
                "[e2e] the local environment did not start: {e:#}\n[e2e] logs: {}/logs",
                state_dir.display()
            );
            std::process::exit(1);
        }
    };
    eprintln!(
        "[e2e] environment ready in {:.1}s; logs in {}/logs",
        started.elapsed().as_secs_f64(),
        state_dir.display()
    );
    let _ = ENV.set(environment);
    let conclusion = libtest_mimic::run(&args, trials);
    eprintln!("[e2e] total {:.1}s", started.elapsed().as_secs_f64());
    // Statics are never dropped: stop the processes explicitly.
    if let Some(env) = ENV.get() {
        env.stop();
    }
    conclusion.exit();
}

fn block_on(f: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(f)
}

async fn namespace(client: &Client, name: &str) -> Result<()> {
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    // Pods are admitted only once the namespace's default service account exists.
    let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), name);
    wait::until(
        "the default service account",
        Duration::from_secs(30),
        || async { Ok(sa.get_opt("default").await?.map(|_| ())) },
    )
    .await
}

fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status.as_ref()?.pod_ip.clone()
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn role(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get("spilo-role")
        .map(String::as_str)
}

/// (master, replica) once both pods are Ready with one master and one replica.
async fn master_and_replica(pods: &Api<Pod>, timeout: Duration) -> Result<(Pod, Pod)> {
    wait::until(
        "one Ready master and one Ready replica",
        timeout,
        || async {
            let list = pods
                .list(&ListParams::default().labels("cluster-name=acid-minimal-cluster"))
                .await?
                .items;
            let ready: Vec<&Pod> = list
                .iter()
                .filter(|p| is_ready(p) && p.metadata.deletion_timestamp.is_none())
                .collect();
            let masters: Vec<&&Pod> = ready.iter().filter(|p| role(p) == Some("master")).collect();
            let replicas: Vec<&&Pod> = ready
                .iter()
                .filter(|p| role(p) == Some("replica"))
                .collect();
            if list.len() == 2 && masters.len() == 1 && replicas.len() == 1 {
                Ok(Some(((*masters[0]).clone(), (*replicas[0]).clone())))
            } else {
                let states: Vec<String> = list
                    .iter()
                    .map(|p| {
                        format!(
                            "{}:{:?}:ready={}",
                            p.metadata.name.as_deref().unwrap_or("?"),
                            role(p),
                            is_ready(p)
                        )
                    })
                    .collect();
                bail!("pods: {states:?}")
            }
        },
    )
    .await
}

async fn connect(ip: &str, password: &str) -> Result<tokio_postgres::Client> {
    connect_as(ip, "postgres", password, "postgres").await
}

async fn connect_as(
    ip: &str,
    user: &str,
    password: &str,
    dbname: &str,
) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::Config::new()
        .host(ip)
        .port(5432)
        .user(user)
        .password(password)
        .dbname(dbname)
        .connect_timeout(Duration::from_secs(5))
        .connect(tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {ip}:5432"))?;
    tokio::spawn(connection);
    Ok(client)
}

async fn secret_value(client: &Client, namespace: &str, name: &str, key: &str) -> Result<String> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(name)
        .await?;
    let data = secret.data.unwrap_or_default();
    let value = data
        .get(key)
        .with_context(|| format!("secret {name} has no key {key}"))?;
    Ok(String::from_utf8(value.0.clone())?)
}

/// Processes of the pods of `namespace` still alive (Patroni's command line names its
/// pod directory), as "pid cmdline".
fn processes_of_namespace(namespace: &str) -> Vec<String> {
    let marker = env()
        .kubelet_dir
        .join("pods")
        .join(format!("{namespace}_"))
        .display()
        .to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&marker) {
            found.push(format!("{} {cmdline}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

async fn spilo_statefulset_lifecycle() -> Result<()> {
    let ns = "e2e-spilo";
    let client = env().client().await?;
    namespace(&client, ns).await?;
    let fixture = std::fs::read_to_string(
        pgop_e2e::env::workspace_root().join("e2e/fixtures/spilo-statefulset.yaml"),
    )?;
    env().apply(ns, &fixture.replace("__NAMESPACE__", ns))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);

    // Two pods Running, exactly one master.
    let started = Instant::now();
    let (master, replica) = master_and_replica(&pods, Duration::from_secs(180)).await?;
    eprintln!(
        "[e2e] cluster up with master {:?} in {:.1}s",
        master.metadata.name,
        started.elapsed().as_secs_f64()
    );
    ensure!(
        master.metadata.name.as_deref() == Some("acid-minimal-cluster-0"),
        "pod 0 bootstraps the cluster"
    );
    let (master_ip, replica_ip) = (
        pod_ip(&master).context("master ip")?,
        pod_ip(&replica).context("replica ip")?,
    );
    ensure!(master_ip != replica_ip, "each pod has its own address");

    // The master Service selects the master, through the controller-manager's endpoints.
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), ns);
    wait::until(
        "the master service's endpoints",
        Duration::from_secs(30),
        || async {
            let ep = endpoints.get("acid-minimal-cluster").await?;
            let ips: Vec<String> = ep
                .subsets
                .iter()
                .flatten()
                .flat_map(|s| s.addresses.iter().flatten())
                .map(|a| a.ip.clone())
                .collect();
            Ok((ips == vec![master_ip.clone()]).then_some(()))
        },
    )
    .await?;

    // Write on the master with the password from the Secret, read on the replica.
    let password = secret_value(
        &client,
        ns,
        "postgres.acid-minimal-cluster.credentials.postgresql.acid.zalan.do",
        "password",
    )
    .await?;
    let db = connect(&master_ip, &password).await?;
    db.batch_execute("CREATE TABLE e2e (id int PRIMARY KEY, note text); INSERT INTO e2e VALUES (1, 'written on the master')").await?;
    let bad = tokio_postgres::Config::new()
        .host(master_ip.as_str())
        .user("postgres")
        .password("wrong")
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await;
    ensure!(bad.is_err(), "a wrong password is refused");
    let read_note = |ip: String| {
        let password = password.clone();
        async move {
            let db = connect(&ip, &password).await?;
            let row = db
                .query_opt("SELECT note FROM e2e WHERE id = 1", &[])
                .await?;
            Ok(row.map(|r| r.get::<_, String>(0)))
        }
    };
    let note = wait::until("the row on the replica", Duration::from_secs(30), || {
        read_note(replica_ip.clone())
    })
    .await?;
    ensure!(note == "written on the master", "replica read {note:?}");

    // A pooler-shaped pgbouncer pod reaches the master through the Service name.
    check_pooler(&client, ns, &password).await?;

    // A crashed Patroni is restarted by the kubelet and the pod reports the restart.
    let replica_name = replica.metadata.name.clone().context("replica name")?;
    let patroni = processes_of_namespace(ns)
        .into_iter()
        .find(|p| p.contains("patroni") && p.contains(&format!("{ns}_{replica_name}_")))
        .context("the replica's Patroni process")?;
    let pid: i32 = patroni
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .parse()?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    wait::until(
        "the replica restarted and Ready",
        Duration::from_secs(90),
        || async {
            let p = pods.get(&replica_name).await?;
            let restarts = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .map(|c| c.restart_count);
            Ok((restarts == Some(1) && is_ready(&p)).then_some(()))
        },
    )
    .await?;

    // Deleting pod 0 (the master) fails over to pod 1; the StatefulSet recreates pod 0 on
    // the same claim, and it rejoins as a replica with its data.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let volume_before = claims
        .get("pgdata-acid-minimal-cluster-0")
        .await?
        .spec
        .and_then(|s| s.volume_name);
    let old_uid = master.metadata.uid.clone();
    pods.delete("acid-minimal-cluster-0", &DeleteParams::default())
        .await?;
    let failover_started = Instant::now();
    let (new_master, new_replica) = wait::until(
        "failover and pod 0 recreated",
        Duration::from_secs(180),
        || async {
            let (m, r) = match master_and_replica(&pods, Duration::from_secs(1)).await {
                Ok(pair) => pair,
                Err(_) => return Ok(None),
            };
            Ok(
                (r.metadata.name.as_deref() == Some("acid-minimal-cluster-0")
                    && r.metadata.uid != old_uid)
                    .then_some((m, r)),
            )
        },
    )
    .await?;
    eprintln!(
        "[e2e] failover and pod 0 back as replica in {:.1}s",
        failover_started.elapsed().as_secs_f64()
    );
    ensure!(
        new_master.metadata.name.as_deref() == Some("acid-minimal-cluster-1"),
        "pod 1 took over"
    );
    let volume_after = claims
        .get("pgdata-acid-minimal-cluster-0")
        .await?
        .spec
        .and_then(|s| s.volume_name);
    ensure!(
        volume_before == volume_after && volume_after.is_some(),
        "pod 0 kept its volume: {volume_before:?} → {volume_after:?}"
    );
    let db = connect(&pod_ip(&new_master).context("ip")?, &password).await?;
    db.execute("INSERT INTO e2e VALUES (2, 'after failover')", &[])
        .await?;
    let note = wait::until("pod 0 reading its data", Duration::from_secs(30), || {
        read_note(pod_ip(&new_replica).unwrap_or_default())
    })
    .await?;
    ensure!(
        note == "written on the master",
        "recreated pod 0 read {note:?}"
    );

    // Deleting the StatefulSet removes the pods and stops every process.
    let ips = [pod_ip(&new_master), pod_ip(&new_replica)];
    Api::<StatefulSet>::namespaced(client.clone(), ns)
        .delete("acid-minimal-cluster", &DeleteParams::foreground())
        .await?;
    wait::until(
        "pods and processes gone",
        Duration::from_secs(120),
        || async {
            let left = pods.list(&ListParams::default()).await?.items.len();
            let procs = processes_of_namespace(ns);
            if left == 0 && procs.is_empty() {
                Ok(Some(()))
            } else {
                bail!("{left} pods, processes {procs:?}")
            }
        },
    )
    .await?;
    for ip in ips.into_iter().flatten() {
        let refused = tokio::net::TcpStream::connect((ip.as_str(), 5432))
            .await
            .is_err();
        ensure!(refused, "nothing listens on {ip}:5432 any more");
    }
    Ok(())
}

/// A pod shaped like Zalando's connection pooler (pgbouncer image, PG* and
/// CONNECTION_POOLER_* environment): queries through it reach the master.
async fn check_pooler(client: &Client, ns: &str, password: &str) -> Result<()> {
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: pooler}}
spec:
  nodeSelector: {{pgop.local/kubelet-mode: processes}}
  containers:
  - name: connection-pooler
    image: registry.opensource.zalan.do/acid/pgbouncer:master-27
    ports: [{{containerPort: 5432, protocol: TCP}}]
    env:
    - {{name: PGHOST, value: acid-minimal-cluster.{ns}}}
    - {{name: PGPORT, value: "5432"}}
    - {{name: PGUSER, value: postgres}}
    - {{name: PGSCHEMA, value: pooler}}
    - name: PGPASSWORD
      valueFrom: {{secretKeyRef: {{name: postgres.acid-minimal-cluster.credentials.postgresql.acid.zalan.do, key: password}}}}
    - {{name: CONNECTION_POOLER_PORT, value: "5432"}}
    - {{name: CONNECTION_POOLER_MODE, value: transaction}}
"#
    );
    env().apply(ns, &manifest)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pooler = wait::until("the pooler Ready", Duration::from_secs(60), || async {
        let p = pods.get("pooler").await?;
        Ok(is_ready(&p).then_some(p))
    })
    .await?;
    let db = connect(&pod_ip(&pooler).context("pooler ip")?, password).await?;
    // Simple protocol: prepared statements do not survive pgbouncer's transaction mode.
    let rows = db.simple_query("SELECT note FROM e2e WHERE id = 1").await?;
    let note = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    ensure!(
        note.as_deref() == Some("written on the master"),
        "through pgbouncer: {note:?}"
    );
    pods.delete("pooler", &DeleteParams::default()).await?;
    Ok(())
}

async fn simulated_pods() -> Result<()> {
    let ns = "e2e-simulate";
    let client = env().client().await?;
    namespace(&client, ns).await?;
    let manifest = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: sim}
spec:
  replicas: 3
  serviceName: sim
  podManagementPolicy: Parallel
  selector: {matchLabels: {application: spilo, cluster-name: sim}}
  template:
    metadata: {labels: {application: spilo, cluster-name: sim}}
    spec:
      nodeSelector: {pgop.local/kubelet-mode: simulate}
      tolerations: [{key: pgop.local/simulated, operator: Exists, effect: NoSchedule}]
      containers:
      - name: postgres
        image: ghcr.io/zalando/spilo-15:3.0-p1
        env: [{name: KUBERNETES_ROLE_LABEL, value: spilo-role}]
"#;
    env().apply(ns, manifest)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let roles = wait::until(
        "three Ready simulated pods with roles",
        Duration::from_secs(60),
        || async {
            let list = pods.list(&ListParams::default()).await?.items;
            let roles: BTreeMap<String, String> = list
                .iter()
                .filter(|p| is_ready(p))
                .filter_map(|p| Some((p.metadata.name.clone()?, role(p)?.to_string())))
                .collect();
            Ok((roles.len() == 3).then_some((roles, list)))
        },
    )
    .await?;
    let (roles, list) = roles;
    let want: BTreeMap<String, String> = [
        ("sim-0", "master"),
        ("sim-1", "replica"),
        ("sim-2", "replica"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    ensure!(roles == want, "roles by ordinal: {roles:?}");
    for p in &list {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        ensure!(
            node.starts_with("sim-node-"),
            "{:?} ran on {node}",
            p.metadata.name
        );
    }
    ensure!(
        processes_of_namespace(ns).is_empty(),
        "simulated pods run no processes"
    );
    Api::<StatefulSet>::namespaced(client.clone(), ns)
        .delete("sim", &DeleteParams::foreground())
        .await?;
    wait::until("simulated pods gone", Duration::from_secs(60), || async {
        Ok(pods
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await
}

async fn stand_in_exit_codes() -> Result<()> {
    let ns = "e2e-stand-in";
    let client = env().client().await?;
    namespace(&client, ns).await?;
    let pod = |name: &str, code: u8| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  restartPolicy: Never\n  nodeSelector: {{pgop.local/kubelet-mode: processes}}\n  containers:\n  - name: job\n    image: e2e/exit-code:1\n    env: [{{name: EXIT_CODE, value: \"{code}\"}}]\n"
        )
    };
    env().apply(
        ns,
        &format!("{}---\n{}", pod("succeeds", 0), pod("fails", 3)),
    )?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for (name, phase, code) in [("succeeds", "Succeeded", 0), ("fails", "Failed", 3)] {
        let p = wait::until(
            &format!("{name} finished"),
            Duration::from_secs(60),
            || async {
                let p = pods.get(name).await?;
                let done = matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                );
                Ok(done.then_some(p))
            },
        )
        .await?;
        let status = p.status.context("status")?;
        ensure!(
            status.phase.as_deref() == Some(phase),
            "{name}: phase {:?}",
            status.phase
        );
        let terminated = status
            .container_statuses
            .and_then(|c| c.into_iter().next())
            .and_then(|c| c.state)
            .and_then(|s| s.terminated)
            .context("terminated state")?;
        ensure!(
            terminated.exit_code == code,
            "{name}: exit code {}",
            terminated.exit_code
        );
    }

    // A container failing its livenessProbe is killed and restarted; the same container
    // without the probe runs on.
    let sleeper = |name: &str, probe: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 2\n  nodeSelector: {{pgop.local/kubelet-mode: processes}}\n  containers:\n  - name: main\n    image: e2e/sleep:1\n{probe}"
        )
    };
    let probe =
        "    livenessProbe: {tcpSocket: {port: 1}, periodSeconds: 1, failureThreshold: 2}\n";
    env().apply(
        ns,
        &format!(
            "{}---\n{}",
            sleeper("not-alive", probe),
            sleeper("alive", "")
        ),
    )?;
    let restarts = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .map(|c| c.restart_count)
            .unwrap_or_default()
    };
    let restarted = wait::until(
        "the container failing its liveness probe restarted",
        Duration::from_secs(60),
        || async {
            let p = pods.get("not-alive").await?;
            Ok((restarts(&p) >= 1).then_some(p))
        },
    )
    .await?;
    let last = restarted
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .and_then(|c| c.last_state)
        .and_then(|s| s.terminated)
        .context("the killed run's terminated state")?;
    ensure!(
        last.exit_code == 143,
        "killed with SIGTERM, exit code {}",
        last.exit_code
    );
    let alive = pods.get("alive").await?;
    ensure!(
        restarts(&alive) == 0 && alive.status.and_then(|s| s.phase).as_deref() == Some("Running"),
        "the container without a probe was restarted"
    );
    Ok(())
}

async fn claim_lifecycle() -> Result<()> {
    let ns = "e2e-storage";
    let client = env().client().await?;
    namespace(&client, ns).await?;
    env().apply(ns, "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n")?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let capacity = |c: &PersistentVolumeClaim| {
        c.status
            .as_ref()
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get("storage"))
            .map(|q| q.0.clone())
    };
    let bound = wait::until("the claim bound", Duration::from_secs(30), || async {
        let c = claims.get("data").await?;
        Ok((c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")).then_some(c))
    })
    .await?;
    ensure!(
        capacity(&bound).as_deref() == Some("1Gi"),
        "bound with {:?}",
        capacity(&bound)
    );
    ensure!(
        bound
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref())
            == Some("standard"),
        "default class applied"
    );
    let volume = bound
        .spec
        .and_then(|s| s.volume_name)
        .context("volume name")?;
    let patch = serde_json::json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}});
    claims
        .patch("data", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait::until(
        "the resize reflected in the claim's status",
        Duration::from_secs(30),
        || async {
            Ok((capacity(&claims.get("data").await?).as_deref() == Some("2Gi")).then_some(()))
        },
    )
    .await?;
    claims.delete("data", &DeleteParams::default()).await?;
    let volumes: Api<k8s_openapi::api::core::v1::PersistentVolume> = Api::all(client.clone());
    wait::until(
        "the released volume deleted",
        Duration::from_secs(60),
        || async { Ok(volumes.get_opt(&volume).await?.is_none().then_some(())) },
    )
    .await
}

/// Cluster keys the scheduler knows, from `grpcurl ... ListAssignments`.
fn scheduler_clusters(addr: &str) -> Result<Vec<String>> {
    let out = grpcurl(addr, &["pgop.v1.Scheduler/ListAssignments"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    // A deleted cluster stays listed as Deleting until a worker has cleaned up after it.
    let mut keys: Vec<String> = v["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["state"] != "Deleting")
        .filter_map(|c| c["cluster"].as_str().map(str::to_string))
        .collect();
    keys.sort();
    Ok(keys)
}

async fn control_plane_streams() -> Result<()> {
    let ns = "e2e-control";
    let client = env().client().await?;
    namespace(&client, ns).await?;
    let root = pgop_e2e::env::workspace_root();
    operator::install_crd().await?;
    env().apply(ns, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: postgres-operator}\ndata: {watched_namespace: e2e-control, resync_period: 30m}\n")?;

    // Every example manifest is accepted and shows Zalando's printer columns.
    for m in [
        "minimal-postgres-manifest.yaml",
        "complete-postgres-manifest.yaml",
        "standby-manifest.yaml",
        "clone-postgres-manifest.yaml",
    ] {
        env().kubectl(&[
            "apply",
            "-n",
            ns,
            "-f",
            &root.join("manifests").join(m).display().to_string(),
        ])?;
    }
    let table = env().kubectl(&["get", "pg", "-n", ns])?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(
        header
            == [
                "NAME",
                "TEAM",
                "VERSION",
                "PODS",
                "VOLUME",
                "CPU-REQUEST",
                "MEMORY-REQUEST",
                "AGE",
                "STATUS"
            ],
        "columns: {header:?}"
    );
    ensure!(
        table.lines().any(|l| l.starts_with("acid-test-cluster")
            && l.contains("10m")
            && l.contains("100Mi")),
        "{table}"
    );

    let watcher_addr = format!("127.0.0.1:{}", free_port()?);
    let scheduler_addr = format!("127.0.0.1:{}", free_port()?);
    let state = &env().state_dir;
    let mut watcher = PgopProcess::start(
        "watcher",
        "pgop-watcher",
        &[
            ("PGOP_GRPC_ADDR", watcher_addr.clone()),
            ("PGOP_NAMESPACE", ns.into()),
        ],
        state,
        &env().kubeconfig,
    )?;
    let mut scheduler = PgopProcess::start(
        "scheduler",
        "pgop-scheduler",
        &[
            ("PGOP_GRPC_ADDR", scheduler_addr.clone()),
            ("PGOP_WATCHER_ADDR", format!("http://{watcher_addr}")),
        ],
        state,
        &env().kubeconfig,
    )?;
    let expect = |names: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = names.iter().map(|n| format!("{ns}/{n}")).collect();
        v.sort();
        v
    };
    let wait_for = |want: Vec<String>, what: &'static str| {
        let addr = scheduler_addr.clone();
        async move {
            wait::until(what, Duration::from_secs(30), || {
                let (addr, want) = (addr.clone(), want.clone());
                async move {
                    let got = scheduler_clusters(&addr)?;
                    if got == want {
                        Ok(Some(()))
                    } else {
                        bail!("scheduler knows {got:?}")
                    }
                }
            })
            .await
        }
    };
    wait_for(
        expect(&[
            "acid-clone-cluster",
            "acid-minimal-cluster",
            "acid-standby-cluster",
            "acid-test-cluster",
        ]),
        "the scheduler to learn every cluster",
    )
    .await?;

    // Health and reflection answer grpcurl on both servers.
    for addr in [&watcher_addr, &scheduler_addr] {
        let services = grpcurl(addr, &["list"])?;
        ensure!(
            services.contains("grpc.health.v1.Health") && services.contains("pgop.v1."),
            "{addr}: {services}"
        );
        ensure!(
            grpcurl(addr, &["grpc.health.v1.Health/Check"])?.contains("SERVING"),
            "{addr} not serving"
        );
    }
    let state_json: serde_json::Value =
        serde_json::from_str(&grpcurl(&watcher_addr, &["pgop.v1.Watcher/GetState"])?)?;
    ensure!(
        state_json["namespaces"] == serde_json::json!([ns]),
        "watched namespaces from the ConfigMap: {state_json}"
    );

    // Changes while the scheduler is down reach it through the snapshot when it is back.
    scheduler.stop();
    env().kubectl(&["delete", "pg", "-n", ns, "acid-clone-cluster"])?;
    env().kubectl(&[
        "apply",
        "-n",
        ns,
        "-f",
        &root
            .join("manifests/minimal-postgres-manifest.yaml")
            .display()
            .to_string(),
    ])?;
    env().apply(ns, "apiVersion: acid.zalan.do/v1\nkind: postgresql\nmetadata: {name: acid-late}\nspec: {teamId: acid, numberOfInstances: 1, volume: {size: 1Gi}, postgresql: {version: \"15\"}}\n")?;
    scheduler.restart()?;
    wait_for(
        expect(&[
            "acid-late",
            "acid-minimal-cluster",
            "acid-standby-cluster",
            "acid-test-cluster",
        ]),
        "the restarted scheduler to see the changes",
    )
    .await?;

    // A deletion while the watcher is down is noticed when the watcher relists.
    let stopping = Instant::now();
    watcher.stop();
    ensure!(
        stopping.elapsed() < Duration::from_secs(5),
        "the watcher took {:?} to stop on SIGTERM",
        stopping.elapsed()
    );
    env().kubectl(&["delete", "pg", "-n", ns, "acid-late"])?;
    watcher.restart()?;
    wait_for(
        expect(&[
            "acid-minimal-cluster",
            "acid-standby-cluster",
            "acid-test-cluster",
        ]),
        "the deletion seen after the watcher restarted",
    )
    .await?;
    let all: serde_json::Value = serde_json::from_str(&grpcurl(
        &scheduler_addr,
        &["pgop.v1.Scheduler/ListAssignments"],
    )?)?;
    let late = all["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["cluster"] == format!("{ns}/acid-late").as_str());
    ensure!(
        late.is_some_and(|c| c["state"] == "Deleting"),
        "without a worker the deletion waits for one: {late:?}"
    );
    ensure!(
        watcher.exited().is_none() && scheduler.exited().is_none(),
        "both processes still running"
    );
    Ok(())
}

/// A merge patch of the `postgresql` object `ns/cluster`.
pub(crate) fn pg_patch(ns: &str, cluster: &str, patch: serde_json::Value) -> Result<()> {
    env().kubectl(&[
        "patch",
        "pg",
        "-n",
        ns,
        cluster,
        "--type",
        "merge",
        "-p",
        &patch.to_string(),
    ])?;
    Ok(())
}
