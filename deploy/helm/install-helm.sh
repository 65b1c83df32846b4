#!/usr/bin/env bash
# Build the helm CLI that tests/unit/test_helm_chart.py uses to lint and render deploy/helm/trainmon.
# Helm publishes its binaries on get.helm.sh, which build machines here cannot reach; the Go module
# proxy can, so helm is compiled from its tagged module. The binary lives in a per-user cache outside
# the checkout (rebuilding costs minutes, and `make clean` must not throw it away).
# Idempotent: a no-op when the cached binary exists and reports this version. Prints its path last.
set -euo pipefail

HELM_VERSION=v4.3.2
dest="${XDG_CACHE_HOME:-$HOME/.cache}/trainmon/tools/helm-$HELM_VERSION"
helm="$dest/helm"

if [ -x "$helm" ] && [ "$("$helm" version --short 2>/dev/null)" = "$HELM_VERSION" ]; then
  echo "$helm"
  exit 0
fi

# $GO, else go on PATH, else the official tarball's place (not on PATH in non-login shells).
go="${GO:-$(command -v go || true)}"
if [ -z "$go" ] && [ -x /usr/local/go/bin/go ]; then
  go=/usr/local/go/bin/go
fi
if [ -z "$go" ] || [ ! -x "$go" ]; then
  echo "install-helm.sh: no Go toolchain found (\$GO, 'go' on PATH, /usr/local/go/bin/go)." >&2
  echo "Install Go 1.26 or newer (what helm $HELM_VERSION's go.mod asks for; https://go.dev/dl/), or" >&2
  echo "put a helm $HELM_VERSION binary at $helm yourself; then run 'make helm' again." >&2
  exit 1
fi

echo "building helm $HELM_VERSION from the Go module proxy (~6 min, once)..."
mkdir -p "$dest"
# Build into a scratch folder and move the result in place, so an interrupted build never leaves a
# half-written binary that the check above would take for a finished one.
tmp="$(mktemp -d "$dest/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# CGO off: a static binary, and no C compiler needed. Helm's own release build stamps the full
# version with -X (its source says only "v4.3"); -s -w drop debug symbols (a third of the size).
CGO_ENABLED=0 GOBIN="$tmp" "$go" install \
  -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
  "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
mv "$tmp/helm" "$helm"
"$helm" version --short
echo "$helm"
