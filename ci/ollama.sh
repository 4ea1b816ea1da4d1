#!/usr/bin/env bash
# Build a CPU Ollama from the Go module proxy, cached outside the clone.
#
# Which version: the newest release the (filtered) module proxy serves whose cgo
# build needs nothing from outside the machine's sources (ci/versions.env,
# OLLAMA_VERSION; see docs/operations.md "Ollama built from Go modules").
# From v0.11.5 on, the module zips lack llama.cpp's vendored headers; they come
# from Debian (nlohmann-json3-dev, libstb-dev) and, for miniaudio, from the
# miniaudio sdist on PyPI (pinned by version and sha256). From v0.30 inference
# needs a llama.cpp that CMake fetches from a code host: out of reach here.
#
# Output: $CLUSTER_AI_CACHE/ollama/$OLLAMA_VERSION/bin/ollama (GOMODCACHE and
# GOCACHE live under $CLUSTER_AI_CACHE/ollama too), so a second run builds nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=ci/versions.env
. ci/versions.env
: "${OLLAMA_VERSION:?ci/versions.env must set OLLAMA_VERSION}"
: "${OLLAMA_MODULE_SUM:?ci/versions.env must set OLLAMA_MODULE_SUM}"
: "${MINIAUDIO_SDIST_VERSION:?ci/versions.env must set MINIAUDIO_SDIST_VERSION}"
: "${MINIAUDIO_SDIST_SHA256:?ci/versions.env must set MINIAUDIO_SDIST_SHA256}"

CACHE_ROOT=${CLUSTER_AI_CACHE:-/var/cache/cluster-ai}/ollama
PREFIX=$CACHE_ROOT/$OLLAMA_VERSION
BIN=$PREFIX/bin/ollama
MODULE=github.com/ollama/ollama

export GOMODCACHE=$CACHE_ROOT/gomod
export GOCACHE=$CACHE_ROOT/gocache
export GOSUMDB=off # the checksum database is not reachable; the module sum is pinned below
export GOFLAGS=-mod=mod
export GOTOOLCHAIN=auto
export CGO_ENABLED=1

started=$(date +%s)
elapsed() { echo $(($(date +%s) - started)); }

if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -qF "${OLLAMA_VERSION#v}"; then
  echo "ollama $OLLAMA_VERSION cached at $BIN"
  exit 0
fi

install_debian_headers() {
  # The C++ headers llama.cpp includes as <nlohmann/json.hpp> and "stb/stb_image.h".
  local missing=() pkg
  for pkg in nlohmann-json3-dev libstb-dev g++; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

fetch_miniaudio_header() {
  # "miniaudio/miniaudio.h" (llama.cpp's audio decoding in mtmd-helper.cpp) is not
  # packaged by Debian 12; the miniaudio sdist on PyPI carries the same 0.11.x header.
  local dest=$1 work
  [ -f "$dest/miniaudio/miniaudio.h" ] && return 0
  work=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --no-binary :all: --dest "$work" \
    "miniaudio==$MINIAUDIO_SDIST_VERSION"
  echo "$MINIAUDIO_SDIST_SHA256  $work/miniaudio-$MINIAUDIO_SDIST_VERSION.tar.gz" | sha256sum -c --quiet -
  mkdir -p "$dest/miniaudio"
  tar -xzf "$work/miniaudio-$MINIAUDIO_SDIST_VERSION.tar.gz" -C "$work" \
    "miniaudio-$MINIAUDIO_SDIST_VERSION/miniaudio/miniaudio.h"
  mv "$work/miniaudio-$MINIAUDIO_SDIST_VERSION/miniaudio/miniaudio.h" "$dest/miniaudio/miniaudio.h"
  rm -rf "$work"
}

check_module_sum() {
  # GOSUMDB is off, so the module's own hash is checked against the pin here; its
  # dependencies are checked by go against the module's go.sum.
  local sum
  sum=$(go mod download -json "$MODULE@$OLLAMA_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Sum"])')
  if [ "$sum" != "$OLLAMA_MODULE_SUM" ]; then
    echo "ollama: module $MODULE@$OLLAMA_VERSION has sum $sum, ci/versions.env pins $OLLAMA_MODULE_SUM" >&2
    exit 1
  fi
}

install_debian_headers
fetch_miniaudio_header "$PREFIX/include"
check_module_sum
echo "ollama: sources ready after $(elapsed) s; building $MODULE@$OLLAMA_VERSION (cgo, CPU)"

mkdir -p "$PREFIX/bin"
GOBIN=$PREFIX/bin CGO_CPPFLAGS="-I$PREFIX/include" \
  go install -trimpath -ldflags "-s -w -X $MODULE/version.Version=${OLLAMA_VERSION#v}" \
  "$MODULE@$OLLAMA_VERSION"

"$BIN" --version 2>&1 | tail -1
echo "ollama $OLLAMA_VERSION built in $(elapsed) s: $BIN"
