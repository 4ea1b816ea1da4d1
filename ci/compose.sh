#!/usr/bin/env bash
# Build Docker Compose v2 (the `docker compose` CLI plugin) from the Go module proxy,
# cached outside the clone, for bench/converge.py (the benchmark compares `pulumi up`
# with `docker compose up -d --wait`). Debian 12 ships only the old Python
# docker-compose 1.29, which has no `--wait`.
#
# Pins: COMPOSE_VERSION and COMPOSE_MODULE_SUM in ci/versions.env. GOSUMDB is not
# reachable, so the module's own hash is checked against the pin here; its
# dependencies are checked by go against the module's go.sum (no replace directives).
#
# Output: $CLUSTER_AI_CACHE/compose/$COMPOSE_VERSION/bin/docker-compose, linked as a
# docker CLI plugin into ~/.docker/cli-plugins/ so `docker compose` finds it. A
# second run builds nothing. Prints the binary's path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=ci/versions.env
. ci/versions.env
: "${COMPOSE_VERSION:?ci/versions.env must set COMPOSE_VERSION}"
: "${COMPOSE_MODULE_SUM:?ci/versions.env must set COMPOSE_MODULE_SUM}"

CACHE_ROOT=${CLUSTER_AI_CACHE:-/var/cache/cluster-ai}/compose
PREFIX=$CACHE_ROOT/$COMPOSE_VERSION
BIN=$PREFIX/bin/docker-compose
MODULE=github.com/docker/compose/v2
PLUGIN_DIR=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins

export GOMODCACHE=$CACHE_ROOT/gomod
export GOCACHE=$CACHE_ROOT/gocache
export GOSUMDB=off # unreachable; the module sum is pinned in ci/versions.env
export GOFLAGS=-mod=mod
export GOTOOLCHAIN=auto
export CGO_ENABLED=0

started=$(date +%s)
elapsed() { echo $(($(date +%s) - started)); }

install_plugin() {
  # The docker CLI looks for plugins named docker-<name> in ~/.docker/cli-plugins.
  mkdir -p "$PLUGIN_DIR"
  ln -sfn "$BIN" "$PLUGIN_DIR/docker-compose"
}

if [ -x "$BIN" ] && "$BIN" version --short 2>/dev/null | grep -qxF "${COMPOSE_VERSION#v}"; then
  install_plugin
  echo "compose $COMPOSE_VERSION cached ($(elapsed) s)"
  echo "$BIN"
  exit 0
fi

sum=$(go mod download -json "$MODULE@$COMPOSE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Sum"])')
if [ "$sum" != "$COMPOSE_MODULE_SUM" ]; then
  echo "compose: module $MODULE@$COMPOSE_VERSION has sum $sum, ci/versions.env pins $COMPOSE_MODULE_SUM" >&2
  exit 1
fi
echo "compose: module checked after $(elapsed) s; building $MODULE@$COMPOSE_VERSION"

# Built as its own main module, as its Makefile does (`go build ./cmd`): its go.mod has
# exclude directives, which `go install MODULE/cmd@VERSION` refuses. The module cache
# copy is read-only, so the source is copied to a scratch directory first. Same flags
# as that Makefile: the version stamped into internal.Version.
src=$(go mod download -json "$MODULE@$COMPOSE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
work=$(mktemp -d)
trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
cp -r "$src" "$work/src"
chmod -R u+w "$work/src"
mkdir -p "$PREFIX/bin"
(cd "$work/src" && go build -trimpath -ldflags "-s -w -X $MODULE/internal.Version=$COMPOSE_VERSION" \
  -o "$BIN.tmp" ./cmd)
mv "$BIN.tmp" "$BIN"
install_plugin
"$BIN" version
echo "compose $COMPOSE_VERSION built in $(elapsed) s"
echo "$BIN"
