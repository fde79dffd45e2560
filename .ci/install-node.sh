#!/usr/bin/env bash
# Install what the node test tier (tests/kube/node.py) needs besides the kube
# binaries of .ci/build-kube.sh: containerd + runc + CNI plugins + iptables +
# conntrack (Debian packages), a static busybox, and the locally built base
# image archive (pause sandbox + busybox; no registry is reachable).
# Idempotent: a warm run only checks what is there (about a second).
#
# Output: ${KOMPRESS_CACHE:-$HOME/.cache/kompress}/node/node-base.oci.tar,
# whose path is printed on the last line of stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${KOMPRESS_CACHE:-$HOME/.cache/kompress}"
NODE_DIR="$CACHE/node"
ARCHIVE="$NODE_DIR/node-base.oci.tar"
PAUSE_SRC="$ROOT/tests/kube/pause.c"
IMAGE_PY="$ROOT/tests/kube/node_image.py"
BUSYBOX=/bin/busybox

log() { echo "install-node: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------------------------ packages
# command -> Debian package providing it.
declare -A NEED=(
    [containerd]=containerd
    [ctr]=containerd
    [runc]=runc
    [/usr/lib/cni/bridge]=containernetworking-plugins
    [/usr/lib/cni/host-local]=containernetworking-plugins
    [/usr/lib/cni/loopback]=containernetworking-plugins
    [/usr/lib/cni/portmap]=containernetworking-plugins
    [iptables]=iptables
    [conntrack]=conntrack
    [ip]=iproute2
    [$BUSYBOX]=busybox-static
    [gcc]=gcc
)
have() { if [[ "$1" == /* ]]; then [[ -x "$1" ]]; else command -v "$1" >/dev/null 2>&1; fi; }

missing=()
for cmd in "${!NEED[@]}"; do
    have "$cmd" || missing+=("${NEED[$cmd]}")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    [[ "$(id -u)" == 0 ]] || die "missing packages ${missing[*]} and not root: apt-get install -y ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get on this machine"
    log "installing ${missing[*]}"
    # The containerd package's postinst enables a systemd unit; without
    # systemd nothing starts, and the tests run their own private containerd.
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2; then
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 \
            || die "apt-get install ${missing[*]} failed (see above)"
    fi
    for cmd in "${!NEED[@]}"; do
        have "$cmd" || die "$cmd still missing after installing ${NEED[$cmd]}"
    done
else
    log "containerd $(containerd --version | awk '{print $3}'), runc, CNI plugins, iptables, conntrack already installed"
fi
# busybox must be static: it runs inside containers with nothing else.
[[ "$(LC_ALL=C ldd "$BUSYBOX" 2>&1 || true)" == *"not a dynamic executable"* ]] \
    || die "$BUSYBOX is not statically linked (install busybox-static, not busybox)"

# --------------------------------------------------------------- base image
mkdir -p "$NODE_DIR"
# Rebuild only when an input changed: the stamp is a hash of all of them.
inputs_hash="$(cat "$PAUSE_SRC" "$IMAGE_PY" "$BUSYBOX" | sha256sum | cut -d' ' -f1)"
stamp="$NODE_DIR/node-base.inputs"
if [[ -f "$ARCHIVE" && -f "$stamp" && "$(cat "$stamp")" == "$inputs_hash" ]]; then
    log "base image archive up to date: $ARCHIVE"
else
    log "building the pause binary and the base image archive"
    pause_bin="$NODE_DIR/pause"
    gcc -static -Os -s -o "$pause_bin.tmp" "$PAUSE_SRC" >&2 || die "gcc -static of $PAUSE_SRC failed"
    mv -f "$pause_bin.tmp" "$pause_bin"
    digest="$(python3 "$IMAGE_PY" --pause "$pause_bin" --busybox "$BUSYBOX" --out "$ARCHIVE")" \
        || die "building $ARCHIVE failed"
    echo "$inputs_hash" >"$stamp"
    log "built $ARCHIVE ($digest)"
fi

echo "$ARCHIVE"
