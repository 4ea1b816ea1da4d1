"""Print the requirements a venv's packages add on another Python patch release.

ci/webui.sh resolves Open WebUI on the build machine's Python 3.11.x; the image
runs Debian bookworm's 3.11.2. A dependency guarded by an environment marker
(redis needs `async-timeout` below 3.11.3) is then missing from the venv's
freeze. Run with the venv's interpreter: `python markers.py 3.11.2`.
"""

from __future__ import annotations

import sys
from importlib.metadata import distributions

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def main(target: str) -> None:
    here = default_environment()
    there = {**here, "python_full_version": target, "python_version": ".".join(target.split(".")[:2])}
    installed = {canonicalize_name(d.metadata["Name"]) for d in distributions()}
    extra: dict[str, Requirement] = {}
    for dist in distributions():
        for line in dist.requires or []:
            req = Requirement(line)
            name = canonicalize_name(req.name)
            if req.marker is None or name in installed:
                continue
            if req.marker.evaluate({**there, "extra": ""}) and not req.marker.evaluate({**here, "extra": ""}):
                req.marker = None
                extra[name] = req
    for name in sorted(extra):
        print(extra[name])


if __name__ == "__main__":
    main(sys.argv[1])
