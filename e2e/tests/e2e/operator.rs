//! pgop itself end to end: watcher, scheduler, two workers and the gateway against the
//! local environment (the control-plane issue's "Done when" list).
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, PersistentVolumeClaim, Pod, Secret, Service,
};
use kube::api::ListParams;
use kube::{Api, Client, Resource};
use pgop_e2e::pgop::{grpcurl, Kubeconfigs, Pgop};
use pgop_e2e::{simulated_cluster, wait, Environment};
use serde_json::Value;

use super::{connect, env, namespace, role, secret_value};

pub(crate) fn root_file(path: &str) -> String {
    pgop_e2e::env::workspace_root()
        .join(path)
        .display()
        .to_string()
}

/// `kubectl apply` of cluster-wide objects that tests running in parallel share: two
/// first applies race (both try to create), so a conflict is retried.
pub async fn apply_cluster_wide(file: &str) -> Result<()> {
    let mut attempts = 0;
    loop {
        match env().kubectl(&["apply", "-f", &root_file(file)]) {
            Ok(_) => return Ok(()),
            Err(e) if attempts < 3 && format!("{e:#}").contains("AlreadyExists") => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The `postgresql` CRD, applied and established.
pub async fn install_crd() -> Result<()> {
    apply_cluster_wide("manifests/postgresql.crd.yaml").await?;
    wait::until("the CRD established", Duration::from_secs(30), || async {
        Ok(env()
            .kubectl(&[
                "get",
                "crd",
                "postgresqls.acid.zalan.do",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
            ])?
            .contains("True")
            .then_some(()))
    })
    .await
}

/// The operator's namespace `system_ns`, the CRD and the pods' ClusterRole.
pub(crate) async fn operator_namespace(client: &Client, system_ns: &str) -> Result<()> {
    namespace(client, system_ns).await?;
    install_crd().await?;
    apply_cluster_wide("manifests/postgres-pod-rbac.yaml").await
}

/// The master pod's address and the superuser's password of `cluster`.
pub(crate) async fn master_login(
    client: &Client,
    ns: &str,
    cluster: &str,
) -> Result<(String, String)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let master = pods
        .list(&ListParams::default().labels(&format!("cluster-name={cluster},spilo-role=master")))
        .await?
        .items
        .into_iter()
        .next()
        .context("no master pod")?;
    let ip = super::pod_ip(&master).context("master without IP")?;
    let password = super::secret_value(
        client,
        ns,
        &format!("postgres.{cluster}.credentials.postgresql.acid.zalan.do"),
        "password",
    )
    .await?;
    Ok((ip, password))
}

/// The CRD, the pods' ClusterRole and the operator ConfigMap in `system_ns`.
pub(crate) async fn prepare(
    client: &Client,
    system_ns: &str,
    config: &[(&str, &str)],
) -> Result<()> {
    operator_namespace(client, system_ns).await?;
    let data: BTreeMap<String, String> = config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("postgres-operator".into()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    env().apply(system_ns, &serde_json::to_string(&cm)?)?;
    Ok(())
}

/// A pgop of its own for one test: the operator configuration `config` in `system_ns`,
/// `workers` workers, watching only `ns` (created here), as the admin.
pub(crate) async fn start_own_pgop(
    name: &str,
    system_ns: &str,
    ns: &str,
    workers: usize,
    config: &[(&str, &str)],
) -> Result<Pgop> {
    let client = env().client().await?;
    prepare(&client, system_ns, config).await?;
    super::namespace(&client, ns).await?;
    Pgop::start(
        name,
        system_ns,
        workers,
        &env().state_dir,
        &Kubeconfigs::admin(&env().kubeconfig),
        Some(ns),
    )
}

/// The Events of an object, one "TYPE REASON MESSAGE" line each.
pub(crate) fn events_of(ns: &str, name: &str) -> Result<String> {
    env().kubectl(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        &format!("involvedObject.name={name}"),
        "-o",
        "jsonpath={range .items[*]}{.type} {.reason} {.message}{\"\\n\"}{end}",
    ])
}

pub(crate) fn cluster_status(ns: &str, name: &str) -> Result<String> {
    cluster_status_in(env(), ns, name)
}

/// `status.PostgresClusterStatus` of a cluster in the environment `in_env`.
pub(crate) fn cluster_status_in(in_env: &Environment, ns: &str, name: &str) -> Result<String> {
    in_env.kubectl(&[
        "get",
        "pg",
        "-n",
        ns,
        name,
        "-o",
        "jsonpath={.status.PostgresClusterStatus}",
    ])
}

pub(crate) async fn wait_running(ns: &str, name: &str, timeout: Duration) -> Result<()> {
    wait_running_in(env(), ns, name, timeout).await
}

pub(crate) async fn wait_running_in(
    in_env: &Environment,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    wait::until(&format!("{ns}/{name} Running"), timeout, || async move {
        let status = cluster_status_in(in_env, ns, name)?;
        if status == "Running" {
            Ok(Some(()))
        } else {
            bail!("status {status:?}")
        }
    })
    .await
}

pub(crate) fn grpc_json(addr: &str, args: &[&str]) -> Result<Value> {
    let out = grpcurl(addr, args)?;
    serde_json::from_str(&out).with_context(|| format!("grpcurl answer: {out}"))
}

/// cluster key → worker id, for clusters the scheduler has Assigned.
pub(crate) fn assignments(pgop: &Pgop) -> Result<BTreeMap<String, String>> {
    assignments_at(&pgop.scheduler_addr)
}

/// cluster key → worker id, for clusters the scheduler at `addr` has Assigned.
pub(crate) fn assignments_at(addr: &str) -> Result<BTreeMap<String, String>> {
    let v = grpc_json(addr, &["pgop.v1.Scheduler/ListAssignments"])?;
    Ok(v["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["state"] == "Assigned")
        .filter_map(|c| {
            Some((
                c["cluster"].as_str()?.to_string(),
                c["worker"].as_str()?.to_string(),
            ))
        })
        .collect())
}

pub(crate) fn http_get(addr: &str, path: &str) -> Result<(u16, Value)> {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-w",
            "\n%{http_code}",
            &format!("http://{addr}{path}"),
        ])
        .output()
        .context("running curl")?;
    ensure!(
        out.status.success(),
        "curl {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let (body, code) = text
        .rsplit_once('\n')
        .context("curl output without a status")?;
    let value = serde_json::from_str(body).with_context(|| format!("{path} answered {body}"))?;
    Ok((code.trim().parse()?, value))
}

pub(crate) fn labelled(cluster: &str) -> ListParams {
    ListParams::default().labels(&format!("cluster-name={cluster}"))
}

/// Names of every object pgop or Patroni made for `cluster` that still exists.
pub(crate) async fn leftovers(client: &Client, ns: &str, cluster: &str) -> Result<Vec<String>> {
    async fn names<K>(client: &Client, ns: &str, cluster: &str) -> Result<Vec<String>>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        Ok(api
            .list_metadata(&labelled(cluster))
            .await?
            .items
            .into_iter()
            .map(|o| format!("{}/{}", K::kind(&()), o.metadata.name.unwrap_or_default()))
            .collect())
    }
    let mut all = names::<StatefulSet>(client, ns, cluster).await?;
    all.extend(names::<Pod>(client, ns, cluster).await?);
    all.extend(names::<Service>(client, ns, cluster).await?);
    all.extend(names::<Endpoints>(client, ns, cluster).await?);
    all.extend(names::<ConfigMap>(client, ns, cluster).await?);
    all.extend(names::<Secret>(client, ns, cluster).await?);
    all.extend(names::<PersistentVolumeClaim>(client, ns, cluster).await?);
    // Kinds whose served version differs between Kubernetes releases: kubectl picks it.
    let others = env().kubectl(&[
        "get",
        "deployments,poddisruptionbudgets,cronjobs",
        "-n",
        ns,
        "-l",
        &format!("cluster-name={cluster}"),
        "-o",
        "name",
    ])?;
    all.extend(others.lines().map(str::to_string));
    Ok(all)
}

pub(crate) async fn wait_gone(client: &Client, ns: &str, cluster: &str) -> Result<()> {
    wait::until(
        &format!("every object of {ns}/{cluster} removed"),
        Duration::from_secs(120),
        || async {
            let left = leftovers(client, ns, cluster).await?;
            if left.is_empty() {
                Ok(Some(()))
            } else {
                bail!("left: {left:?}")
            }
        },
    )
    .await
}

/// Done when 1 and 3: the minimal manifest becomes a running cluster one can log into,
/// everything is inspectable with grpcurl and curl, and deleting the manifest removes it.
pub async fn minimal_manifest_end_to_end() -> Result<()> {
    // The watcher and the workers run as the service accounts of manifests/rbac/, which
    // live in pgop-system: this proves the RBAC files grant what the processes need.
    let (system_ns, ns, cluster) = ("pgop-system", "e2e-pgop", "acid-minimal-cluster");
    let client = env().client().await?;
    prepare(
        &client,
        system_ns,
        &[
            ("watched_namespace", ns),
            ("logical_backup_s3_secret_access_key", "e2e-very-secret"),
        ],
    )
    .await?;
    namespace(&client, ns).await?;
    for process in ["watcher", "scheduler", "worker", "api-gateway"] {
        env().kubectl(&[
            "apply",
            "-f",
            &root_file(&format!("manifests/rbac/{process}.yaml")),
        ])?;
    }
    let kubeconfigs = Kubeconfigs {
        watcher: env()
            .service_account_kubeconfig(system_ns, "pgop-watcher")
            .await?,
        worker: env()
            .service_account_kubeconfig(system_ns, "pgop-worker")
            .await?,
        none: "/dev/null".into(),
    };
    let pgop = Pgop::start(
        "minimal",
        system_ns,
        2,
        &env().state_dir,
        &kubeconfigs,
        None,
    )?;

    env().kubectl(&[
        "apply",
        "-n",
        ns,
        "-f",
        &root_file("manifests/minimal-postgres-manifest.yaml"),
    ])?;
    wait_running(ns, cluster, Duration::from_secs(240)).await?;

    // The objects Zalando's operator would make.
    let sts = Api::<StatefulSet>::namespaced(client.clone(), ns)
        .get(cluster)
        .await?;
    let spec = sts.spec.clone().context("StatefulSet without spec")?;
    ensure!(spec.replicas == Some(2), "replicas {:?}", spec.replicas);
    ensure!(
        spec.update_strategy.and_then(|s| s.type_).as_deref() == Some("OnDelete"),
        "update strategy"
    );
    let labels = sts.metadata.labels.clone().unwrap_or_default();
    for (k, v) in [
        ("application", "spilo"),
        ("cluster-name", cluster),
        ("team", "acid"),
    ] {
        ensure!(
            labels.get(k).map(String::as_str) == Some(v),
            "label {k}: {labels:?}"
        );
    }
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let replica = services.get(&format!("{cluster}-repl")).await?;
    let selector = replica.spec.and_then(|s| s.selector).unwrap_or_default();
    ensure!(
        selector.get("spilo-role").map(String::as_str) == Some("replica"),
        "replica selector {selector:?}"
    );
    services.get(cluster).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    for user in ["postgres", "standby", "zalando", "foo-user"] {
        let name = format!("{user}.{cluster}.credentials.postgresql.acid.zalan.do");
        secrets
            .get(&name)
            .await
            .with_context(|| format!("secret {name}"))?;
    }

    // Log in with the generated password, on the master Patroni published.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods.list(&labelled(cluster)).await?.items;
    ensure!(list.len() == 2, "{} pods", list.len());
    let master = list
        .iter()
        .find(|p| role(p) == Some("master"))
        .context("no master pod")?;
    let master_ip = master
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("master without IP")?;
    let password = secret_value(
        &client,
        ns,
        &format!("postgres.{cluster}.credentials.postgresql.acid.zalan.do"),
        "password",
    )
    .await?;
    let db = connect(&master_ip, &password).await?;
    let in_recovery: bool = db
        .query_one("select pg_is_in_recovery()", &[])
        .await?
        .get(0);
    ensure!(!in_recovery, "connected to a replica");

    // Printer columns.
    let table = env().kubectl(&["get", "pg", "-n", ns])?;
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with(cluster))
        .context("no row")?
        .split_whitespace()
        .collect();
    ensure!(
        row[1..5] == ["acid", "15", "2", "1Gi"] && row.last() == Some(&"Running"),
        "{table}"
    );

    // grpcurl: services, and inspection of the scheduler and the owning worker.
    for addr in [&pgop.scheduler_addr, &pgop.worker_addrs[0]] {
        let services = grpcurl(addr, &["list"])?;
        ensure!(
            services.contains("grpc.health.v1.Health")
                && services.contains("grpc.reflection.v1alpha.ServerReflection")
                && services.contains("pgop.v1."),
            "{addr}: {services}"
        );
    }
    let key = format!("{ns}/{cluster}");
    let owner = assignments(&pgop)?
        .get(&key)
        .cloned()
        .context("cluster not assigned")?;
    let owner_addr = &pgop.worker_addrs[pgop
        .worker_ids
        .iter()
        .position(|w| *w == owner)
        .context("unknown owner")?];
    let state = grpc_json(
        owner_addr,
        &[
            "-d",
            &format!(r#"{{"namespace":"{ns}","name":"{cluster}"}}"#),
            "pgop.v1.Worker/GetCluster",
        ],
    )?;
    ensure!(
        state["status"] == "Running" && state["team"] == "acid",
        "{state}"
    );
    ensure!(
        !state.to_string().contains(&password),
        "a secret in a gRPC answer"
    );

    // The gateway's REST answers.
    let (code, clusters) = http_get(&pgop.gateway_addr, "/clusters/")?;
    // Zalando's shapes: team → names without the `{team}-` prefix.
    ensure!(
        code == 200 && clusters == serde_json::json!({"acid": ["minimal-cluster"]}),
        "{code} {clusters}"
    );
    let (code, team) = http_get(&pgop.gateway_addr, "/clusters/acid/")?;
    ensure!(
        code == 200 && team == serde_json::json!(["minimal-cluster"]),
        "{code} {team}"
    );
    let (code, queues) = http_get(&pgop.gateway_addr, "/workers/all/queue/")?;
    let ids: BTreeSet<&str> = queues
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let want: BTreeSet<&str> = pgop.worker_ids.iter().map(String::as_str).collect();
    ensure!(code == 200 && ids == want, "{code} {queues}");
    for path in [
        format!("/clusters/{ns}/{cluster}/"),
        format!("/clusters/acid/{ns}/minimal-cluster/"),
    ] {
        let (code, one) = http_get(&pgop.gateway_addr, &path)?;
        ensure!(
            code == 200
                && one["Status"]["PostgresClusterStatus"] == "Running"
                && one["Cluster"] == cluster,
            "{path}: {code} {one}"
        );
        ensure!(
            !one.to_string().contains(&password),
            "a secret in a REST answer"
        );
    }
    let (code, _) = http_get(
        &pgop.gateway_addr,
        &format!("/clusters/{ns}/no-such-cluster/"),
    )?;
    ensure!(code == 404, "unknown cluster answered {code}");
    let (code, config) = http_get(&pgop.gateway_addr, "/config/")?;
    ensure!(
        code == 200
            && config["source"] == "configmap"
            && config["operator"]["watched_namespace"] == ns
            && config["operator"]["logical_backup_s3_secret_access_key"] == "<redacted>"
            && !config.to_string().contains("e2e-very-secret"),
        "{code} {config}"
    );

    // Deleting the manifest removes everything.
    env().kubectl(&["delete", "pg", "-n", ns, cluster])?;
    wait_gone(&client, ns, cluster).await?;

    // Every process stops cleanly and promptly on SIGTERM.
    let mut pgop = pgop;
    for process in
        pgop.workers
            .iter_mut()
            .chain([&mut pgop.gateway, &mut pgop.scheduler, &mut pgop.watcher])
    {
        process.terminate(Duration::from_secs(5))?;
    }
    Ok(())
}

pub(crate) async fn replicas(client: &Client, ns: &str, name: &str) -> Result<Option<i32>> {
    Ok(Api::<StatefulSet>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
        .and_then(|s| s.spec?.replicas))
}

pub(crate) async fn wait_replicas(
    client: &Client,
    ns: &str,
    name: &str,
    want: Option<i32>,
) -> Result<()> {
    wait::until(
        &format!("{ns}/{name} with replicas {want:?}"),
        Duration::from_secs(60),
        || async {
            let got = replicas(client, ns, name).await?;
            if got == want {
                Ok(Some(()))
            } else {
                bail!("replicas {got:?}")
            }
        },
    )
    .await
}

/// resourceVersions of a cluster's StatefulSet, Services and Secrets.
pub(crate) async fn versions(
    client: &Client,
    ns: &str,
    cluster: &str,
) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let sts = Api::<StatefulSet>::namespaced(client.clone(), ns)
        .get(cluster)
        .await?;
    out.insert(
        "sts".into(),
        sts.metadata.resource_version.unwrap_or_default(),
    );
    for s in Api::<Service>::namespaced(client.clone(), ns)
        .list(&labelled(cluster))
        .await?
        .items
    {
        out.insert(
            format!("svc/{}", s.metadata.name.unwrap_or_default()),
            s.metadata.resource_version.unwrap_or_default(),
        );
    }
    for s in Api::<Secret>::namespaced(client.clone(), ns)
        .list(&labelled(cluster))
        .await?
        .items
    {
        out.insert(
            format!("secret/{}", s.metadata.name.unwrap_or_default()),
            s.metadata.resource_version.unwrap_or_default(),
        );
    }
    Ok(out)
}

/// Done when 2: twelve clusters over two workers; a killed worker's clusters move and a
/// change made meanwhile is applied; a restarted scheduler loses no event; a resync of
/// clusters in sync writes nothing.
pub async fn clusters_move_between_workers() -> Result<()> {
    let system_ns = "e2e-shard-system";
    let namespaces = ["e2e-shard-a", "e2e-shard-b", "e2e-shard-c"];
    let client = env().client().await?;
    prepare(
        &client,
        system_ns,
        &[
            ("watched_namespace", &namespaces.join(",")),
            ("kubernetes_use_configmaps", "true"),
            ("enable_finalizers", "true"),
            // Simulated pods run no PostgreSQL to manage roles in.
            ("enable_database_access", "false"),
        ],
    )
    .await?;
    for ns in namespaces {
        namespace(&client, ns).await?;
    }
    let kubeconfigs = Kubeconfigs::admin(&env().kubeconfig);
    let mut pgop = Pgop::start("shard", system_ns, 2, &env().state_dir, &kubeconfigs, None)?;
    let clusters: Vec<(&str, String)> = (0..12)
        .map(|i| (namespaces[i % 3], format!("acid-sim-{i}")))
        .collect();
    for (ns, name) in &clusters {
        env().apply(ns, &simulated_cluster(name, 1))?;
    }
    for (ns, name) in &clusters {
        wait_running(ns, name, Duration::from_secs(120)).await?;
    }
    // enable_finalizers: every running cluster carries Zalando's finalizer, and deletions
    // below go through it.
    for (ns, name) in &clusters {
        let finalizers = env().kubectl(&[
            "get",
            "pg",
            "-n",
            ns,
            name,
            "-o",
            "jsonpath={.metadata.finalizers}",
        ])?;
        ensure!(
            finalizers.contains("postgres-operator.acid.zalan.do"),
            "{ns}/{name}: {finalizers}"
        );
    }
    // A manifest the API server accepts but pgop cannot act on: status Invalid with the
    // reason in a Warning Event; the others carry on.
    let too_long = "acid-a-name-far-too-long-for-a-postgres-cluster-managed-by-pgop";
    env().apply(namespaces[0], &simulated_cluster(too_long, 1))?;
    wait::until(
        "the too-long name Invalid",
        Duration::from_secs(30),
        || async { Ok((cluster_status(namespaces[0], too_long)? == "Invalid").then_some(())) },
    )
    .await?;
    let events = events_of(namespaces[0], too_long)?;
    ensure!(
        events
            .lines()
            .any(|l| l.starts_with("Warning Invalid") && l.contains("58")),
        "events: {events}"
    );
    env().kubectl(&["delete", "pg", "-n", namespaces[0], too_long])?;
    // Schemaless parts (Kubernetes types inside the spec) pass the API server's validation
    // but not pgop's parsing: Invalid as well, and the namespace's watch keeps working.
    let garbled = simulated_cluster("acid-garbled", 1).replace(
        "effect: NoSchedule}]",
        "effect: NoSchedule, tolerationSeconds: soon}]",
    );
    env().apply(namespaces[1], &garbled)?;
    wait::until(
        "the garbled manifest Invalid",
        Duration::from_secs(30),
        || async {
            Ok((cluster_status(namespaces[1], "acid-garbled")? == "Invalid").then_some(()))
        },
    )
    .await?;
    let events = events_of(namespaces[1], "acid-garbled")?;
    ensure!(
        events.lines().any(|l| l.starts_with("Warning Invalid")
            && l.contains("spec.tolerations[0].tolerationSeconds"))
            && !events.contains("soon"),
        "the field is named, its value not repeated: {events}"
    );
    env().kubectl(&["delete", "pg", "-n", namespaces[1], "acid-garbled"])?;

    let spread = assignments(&pgop)?;
    ensure!(spread.len() == 12, "{spread:?}");
    for id in &pgop.worker_ids {
        ensure!(
            spread.values().any(|w| w == id),
            "{id} owns nothing: {spread:?}"
        );
    }

    // Kill a worker; change one of its clusters while it is down.
    let (victim_id, survivor_id) = (pgop.worker_ids[1].clone(), pgop.worker_ids[0].clone());
    let (moved_ns, moved) = clusters
        .iter()
        .find(|(ns, name)| spread[&format!("{ns}/{name}")] == victim_id)
        .cloned()
        .context("the victim owns a cluster")?;
    pgop.workers[1].kill();
    env().apply(moved_ns, &simulated_cluster(&moved, 2))?;
    wait::until(
        "every cluster on the surviving worker",
        Duration::from_secs(20),
        || async {
            let now = assignments(&pgop)?;
            Ok((now.len() == 12 && now.values().all(|w| *w == survivor_id)).then_some(()))
        },
    )
    .await?;
    wait_replicas(&client, moved_ns, &moved, Some(2)).await?;
    wait_running(moved_ns, &moved, Duration::from_secs(60)).await?;

    // The worker comes back and gets its share again.
    pgop.workers[1].start_again()?;
    wait::until(
        "clusters spread over both workers again",
        Duration::from_secs(30),
        || async {
            let now = assignments(&pgop)?;
            Ok((now.len() == 12 && now.values().any(|w| *w == victim_id)).then_some(()))
        },
    )
    .await?;

    // Changes while the scheduler is down: a new cluster, a scale-up and a deletion.
    let (quiet_ns, quiet) = clusters[5].clone();
    let before = versions(&client, quiet_ns, &quiet).await?;
    pgop.scheduler.stop();
    let (scaled_ns, scaled) = clusters[3].clone();
    let (deleted_ns, deleted) = clusters[4].clone();
    env().apply(namespaces[0], &simulated_cluster("acid-sim-new", 1))?;
    env().apply(scaled_ns, &simulated_cluster(&scaled, 2))?;
    env().kubectl(&["delete", "pg", "-n", deleted_ns, &deleted, "--wait=false"])?;
    pgop.scheduler.start_again()?;
    wait_running(namespaces[0], "acid-sim-new", Duration::from_secs(60)).await?;
    wait_replicas(&client, scaled_ns, &scaled, Some(2)).await?;
    wait_gone(&client, deleted_ns, &deleted).await?;
    wait::until(
        "all 12 clusters assigned",
        Duration::from_secs(30),
        || async { Ok((assignments(&pgop)?.len() == 12).then_some(())) },
    )
    .await?;
    // Every cluster was reconciled again after the restart; the untouched one got no write.
    let after = versions(&client, quiet_ns, &quiet).await?;
    ensure!(
        before == after,
        "an in-sync cluster was written: {before:?} → {after:?}"
    );

    // A full resync of the fleet in sync (a sync of every cluster, requested over REST)
    // writes nothing at all to the API server.
    let mut fleet: Vec<(String, String)> = clusters
        .iter()
        .filter(|(_, n)| *n != deleted)
        .map(|(ns, n)| (ns.to_string(), n.clone()))
        .collect();
    fleet.push((namespaces[0].to_string(), "acid-sim-new".into()));
    let reconciles = |ns: &str, name: &str| -> Result<u64> {
        let (_, status) = http_get(&pgop.gateway_addr, &format!("/clusters/{ns}/{name}/"))?;
        Ok(status["Reconciles"].as_u64().unwrap_or_default())
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes_before = pgop.kube_writes()?;
    let mut passes_before = Vec::new();
    for (ns, name) in &fleet {
        passes_before.push(reconciles(ns, name)?);
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "-XPOST",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://{}/clusters/{ns}/{name}/sync/", pgop.gateway_addr),
            ])
            .output()?;
        ensure!(
            String::from_utf8_lossy(&out.stdout) == "202",
            "sync of {ns}/{name}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    wait::until(
        "a pass of every cluster after the sync requests",
        Duration::from_secs(60),
        || async {
            for ((ns, name), before) in fleet.iter().zip(&passes_before) {
                if reconciles(ns, name)? <= *before {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await?;
    let writes_after = pgop.kube_writes()?;
    ensure!(
        writes_after == writes_before,
        "a resync of {} clusters in sync wrote {} times to the API server",
        fleet.len(),
        writes_after - writes_before
    );

    for (ns, name) in clusters.iter().filter(|(_, n)| *n != deleted) {
        env().kubectl(&["delete", "pg", "-n", ns, name, "--wait=false"])?;
    }
    env().kubectl(&[
        "delete",
        "pg",
        "-n",
        namespaces[0],
        "acid-sim-new",
        "--wait=false",
    ])?;
    for (ns, name) in &clusters {
        wait_gone(&client, ns, name).await?;
    }
    Ok(())
}
