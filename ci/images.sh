#!/usr/bin/env bash
# `make images`: build the images the dev stack runs and push them to a local
# registry on loopback, for machines that can pull no upstream image.
#
#   base     Debian bookworm (minbase) made with debootstrap from the machine's own
#            apt mirror, turned into an image with `docker import`;
#   images   every image in ci/images/images.list, FROM that base, built by the
#            legacy builder (it never pulls: the base is local);
#   registry Debian's docker-registry on 127.0.0.1:$REGISTRY_PORT, storage under
#            $CLUSTER_AI_CACHE/registry so images outlive the run (Docker trusts a
#            registry on 127.0.0.0/8 without TLS).
#
# Idempotent: each image carries a content key (label `cluster-ai.images.key`), the
# hash of its build context, build arguments and the base's key. An image whose
# key is unchanged and already in the registry is skipped, so a warm run takes
# seconds. IMAGES_ONLY="postgres redis" builds a subset; IMAGES_REBUILD=1 ignores
# the keys. Every build prints its time. See docs/images.md.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${CLUSTER_AI_CACHE:-/var/cache/cluster-ai}
# Not published by any dev-stack container (`python -m stacks plan dev`); the
# references in Pulumi.e2e.yaml name it.
REGISTRY_PORT=5000
REGISTRY=127.0.0.1:$REGISTRY_PORT
REGISTRY_DIR=$CACHE/registry
LIST=ci/images/images.list
KEY_LABEL=cluster-ai.images.key
SUITE=bookworm
BASE_REPO=cluster-ai/debian
# Bump to rebuild the base and, through its key, every image.
BASE_RECIPE=1
OLLAMA_BIN=${OLLAMA_BIN:-}
# bookworm's python3; the Python images check it at build time.
DEBIAN_PYTHON=3.11.2
export DOCKER_BUILDKIT=0 # the legacy builder: FROM a local image never pulls

STARTED=$(date +%s)
WORK=$(mktemp -d /tmp/cluster-ai-images.XXXXXX)
trap 'stop_wheel_server; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

log() { echo "images: $*"; }
die() {
  echo "images: error: $*" >&2
  exit 1
}
since() { echo $(($(date +%s) - $1)); }

ensure_packages() {
  # The tools this script runs (CI installs them in its debian-packages step).
  local missing=() pkg
  for pkg in docker.io docker-registry debootstrap curl; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

ensure_dockerd() {
  docker info >/dev/null 2>&1 && return 0
  log "starting dockerd (log: /tmp/dockerd.log)"
  (setsid dockerd >/tmp/dockerd.log 2>&1 &)
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  tail -20 /tmp/dockerd.log >&2
  die "dockerd did not answer within 60 s"
}

registry_up() { curl -fsS --max-time 2 "http://$REGISTRY/v2/" >/dev/null 2>&1; }

ensure_registry() {
  # Left running after the script ends: the e2e tier and `make up` pull from it.
  if registry_up; then
    log "registry answers on $REGISTRY"
    return 0
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$REGISTRY_PORT") 2>/dev/null; then
    die "127.0.0.1:$REGISTRY_PORT is taken by something that is not a registry"
  fi
  mkdir -p "$REGISTRY_DIR/data"
  cat >"$REGISTRY_DIR/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $REGISTRY_DIR/data
  delete:
    enabled: true
http:
  addr: $REGISTRY
EOF
  (setsid docker-registry serve "$REGISTRY_DIR/config.yml" >>"$REGISTRY_DIR/registry.log" 2>&1 </dev/null &
    echo $! >"$REGISTRY_DIR/registry.pid")
  for _ in $(seq 1 50); do
    registry_up && {
      log "registry started on $REGISTRY (storage $REGISTRY_DIR/data, pid $(cat "$REGISTRY_DIR/registry.pid"))"
      return 0
    }
    sleep 0.2
  done
  tail -20 "$REGISTRY_DIR/registry.log" >&2
  die "docker-registry did not answer on $REGISTRY"
}

apt_sources() {
  # The machine's Debian sources for $SUITE (deb822 or one-line), as one-line
  # entries for the image: the same mirror, updates and security suites.
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    case "$f" in
      *.sources)
        awk -v suite="$SUITE" '
          function flush() {
            if (types ~ /(^| )deb( |$)/ && uris != "" && suites != "") {
              n = split(uris, u, " "); m = split(suites, s, " ")
              for (i = 1; i <= n; i++) for (j = 1; j <= m; j++)
                if (s[j] ~ "^" suite) print "deb " u[i] " " s[j] " " (comps == "" ? "main" : comps)
            }
            types = uris = suites = comps = ""
          }
          /^[ \t]*#/ { next }
          /^[ \t]*$/ { flush(); next }
          /^Types:/ { sub(/^Types:[ \t]*/, ""); types = $0 }
          /^URIs:/ { sub(/^URIs:[ \t]*/, ""); uris = $0 }
          /^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0 }
          /^Components:/ { sub(/^Components:[ \t]*/, ""); comps = $0 }
          END { flush() }' "$f"
        ;;
      *) awk -v suite="$SUITE" '$1 == "deb" && $2 !~ /^\[/ && $3 ~ "^" suite { print $1, $2, $3, "main" }' "$f" ;;
    esac
  done | sort -u
}

mirror() {
  apt_sources | awk -v suite="$SUITE" '$3 == suite { print $2; exit }'
}

image_key() {
  # image_key REF: the content key an image (local) carries, empty if none.
  docker image inspect --format "{{ index .Config.Labels \"$KEY_LABEL\" }}" "$1" 2>/dev/null || true
}

in_registry() {
  # in_registry REF: the registry serves this tag with the digest the local image was pushed as.
  local ref=$1 repo tag digest
  repo=${ref#"$REGISTRY"/}
  tag=${repo##*:}
  repo=${repo%:*}
  digest=$(curl -fsSI --max-time 5 \
    -H "Accept: application/vnd.docker.distribution.manifest.v2+json" \
    "http://$REGISTRY/v2/$repo/manifests/$tag" 2>/dev/null |
    tr -d '\r' | awk 'tolower($1) == "docker-content-digest:" { print $2 }')
  [ -n "$digest" ] && docker image inspect --format '{{ join .RepoDigests "\n" }}' "$ref" 2>/dev/null |
    grep -qxF "$REGISTRY/$repo@$digest"
}

up_to_date() {
  # up_to_date REF KEY: the image with this key is local and in the registry
  # (pulled back from the registry when the engine lost it).
  local ref=$1 key=$2
  [ "${IMAGES_REBUILD:-0}" = 1 ] && return 1
  if [ "$(image_key "$ref")" != "$key" ]; then
    docker pull -q "$ref" >/dev/null 2>&1 || return 1
    [ "$(image_key "$ref")" = "$key" ] || return 1
  fi
  in_registry "$ref" || docker push -q "$ref" >/dev/null
}

push() {
  local ref=$1 started
  started=$(date +%s)
  docker push -q "$ref" >/dev/null || die "push of $ref failed"
  log "pushed $ref in $(since "$started") s"
}

make_rootfs() {
  # make_rootfs TARBALL SOURCES: debootstrap minbase, the machine's sources, and
  # the apt/dpkg settings Debian's own images use (no recommends, no caches, no docs).
  local tarball=$1 sources=$2 started root=$WORK/rootfs
  started=$(date +%s)
  log "debootstrap $SUITE (minbase) from $(mirror)"
  debootstrap --variant=minbase "$SUITE" "$root" "$(mirror)" >"$WORK/debootstrap.log" 2>&1 || {
    tail -30 "$WORK/debootstrap.log" >&2
    die "debootstrap failed"
  }
  printf '%s\n' "$sources" >"$root/etc/apt/sources.list"
  printf '%s\n' 'APT::Install-Recommends "false";' 'APT::Install-Suggests "false";' \
    'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
    'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/90cluster-ai"
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
    >"$root/etc/dpkg/dpkg.cfg.d/90cluster-ai"
  chroot "$root" apt-get clean
  rm -rf "${root:?}"/var/lib/apt/lists/* "${root:?}"/var/log/*.log "${root:?}"/var/cache/apt/*.bin
  mkdir -p "$(dirname "$tarball")"
  tar --numeric-owner --xattrs -C "$root" \
    --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf "$tarball.partial" .
  mv "$tarball.partial" "$tarball"
  rm -rf "${root:?}"
  log "debootstrap done in $(since "$started") s: $tarball"
}

BASE_REF=
BASE_KEY=
build_base() {
  # Debian $SUITE minbase from the machine's mirror; the key covers the recipe and
  # the sources, not the day: apt-get upgrade in the images brings fixes.
  local sources started root
  sources=$(apt_sources)
  [ -n "$sources" ] || die "no Debian $SUITE source in /etc/apt/sources.list*: nothing to debootstrap from"
  BASE_KEY=$(printf '%s\n' "recipe=$BASE_RECIPE" "suite=$SUITE" "variant=minbase" "$sources" | sha256sum | cut -c1-16)
  BASE_REF=$REGISTRY/$BASE_REPO:$SUITE-$BASE_KEY
  if up_to_date "$BASE_REF" "$BASE_KEY"; then
    log "base $BASE_REF is up to date"
    return 0
  fi
  started=$(date +%s)
  # The root filesystem tarball is kept: a failed import or a wiped engine does
  # not cost another debootstrap.
  local tarball=$CACHE/images/debian-$SUITE-$BASE_KEY.tar
  [ -s "$tarball" ] || make_rootfs "$tarball" "$sources"
  docker import \
    --change "LABEL $KEY_LABEL=$BASE_KEY" \
    --change "LABEL org.opencontainers.image.description=\"Debian $SUITE minbase (debootstrap)\"" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' "$tarball" "$BASE_REF" >/dev/null
  log "built $BASE_REF in $(since "$started") s"
  push "$BASE_REF"
}

# Python packages are fetched on this machine (its pip trusts the machine's TLS
# setup; an image build would need that CA baked into a layer), kept under
# $CACHE/images/wheels/<name>-<hash of the requirements>, and served to the build
# over loopback for the duration of the script: nothing of them stays in a layer.
WHEEL_PORT=
WHEEL_PID=
host_python() {
  # The project's venv Python (3.11, as Debian bookworm's and the images').
  local py=.venv/bin/python
  [ -x "$py" ] || py=python3.11
  "$py" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null ||
    die "wheels for the images need a host Python 3.11 (.venv/bin/python or python3.11)"
  echo "$py"
}

wheel_server() {
  [ -n "$WHEEL_PORT" ] && return 0
  mkdir -p "$CACHE/images/wheels"
  WHEEL_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  python3 -m http.server --bind 127.0.0.1 --directory "$CACHE/images/wheels" "$WHEEL_PORT" \
    >"$WORK/wheel-server.log" 2>&1 &
  WHEEL_PID=$!
  for _ in $(seq 1 50); do
    curl -fsS --max-time 1 "http://127.0.0.1:$WHEEL_PORT/" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "the wheel server on 127.0.0.1:$WHEEL_PORT did not start"
}

stop_wheel_server() {
  if [ -n "$WHEEL_PID" ]; then kill "$WHEEL_PID" 2>/dev/null || true; fi
  return 0
}

fetch_wheels() {
  # fetch_wheels NAME REQUIREMENTS [PIP ARGS...]: wheels for pinned requirements, once per content.
  local name=$1 requirements=$2 dir started
  shift 2
  dir=$CACHE/images/wheels/$name-$(sha256sum "$requirements" | cut -c1-16)
  if [ ! -f "$dir/.complete" ]; then
    started=$(date +%s)
    rm -rf "$dir"
    mkdir -p "$dir"
    "$(host_python)" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$dir" \
      -r "$requirements" "$@" || die "pip wheel for $name failed"
    touch "$dir/.complete"
    # Wheels of an older lock of the same image are of no further use.
    find "$CACHE/images/wheels" -mindepth 1 -maxdepth 1 -name "$name-*" ! -path "$dir" -exec rm -rf {} +
    log "wheels for $name fetched in $(since "$started") s: $dir" >&2
  fi
  echo "$dir"
}

stage_context() {
  # stage_context NAME DIR DEST: the build context, plus what other CI steps built.
  local name=$1 dir=$2 dest=$3
  cp -a "ci/images/$dir/." "$dest/"
  # The install steps the Debian-package images share, where a Dockerfile uses them.
  if grep -q 'debian-package\.sh' "$dest/Dockerfile"; then cp -a ci/images/debian-package.sh "$dest/"; fi
  case "$name" in
    ollama)
      local bin=${OLLAMA_BIN:-$(ollama_binary)}
      [ -x "$bin" ] || die "no Ollama binary at '$bin': run ci/ollama.sh first (or set OLLAMA_BIN)"
      cp "$bin" "$dest/ollama"
      # Runner libraries ci/ollama.sh may put beside the binary (lib/ollama), if any.
      mkdir -p "$dest/lib"
      if [ -d "$(dirname "$bin")/../lib/ollama" ]; then cp -a "$(dirname "$bin")/../lib/ollama/." "$dest/lib/"; fi
      ;;
    dask)
      # The image's Dask must be the client's: the one pin in pyproject.toml.
      local pin
      pin=$(grep -oE '"dask\[distributed\]==[^"]+"' pyproject.toml | tr -d '"')
      grep -qxF "$pin" "$dest/requirements.txt" ||
        die "ci/images/dask/requirements.txt does not pin $pin as pyproject.toml does"
      WHEELS=$(fetch_wheels dask "$dest/requirements.txt" --no-deps) || exit 1
      ;;
    webui) stage_webui "$dest" ;;
  esac
}

ollama_binary() {
  # The binary ci/ollama.sh builds, at the version ci/versions.env pins.
  local version
  version=$(sed -n 's/^OLLAMA_VERSION=//p' ci/versions.env)
  echo "$CACHE/ollama/$version/bin/ollama"
}

stage_webui() {
  # The package set ci/webui.sh installed and the integration tier runs: its venv's
  # freeze is the lock (WEBUI_VERSION in ci/versions.env).
  local dest=$1 version venv
  version=$(sed -n 's/^WEBUI_VERSION=//p' ci/versions.env)
  venv=$CACHE/webui/$version/venv
  [ -f "$CACHE/webui/$version/.complete" ] ||
    die "no Open WebUI $version venv at $venv: run ci/webui.sh first"
  "$venv/bin/python" -m pip freeze --disable-pip-version-check --exclude-editable >"$dest/requirements.lock"
  grep -qxF "open-webui==$version" "$dest/requirements.lock" || die "$venv does not hold open-webui==$version"
  # What the packages need on bookworm's Python and not on the venv's (markers).
  "$venv/bin/python" ci/images/webui/markers.py "$DEBIAN_PYTHON" >>"$dest/requirements.lock"
  WHEELS=$(fetch_wheels webui "$dest/requirements.lock" --no-deps) || exit 1
}

context_key() {
  # context_key DIR ARGS...: hash of every file in the context and the build arguments.
  local dir=$1
  shift
  {
    printf '%s\n' "base=$BASE_KEY" "$@"
    (cd "$dir" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    (cd "$dir" && find . -type f -perm -u+x | LC_ALL=C sort)
  } | sha256sum | cut -c1-16
}

BUILT=()
build_image() {
  # build_image NAME DIR REPO:TAG PACKAGE
  local name=$1 dir=$2 repotag=$3 package=$4 ref ctx key version started
  ref=$REGISTRY/$repotag
  ctx=$WORK/$name
  mkdir -p "$ctx"
  WHEELS=
  stage_context "$name" "$dir" "$ctx"
  version=${repotag##*:}
  version=${version%-bookworm}
  local args=(--build-arg "BASE=$BASE_REF" --build-arg "SERVICE=$name" --build-arg "VERSION=$version"
    --build-arg "PACKAGE=$package")
  case "$name" in dask | webui) args+=(--build-arg "PYTHON_VERSION=$DEBIAN_PYTHON") ;; esac
  key=$(context_key "$ctx" "${args[@]}")
  if up_to_date "$ref" "$key"; then
    log "$ref is up to date (key $key)"
    BUILT+=("$name skipped")
    rm -rf "$ctx"
    return 0
  fi
  started=$(date +%s)
  log "building $ref"
  if [ -n "$WHEELS" ]; then
    # Not part of the key: the port changes from run to run, the wheels do not.
    wheel_server
    args+=(--build-arg "WHEELS=http://127.0.0.1:$WHEEL_PORT/$(basename "$WHEELS")/")
  fi
  if ! docker build --pull=false --network host --force-rm -q \
    "${args[@]}" --label "$KEY_LABEL=$key" --label "cluster-ai.images.service=$name" \
    -t "$ref" "$ctx" >"$WORK/$name.log" 2>&1; then
    # -q hides the steps: run again verbosely for the log (cached layers are reused).
    docker build --pull=false --network host --force-rm "${args[@]}" -t "$ref" "$ctx" >&2 || true
    die "build of $ref failed"
  fi
  log "built $ref in $(since "$started") s"
  push "$ref"
  BUILT+=("$name $(since "$started")s")
  rm -rf "$ctx"
}

main() {
  ensure_packages
  ensure_dockerd
  ensure_registry
  local started
  started=$(date +%s)
  build_base
  log "base ready in $(since "$started") s"
  local key dir repotag package
  while read -r key dir repotag package <&3; do
    case "$key" in '' | '#'*) continue ;; esac
    if [ -n "${IMAGES_ONLY:-}" ] && ! [[ " $IMAGES_ONLY " == *" $dir "* || " $IMAGES_ONLY " == *" $key "* ]]; then
      continue
    fi
    build_image "$key" "$dir" "$repotag" "$package"
  done 3<"$LIST"
  log "done in $(since "$STARTED") s: ${BUILT[*]}"
}

main "$@"
