#!/usr/bin/env bash
# Build the MinIO server from source (Go module proxy) for the test suite's
# loopback S3 endpoint. Idempotent: a second run with a populated cache only
# checks the existing binary and prints its path.
#
# Output: ${KOMPRESS_CACHE:-$HOME/.cache/kompress}/bin/minio (path printed on
# the last line of stdout).
set -euo pipefail

# MinIO publishes no semver tags, so the module proxy only knows pseudo-versions.
# This is what `go install github.com/minio/minio@latest` resolved to; pinned so
# builds are reproducible. Requires Go >= 1.24 (from its go.mod).
MINIO_VERSION="v0.0.0-20260212201848-7aac2a2c5b7c"
MINIO_MODULE="github.com/minio/minio"

SCRIPT=build-minio
# shellcheck source=go-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/go-env.sh"
BIN="$BIN_DIR/minio"
export GOBIN="$BIN_DIR"


# The binary's embedded module info is the reliable version check: a
# `go install` build reports "DEVELOPMENT.GOGET" from `minio --version`.
binary_is_pinned() {
    [[ -x "$BIN" ]] || return 1
    "$GO" version -m "$BIN" 2>/dev/null \
        | awk -v mod="$MINIO_MODULE" -v ver="$MINIO_VERSION" \
            '$1 == "mod" && $2 == mod && $3 == ver { found = 1 } END { exit !found }'
}

if binary_is_pinned; then
    echo "build-minio: $BIN already at $MINIO_VERSION, skipping build" >&2
    echo "$BIN"
    exit 0
fi

mkdir -p "$BIN_DIR" "$GOMODCACHE" "$GOCACHE"
echo "build-minio: building $MINIO_MODULE@$MINIO_VERSION with $("$GO" version)" >&2
echo "build-minio: (a cold build takes several minutes on 2 cores)" >&2
start=$SECONDS
if ! "$GO" install -trimpath "$MINIO_MODULE@$MINIO_VERSION" >&2; then
    echo "build-minio: ERROR: 'go install $MINIO_MODULE@$MINIO_VERSION' failed" \
        "with $("$GO" version); see the compiler output above." >&2
    exit 1
fi

if ! binary_is_pinned; then
    echo "build-minio: ERROR: build finished but $BIN is missing or does not" \
        "report $MINIO_VERSION" >&2
    exit 1
fi
echo "build-minio: built in $((SECONDS - start))s" >&2
echo "$BIN"
