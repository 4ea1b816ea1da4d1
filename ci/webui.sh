#!/usr/bin/env bash
# Install Open WebUI from PyPI into a venv cached outside the clone, for the
# integration tests that run the real application (tests/integration/test_webui_real.py).
#
# Output: $CLUSTER_AI_CACHE/webui/$WEBUI_VERSION/venv (open-webui with its postgres
# extra: psycopg2-binary and pgvector at the versions open-webui pins).
#
# No torch. PyPI's only Linux torch wheel is the CUDA build: without its
# cuda-toolkit/nvidia-* dependencies (several GB) `import torch` fails
# ("libcublasLt.so.*[0-9] not found"), and a CPU build is not on PyPI. Open WebUI
# imports torch only inside the local embedding/reranking and speech-to-text code
# (sentence-transformers, accelerate, colbert); at start it tries the local
# embedding model in a try/except and logs the error. Nothing the tests exercise
# (auth, config, Ollama, chat) needs it, so the two packages that hard-require
# torch (sentence-transformers, accelerate) are left out and every other pinned
# dependency is installed. The image ships its own CPU torch (and the embedding
# model) for document search, which these tests do not exercise.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=ci/versions.env
. ci/versions.env
: "${WEBUI_VERSION:?ci/versions.env must set WEBUI_VERSION}"

PREFIX=${CLUSTER_AI_CACHE:-/var/cache/cluster-ai}/webui/$WEBUI_VERSION
VENV=$PREFIX/venv
PY=$VENV/bin/python
# Open WebUI's requirements that need torch: left out (see above).
WITHOUT_TORCH=(sentence-transformers accelerate)

started=$(date +%s)
elapsed() { echo $(($(date +%s) - started)); }

installed_version() {
  "$PY" -c 'import importlib.metadata as m; print(m.version("open-webui"))' 2>/dev/null || true
}

if [ -x "$PY" ] && [ "$(installed_version)" = "$WEBUI_VERSION" ] && [ -f "$PREFIX/.complete" ]; then
  echo "open-webui $WEBUI_VERSION cached at $VENV"
  exit 0
fi

rm -rf "$VENV" "$PREFIX/.complete"
mkdir -p "$PREFIX"
# Open WebUI supports Python 3.11 and 3.12 only.
PYTHON=${WEBUI_PYTHON:-python3.11}
"$PYTHON" -m venv "$VENV"
"$PY" -m pip install --quiet --upgrade pip packaging

# The package itself first, without dependencies, so its own metadata says what it needs.
"$PY" -m pip install --quiet --no-deps "open-webui==$WEBUI_VERSION"
"$PY" - "${WITHOUT_TORCH[@]}" >"$PREFIX/requirements.txt" <<'EOF'
"""Print open-webui's requirements (with the postgres extra), minus the torch-bound ones."""
import sys
from importlib.metadata import requires

from packaging.requirements import Requirement

left_out = set(sys.argv[1:])
for line in requires("open-webui") or []:
    req = Requirement(line)
    if req.name in left_out:
        continue
    if req.marker is None or req.marker.evaluate({"extra": "postgres"}):
        req.marker = None
        print(req)
EOF
echo "open-webui: installing $(wc -l <"$PREFIX/requirements.txt") pinned requirements (without ${WITHOUT_TORCH[*]})"
"$PY" -m pip install --quiet -r "$PREFIX/requirements.txt"

# Nothing may have pulled torch (and its CUDA stack) in by another way.
if "$PY" -m pip show --quiet torch >/dev/null 2>&1; then
  echo "open-webui: torch was installed by a dependency; ci/webui.sh must leave it out" >&2
  exit 1
fi
"$PY" -m pip check >"$PREFIX/pip-check.txt" 2>&1 || true
if grep -v -E "requires ($(IFS='|'; echo "${WITHOUT_TORCH[*]}")), which is not installed" "$PREFIX/pip-check.txt" | grep -q .; then
  echo "open-webui: dependency conflicts beyond the torch-bound packages left out:" >&2
  cat "$PREFIX/pip-check.txt" >&2
  exit 1
fi
touch "$PREFIX/.complete"
echo "open-webui $WEBUI_VERSION installed in $(elapsed) s: $VENV"
