#!/usr/bin/env bash
# The local environment a user runs: control plane + local kubelet, pgop deployed into it the
# way a user deploys it (`kubectl apply -k deploy/overlays/local`: the kubelet runs the image
# `pgop` as the workspace's binaries), and a PostgreSQL cluster, with state in $PGOP_STATE_DIR
# (default .local/ in the checkout).
#   local-env.sh up     start everything, deploy a cluster, print how to connect with psql
#   local-env.sh down   stop everything `up` started and remove its state
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
state=${PGOP_STATE_DIR:-$root/.local}
bin=${PGOP_BIN_DIR:-$root/target/debug}
export KUBECONFIG=$state/kubeconfig
namespace=default
operator_namespace=pgop-system
cluster=acid-minimal-cluster
log() { echo "[local-env] $*" >&2; }

alive() { [ -f "$state/pids/$1.pid" ] && kill -0 "$(cat "$state/pids/$1.pid")" 2>/dev/null; }

# Where pod data goes: PostgreSQL runs as `postgres` and must reach its data directories.
kubelet_state_dir() {
  if runuser -u postgres -- test -x "$state" 2>/dev/null; then
    echo "$state/kubelet"
  else
    echo "/var/tmp/pgop-kubelet-$(echo "$state" | md5sum | cut -c1-12)"
  fi
}

# pgop's processes of an environment started before pgop ran as pods.
stop_old_processes() {
  local f
  for f in "$state"/pids/*.pid; do
    [ -e "$f" ] || continue
    case "$(basename "$f" .pid)" in kubelet|etcd|kube-*) ;; *) stop_process "$(basename "$f" .pid)" 10 ;; esac
  done
}

up() {
  local started=$SECONDS
  mkdir -p "$state/logs" "$state/pids"
  # `down` removes only a directory that carries this mark.
  touch "$state/.pgop-local-env"
  stop_old_processes
  bash "$root/e2e/env/control-plane.sh" up "$state"
  kubelet_state=$(kubelet_state_dir)
  [ "$kubelet_state" = "$state/kubelet" ] || log "$state is not reachable by the postgres user: pod data goes to $kubelet_state"
  for b in pgop-local-kubelet pgop-watcher pgop-scheduler pgop-worker pgop-api-gateway; do
    [ -x "$bin/$b" ] || { log "$bin/$b is missing: run 'make build'"; exit 1; }
  done
  kubelet_args=(--state-dir "$kubelet_state" --log-dir "$state/logs"
    --pod-network "${PGOP_POD_NETWORK:-127.1.0.0/16}" --image-binaries "pgop=$bin")
  # A kubelet started with other arguments (an older checkout's) is replaced.
  if alive kubelet && [ "$(cat "$state/kubelet.args" 2>/dev/null)" != "${kubelet_args[*]}" ]; then
    log "restarting the local kubelet with this checkout's arguments"
    stop_process kubelet 60
  fi
  if ! alive kubelet; then
    setsid "$bin/pgop-local-kubelet" "${kubelet_args[@]}" >>"$state/logs/kubelet.log" 2>&1 < /dev/null &
    echo $! > "$state/pids/kubelet.pid"
    echo "${kubelet_args[*]}" > "$state/kubelet.args"
  fi
  kubectl wait --for=condition=Ready node --all --timeout=60s >/dev/null
  # pgop, as a user deploys it.
  kubectl apply -k "$root/deploy/overlays/local" >/dev/null
  for d in watcher scheduler worker api-gateway; do
    kubectl -n $operator_namespace rollout status "deployment/pgop-$d" --timeout=120s >/dev/null \
      || { log "pgop-$d did not roll out; its logs are in $state/logs/pods/"; exit 1; }
  done
  log "pgop is running in $operator_namespace ($((SECONDS - started))s)"
  for i in $(seq 1 50); do kubectl get serviceaccount default -n "$namespace" >/dev/null 2>&1 && break; sleep 0.2; done
  kubectl apply -n "$namespace" -f "$root/manifests/minimal-postgres-manifest.yaml" >/dev/null
  log "waiting for $cluster to be Running"
  for i in $(seq 1 240); do
    status=$(kubectl get pg -n "$namespace" $cluster -o jsonpath='{.status.PostgresClusterStatus}' 2>/dev/null || true)
    master=$(kubectl get pods -n "$namespace" -l cluster-name=$cluster,spilo-role=master -o jsonpath='{.items[0].status.podIP}' 2>/dev/null || true)
    [ "$status" = Running ] && [ -n "$master" ] && break
    sleep 1
  done
  [ "${status:-}" = Running ] && [ -n "${master:-}" ] || { log "the cluster did not come up (status '${status:-}'); logs are in $state/logs"; exit 1; }
  log "$cluster is Running ($((SECONDS - started))s since make up)"
  pod_ip() { kubectl -n $operator_namespace get pod "$@" -o jsonpath='{.items[0].status.podIP}'; }
  gateway=$(pod_ip -l app.kubernetes.io/component=api-gateway)
  leader=$(kubectl -n $operator_namespace get lease pgop-scheduler -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)
  scheduler=$(kubectl -n $operator_namespace get pod "$leader" -o jsonpath='{.status.podIP}' 2>/dev/null || true)
  cat <<TXT

pgop runs in the local cluster (state in $state).
  export KUBECONFIG=$KUBECONFIG
  kubectl -n $operator_namespace get pods -o wide; kubectl -n $operator_namespace logs deploy/pgop-scheduler
  kubectl get pg; kubectl get pods -L spilo-role
  curl -s $gateway:8080/clusters/          # the api-gateway's pod
  grpcurl -plaintext ${scheduler:-<leading scheduler pod IP>}:50051 list   # the leading scheduler's pod

Connect to the master of $cluster:
  PGPASSWORD=\$(kubectl get secret postgres.$cluster.credentials.postgresql.acid.zalan.do \\
      -o jsonpath='{.data.password}' | base64 -d) psql -h $master -U postgres postgres

Stop everything with: make down
TXT
}

stop_process() {
  local name=$1 grace=$2
  if alive "$name"; then
    pid=$(cat "$state/pids/$name.pid")
    kill -TERM "$pid"
    for i in $(seq 1 $((grace * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$state/pids/$name.pid"
}

down() {
  [ -d "$state" ] || { log "nothing to stop in $state"; return 0; }
  if [ ! -e "$state/.pgop-local-env" ]; then
    log "$state was not made by 'make up' (no .pgop-local-env in it): not touching it"
    exit 1
  fi
  local kubelet_state
  kubelet_state=$(kubelet_state_dir)
  stop_old_processes
  # The kubelet stops every pod's processes (pgop's and PostgreSQL's) gracefully before it
  # exits (a restarted kubelet stops what an earlier one left, from the pods' directories).
  stop_process kubelet 60
  bash "$root/e2e/env/control-plane.sh" down "$state"
  rm -rf "$kubelet_state"
  rm -rf "$state"
  log "stopped; removed $state"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: local-env.sh up|down" >&2; exit 2 ;;
esac
