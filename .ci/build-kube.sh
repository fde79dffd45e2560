#!/usr/bin/env bash
# Build a real kube-apiserver, kube-controller-manager, kube-scheduler,
# kube-proxy and kubelet from the published k8s.io/kubernetes Go module
# (wrapper module in tools/kube-build/), and make an etcd available, for the
# end-to-end test tiers (tests/kube/cluster.py, tests/kube/node.py).
# Idempotent: a warm run only checks the existing binaries (a few seconds).
#
# Output, in ${KOMPRESS_CACHE:-$HOME/.cache/kompress}/bin/:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy,
#   kubelet, etcd (symlink to a system etcd, or
#   a build of the wrapper in tools/kube-build/etcd/ when none works).
# The bin directory is printed on the last line of stdout.
set -euo pipefail

# Keep in step with tools/kube-build/go.mod (checked below).
KUBE_VERSION="v1.33.13"
KUBE_MAJOR="1"
KUBE_MINOR="33"
# etcd versions the apiserver is happy with: 3.4.x (Debian bookworm ships
# 3.4.23) and 3.5.x/3.6.x. Anything else makes us build the pinned wrapper.
ETCD_OK_RE='^3\.(4|5|6)\.'

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/tools/kube-build"
SCRIPT=build-kube
# shellcheck source=go-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/go-env.sh"


log() { echo "build-kube: $*" >&2; }

mod_version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }
                   $1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2 }' "$SRC/go.mod" | head -n1)
if [[ "$mod_version" != "$KUBE_VERSION" ]]; then
    log "ERROR: tools/kube-build/go.mod pins k8s.io/kubernetes '$mod_version'" \
        "but this script expects $KUBE_VERSION; update both together"
    exit 1
fi

# A binary is current when its embedded module info names the pinned
# k8s.io/kubernetes and its ldflags-set version matches.
binary_is_pinned() {
    local bin="$1"
    [[ -x "$bin" ]] || return 1
    "$GO" version -m "$bin" 2>/dev/null \
        | awk -v ver="$KUBE_VERSION" \
            '$1 == "dep" && $2 == "k8s.io/kubernetes" && $3 == ver { found = 1 } END { exit !found }' \
        || return 1
    [[ "$("$bin" --version 2>/dev/null)" == "Kubernetes $KUBE_VERSION" ]]
}

# ---------------------------------------------------------------- kube binaries
KUBE_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet)
# Only the stale ones are built, so adding a command does not relink the rest.
stale=()
for cmd in "${KUBE_CMDS[@]}"; do
    binary_is_pinned "$BIN_DIR/$cmd" || stale+=("$cmd")
done

if [[ ${#stale[@]} == 0 ]]; then
    log "${KUBE_CMDS[*]} already at $KUBE_VERSION, skipping build"
else
    KUBE_CMDS=("${stale[@]}")
    mkdir -p "$BIN_DIR" "$GOMODCACHE" "$GOCACHE"
    # Same -X set as upstream hack/lib/version.sh, with a fixed build date so
    # the build is reproducible.
    build_date="$(date -u -d "@${SOURCE_DATE_EPOCH:-0}" +%Y-%m-%dT%H:%M:%SZ)"
    ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION"
        ldflags+=" -X $pkg.gitMajor=$KUBE_MAJOR -X $pkg.gitMinor=$KUBE_MINOR"
        ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
    done
    log "building ${KUBE_CMDS[*]} $KUBE_VERSION with $("$GO" version)"
    log "(a cold build takes a long while on 2 cores; warm runs skip it)"
    start=$SECONDS
    tmp_out="$(mktemp -d "$BIN_DIR/.kube-build.XXXXXX")"
    trap 'rm -rf "$tmp_out"' EXIT
    pkgs=()
    for cmd in "${KUBE_CMDS[@]}"; do pkgs+=("./cmd/$cmd"); done
    if ! (cd "$SRC" && "$GO" build -mod=readonly -trimpath -ldflags "$ldflags" \
            -o "$tmp_out/" "${pkgs[@]}" >&2); then
        log "ERROR: go build of ${KUBE_CMDS[*]} failed; see the compiler output above"
        exit 1
    fi
    for cmd in "${KUBE_CMDS[@]}"; do
        mv -f "$tmp_out/$cmd" "$BIN_DIR/$cmd"
        if ! binary_is_pinned "$BIN_DIR/$cmd"; then
            log "ERROR: built $BIN_DIR/$cmd does not report $KUBE_VERSION"
            exit 1
        fi
    done
    log "built ${KUBE_CMDS[*]} in $((SECONDS - start))s"
fi

# ------------------------------------------------------------------------ etcd
etcd_version() {
    # "etcd Version: 3.4.23" -> 3.4.23
    "$1" --version 2>/dev/null | awk '/^etcd Version:/ { print $3; exit }'
}

etcd_usable() {
    local bin="$1" v
    [[ -x "$bin" ]] || return 1
    v="$(etcd_version "$bin")"
    [[ "$v" =~ $ETCD_OK_RE ]]
}

ETCD_LINK="$BIN_DIR/etcd"
system_etcd="$(command -v etcd 2>/dev/null || true)"
if [[ -n "$system_etcd" && "$system_etcd" == "$ETCD_LINK" ]]; then
    system_etcd=""
fi
if [[ -z "$system_etcd" ]] && command -v apt-get >/dev/null 2>&1 \
        && [[ "$(id -u)" == 0 ]]; then
    log "installing Debian etcd-server"
    # The package's postinst tries to start a system etcd on :2379 via
    # systemd/invoke-rc.d; there is no init here, and the tests never use it.
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >&2; then
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >&2
    fi
    system_etcd="$(command -v etcd 2>/dev/null || true)"
fi

mkdir -p "$BIN_DIR"
if [[ -n "$system_etcd" ]] && etcd_usable "$system_etcd"; then
    ln -sfn "$system_etcd" "$ETCD_LINK"
    log "etcd: $system_etcd ($(etcd_version "$system_etcd"))"
else
    log "ERROR: no usable etcd (want a version matching $ETCD_OK_RE;" \
        "found '${system_etcd:-none}')"
    exit 1
fi

echo "$BIN_DIR"
