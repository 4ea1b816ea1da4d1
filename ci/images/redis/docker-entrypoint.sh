#!/bin/sh
# The official redis image's entrypoint contract: `-flag` or `x.conf` arguments
# run redis-server; as root it hands /data to redis and drops to it (999).
set -e
case "$1" in
	-* | *.conf) set -- redis-server "$@" ;;
esac
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
	find . \! -user redis -exec chown redis '{}' +
	exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi
# Files Redis creates are its own only.
umask 0077
exec "$@"
