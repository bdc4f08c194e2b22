#!/usr/bin/env bash
# pgop started the way pgop-bench starts another operator (`--operator-command`): one shell
# command whose process group is the operator. It proves the harness's path for another
# operator (Zalando's, say) and measures pgop with a single worker through it.
# Uses KUBECONFIG, POD_NAMESPACE and PGOP_BENCH_STATE as pgop-bench sets them;
# PGOP_BIN_DIR (default target/debug) says which build runs.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${PGOP_BIN_DIR:-$root/target/debug}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
watcher=127.0.0.1:$(port); scheduler=127.0.0.1:$(port); worker=127.0.0.1:$(port)
export PGOP_NAMESPACE=$POD_NAMESPACE NO_COLOR=1
unset WATCHED_NAMESPACE # the ConfigMap names the namespaces
PGOP_GRPC_ADDR=$watcher "$bin/pgop-watcher" &
PGOP_GRPC_ADDR=$scheduler PGOP_WATCHER_ADDR=http://$watcher "$bin/pgop-scheduler" &
PGOP_GRPC_ADDR=$worker PGOP_WORKER_ID=single PGOP_SCHEDULER_ADDR=http://$scheduler \
  PGOP_ADMIN_ADDR=127.0.0.1:$(port) "$bin/pgop-worker" &
trap 'kill $(jobs -p) 2>/dev/null; wait' TERM INT
wait
