"""The nodes that share one database: their registry, heartbeats and spool depth.

A node is one `mssgate serve` with its own data folder (spool files, mail store, listeners);
everything else lives in the shared database (docs/architecture.md, "Several nodes"). `init`
and `node add` register a node; `serve` stamps its start and then a heartbeat every
`node.heartbeat_seconds`; a node silent for longer than `node.down_after_seconds` is down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from mssgate import audit
from mssgate.db.clock import database_now
from mssgate.db.schema import nodes, professionals, spool_messages
from mssgate.db.tx import write
from mssgate.directory.timeutil import aware, now
from mssgate.errors import Conflict, MssgateError, NotFound
from mssgate.fsutil import write_durably
from mssgate.logs import event

# In each data folder: the name of the node it is (Nodes.claim_folder).
NODE_NAME_FILE = "node-name"

log = logging.getLogger("mssgate.nodes")


class NodeInfo(BaseModel):
    """One row of `node list` (its --json shape, docs/operator-guide.md)."""

    model_config = ConfigDict(frozen=True)

    name: str
    address: str
    data_dir: str | None
    added_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    # Seconds since the last heartbeat (None: never served).
    silent_seconds: float | None
    up: bool
    # Spool entries whose file this node holds and that are not done yet.
    spool_depth: int
    mailboxes: int


class Nodes:
    def __init__(self, engine: Engine, *, actor: str) -> None:
        self._engine = engine
        self._actor = actor

    def add(self, name: str, *, address: str, data_dir: Path | None = None) -> None:
        """Registers a node that has not served yet (`init`, `node add`)."""
        taken = Conflict(f"a node named {name!r} exists already (mssgate node list)")
        try:
            with write(self._engine) as conn:
                found = conn.execute(select(nodes.c.name).where(nodes.c.name == name)).first()
                if found is not None:
                    raise taken
                conn.execute(
                    nodes.insert().values(
                        name=name,
                        address=address,
                        data_dir=None if data_dir is None else str(data_dir),
                        added_at=now(),
                    )
                )
                audit.append(conn, actor=self._actor, action="node.add", subject=name,
                             detail={"address": address})  # fmt: skip
        except IntegrityError:
            # Registered by another command between this one's read and its insert (two
            # `init --node` at once): the same refusal as when it was there before.
            raise taken from None

    def start(
        self, name: str, *, address: str | None, data_dir: Path, down_after: timedelta
    ) -> None:
        """`serve` starts: its row (made now if `init` predates nodes) says where it runs.
        `address` None: not known yet (a port picked at bind time, set by `set_address`).

        Refuses while another data folder serves under the same name: the two would each
        deliver the other's spool entries, whose files they do not have.
        """
        try:
            with write(self._engine) as conn:
                # The database's clock: heartbeats are compared across machines.
                stamp = database_now(conn)
                self._start(conn, name, address=address, data_dir=data_dir, stamp=stamp,
                            down_after=down_after)  # fmt: skip
        except IntegrityError:
            # FOR UPDATE locks an existing row only: two starts under a name without a row
            # both insert, and the second hits the primary key.
            raise Conflict(
                f"node {name!r} was registered by another process starting at the same"
                " time: give each data folder its own node.name"
            ) from None

    def _start(self, conn: Connection, name: str, *, address: str | None, data_dir: Path,
               stamp: datetime, down_after: timedelta) -> None:  # fmt: skip
        row = conn.execute(select(nodes).where(nodes.c.name == name).with_for_update()).first()
        if row is None:
            conn.execute(
                nodes.insert().values(
                    name=name, address=address or "", data_dir=str(data_dir), added_at=stamp,
                    started_at=stamp, heartbeat_at=stamp,
                )
            )  # fmt: skip
            audit.append(conn, actor=self._actor, action="node.add", subject=name,
                         detail={"address": address})  # fmt: skip
            return
        beat = aware(row.heartbeat_at) if row.heartbeat_at is not None else None
        if (
            row.data_dir is not None
            and row.data_dir != str(data_dir)
            and beat is not None
            and stamp - beat < down_after
        ):
            raise Conflict(
                f"node {name!r} is served from {row.data_dir} (heartbeat"
                f" {(stamp - beat).total_seconds():.0f} s ago): give this data folder"
                " its own node.name"
            )
        conn.execute(
            update(nodes)
            .where(nodes.c.name == name)
            .values(
                data_dir=str(data_dir),
                started_at=stamp,
                heartbeat_at=stamp,
                **({} if address is None else {"address": address}),
            )
        )

    def claim_folder(self, name: str, data_dir: Path) -> None:
        """`serve` starts from `data_dir` as node `name`: refused while the folder belongs to
        another registered node. A node cannot be renamed by editing node.name: its spool
        entries and the mailboxes homed on it name it, so under a new name its entries would
        wait for good and its mailboxes' mail would be handed to the old name's address and
        refused there. The name is kept in the folder (the database cannot tell folders of
        the same path on different hosts apart)."""
        marker = data_dir / NODE_NAME_FILE
        try:
            was: str | None = marker.read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            was = None
        if was == name:
            return
        if was is not None and was in self.names():
            raise Conflict(
                f"this data folder is node {was!r} (node.name says {name!r}): its spool"
                f" entries and mailboxes name it; set node.name back to {was!r}, or first"
                f" remove it (mssgate node remove {was}, refused while it holds mail)"
            )
        write_durably(marker, f"{name}\n".encode(), tmp_dir=data_dir)

    def set_address(self, name: str, address: str) -> None:
        with write(self._engine) as conn:
            conn.execute(update(nodes).where(nodes.c.name == name).values(address=address))

    def beat(self, name: str) -> None:
        with write(self._engine) as conn:
            # The database's clock, which every node reads the heartbeats against: a node's
            # own clock running behind would make it look silent (mssgate.db.clock).
            stamp = database_now(conn)
            conn.execute(update(nodes).where(nodes.c.name == name).values(heartbeat_at=stamp))

    def names(self) -> set[str]:
        with self._engine.connect() as conn:
            return {r.name for r in conn.execute(select(nodes.c.name))}

    def exists(self, name: str) -> bool:
        return name in self.names()

    def data_dirs(self) -> dict[str, str | None]:
        """Name -> the data folder it was made for or last started from."""
        with self._engine.connect() as conn:
            return {
                r.name: r.data_dir for r in conn.execute(select(nodes.c.name, nodes.c.data_dir))
            }

    def list(self, *, down_after: timedelta) -> list[NodeInfo]:
        with self._engine.connect() as conn:
            stamp = database_now(conn)
            depth: dict[str | None, int] = dict(
                conn.execute(
                    select(spool_messages.c.node, func.count())
                    .where(spool_messages.c.state == "queued")
                    .group_by(spool_messages.c.node)
                ).all()
            )
            homes: dict[str | None, int] = dict(
                conn.execute(
                    select(professionals.c.node, func.count())
                    .where(professionals.c.local.is_(True))
                    .group_by(professionals.c.node)
                ).all()
            )
            rows = conn.execute(select(nodes).order_by(nodes.c.name)).all()
        out = []
        for r in rows:
            beat = aware(r.heartbeat_at) if r.heartbeat_at is not None else None
            silent = None if beat is None else max(0.0, (stamp - beat).total_seconds())
            out.append(
                NodeInfo(
                    name=r.name,
                    address=r.address,
                    data_dir=r.data_dir,
                    added_at=aware(r.added_at),
                    started_at=aware(r.started_at) if r.started_at is not None else None,
                    heartbeat_at=beat,
                    silent_seconds=None if silent is None else round(silent, 1),
                    up=silent is not None and silent < down_after.total_seconds(),
                    spool_depth=int(depth.get(r.name, 0)),
                    mailboxes=int(homes.get(r.name, 0)),
                )
            )
        return out

    def remove(self, name: str, *, down_after: timedelta) -> None:
        """Refuses while the node serves, holds undelivered spool entries (their files are in
        its data folder and nowhere else) or is the home of mailboxes."""
        info = {n.name: n for n in self.list(down_after=down_after)}.get(name)
        if info is None:
            raise NotFound(f"no node named {name!r} (mssgate node list)")
        if info.up:
            raise Conflict(
                f"node {name!r} is up (heartbeat {info.silent_seconds:.0f} s ago): stop it first"
            )
        with write(self._engine) as conn:
            # Counted again inside the transaction: an entry accepted since the list above
            # must stop the removal too. The node row is locked first, so `serve` starting
            # under this name waits for the outcome.
            conn.execute(select(nodes.c.name).where(nodes.c.name == name).with_for_update())
            held = conn.execute(
                select(func.count())
                .select_from(spool_messages)
                .where(spool_messages.c.node == name, spool_messages.c.state == "queued")
            ).scalar_one()
            if held:
                raise Conflict(
                    f"node {name!r} holds {held} undelivered spool"
                    f" {'entry' if held == 1 else 'entries'}: start it again until they are"
                    " delivered (mssgate spool list)"
                )
            homed = conn.execute(
                select(func.count())
                .select_from(professionals)
                .where(professionals.c.node == name, professionals.c.local.is_(True))
            ).scalar_one()
            if homed:
                raise Conflict(
                    f"node {name!r} is the home of {homed}"
                    f" {'mailbox' if homed == 1 else 'mailboxes'}: move them first"
                )
            conn.execute(nodes.delete().where(nodes.c.name == name))
            audit.append(conn, actor=self._actor, action="node.remove", subject=name,
                         detail={})  # fmt: skip


class Heartbeat:
    """`serve`'s supervised task: stamps the node's heartbeat and keeps the names of the
    nodes that went silent, for /healthz (which then never waits on the database)."""

    def __init__(
        self,
        registry: Nodes,
        name: str,
        *,
        every: float,
        down_after: float,
        on_beat: Callable[[bool], object] | None = None,
    ) -> None:
        self._registry = registry
        # Called after each beat with whether this is the only registered node.
        self._on_beat = on_beat
        self._name = name
        self._every = every
        self._down_after = timedelta(seconds=down_after)
        # Here: the supervisor brings the metrics registry, which the CLI's node and
        # directory commands (that use Nodes, not the heartbeat) would import at start-up.
        from mssgate.supervisor import PassHealth

        self.health = PassHealth()
        self._silent: dict[str, str] = {}

    def silent(self) -> dict[str, str]:
        """Node -> since when it is silent, for the nodes other than this one that are down."""
        return dict(self._silent)

    def once(self) -> None:
        self._registry.beat(self._name)
        down = {}
        listed = self._registry.list(down_after=self._down_after)
        for n in listed:
            if n.up or n.name == self._name:
                continue
            down[n.name] = (
                "never served"
                if n.silent_seconds is None
                else f"silent for {n.silent_seconds:.0f} s"
            )
        self._silent = down
        if self._on_beat is not None:
            self._on_beat([n.name for n in listed] == [self._name])

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.once)
            except (MssgateError, SQLAlchemyError, OSError) as exc:
                # The database away: the node stays up in its own eyes and tries again; the
                # other nodes will see it silent, which is the truth they need.
                event(log, "node.heartbeat_failed", level=logging.ERROR,
                      error=f"{type(exc).__name__}: {exc}")  # fmt: skip
                self.health.failed(type(exc).__name__)
            else:
                self.health.succeeded()
            await asyncio.sleep(self._every)


NodesDown = Callable[[], dict[str, str]]
