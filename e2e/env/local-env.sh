#!/usr/bin/env bash
# The local environment a user runs: control plane + local kubelet + pgop (watcher,
# scheduler, two workers, the gateway on :8080),
# with state in $PGOP_STATE_DIR (default .local/ in the checkout).
#   local-env.sh up     start everything, deploy a cluster, print how to connect with psql
#   local-env.sh down   stop everything `up` started
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
state=${PGOP_STATE_DIR:-$root/.local}
bin=${PGOP_BIN_DIR:-$root/target/debug}
export KUBECONFIG=$state/kubeconfig
namespace=default
cluster=acid-minimal-cluster
log() { echo "[local-env] $*" >&2; }

# pgop's processes and their settings (ports as in the README).
pgop_processes=(
  "watcher pgop-watcher PGOP_GRPC_ADDR=127.0.0.1:50050 PGOP_ADMIN_ADDR=127.0.0.1:9100 PGOP_NAMESPACE=$namespace"
  "scheduler pgop-scheduler PGOP_GRPC_ADDR=127.0.0.1:50051 PGOP_ADMIN_ADDR=127.0.0.1:9101 PGOP_WATCHER_ADDR=http://127.0.0.1:50050"
  "worker-0 pgop-worker PGOP_GRPC_ADDR=127.0.0.1:50052 PGOP_ADMIN_ADDR=127.0.0.1:9102 PGOP_WORKER_ID=worker-0 PGOP_SCHEDULER_ADDR=http://127.0.0.1:50051 PGOP_NAMESPACE=$namespace"
  "worker-1 pgop-worker PGOP_GRPC_ADDR=127.0.0.1:50053 PGOP_ADMIN_ADDR=127.0.0.1:9103 PGOP_WORKER_ID=worker-1 PGOP_SCHEDULER_ADDR=http://127.0.0.1:50051 PGOP_NAMESPACE=$namespace"
  "api-gateway pgop-api-gateway PGOP_HTTP_ADDR=127.0.0.1:8080 PGOP_ADMIN_ADDR=127.0.0.1:9104 PGOP_SCHEDULER_ADDR=http://127.0.0.1:50051"
)

alive() { [ -f "$state/pids/$1.pid" ] && kill -0 "$(cat "$state/pids/$1.pid")" 2>/dev/null; }

up() {
  mkdir -p "$state/logs" "$state/pids"
  bash "$root/e2e/env/control-plane.sh" up "$state"
  # PostgreSQL runs as `postgres` and must reach its data directories.
  kubelet_state=$state/kubelet
  if ! runuser -u postgres -- test -x "$state" 2>/dev/null; then
    kubelet_state=/var/tmp/pgop-kubelet-$(echo "$state" | md5sum | cut -c1-12)
    log "$state is not reachable by the postgres user: pod data goes to $kubelet_state"
  fi
  if ! alive kubelet; then
    [ -x "$bin/pgop-local-kubelet" ] || { log "$bin/pgop-local-kubelet is missing: run 'make build'"; exit 1; }
    setsid "$bin/pgop-local-kubelet" --state-dir "$kubelet_state" --log-dir "$state/logs" \
      --pod-network "${PGOP_POD_NETWORK:-127.1.0.0/16}" >>"$state/logs/kubelet.log" 2>&1 < /dev/null &
    echo $! > "$state/pids/kubelet.pid"
  fi
  kubectl wait --for=condition=Ready node --all --timeout=60s >/dev/null
  for i in $(seq 1 50); do kubectl get serviceaccount default -n "$namespace" >/dev/null 2>&1 && break; sleep 0.2; done
  kubectl apply -f "$root/manifests/postgresql.crd.yaml" -f "$root/manifests/postgres-pod-rbac.yaml" >/dev/null
  kubectl wait --for=condition=Established crd/postgresqls.acid.zalan.do --timeout=30s >/dev/null
  kubectl apply -n "$namespace" -f "$root/manifests/configmap.yaml" >/dev/null
  for p in "${pgop_processes[@]}"; do
    read -r name binary settings <<<"$p"
    alive "$name" && continue
    [ -x "$bin/$binary" ] || { log "$bin/$binary is missing: run 'make build'"; exit 1; }
    # shellcheck disable=SC2086
    env NO_COLOR=1 $settings setsid "$bin/$binary" >>"$state/logs/$name.log" 2>&1 < /dev/null &
    echo $! > "$state/pids/$name.pid"
  done
  kubectl apply -n "$namespace" -f "$root/manifests/minimal-postgres-manifest.yaml" >/dev/null
  log "waiting for $cluster to be Running"
  for i in $(seq 1 240); do
    status=$(kubectl get pg -n "$namespace" $cluster -o jsonpath='{.status.PostgresClusterStatus}' 2>/dev/null || true)
    master=$(kubectl get pods -n "$namespace" -l cluster-name=$cluster,spilo-role=master -o jsonpath='{.items[0].status.podIP}' 2>/dev/null || true)
    [ "$status" = Running ] && [ -n "$master" ] && break
    sleep 1
  done
  [ "${status:-}" = Running ] && [ -n "${master:-}" ] || { log "the cluster did not come up (status '${status:-}'); logs are in $state/logs"; exit 1; }
  cat <<TXT

pgop's local environment is up (state in $state).
  export KUBECONFIG=$KUBECONFIG
  kubectl get pg; kubectl get pods -L spilo-role
  curl -s localhost:8080/clusters/; grpcurl -plaintext 127.0.0.1:50051 list

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
  # pgop first, so nothing reconciles while the pods stop.
  for p in "${pgop_processes[@]}"; do stop_process "${p%% *}" 10; done
  # The kubelet stops every pod's processes gracefully before it exits.
  stop_process kubelet 60
  [ -d "$state" ] && bash "$root/e2e/env/control-plane.sh" down "$state"
  log "stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: local-env.sh up|down" >&2; exit 2 ;;
esac
