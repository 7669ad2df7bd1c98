#!/usr/bin/env bash
# Initialises the registry's database folder on first start, then runs PostgreSQL in the foreground
# on 127.0.0.1:$REGISTRY_PORT. Trust authentication: only processes on this host can connect.
set -euo pipefail
bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  # UTF-8 whatever the image's locale (a minimal image has none, which would make it SQL_ASCII).
  "$bin/initdb" -D "$PGDATA" -A trust -U app -E UTF8 --locale=C.UTF-8 >/dev/null
fi
exec "$bin/postgres" -D "$PGDATA" -p "${REGISTRY_PORT:-5432}" -k /run/registry -c listen_addresses=127.0.0.1
