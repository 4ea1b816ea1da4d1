"""A running Docker engine for tests that need one, started the way .ci/run does.

`.ci/run` starts `dockerd` before the suite; when a developer runs pytest by hand
without one, `ensure_docker_engine` starts it in the background (and leaves it
running, as .ci/run does, since other tests and workers may use it). A file lock
keeps parallel workers (`pytest -n auto`) from starting two engines.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import time
from pathlib import Path

START_TIMEOUT_S = 60.0
LOCK = Path("/tmp/cluster-ai-dockerd.lock")
LOG = Path("/tmp/cluster-ai-dockerd.log")


def engine_running() -> bool:
    if shutil.which("docker") is None:
        return False
    done = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    return done.returncode == 0


def root_propagation() -> str:
    """`shared`, `private`, ... of the mount at `/` (findmnt)."""
    done = subprocess.run(["findmnt", "-no", "PROPAGATION", "/"], capture_output=True, text=True, timeout=30)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def ensure_root_shared() -> str | None:
    """Make `/` a shared mount, as systemd does on every host it boots; None when it is.

    The node exporter binds the host's `/` with rslave propagation (as its upstream
    documents), and Docker refuses to start it when `/` is private ("path / is
    mounted on / but it is not a shared or slave mount"): so it is on a fresh
    machine without systemd, such as a CI sandbox. `.ci/run` does the same.
    """
    if root_propagation() not in ("private", "unknown"):
        return None
    done = subprocess.run(["mount", "--make-rshared", "/"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return f"/ is a private mount and `mount --make-rshared /` failed: {done.stderr.strip()}"
    return None


def ensure_docker_engine() -> str | None:
    """Start dockerd if none answers, on a host whose `/` is shared; None when it runs, else why not."""
    reason = ensure_root_shared()
    if reason is not None:
        return reason
    if engine_running():
        return None
    if shutil.which("dockerd") is None:
        return "dockerd is not installed (Debian: docker.io)"
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if engine_running():  # another worker started it meanwhile
            return None
        with LOG.open("ab") as log:
            subprocess.Popen(["dockerd"], stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if engine_running():
                return None
            time.sleep(1)
    return f"dockerd did not answer within {START_TIMEOUT_S:g}s (see {LOG})"
