#!/bin/sh
# standin SERVICE DEFAULT_PORT [the service's own arguments]: serve /srv/standin
# (the health endpoint only) on the port the arguments name, the way the real
# service would read it. Loki's `-health` flag probes the endpoint and exits.
set -eu
service=$1 port=$2
shift 2
probe=
for arg in "$@"; do
  case "$service:$arg" in
    loki:-health) probe=/ready ;;
    loki:-config.file=*)
      conf=${arg#-config.file=}
      found=$(sed -n 's/^[[:space:]]*http_listen_port:[[:space:]]*\([0-9][0-9]*\).*/\1/p' "$conf" 2>/dev/null | head -1)
      [ -n "$found" ] && port=$found ;;
    alloy:--server.http.listen-addr=*) port=${arg##*:} ;;
    cadvisor:--port=* | cadvisor:-port=*) port=${arg#*=} ;;
  esac
done
if [ -n "$probe" ]; then
  exec wget -q -O /dev/null "http://127.0.0.1:$port$probe"
fi
echo "standin/$service: serving only its health endpoint on :$port; this is NOT $service and does none of its work" >&2
exec busybox httpd -f -p "0.0.0.0:$port" -h /srv/standin
