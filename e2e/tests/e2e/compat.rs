//! Zalando's own manifests and configuration, unchanged, on the local environment: the
//! objects a user migrating from Zalando's operator gets (the manifest-to-objects issue).
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::ListParams;
use kube::Api;
use pgop_e2e::pgop::{Kubeconfigs, Pgop};
use pgop_e2e::simulated_cluster;
use pgop_e2e::wait;
use serde_json::Value;

use super::operator::{
    cluster_status, events_of, master_login, operator_namespace, wait_gone, wait_running,
};
use super::{connect_as, env, is_ready, namespace, pg_patch, pod_ip, secret_value};

/// A file of Zalando's corpus; the test asked for the corpus first.
fn corpus(file: &str) -> String {
    pgop_common::corpus::zalando_corpus(file)
        .expect("the corpus was there")
        .join(file)
        .display()
        .to_string()
}

fn kubectl_json(args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = env().kubectl(&all)?;
    serde_json::from_str(&out).context("kubectl JSON")
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

/// `complete-postgres-manifest.yaml` with Zalando's `configmap.yaml`: the objects, then the
/// pooler and the logical backup switched on and off, a manifest the configuration
/// forbids, and the deletion.
pub async fn zalando_complete_manifest() -> Result<()> {
    let (system_ns, ns, cluster) = ("e2e-compat-system", "e2e-compat", "acid-test-cluster");
    if pgop_common::corpus::zalando_corpus("zalando_complete_manifest_and_configuration_unchanged")
        .is_none()
    {
        return Ok(());
    }
    let client = env().client().await?;
    operator_namespace(&client, system_ns).await?;
    namespace(&client, ns).await?;
    env().kubectl(&["apply", "-n", system_ns, "-f", &corpus("configmap.yaml")])?;
    // The corpus watches every namespace; the environment variable narrows it to ours.
    let pgop = Pgop::start(
        "compat",
        system_ns,
        1,
        &env().state_dir,
        &Kubeconfigs::admin(&env().kubeconfig),
        Some(ns),
    )?;
    env().kubectl(&[
        "apply",
        "-n",
        ns,
        "-f",
        &corpus("complete-postgres-manifest.yaml"),
    ])?;
    wait_running(ns, cluster, Duration::from_secs(240)).await?;

    // The StatefulSet as Zalando's operator builds it from these two files.
    let sts = kubectl_json(&["get", "statefulset", "-n", ns, cluster])?;
    let pod = &sts["spec"]["template"]["spec"];
    let postgres = pod["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "postgres"))
        .context("no postgres container")?;
    ensure!(
        postgres["image"] == "ghcr.io/zalando/spilo-18:4.1-p2",
        "{}",
        postgres["image"]
    );
    ensure!(
        postgres["resources"]["requests"] == serde_json::json!({"cpu": "10m", "memory": "100Mi"})
            && postgres["resources"]["limits"]
                == serde_json::json!({"cpu": "500m", "memory": "500Mi"}),
        "resources {}",
        postgres["resources"]
    );
    ensure!(
        env_value(postgres, "PGVERSION").and_then(|v| v["value"].as_str()) == Some("18"),
        "PGVERSION"
    );
    let spilo: Value = serde_json::from_str(
        env_value(postgres, "SPILO_CONFIGURATION")
            .and_then(|v| v["value"].as_str())
            .context("SPILO_CONFIGURATION")?,
    )?;
    ensure!(
        spilo["postgresql"]["parameters"]["shared_buffers"] == "32MB"
            && spilo["bootstrap"]["dcs"]["maximum_lag_on_failover"] == 33554432,
        "SPILO_CONFIGURATION {spilo}"
    );
    let mounts: Vec<(&str, &str)> = postgres["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m["name"].as_str()?, m["mountPath"].as_str()?)))
        .collect();
    for want in [
        ("pgdata", "/home/postgres/pgdata"),
        ("dshm", "/dev/shm"),
        ("empty", "/opt/empty"),
    ] {
        ensure!(mounts.contains(&want), "mount {want:?} in {mounts:?}");
    }
    ensure!(
        pod["initContainers"][0]["name"] == "date",
        "init containers {}",
        pod["initContainers"]
    );
    ensure!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi",
        "claim"
    );
    // Endpoints mode (the corpus's kubernetes_use_configmaps: false): no master selector.
    let master = kubectl_json(&["get", "service", "-n", ns, cluster])?;
    ensure!(
        master["spec"]["selector"].is_null() && master["spec"]["type"] == "ClusterIP",
        "master service {}",
        master["spec"]
    );
    let budget = kubectl_json(&[
        "get",
        "poddisruptionbudget",
        "-n",
        ns,
        &format!("postgres-{cluster}-pdb"),
    ])?;
    ensure!(
        budget["spec"]["minAvailable"] == 1
            && budget["spec"]["selector"]["matchLabels"]["spilo-role"] == "master",
        "pdb {}",
        budget["spec"]
    );

    // Inside PostgreSQL: the manifest's database and the prepared one with its extensions.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let (master_ip, superuser) = master_login(&client, ns, cluster).await?;
    let extensions = wait::until(
        "pg_partman and pgcrypto in bar",
        Duration::from_secs(60),
        || async {
            let bar = connect_as(&master_ip, "postgres", &superuser, "bar").await?;
            let rows = bar
                .query("SELECT extname FROM pg_extension ORDER BY 1", &[])
                .await?;
            let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            Ok(
                (names.iter().any(|n| n == "pg_partman") && names.iter().any(|n| n == "pgcrypto"))
                    .then_some(names),
            )
        },
    )
    .await?;
    ensure!(!extensions.is_empty());
    let foo_owner: String = connect_as(&master_ip, "postgres", &superuser, "postgres")
        .await?
        .query_one(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'foo'",
            &[],
        )
        .await?
        .get(0);
    ensure!(foo_owner == "zalando", "foo is owned by {foo_owner}");

    // The connection pooler: pgbouncer pods that accept the pooler user.
    let patch = |spec: &str| -> Result<()> {
        pg_patch(
            ns,
            cluster,
            serde_json::json!({ "spec": serde_json::from_str::<serde_json::Value>(spec)? }),
        )
    };
    patch(r#"{"enableConnectionPooler":true,"enableLogicalBackup":true}"#)?;
    let pooler = format!("{cluster}-pooler");
    let ready = wait::until(
        "two Ready pooler pods",
        Duration::from_secs(120),
        || async {
            let list = pods
                .list(&ListParams::default().labels(&format!("connection-pooler={pooler}")))
                .await?
                .items;
            let ready: Vec<Pod> = list.into_iter().filter(is_ready).collect();
            Ok((ready.len() == 2).then_some(ready))
        },
    )
    .await?;
    let password = secret_value(
        &client,
        ns,
        &format!("pooler.{cluster}.credentials.postgresql.acid.zalan.do"),
        "password",
    )
    .await?;
    let ip = pod_ip(&ready[0]).context("pooler pod IP")?;
    let admin = connect_as(&ip, "pooler", &password, "pgbouncer").await?;
    let version = admin.simple_query("SHOW VERSION").await?;
    ensure!(!version.is_empty(), "pgbouncer answered nothing");
    // Any role logs in through the pooler: pgbouncer asks the lookup function pgop
    // installs in each database (auth_query) for the role's verifier.
    let zalando = secret_value(
        &client,
        ns,
        &format!("zalando.{cluster}.credentials.postgresql.acid.zalan.do"),
        "password",
    )
    .await?;
    let through_pooler = wait::until(
        "zalando logs in through the pooler",
        Duration::from_secs(90),
        || async { Ok(connect_as(&ip, "zalando", &zalando, "foo").await.ok()) },
    )
    .await?;
    let row = through_pooler
        .query_one("SELECT current_user::text", &[])
        .await?;
    ensure!(
        row.get::<_, String>(0) == "zalando",
        "logged in as {:?}",
        row.get::<_, String>(0)
    );
    Api::<Service>::namespaced(client.clone(), ns)
        .get(&pooler)
        .await?;
    let job = kubectl_json(&[
        "get",
        "cronjob",
        "-n",
        ns,
        &format!("logical-backup-{cluster}"),
    ])?;
    ensure!(job["spec"]["schedule"] == "30 00 * * *", "{}", job["spec"]);

    // Switched off again: the pooler and the backup job go away.
    patch(r#"{"enableConnectionPooler":false,"enableLogicalBackup":false}"#)?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait::until(
        "the pooler and the backup job removed",
        Duration::from_secs(60),
        || async {
            let deployment = deployments.get_opt(&pooler).await?;
            let jobs = env().kubectl(&["get", "cronjobs", "-n", ns, "-o", "name"])?;
            if deployment.is_none() && jobs.trim().is_empty() {
                Ok(Some(()))
            } else {
                bail!("deployment {}, cronjobs {jobs:?}", deployment.is_some())
            }
        },
    )
    .await?;

    // A manifest the configuration forbids: sidecars while enable_sidecars is off, on a
    // second cluster; the first one stays Running.
    env().kubectl(&[
        "patch",
        "configmap",
        "postgres-operator",
        "-n",
        system_ns,
        "--type",
        "merge",
        "-p",
        r#"{"data":{"enable_sidecars":"false"}}"#,
    ])?;
    let forbidden = simulated_cluster("acid-with-sidecar", 1).replace(
        "  tolerations:",
        "  sidecars: [{name: tail, image: busybox}]\n  tolerations:",
    );
    env().apply(ns, &forbidden)?;
    wait::until(
        "the sidecar cluster Invalid",
        Duration::from_secs(60),
        || async { Ok((cluster_status(ns, "acid-with-sidecar")? == "Invalid").then_some(())) },
    )
    .await?;
    let events = events_of(ns, "acid-with-sidecar")?;
    ensure!(
        events.contains("enable_sidecars"),
        "the reason in an Event: {events}"
    );
    ensure!(
        cluster_status(ns, cluster)? == "Running",
        "the other cluster is untouched"
    );
    ensure!(
        Api::<StatefulSet>::namespaced(client.clone(), ns)
            .get_opt("acid-with-sidecar")
            .await?
            .is_none(),
        "nothing built for the refused manifest"
    );

    env().kubectl(&["delete", "pg", "-n", ns, cluster, "acid-with-sidecar"])?;
    wait_gone(&client, ns, cluster).await?;
    drop(pgop);
    Ok(())
}
