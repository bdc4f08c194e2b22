#!/usr/bin/env bash
# Starts or stops etcd, kube-apiserver, kube-controller-manager and kube-scheduler v1.20.2 in
# a state directory, and writes STATE_DIR/kubeconfig (context pgop-local, admin token).
#   control-plane.sh up STATE_DIR      idempotent: components already running are kept
#   control-plane.sh down STATE_DIR    stops what `up` started, by the PIDs it recorded
# Ports come from PGOP_ETCD_PORT (2379), PGOP_ETCD_PEER_PORT (2380), PGOP_APISERVER_PORT (6443),
# so several environments can run side by side.
set -euo pipefail

cmd=${1:?usage: control-plane.sh up|down STATE_DIR}
state=${2:?usage: control-plane.sh up|down STATE_DIR}
mkdir -p "$state"
state=$(cd "$state" && pwd)
CACHE=${PGOP_CACHE:-$HOME/.cache/pgop}
K8S_BIN=${PGOP_K8S_BIN:-$CACHE/kubernetes-1.20.2-pgop2/bin}
ETCD_PORT=${PGOP_ETCD_PORT:-2379}
ETCD_PEER_PORT=${PGOP_ETCD_PEER_PORT:-2380}
API_PORT=${PGOP_APISERVER_PORT:-6443}
# Service IPs are never routed here (no kube-proxy); a loopback range keeps any stray
# connection to one on this machine.
SERVICE_RANGE=${PGOP_SERVICE_RANGE:-127.254.0.0/16}
pki=$state/pki
logs=$state/logs
pids=$state/pids
log() { echo "[control-plane] $*" >&2; }

alive() { [ -f "$pids/$1.pid" ] && kill -0 "$(cat "$pids/$1.pid")" 2>/dev/null; }

start() { # name, command...
  local name=$1; shift
  if alive "$name"; then return 0; fi
  mkdir -p "$logs" "$pids"
  setsid "$@" >>"$logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$pids/$name.pid"
}

stop() {
  local name=$1 pid i
  [ -f "$pids/$name.pid" ] || return 0
  pid=$(cat "$pids/$name.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pids/$name.pid"
}

wait_http() { # url, seconds, what
  local url=$1 secs=$2 what=$3 i
  for i in $(seq 1 $((secs * 5))); do
    if curl -skf --max-time 2 -H "Authorization: Bearer $(cat "$pki/admin.token")" "$url" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "$what did not become ready within ${secs}s; last log lines:"
  tail -n 20 "$logs/$what.log" >&2 || true
  return 1
}

certs() {
  [ -f "$pki/apiserver.crt" ] && return 0
  mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=pgop-local-ca" -keyout ca.key -out ca.crt 2>/dev/null
    cat > apiserver.ext <<EXT
subjectAltName=IP:127.0.0.1,IP:127.254.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth
EXT
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout apiserver.key -out apiserver.csr 2>/dev/null
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > admin.token
    echo "$(cat admin.token),admin,admin,\"system:masters\"" > tokens.csv
    chmod 600 ./*.key admin.token tokens.csv
  )
}

kubeconfig() {
  cat > "$state/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: pgop-local
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 < "$pki/ca.crt")
users:
- name: admin
  user:
    token: $(cat "$pki/admin.token")
contexts:
- name: pgop-local
  context:
    cluster: pgop-local
    user: admin
    namespace: default
current-context: pgop-local
KC
  chmod 600 "$state/kubeconfig"
}

up() {
  for b in kube-apiserver kube-controller-manager kube-scheduler; do
    [ -x "$K8S_BIN/$b" ] || { log "missing $K8S_BIN/$b: run e2e/env/install.sh first"; exit 1; }
  done
  command -v etcd >/dev/null || { log "etcd is not installed: run e2e/env/install.sh first"; exit 1; }
  certs
  kubeconfig
  start etcd etcd --name pgop-local --data-dir "$state/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "pgop-local=http://127.0.0.1:$ETCD_PEER_PORT" \
    --quota-backend-bytes 8589934592 --snapshot-count 100000
  for i in $(seq 1 100); do curl -sf "http://127.0.0.1:$ETCD_PORT/health" >/dev/null 2>&1 && break; sleep 0.1; done
  # `kubectl logs` goes through the API server to the kubelet API at a node address: the
  # nodes' Hostname (pgop-node-N) resolves nowhere, their InternalIP is 127.0.0.1.
  start kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" --insecure-port 0 \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" --client-ca-file "$pki/ca.crt" \
    --token-auth-file "$pki/tokens.csv" --authorization-mode RBAC \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range "$SERVICE_RANGE" --allow-privileged=true \
    --max-requests-inflight 1000 --max-mutating-requests-inflight 500 \
    --kubelet-preferred-address-types InternalIP,Hostname
  wait_http "https://127.0.0.1:$API_PORT/readyz" 60 kube-apiserver
  start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig "$state/kubeconfig" --service-account-private-key-file "$pki/sa.key" \
    --root-ca-file "$pki/ca.crt" --leader-elect=false --port 0 --secure-port 0 \
    --controllers '*' --kube-api-qps 200 --kube-api-burst 400 \
    --concurrent-statefulset-syncs 20 --concurrent-endpoint-syncs 20 --concurrent-service-syncs 5
  start kube-scheduler "$K8S_BIN/kube-scheduler" \
    --kubeconfig "$state/kubeconfig" --leader-elect=false --port 0 --secure-port 0 \
    --kube-api-qps 200 --kube-api-burst 400
  sleep 0.5
  for c in kube-controller-manager kube-scheduler; do
    alive "$c" || { log "$c exited:"; tail -n 20 "$logs/$c.log" >&2; exit 1; }
  done
  log "ready: KUBECONFIG=$state/kubeconfig (https://127.0.0.1:$API_PORT)"
}

down() {
  for c in kube-scheduler kube-controller-manager kube-apiserver etcd; do stop "$c"; done
  log "stopped"
}

case "$cmd" in
  up) up ;;
  down) down ;;
  *) echo "usage: control-plane.sh up|down STATE_DIR" >&2; exit 2 ;;
esac
