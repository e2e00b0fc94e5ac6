#!/bin/sh
# Minimal re-implementation of the official redis image's entrypoint contract.
set -eu

# `docker run redis --appendonly yes` and `docker run redis /path/redis.conf` mean redis-server.
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
	set -- redis-server "$@"
fi

if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
	find . \! -user redis -exec chown redis '{}' +
	exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

if [ "$1" = redis-server ]; then
	# The official build compiles protected mode off; Debian's binary defaults to on.
	case " $* " in
		*" --protected-mode "*) ;;
		*) set -- "$@" --protected-mode no ;;
	esac
fi

umask 0077
exec "$@"
