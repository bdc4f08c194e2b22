#!/usr/bin/env bash
# The local environment a user runs: control plane + local kubelet (+ pgop once it exists),
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
  sed "s/__NAMESPACE__/$namespace/" "$root/e2e/fixtures/spilo-statefulset.yaml" | kubectl apply -n "$namespace" -f - >/dev/null
  log "waiting for $cluster to be Running"
  for i in $(seq 1 180); do
    ready=$(kubectl get pods -n "$namespace" -l cluster-name=$cluster -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{" "}{end}')
    master=$(kubectl get endpoints -n "$namespace" $cluster -o jsonpath='{.subsets[0].addresses[0].ip}' 2>/dev/null || true)
    [ "$ready" = "True True " ] && [ -n "$master" ] && break
    sleep 1
  done
  [ -n "${master:-}" ] || { log "the cluster did not come up; logs are in $state/logs"; exit 1; }
  cat <<TXT

pgop's local environment is up (state in $state).
  export KUBECONFIG=$KUBECONFIG
  kubectl get pods -L spilo-role

Connect to the master of $cluster:
  PGPASSWORD=\$(kubectl get secret postgres.$cluster.credentials.postgresql.acid.zalan.do \\
      -o jsonpath='{.data.password}' | base64 -d) psql -h $master -U postgres postgres

Stop everything with: make down
TXT
}

down() {
  if alive kubelet; then
    pid=$(cat "$state/pids/kubelet.pid")
    kill -TERM "$pid"
    # The kubelet stops every pod's processes gracefully before it exits.
    for i in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$state/pids/kubelet.pid"
  [ -d "$state" ] && bash "$root/e2e/env/control-plane.sh" down "$state"
  log "stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: local-env.sh up|down" >&2; exit 2 ;;
esac
