#!/bin/sh
# First start: create the data folder (configuration, dev PKI, database schema, first local
# domain) unless it is there already; then run the gateway, or any `mssgate` command given.
set -eu

if [ ! -f "$MSSGATE_CONFIG" ]; then
    : "${MSSGATE_SERVER__DOMAIN:?set MSSGATE_SERVER__DOMAIN (the first local domain)}"
    mssgate init --data "$MSSGATE_SERVER__DATA_DIR" \
        --domain "$MSSGATE_SERVER__DOMAIN" \
        --hostname "${MSSGATE_SERVER__HOSTNAME:-mx.$MSSGATE_SERVER__DOMAIN}"
fi

# exec: mssgate replaces this shell, so the SIGTERM of `docker stop` reaches it (graceful stop).
exec mssgate "$@"
