#!/bin/sh
# The steps every image built from a Debian package shares (ci/images.sh stages this
# file into each such build context):
#
#   debian-package.sh install PACKAGE VERSION [EXTRA...]
#       install PACKAGE (and EXTRA) with busybox from bookworm; fail when PACKAGE's
#       version is not the VERSION the image's tag names (a tag never lies); drop
#       apt's lists; `wget` is busybox's, for the healthchecks.
#   debian-package.sh plain-binary PATH [LINK...]
#       rewrite PATH as a plain copy, then link each LINK to it. A plain copy drops
#       any file capability the package set: under --cap-drop ALL and
#       no-new-privileges such a binary could not be executed at all.
set -eu

install_package() {
  package=$1 version=$2
  shift 2
  apt-get update
  apt-get install -y "$package" busybox "$@"
  v=$(dpkg-query -W -f='${Version}' "$package")
  case "${v#*:}" in
    "$version".*) ;;
    *) echo "$package is $v, the tag says $version" >&2; exit 1 ;;
  esac
  rm -rf /var/lib/apt/lists/*
  ln -s /bin/busybox /usr/local/bin/wget
}

plain_binary() {
  path=$1
  shift
  cp "$path" "$path.plain"
  mv "$path.plain" "$path"
  for link in "$@"; do ln -s "$path" "$link"; done
}

set -x
case "${1:-}" in
  install) shift; install_package "$@" ;;
  plain-binary) shift; plain_binary "$@" ;;
  *) echo "usage: debian-package.sh install PACKAGE VERSION [EXTRA...] | plain-binary PATH [LINK...]" >&2; exit 2 ;;
esac
