"""Small parsers the rules share: image references, `docker run` lines, host paths, ports, URLs.

Standard library only: the pack runs in its own Python environment and must not
import the program (infra/, components/).
"""

from __future__ import annotations

import functools
import ipaddress
import posixpath
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from policies.model import is_unknown, items

# registry/repo[:tag][@sha256:digest], as Docker parses a reference.
IMAGE_REF = re.compile(
    r"^(?P<repo>[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-]{1,2}[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z0-9_+.-]+:[0-9a-fA-F]+))?$"
)
SHA256_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
HEX64 = re.compile(r"^(?:sha256:)?[0-9a-f]{64}$")


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference; `valid` is False for text Docker would not accept."""

    text: str
    repo: str | None
    tag: str | None
    digest: str | None
    valid: bool

    @property
    def pinned_by_digest(self) -> bool:
        return self.digest is not None and SHA256_DIGEST.fullmatch(self.digest) is not None


def parse_image(text: str) -> ImageRef:
    match = IMAGE_REF.fullmatch(text)
    if match is None:
        return ImageRef(text, None, None, None, False)
    return ImageRef(text, match["repo"], match["tag"], match["digest"], True)


def is_image_id(text: str) -> bool:
    """`sha256:<64 hex>`: an image id (what `RemoteImage.image_id` gives a container)."""
    return SHA256_DIGEST.fullmatch(text) is not None


# `docker run` options that take a value in the next argument (the rest are flags).
_RUN_OPTIONS_WITH_VALUE = frozenset(
    """
    -a --attach --add-host --annotation --blkio-weight --blkio-weight-device --cap-add --cap-drop
    --cgroup-parent --cgroupns --cidfile --cpu-period --cpu-quota --cpu-rt-period --cpu-rt-runtime
    -c --cpu-shares --cpus --cpuset-cpus --cpuset-mems --device --device-cgroup-rule
    --device-read-bps --device-read-iops --device-write-bps --device-write-iops --dns --dns-option
    --dns-search --domainname --entrypoint -e --env --env-file --expose --gpus --group-add
    --health-cmd --health-interval --health-retries --health-start-interval --health-start-period
    --health-timeout -h --hostname --ip --ip6 --ipc --isolation --kernel-memory -l --label
    --label-file --link --link-local-ip --log-driver --log-opt --mac-address -m --memory
    --memory-reservation --memory-swap --memory-swappiness --mount --name --network --net
    --network-alias --net-alias --oom-score-adj --pid --pids-limit --platform -p --publish --pull
    --restart --runtime --security-opt --shm-size --stop-signal --stop-timeout --storage-opt
    --sysctl --tmpfs --ulimit -u --user --userns --uts -v --volume --volume-driver --volumes-from
    -w --workdir
    """.split()
)


def docker_run_images(command: str) -> list[str]:
    """The image of every `docker run`/`docker create` in a shell command line."""
    return list(_docker_run_images(command))


@functools.lru_cache(maxsize=4096)
def _docker_run_images(command: str) -> tuple[str, ...]:
    # Several rules read the same command lines (one per host in a large
    # stack, each alike): parse each distinct line once.
    try:
        words = shlex.split(command, comments=False)
    except ValueError:
        return ()
    images = []
    for i in range(len(words) - 1):
        if words[i] == "docker" or words[i].endswith("/docker"):
            verb_at = i + 1
            if words[verb_at] == "container" and verb_at + 1 < len(words):
                verb_at += 1
            if words[verb_at] not in ("run", "create"):
                continue
            image = _first_operand(words[verb_at + 1 :])
            if image is not None:
                images.append(image)
    return tuple(images)


def _first_operand(words: Sequence[str]) -> str | None:
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        if word == "--":
            continue
        if word.startswith("-"):
            skip = "=" not in word and word in _RUN_OPTIONS_WITH_VALUE
            continue
        return word
    return None


def normalize_path(path: str) -> str:
    normalized = posixpath.normpath(path)
    return "/" if normalized in ("//", "/") else normalized


def under(path: str, root: str) -> bool:
    """Is `path` `root` itself or inside it?"""
    return path == root or root == "/" or path.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True)
class HostMount:
    """A host path a container gets: a bind mount or a legacy `volumes` host path."""

    path: str
    target: str
    read_only: bool


def host_mounts(props: Mapping[str, Any]) -> Iterator[HostMount]:
    """Every host path mounted into a container (named volumes are not host paths)."""
    for mount in items(props.get("mounts")):
        # Read `source` only for binds: a named volume's source is often unknown in preview.
        if isinstance(mount, Mapping) and mount.get("type") == "bind":
            source = mount.get("source")
            if isinstance(source, str):
                yield HostMount(normalize_path(source), str(mount.get("target", "")), bool(mount.get("readOnly")))
    for volume in items(props.get("volumes")):
        if isinstance(volume, Mapping) and "hostPath" in volume:
            host_path = volume.get("hostPath")
            if isinstance(host_path, str) and host_path:
                yield HostMount(
                    normalize_path(host_path), str(volume.get("containerPath", "")), bool(volume.get("readOnly"))
                )


def port_allowed(port: int, allowed: Sequence[Any]) -> bool:
    """`allowed` holds ports (8786) and ranges ("8790-8889")."""
    for entry in allowed:
        if isinstance(entry, int | float) and not isinstance(entry, bool) and int(entry) == port:
            return True
        if isinstance(entry, str):
            low, _, high = entry.partition("-")
            try:
                if int(low) <= port <= int(high or low):
                    return True
            except ValueError:
                continue
    return False


def security_options(props: Mapping[str, Any]) -> list[tuple[str, str]]:
    """`securityOpts` as (name, value) pairs; Docker accepts both `name=value` and `name:value`."""
    pairs = []
    for option in items(props.get("securityOpts")):
        text = str(option).strip()
        match = re.match(r"^([A-Za-z-]+)[=:]?(.*)$", text)
        if match:
            pairs.append((match[1].lower(), match[2].strip()))
    return pairs


def ip_of(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return None


def is_local_host(host: str) -> bool:
    """A name that stays on the host's private network (a Docker alias) or the loopback."""
    if host in ("localhost",):
        return True
    ip = ip_of(host)
    if ip is not None:
        return ip.is_loopback
    # A single-label name is a Docker network alias; a dotted one is DNS, reaching other hosts.
    return "." not in host


_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^\s;,'\"]+)")


def urls(text: str) -> Iterator[tuple[str, str]]:
    """(scheme, host) of every URL in a piece of text (`;`/`,`-separated lists included)."""
    for match in _URL.finditer(text):
        scheme = match[1].lower()
        try:
            host = urlsplit(f"{scheme}://{match[2]}").hostname
        except ValueError:
            continue
        if host:
            yield scheme, host


def command_words(props: Mapping[str, Any]) -> list[str]:
    """A container's entrypoint and command, as strings."""
    words: list[str] = []
    for key in ("entrypoints", "command"):
        words += [str(w) for w in items(props.get(key)) if not is_unknown(w)]
    return words


def env_pairs(props: Mapping[str, Any]) -> list[tuple[str, str]]:
    """`envs` ("K=V" strings) as pairs."""
    pairs = []
    for entry in items(props.get("envs")):
        key, _, value = str(entry).partition("=")
        pairs.append((key, value))
    return pairs


def flag_value(words: Sequence[str], flag: str) -> str | None:
    """The value of `--flag value` or `--flag=value` in an argument list."""
    for i, word in enumerate(words):
        if word == flag and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
    return None
