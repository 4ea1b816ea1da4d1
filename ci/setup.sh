#!/usr/bin/env bash
# Everything the test tiers need, installed, built and started; what is already
# there is kept (`make test` runs this first; so does CI through `.ci/run`):
#
#   debian-packages  the real binaries the integration tier runs (apt-get; needs root)
#   docker-engine    dockerd, on a host whose / is a shared mount
#   python-deps      the venv (`make deps`)
#   toolchain        the Pulumi CLI, language host and plugins from Go modules (background)
#   ollama, webui    the real applications (Go modules, PyPI)
#   images           the e2e stack's images, in the local registry on 127.0.0.1:5000
#
# Slow builds are cached outside the clone (${CLUSTER_AI_CACHE:-/var/cache/cluster-ai},
# keyed by ci/versions.env), so a second run builds nothing. Every step prints its
# wall-clock time. The last line names the env file the tests source.
set -euo pipefail
cd "$(dirname "$0")/.."

STARTED=$(date +%s)
step() {
  # step NAME COMMAND...: run one step, print its time, stop on failure.
  local name=$1 started
  shift
  started=$(date +%s)
  echo "::step $name"
  if ! "$@"; then
    echo "::step $name FAILED after $(($(date +%s) - started)) s"
    exit 1
  fi
  echo "::step $name done in $(($(date +%s) - started)) s (setup at $(($(date +%s) - STARTED)) s)"
}

# Debian packages the integration tier runs for real.
DEBIAN_PACKAGES=(
  docker.io busybox-static
  openssh-server openssh-client nftables iproute2 util-linux
  postgresql docker-registry debootstrap
  caddy
  # Monitoring: promtool, amtool and real exporters for tests/integration/test_prometheus_*.py.
  prometheus prometheus-alertmanager prometheus-node-exporter prometheus-blackbox-exporter
  prometheus-redis-exporter prometheus-postgres-exporter redis-server
)

debian_packages() {
  local missing=() pkg
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages; as root: apt-get install --no-install-recommends ${missing[*]}" >&2
    return 1
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The Docker engine (the status, image and e2e tiers talk to it), on a host whose / is
# a shared mount, as systemd makes it on every host it boots: the node exporter binds
# / with rslave propagation, which Docker refuses on a private / (a fresh sandbox's).
docker_engine() {
  if [ "$(findmnt -no PROPAGATION /)" = private ]; then
    mount --make-rshared /
  fi
  if ! docker info >/dev/null 2>&1; then
    (dockerd >/tmp/ci-dockerd.log 2>&1 &)
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { echo "dockerd did not start"; tail -50 /tmp/ci-dockerd.log; return 1; }
  fi
}

step debian-packages debian_packages
step docker-engine docker_engine
step python-deps make --no-print-directory deps
# The Pulumi toolchain from Go modules (CLI, language host, plugins: docs/engine.md)
# builds in the background while Ollama, Open WebUI and the images (which need
# the network as much as the CPU) build in the foreground; on a warm cache both
# are a few seconds.
TOOLCHAIN_LOG=$(mktemp /tmp/ci-toolchain.XXXXXX.log)
toolchain_started=$(date +%s)
echo "::step toolchain (background, log $TOOLCHAIN_LOG)"
bash ci/toolchain.sh >"$TOOLCHAIN_LOG" 2>&1 &
TOOLCHAIN_PID=$!
wait_toolchain() {
  if ! wait "$TOOLCHAIN_PID"; then
    tail -60 "$TOOLCHAIN_LOG"
    return 1
  fi
  grep -E '^toolchain: .* (built|cached|ready)' "$TOOLCHAIN_LOG" || true
  echo "toolchain: finished $(($(date +%s) - toolchain_started)) s after it started"
}
# Ollama (CPU) from Go modules and Open WebUI from PyPI, for the real-application tests.
step ollama bash ci/ollama.sh
step webui bash ci/webui.sh
# Images the e2e tier runs, in the local registry (after the Ollama and Open WebUI builds it copies).
step images bash ci/images.sh
step toolchain-wait wait_toolchain
echo "::setup done in $(($(date +%s) - STARTED)) s: the tests source ${CLUSTER_AI_CACHE:-/var/cache/cluster-ai}/toolchain/env.sh"
