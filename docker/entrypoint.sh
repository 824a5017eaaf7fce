#!/bin/sh
# First start: create the data folder (configuration, dev PKI, database schema, first local
# domain) unless it is there already; then run the gateway, or any `mssgate` command given.
set -eu

# A further node (NODE_ADD_FROM: the first node's configuration, its volumes mounted read-only):
# `node add` copies the domain's keys and registers this node; `init` would make a second
# PKI, which the other nodes refuse.
if [ ! -f "$MSSGATE_CONFIG" ] && [ -n "${NODE_ADD_FROM:-}" ]; then
    : "${MSSGATE_NODE__NAME:?set MSSGATE_NODE__NAME (this node's name)}"
    while [ ! -f "$NODE_ADD_FROM" ]; do
        echo "waiting for the first node's $NODE_ADD_FROM" >&2
        sleep 5
    done
    # The first node's configuration read as the first node reads it (its data folder).
    MSSGATE_CONFIG="$NODE_ADD_FROM" MSSGATE_SERVER__DATA_DIR="$(dirname "$NODE_ADD_FROM")" \
        mssgate node add "$MSSGATE_NODE__NAME" --data "$MSSGATE_SERVER__DATA_DIR" \
        --node-port "${MSSGATE_NODE__PORT:-10024}" \
        --address "${MSSGATE_NODE__ADDRESS:-$(hostname):${MSSGATE_NODE__PORT:-10024}}"
elif [ ! -f "$MSSGATE_CONFIG" ]; then
    : "${MSSGATE_SERVER__DOMAIN:?set MSSGATE_SERVER__DOMAIN (the first local domain)}"
    mssgate init --data "$MSSGATE_SERVER__DATA_DIR" \
        --domain "$MSSGATE_SERVER__DOMAIN" \
        --hostname "${MSSGATE_SERVER__HOSTNAME:-mx.$MSSGATE_SERVER__DOMAIN}"
fi

# exec: mssgate replaces this shell, so the SIGTERM of `docker stop` reaches it (graceful stop).
exec mssgate "$@"
