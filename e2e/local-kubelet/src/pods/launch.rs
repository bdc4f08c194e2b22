//! Turns a container into a process to run: writes the runtime's configuration files and
//! returns the process spec and the readiness check.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Endpoints, Pod};
use kube::{Api, Client};
use serde_json::json;

use super::env::expand;
use super::probes::{liveness_of, readiness_of, Liveness, Readiness};
use super::volumes::Mounts;
use crate::runtime::image::{self, DEFAULT_PATH};
use crate::runtime::pgbouncer::{pgbouncer_config, PgbouncerError, PgbouncerInput};
use crate::runtime::process::{chown_tree, ProcessSpec};
use crate::runtime::sandbox::{Bind, Sandbox};
use crate::runtime::spilo::{
    bootstrap_users, bootstrap_users_sql, patroni_config, spilo_builtin_roles, SpiloError,
    SpiloInput,
};
use crate::runtime::{runtime_for, RuntimeKind};
use crate::Shared;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Spilo(#[from] SpiloError),
    #[error(transparent)]
    Pgbouncer(#[from] PgbouncerError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot resolve host {host:?}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("generating a TLS certificate failed: {0}")]
    Certificate(String),
    #[error("image {0:?} has no entrypoint here: the container must set `command`")]
    NoCommand(String),
    #[error("container has runAsNonRoot and would run as root")]
    RunsAsRoot,
}

#[derive(Debug, Clone)]
pub struct Launch {
    pub spec: ProcessSpec,
    pub readiness: Readiness,
    pub liveness: Option<Liveness>,
    /// PostgreSQL's data directory, for stopping a postmaster that outlived Patroni.
    pub pgdata: Option<PathBuf>,
}

pub struct LaunchContext<'a> {
    pub shared: &'a Shared,
    pub pod: &'a Pod,
    pub ip: Ipv4Addr,
    pub pod_dir: &'a Path,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LaunchError + '_ {
    move |source| LaunchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write(path: &Path, content: &[u8], mode: u32) -> Result<(), LaunchError> {
    std::fs::write(path, content).map_err(io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

fn base_env(ctx: &LaunchContext, run_dir: &Path) -> Vec<(String, String)> {
    vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), run_dir.display().to_string()),
        ("LANG".into(), "C.UTF-8".into()),
        (
            "HOSTNAME".into(),
            ctx.pod.metadata.name.clone().unwrap_or_default(),
        ),
        ("POD_IP".into(), ctx.ip.to_string()),
    ]
}

pub async fn prepare(
    ctx: &LaunchContext<'_>,
    container: &Container,
    env: &BTreeMap<String, String>,
    mounts: &Mounts,
) -> Result<Launch, LaunchError> {
    let config = &ctx.shared.config;
    let image = container.image.clone().unwrap_or_default();
    let run_dir = ctx.pod_dir.join("run").join(&container.name);
    std::fs::create_dir_all(&run_dir).map_err(io(&run_dir))?;
    let namespace = ctx.pod.metadata.namespace.clone().unwrap_or_default();
    let pod_name = ctx.pod.metadata.name.clone().unwrap_or_default();
    let log_path = config
        .log_dir()
        .join("pods")
        .join(format!("{namespace}_{pod_name}_{}.log", container.name));
    let socket_dir = PathBuf::from("/tmp/pgop-sockets").join(ctx.ip.to_string());
    std::fs::create_dir_all(&socket_dir).map_err(io(&socket_dir))?;
    let user = ctx.shared.run_as;
    let chown = |p: &Path| match user {
        Some(u) => chown_tree(p, u).map_err(io(p)),
        None => Ok(()),
    };

    match runtime_for(
        &image,
        &config.image_overrides(),
        &config.image_binaries(),
        &config.default_command,
    ) {
        RuntimeKind::Image(binaries) => {
            prepare_image(ctx, container, env, mounts, binaries, &run_dir, log_path)
        }
        RuntimeKind::Spilo => {
            let pgroot = mounts.translate(
                env.get("PGROOT")
                    .map(String::as_str)
                    .unwrap_or("/home/postgres/pgdata/pgroot"),
            );
            std::fs::create_dir_all(&pgroot).map_err(io(&pgroot))?;
            let tls = tls_files(env, mounts, &run_dir).await?;
            write_patroni_kubeconfig(ctx, mounts, &run_dir)?;
            let input = SpiloInput {
                env,
                pod_name: &pod_name,
                namespace: &namespace,
                pod_ip: ctx.ip,
                pgroot: pgroot.clone(),
                run_dir: &run_dir,
                socket_dir: &socket_dir,
                pg_bin_dir: &config.pg_bin_dir,
                kube_context: crate::KUBE_CONTEXT,
                tls,
            };
            let patroni = patroni_config(&input)?;
            let patroni_path = run_dir.join("patroni.yml");
            write(
                &patroni_path,
                serde_json::to_string_pretty(&patroni)
                    .unwrap_or_default()
                    .as_bytes(),
                0o600,
            )?;
            let mut users = bootstrap_users(env)?;
            users.extend(spilo_builtin_roles());
            let sql_path = run_dir.join("post_init.sql");
            write(&sql_path, bootstrap_users_sql(&users).as_bytes(), 0o600)?;
            let script = format!(
                "#!/bin/sh\nexec {}/psql -v ON_ERROR_STOP=0 -d \"$1\" -f {}\n",
                config.pg_bin_dir.display(),
                sql_path.display()
            );
            write(&run_dir.join("post_init.sh"), script.as_bytes(), 0o755)?;
            chown(&run_dir)?;
            chown(&socket_dir)?;
            // Only the data directory's own tree: the claim directory may hold other files.
            if let Some(parent) = pgroot.parent() {
                if let Some(u) = user {
                    std::os::unix::fs::lchown(parent, Some(u.0), Some(u.1)).map_err(io(parent))?;
                }
            }
            chown(&pgroot)?;
            let mut process_env = base_env(ctx, &run_dir);
            process_env.push((
                "KUBECONFIG".into(),
                run_dir.join("kubeconfig").display().to_string(),
            ));
            Ok(Launch {
                spec: ProcessSpec {
                    program: config.patroni_bin.clone(),
                    args: vec![patroni_path.display().to_string()],
                    env: process_env,
                    cwd: run_dir.clone(),
                    user,
                    log_path,
                    sandbox: None,
                },
                readiness: readiness_of(
                    container,
                    Readiness::Http {
                        port: 8008,
                        path: "/readiness".into(),
                    },
                ),
                liveness: liveness_of(container),
                pgdata: Some(pgroot.join("data")),
            })
        }
        RuntimeKind::Pgbouncer => {
            let ini_path = match mounts.find_file("pgbouncer.ini") {
                Some(path) => path,
                None => {
                    let host = env
                        .get("PGHOST")
                        .cloned()
                        .unwrap_or_else(|| "localhost".into());
                    let upstream = resolve_host(&ctx.shared.client, &namespace, &host).await?;
                    let (ini, userlist) = pgbouncer_config(&PgbouncerInput {
                        env,
                        pod_ip: ctx.ip,
                        upstream_host: &upstream,
                        run_dir: &run_dir,
                        socket_dir: &socket_dir,
                    })?;
                    write(&run_dir.join("userlist.txt"), userlist.as_bytes(), 0o600)?;
                    let path = run_dir.join("pgbouncer.ini");
                    write(&path, ini.as_bytes(), 0o600)?;
                    path
                }
            };
            chown(&run_dir)?;
            chown(&socket_dir)?;
            let port = env
                .get("CONNECTION_POOLER_PORT")
                .and_then(|p| p.parse().ok())
                .unwrap_or(5432);
            Ok(Launch {
                spec: ProcessSpec {
                    program: config.pgbouncer_bin.clone(),
                    args: vec![ini_path.display().to_string()],
                    env: base_env(ctx, &run_dir),
                    cwd: run_dir.clone(),
                    user,
                    log_path,
                    sandbox: None,
                },
                readiness: readiness_of(container, Readiness::Tcp { port }),
                liveness: liveness_of(container),
                pgdata: None,
            })
        }
        RuntimeKind::StandIn(command) => {
            let mut args = vec!["-c".to_string(), command, "stand-in".to_string()];
            args.extend(container.command.iter().flatten().cloned());
            args.extend(container.args.iter().flatten().cloned());
            let mut process_env = base_env(ctx, &run_dir);
            process_env.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
            let mount_map: BTreeMap<String, String> = mounts
                .0
                .iter()
                .map(|(m, h)| (m.display().to_string(), h.display().to_string()))
                .collect();
            process_env.push(("PGOP_MOUNTS".into(), json!(mount_map).to_string()));
            process_env.push(("PGOP_IMAGE".into(), image.clone()));
            Ok(Launch {
                spec: ProcessSpec {
                    program: "sh".into(),
                    args,
                    env: process_env,
                    cwd: run_dir.clone(),
                    user: None,
                    log_path,
                    sandbox: None,
                },
                readiness: readiness_of(container, Readiness::Running),
                liveness: liveness_of(container),
                pgdata: None,
            })
        }
    }
}

/// A container of an image mapped to binaries: its own command in a sandbox holding its
/// volumes, the binaries at /usr/local/bin and the pod's resolver files.
fn prepare_image(
    ctx: &LaunchContext,
    container: &Container,
    env: &BTreeMap<String, String>,
    mounts: &Mounts,
    binaries: PathBuf,
    run_dir: &Path,
    log_path: PathBuf,
) -> Result<Launch, LaunchError> {
    let image = container.image.clone().unwrap_or_default();
    if container.command.as_ref().is_none_or(Vec::is_empty) {
        return Err(LaunchError::NoCommand(image));
    }
    let mut argv: Vec<String> = container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .map(|a| expand(a, env))
        .collect();
    let program = argv.remove(0);
    let namespace = ctx.pod.metadata.namespace.clone().unwrap_or_default();
    let security = image::security(ctx.pod, container);
    if security.run_as_non_root && security.user.is_none_or(|(uid, _)| uid == 0) {
        return Err(LaunchError::RunsAsRoot);
    }
    let etc = run_dir.join("etc");
    std::fs::create_dir_all(&etc).map_err(io(&etc))?;
    let mut binds = vec![Bind {
        source: binaries,
        target: image::IMAGE_BIN_DIR.into(),
        read_only: true,
    }];
    let files = [
        (
            "resolv.conf",
            image::resolv_conf(&namespace, ctx.shared.cluster_dns()),
        ),
        ("hosts", image::hosts_file(ctx.pod, ctx.ip)),
    ];
    for (name, content) in files {
        let path = etc.join(name);
        write(&path, content.as_bytes(), 0o644)?;
        binds.push(Bind {
            source: path,
            target: Path::new("/etc").join(name),
            read_only: true,
        });
    }
    for (target, source) in &mounts.0 {
        let read_only = container
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| Path::new(&m.mount_path) == target && m.read_only == Some(true));
        // A subPath the container names is created as a directory, as the kubelet does.
        if !source.exists() {
            std::fs::create_dir_all(source).map_err(io(source))?;
        }
        binds.push(Bind {
            source: source.clone(),
            target: target.clone(),
            read_only,
        });
    }
    let process_env = image::container_env(
        &ctx.shared.api_server.server,
        &ctx.pod.metadata.name.clone().unwrap_or_default(),
        env,
        &ctx.shared.pod_network_shim,
        ctx.ip,
    );
    Ok(Launch {
        spec: ProcessSpec {
            program,
            args: argv,
            env: process_env,
            cwd: PathBuf::from("/"),
            user: security.user,
            log_path,
            sandbox: Some(Sandbox {
                binds,
                hostname: image::hostname(ctx.pod),
                working_dir: container.working_dir.as_ref().map(PathBuf::from),
                read_only_root: security.read_only_root,
                no_new_privileges: security.no_new_privileges,
            }),
        },
        readiness: readiness_of(container, Readiness::Running),
        liveness: liveness_of(container),
        pgdata: None,
    })
}

/// The certificate and key PostgreSQL serves: the mounted ones named by SSL_CERTIFICATE_FILE
/// and SSL_PRIVATE_KEY_FILE (copied, since PostgreSQL insists on owning a private key), or a
/// self-signed pair like Spilo's.
async fn tls_files(
    env: &BTreeMap<String, String>,
    mounts: &Mounts,
    run_dir: &Path,
) -> Result<(PathBuf, PathBuf), LaunchError> {
    let cert = run_dir.join("server.crt");
    let key = run_dir.join("server.key");
    if let (Some(c), Some(k)) = (
        env.get("SSL_CERTIFICATE_FILE"),
        env.get("SSL_PRIVATE_KEY_FILE"),
    ) {
        let (c, k) = (mounts.translate(c), mounts.translate(k));
        if c.is_file() && k.is_file() {
            std::fs::copy(&c, &cert).map_err(io(&c))?;
            std::fs::copy(&k, &key).map_err(io(&k))?;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .map_err(io(&key))?;
            return Ok((cert, key));
        }
    }
    if cert.is_file() && key.is_file() {
        return Ok((cert, key));
    }
    let output = tokio::process::Command::new("openssl")
        .args([
            "req",
            "-nodes",
            "-new",
            "-x509",
            "-days",
            "3650",
            "-subj",
            "/CN=spilo.dummy.org",
        ])
        .args([
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .await
        .map_err(|e| LaunchError::Certificate(e.to_string()))?;
    if !output.status.success() {
        return Err(LaunchError::Certificate(
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).map_err(io(&key))?;
    Ok((cert, key))
}

/// Patroni talks to the API server as the pod's service account when its token is mounted
/// (as it would in a cluster), otherwise with the kubelet's own credentials.
fn write_patroni_kubeconfig(
    ctx: &LaunchContext,
    mounts: &Mounts,
    run_dir: &Path,
) -> Result<(), LaunchError> {
    let sa_dir = mounts.translate("/var/run/secrets/kubernetes.io/serviceaccount");
    let token = std::fs::read_to_string(sa_dir.join("token"))
        .ok()
        .filter(|t| !t.trim().is_empty());
    let api = &ctx.shared.api_server;
    let user = match token {
        Some(token) => json!({"token": token.trim()}),
        None => json!({"token": api.admin_token}),
    };
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": api.server, "certificate-authority-data": api.ca_data}}],
        "users": [{"name": "pod", "user": user}],
        "contexts": [{"name": crate::KUBE_CONTEXT, "context": {"cluster": "local", "user": "pod"}}],
        "current-context": crate::KUBE_CONTEXT,
    });
    write(
        &run_dir.join("kubeconfig"),
        kubeconfig.to_string().as_bytes(),
        0o600,
    )
}

/// A Service host name (`name`, `name.namespace`, `name.namespace.svc[.domain]`) resolved to
/// the first ready address of its Endpoints: pgbouncer runs outside a sandbox, with the machine's resolver.
pub async fn resolve_host(
    client: &Client,
    namespace: &str,
    host: &str,
) -> Result<String, LaunchError> {
    if host.parse::<std::net::IpAddr>().is_ok() || host == "localhost" {
        return Ok(host.to_string());
    }
    let mut parts = host.split('.');
    let name = parts.next().unwrap_or_default();
    let ns = parts.next().unwrap_or(namespace);
    let fail = |reason: String| LaunchError::Resolve {
        host: host.to_string(),
        reason,
    };
    let endpoints = Api::<Endpoints>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| fail(e.to_string()))?;
    endpoints
        .subsets
        .iter()
        .flatten()
        .flat_map(|s| s.addresses.iter().flatten())
        .map(|a| a.ip.clone())
        .next()
        .ok_or_else(|| fail("the service has no ready endpoints".into()))
}
