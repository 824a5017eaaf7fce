"""`mssgate node ...`: the gateways (nodes) sharing one PostgreSQL database."""

from __future__ import annotations

import os
import shutil
import socket
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from mssgate.cli.context import actor, emit_json, emit_table, say, state
from mssgate.config import (
    DEFAULT_CONFIG_NAME,
    NODE_NAME,
    config_from_mapping,
    parse_lmtp_target,
    render_config,
)
from mssgate.errors import Conflict, UsageFailed, ValidationFailed
from mssgate.fsutil import ensure_dir
from mssgate.nodes import Nodes

app = typer.Typer(help="Nodes sharing one database (several machines).", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

# What a new node needs of the installation's keys (docs/operator-guide.md, "Nodes"): the same
# CA signs what every node issues, the same server certificate answers behind the balancer,
# the same DKIM key signs, and the gateway's own S/MIME identities sign DSNs and receipts.
_CERT_FILES = ("ca.crt.pem", "ca.key.pem", "server.crt.pem", "server.key.pem", "dkim.key.pem")


def _registry(ctx: typer.Context) -> Nodes:
    return Nodes(state(ctx).engine(), actor=actor())


def _down_after(ctx: typer.Context) -> timedelta:
    return timedelta(seconds=state(ctx).config().node.down_after_seconds)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """List the nodes: address, last heartbeat, up or down, spool depth."""
    rows = _registry(ctx).list(down_after=_down_after(ctx))
    if json_out:
        emit_json(rows)
        return
    emit_table(
        "Nodes",
        ["name", "address", "state", "last heartbeat", "spool depth", "mailboxes"],
        [
            (
                n.name,
                n.address,
                "up" if n.up else ("never served" if n.heartbeat_at is None else "DOWN"),
                "-"
                if n.heartbeat_at is None
                else f"{n.heartbeat_at:%Y-%m-%d %H:%M:%S} ({n.silent_seconds:.0f} s ago)",
                n.spool_depth,
                n.mailboxes,
            )
            for n in rows
        ],
        ids=("name",),
    )


@app.command("add")
def add(
    ctx: typer.Context,
    name: str,
    data: Annotated[Path, typer.Option("--data", help="The new node's data folder.")],
    node_port: Annotated[
        int | None,
        typer.Option("--node-port", help="Port for node-to-node traffic (default: a free one)."),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option("--address", help="host:port other nodes use (default 127.0.0.1:PORT)."),
    ] = None,
) -> None:
    """Create a data folder for another node on this installation's database and domains."""
    if not NODE_NAME.fullmatch(name):
        raise UsageFailed(
            f"node name {name!r}: 1 to 63 letters, digits or . _ -, a letter or digit first"
        )
    if node_port is not None and not 0 < node_port < 65536:
        raise UsageFailed(f"--node-port {node_port}: use 1-65535")
    st = state(ctx)
    cfg = st.config()
    url = cfg.database_url
    if not url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        raise ValidationFailed(
            "several nodes share one PostgreSQL database; this installation uses"
            f" {url.split(':', 1)[0]} (set database.url, docs/operator-guide.md)"
        )
    target = data.resolve()
    config_file = target / DEFAULT_CONFIG_NAME
    if config_file.exists():
        raise Conflict(f"{config_file} exists already")
    if target == cfg.server.data_dir.resolve():
        raise ValidationFailed("the new node needs its own data folder")
    port = node_port or _free_port()
    announced = address or f"127.0.0.1:{port}"
    try:
        if announced.startswith("/"):
            raise ValueError("a socket path")
        parse_lmtp_target(announced)
    except ValueError:
        raise UsageFailed(f"--address {announced!r}: use host:port") from None
    registry = _registry(ctx)
    if registry.exists(name):
        raise Conflict(f"a node named {name!r} exists already (mssgate node list)")
    content = render_config(
        target, cfg.server.domain, cfg.server.hostname, node=name, node_port=port,
        node_address=address, database_url=url,
    )  # fmt: skip
    # What the file will say, checked before anything is written.
    config_from_mapping(
        {
            "server": {"data_dir": str(target)},
            "node": {"name": name, "port": port, "address": address},
            "database": {"url": url},
        },
        origin=str(config_file),
    )
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(target, 0o700)  # the folder holds mail and keys
    certs = ensure_dir(target / "certs")
    sources = {
        "ca.crt.pem": cfg.tls.ca,
        "server.crt.pem": cfg.tls.cert,
        "server.key.pem": cfg.tls.key,
        "dkim.key.pem": cfg.dkim.key,
        "ca.key.pem": cfg.certs_dir / "ca.key.pem",
    }
    for file in _CERT_FILES:
        source = sources[file]
        assert source is not None  # set by Config
        if not source.exists():
            raise ValidationFailed(f"{source} is missing: the new node needs a copy of it")
        shutil.copy2(source, certs / file)  # keeps the 0600 of the keys
    # Every node signs for the practitioners with the keys held in the database: they open
    # only with the installation's key encryption key.
    kek = cfg.smime.key_encryption_key_file
    if kek is not None and kek.exists():
        shutil.copy2(kek, certs / "escrow.kek")
    mailboxes = cfg.certs_dir / "mailboxes"
    if mailboxes.is_dir():
        shutil.copytree(mailboxes, certs / "mailboxes", dirs_exist_ok=True)
    registry.add(name, address=announced, data_dir=target)
    # Written last: its presence means the folder is complete.
    tmp = config_file.with_suffix(".toml.tmp")
    tmp.write_text(content, encoding="utf-8")
    os.chmod(tmp, 0o600)  # the database URL may carry a password
    tmp.replace(config_file)
    say(f"added node {name} in {target}")
    say(f"  configuration  {config_file}")
    say(f"  node address   {announced}")
    say(f"next: MSSGATE_CONFIG={config_file} mssgate serve")


@app.command("remove")
def remove(ctx: typer.Context, name: str) -> None:
    """Forget a node; refused while it serves or holds undelivered spool entries."""
    _registry(ctx).remove(name, down_after=_down_after(ctx))
    say(f"removed node {name}")
