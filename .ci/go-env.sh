# Sourced by the Go build scripts: the shared cache layout and a local Go toolchain.
# Sets CACHE, BIN_DIR, GO and the Go environment (module and build caches under $CACHE/go, so warm builds
# take seconds). The caller sets SCRIPT (its name, for messages).
CACHE="${KOMPRESS_CACHE:-$HOME/.cache/kompress}"
BIN_DIR="$CACHE/bin"

GO="${GO:-}"
if [[ -z "$GO" ]]; then
    if command -v go >/dev/null 2>&1; then
        GO="$(command -v go)"
    elif [[ -x /usr/local/go/bin/go ]]; then
        GO=/usr/local/go/bin/go
    else
        echo "${SCRIPT:-build}: ERROR: no Go toolchain found (set GO=/path/to/go)" >&2
        exit 1
    fi
fi

export GOTOOLCHAIN=local
export GOPATH="$CACHE/go"
export GOMODCACHE="$CACHE/go/pkg/mod"
export GOCACHE="$CACHE/go/build-cache"
export CGO_ENABLED="${CGO_ENABLED:-0}"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
