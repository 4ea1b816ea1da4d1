#!/usr/bin/env bash
# Build the Pulumi toolchain from the Go module proxy, for machines without the
# usual installers (`make toolchain`; CI runs it). docs/engine.md explains each piece.
#
#   pulumi                          CLI, github.com/pulumi/pulumi/pkg/v3 at PULUMI_VERSION
#   pulumi-language-python          Python language host (sdk/v3 at PULUMI_LANGUAGE_PYTHON_SDK_VERSION)
#   pulumi-language-python-exec     its executor, and pulumi-resource-pulumi-python (sdk/v3 at PULUMI_VERSION)
#   pulumi-resource-{random,tls,docker}  upstream Terraform providers through the bridge (ci/providers)
#   actionlint                      workflow linter
#
# Every pin is in ci/versions.env. Output: $CACHE/toolchain/<key>/bin, where <key>
# hashes the toolchain pins, ci/providers/ and the Go version; GOMODCACHE and
# GOCACHE (content-addressed) are shared under $CACHE/toolchain/go. A second run
# finds every binary and builds nothing. `source $CACHE/toolchain/env.sh` puts the
# toolchain on PATH with plugin downloads disabled.
# Not built: pulumi-resource-command (its code is only in modules the proxy refuses).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# shellcheck source=ci/versions.env
. ci/versions.env
for var in PULUMI_VERSION PULUMI_LANGUAGE_PYTHON_SDK_VERSION PULUMI_TERRAFORM_BRIDGE_VERSION \
  CLUSTERAI_PROVIDERS_VERSION ACTIONLINT_VERSION; do
  [ -n "${!var:-}" ] || { echo "toolchain: ci/versions.env must set $var" >&2; exit 2; }
done

CACHE=${CLUSTER_AI_CACHE:-/var/cache/cluster-ai}/toolchain
export GOMODCACHE=$CACHE/go/mod
export GOCACHE=$CACHE/go/build
# The checksum database is not reachable; ci/providers/go.sum pins the provider
# dependencies, and the proxy is the only source (no direct VCS fallback).
export GOSUMDB=off
GOPROXY=$(go env GOPROXY)
GOPROXY=${GOPROXY%,direct}
GOPROXY=${GOPROXY%|direct}
export GOPROXY
export GOTOOLCHAIN=auto
export CGO_ENABLED=0
export GOFLAGS=-mod=mod

STARTED=$(date +%s)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3

cache_key() {
  # The pins (toolchain keys only: other builds share ci/versions.env), the
  # providers' sources and the Go version: any change gives a new directory.
  {
    grep -E '^(PULUMI|TERRAFORM|TF_PROVIDER|CLUSTERAI|ACTIONLINT)_[A-Z_]*=' ci/versions.env
    find ci/providers -type f ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    sha256sum ci/toolchain.sh
    go version
  } | sha256sum | cut -c1-16
}

KEY=$(cache_key)
PREFIX=$CACHE/$KEY
BIN=$PREFIX/bin
WORK=$PREFIX/work
mkdir -p "$BIN" "$WORK" "$GOMODCACHE" "$GOCACHE" "$PREFIX/home"
echo "toolchain: cache $PREFIX (key $KEY)"

build() {
  # build NAME OUTPUT FUNCTION: run FUNCTION unless OUTPUT exists; print the time.
  local name=$1 output=$2 fn=$3 started
  if [ -e "$output" ]; then
    echo "toolchain: $name cached ($output)"
    return 0
  fi
  started=$(date +%s)
  echo "toolchain: building $name"
  "$fn"
  [ -e "$output" ] || { echo "toolchain: $name did not produce $output" >&2; exit 1; }
  echo "toolchain: $name built in $(($(date +%s) - started)) s"
}

module_dir() {
  # module_dir MODULE@VERSION: download it and print its (read-only) directory.
  go mod download -json "$1" | "$PYTHON" -c 'import json,sys; d=json.load(sys.stdin); sys.exit(d.get("Error")) if d.get("Error") else print(d["Dir"])'
}

writable_copy() {
  # writable_copy SRC DEST: a fresh writable copy of a module directory.
  rm -rf "$2"
  mkdir -p "$(dirname "$2")"
  cp -r "$1" "$2"
  chmod -R u+w "$2"
}

build_cli() {
  # pkg/go.mod replaces sdk/v3 with ../sdk: lay both out as siblings.
  writable_copy "$(module_dir "github.com/pulumi/pulumi/pkg/v3@v$PULUMI_VERSION")" "$WORK/pulumi/pkg"
  writable_copy "$(module_dir "github.com/pulumi/pulumi/sdk/v3@v$PULUMI_VERSION")" "$WORK/pulumi/sdk"
  (cd "$WORK/pulumi/pkg" && go build -trimpath \
    -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$PULUMI_VERSION" \
    -o "$BIN/pulumi.partial" ./cmd/pulumi)
  mv "$BIN/pulumi.partial" "$BIN/pulumi"
}

build_language_host() {
  # sdk/v3's go.mod has a replace, so `go install pkg@version` refuses it: build
  # inside a copy of the module.
  local v=$PULUMI_LANGUAGE_PYTHON_SDK_VERSION
  writable_copy "$(module_dir "github.com/pulumi/pulumi/sdk/v3@v$v")" "$WORK/sdk-langhost"
  (cd "$WORK/sdk-langhost" && go build -trimpath \
    -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$v" \
    -o "$BIN/pulumi-language-python.partial" ./python/cmd/pulumi-language-python)
  mv "$BIN/pulumi-language-python.partial" "$BIN/pulumi-language-python"
}

install_python_scripts() {
  # The executor the host runs and the policy/plugin shim, from the SDK's own version.
  local dir
  dir=$(module_dir "github.com/pulumi/pulumi/sdk/v3@v$PULUMI_VERSION")
  install -m 0755 "$dir/python/dist/pulumi-resource-pulumi-python" "$BIN/pulumi-resource-pulumi-python"
  # The analyzer shim (`python -m pulumi.policy`, which pulumi-policy still serves) left
  # sdk/v3 after the language host did: take it from the host's own sdk version.
  local shim="$dir/python/dist/pulumi-analyzer-policy-python"
  [ -f "$shim" ] || shim="$(module_dir "github.com/pulumi/pulumi/sdk/v3@v$PULUMI_LANGUAGE_PYTHON_SDK_VERSION")/python/dist/pulumi-analyzer-policy-python"
  install -m 0755 "$shim" "$BIN/pulumi-analyzer-policy-python"
  install -m 0755 "$dir/python/cmd/pulumi-language-python-exec" "$BIN/pulumi-language-python-exec"
}

PROVIDERS_LDFLAGS="-s -w -X clusterai/providers/info.Version=$CLUSTERAI_PROVIDERS_VERSION"

build_tfgen() {
  writable_copy "$ROOT/ci/providers" "$WORK/providers"
  (cd "$WORK/providers" && GOFLAGS=-mod=readonly go build -trimpath -ldflags "$PROVIDERS_LDFLAGS" \
    -o "$WORK/pulumi-tfgen-clusterai" ./cmd/pulumi-tfgen-clusterai)
}

build_provider() {
  # build_provider NAME: generate the schema, check it against the SDK, embed it, build.
  local name=$1 out=$WORK/schema-$1
  rm -rf "$out" && mkdir -p "$out"
  (cd "$out" && "$WORK/pulumi-tfgen-clusterai" "$name" schema --out "$out" >"$out/tfgen.log" 2>&1) ||
    { tail -30 "$out/tfgen.log"; exit 1; }
  "$PYTHON" "$ROOT/ci/providers/check_schema.py" "$name" "$out/schema.json"
  cp "$out/schema.json" "$WORK/providers/cmd/pulumi-resource-$name/schema.json"
  (cd "$WORK/providers" && GOFLAGS=-mod=readonly go build -trimpath -ldflags "$PROVIDERS_LDFLAGS" \
    -o "$BIN/pulumi-resource-$name.partial" "./cmd/pulumi-resource-$name")
  mv "$BIN/pulumi-resource-$name.partial" "$BIN/pulumi-resource-$name"
}

build_random() { build_provider random; }
build_tls() { build_provider tls; }
build_docker() { build_provider docker; }

build_actionlint() {
  GOBIN=$WORK/gobin go install -trimpath -ldflags "-s -w" "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
  mv "$WORK/gobin/actionlint" "$BIN/actionlint"
}

# The runtime name the analyzer copy of the pack carries (no language host claims it).
ANALYZER_RUNTIME=python-analyzer

write_env() {
  # env.sh for `source`: the toolchain first on PATH, no plugin downloads, no update check.
  cat >"$PREFIX/env.sh" <<EOF
# Generated by ci/toolchain.sh (key $KEY): source it to use the offline Pulumi toolchain.
export PATH="$BIN:\${PATH}"
export PULUMI_HOME="$PREFIX/home"
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
export PULUMI_SKIP_UPDATE_CHECK=true
export CLUSTER_AI_TOOLCHAIN_BIN="$BIN"
# The language host (v$PULUMI_LANGUAGE_PYTHON_SDK_VERSION) does not receive the project's
# runtime.options.virtualenv from this CLI: it runs this interpreter (docs/engine.md).
export PULUMI_PYTHON_CMD="\${PULUMI_PYTHON_CMD:-$ROOT/.venv/bin/python}"
# That host cannot start a policy pack for this CLI (docs/engine.md): python -m stacks
# starts the pack through the CLI's analyzer path, from a copy of the checkout's
# policies/ whose runtime is this name (stacks/automation.py analyzer_pack).
export CLUSTER_AI_POLICY_RUNTIME=$ANALYZER_RUNTIME
EOF
  cp "$PREFIX/env.sh" "$CACHE/env.sh.partial" && mv "$CACHE/env.sh.partial" "$CACHE/env.sh"
  # The SDK's analyzer script under the name the CLI looks that runtime up by.
  ln -sf pulumi-analyzer-policy-python "$BIN/pulumi-analyzer-policy-$ANALYZER_RUNTIME"
}

prune_old_keys() {
  # Another key's directory (module copies and binaries, about 750 MB) is of no use
  # once this one is built: keep this key and the most recent other one (a checkout
  # on the previous pins), remove the rest. The Go caches are shared and kept.
  local dir kept=0
  while IFS= read -r dir; do
    [ "$dir" = "$PREFIX" ] && continue
    kept=$((kept + 1))
    [ "$kept" -le 1 ] && continue
    echo "toolchain: removing the cache of an older key: ${dir:?}"
    rm -rf "${dir:?}"
  done < <(find "$CACHE" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended \
    -regex '.*/[0-9a-f]{16}' -printf '%T@ %p\n' | sort -rn | cut -d' ' -f2-)
}

build cli "$BIN/pulumi" build_cli
build language-host "$BIN/pulumi-language-python" build_language_host
build python-scripts "$BIN/pulumi-language-python-exec" install_python_scripts
build tfgen "$WORK/pulumi-tfgen-clusterai" build_tfgen
build provider-random "$BIN/pulumi-resource-random" build_random
build provider-tls "$BIN/pulumi-resource-tls" build_tls
build provider-docker "$BIN/pulumi-resource-docker" build_docker
build actionlint "$BIN/actionlint" build_actionlint
write_env
prune_old_keys

"$BIN/pulumi" version
echo "toolchain: ready in $(($(date +%s) - STARTED)) s"
echo "toolchain: bin $BIN"
echo "toolchain: source $CACHE/env.sh"
