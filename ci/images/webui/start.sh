#!/usr/bin/env bash
# The open-webui image's start.sh contract: WEBUI_SECRET_KEY from the environment,
# else from (or generated into) .webui_secret_key beside this script; HOST/PORT
# (0.0.0.0:8080); uvicorn serving open_webui.main:app with UVICORN_WORKERS workers.
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" &>/dev/null && pwd)
cd "$SCRIPT_DIR" || exit 1

KEY_FILE=.webui_secret_key
PORT="${PORT:-8080}"
HOST="${HOST:-0.0.0.0}"
if test "${WEBUI_SECRET_KEY:-} ${WEBUI_JWT_SECRET_KEY:-}" = " "; then
  echo "Loading WEBUI_SECRET_KEY from file, not provided as an environment variable."
  if ! [ -e "$KEY_FILE" ]; then
    echo "Generating WEBUI_SECRET_KEY"
    head -c 12 /dev/random | base64 >"$KEY_FILE"
  fi
  WEBUI_SECRET_KEY=$(cat "$KEY_FILE")
fi

PYTHON_CMD=$(command -v python3 || command -v python)
WEBUI_SECRET_KEY="$WEBUI_SECRET_KEY" exec "$PYTHON_CMD" -m uvicorn open_webui.main:app \
  --host "$HOST" --port "$PORT" --forwarded-allow-ips '*' --workers "${UVICORN_WORKERS:-1}"
