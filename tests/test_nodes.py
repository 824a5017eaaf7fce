"""Several nodes on one database (issue 13): names, the registry, spool ownership, homes.

The CLI runs in-process against real data folders; PostgreSQL tests get their own schema,
which the data folders' `database.url` names through libpq's `options`.
"""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update

from mssgate.config import load_config
from mssgate.db import open_engine
from mssgate.db.schema import nodes as nodes_table
from mssgate.db.schema import spool_messages
from mssgate.db.tx import write
from mssgate.directory.timeutil import now
from mssgate.nodes import Nodes
from mssgate.spool import Spool, new_queue_id
from mssgate.spool.jobs import DocumentJobs
from tests.conftest import PG_URL, Cli

DOMAIN = "hopital-a.test"


def pg_url(schema: str) -> str:
    assert PG_URL
    return f"{PG_URL}?options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> Engine:
    name = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


def accept(spool: Spool, recipient: str = f"bob@{DOMAIN}", route: str = "local") -> str:
    queue_id = new_queue_id()
    spool.accept(queue_id=queue_id, content=b"Subject: x\r\n\r\nbody\r\n", listener="submission",
                 sender=f"alice@{DOMAIN}", identity=None, peer="127.0.0.1",
                 recipients=[(recipient, route)])  # type: ignore[list-item]  # fmt: skip
    return queue_id


# -- spool ownership -------------------------------------------------------------------------


def test_a_node_takes_only_the_entries_whose_file_it_holds(engine: Engine, tmp_path: Path) -> None:
    a = Spool(engine, tmp_path / "a", node="a")
    b = Spool(engine, tmp_path / "b", node="b")
    local = accept(a)
    relayed = accept(a, "x@clinique-b.test", "relay")
    assert [d.spool_id for d in a.due(route="local")] == [local]
    assert [d.spool_id for d in a.due(route="relay")] == [relayed]
    # Before: B took A's entries and failed them as "the message file was lost".
    assert b.due(route="local") == [] and b.due(route="relay") == []
    [item] = a.due(route="local")
    a.delivered(item, documents=True)
    assert [j.spool_id for j in DocumentJobs(engine, node="a").due()] == [local]
    assert DocumentJobs(engine, node="b").due() == []
    assert {e.id: e.node for e in a.entries()} == {local: "a", relayed: "a"}
    # B's recovery leaves A's entries (and files) alone.
    b.recover()
    assert a.path(relayed).exists()
    assert [d.spool_id for d in a.due(route="relay")] == [relayed]


def test_entries_written_before_nodes_are_adopted_by_the_node_holding_their_file(
    engine: Engine, tmp_path: Path
) -> None:
    legacy_a = Spool(engine, tmp_path / "a")  # no node: as before revision 0010
    legacy_b = Spool(engine, tmp_path / "b")
    in_a, in_b = accept(legacy_a), accept(legacy_b)
    with engine.connect() as conn:
        assert set(conn.execute(select(spool_messages.c.node)).scalars()) == {None}
    a = Spool(engine, tmp_path / "a", node="a")
    assert a.due(route="local") == []  # not yet adopted: the file might be elsewhere
    a.recover()
    assert [d.spool_id for d in a.due(route="local")] == [in_a]
    b = Spool(engine, tmp_path / "b", node="b")
    b.recover()
    assert [d.spool_id for d in b.due(route="local")] == [in_b]


def test_the_only_node_adopts_every_entry_written_before_nodes(
    engine: Engine, tmp_path: Path
) -> None:
    legacy = Spool(engine, tmp_path / "spool")
    queue_id = accept(legacy)
    legacy.path(queue_id).unlink()  # its file lost: single-node behaviour stays as before
    only = Spool(engine, tmp_path / "spool", node="solo")
    only.recover(only_node=True)
    # On PostgreSQL another data folder may hold it (test_two_nodes_starting_on_an_upgraded_
    # database_each_keep_their_own_entries): it waits, unowned, rather than failed as lost.
    expected = [queue_id] if engine.dialect.name == "sqlite" else []
    assert [d.spool_id for d in only.due(route="local")] == expected


# -- the registry ----------------------------------------------------------------------------


def test_registry_heartbeat_up_down_and_remove(engine: Engine, tmp_path: Path) -> None:
    registry = Nodes(engine, actor="test")
    down_after = timedelta(seconds=30)
    registry.add("a", address="127.0.0.1:1024", data_dir=tmp_path / "a")
    registry.start("b", address="127.0.0.1:2048", data_dir=tmp_path / "b", down_after=down_after)
    rows = {n.name: n for n in registry.list(down_after=down_after)}
    assert (rows["a"].up, rows["a"].heartbeat_at) == (False, None)
    assert rows["b"].up and rows["b"].address == "127.0.0.1:2048"
    # Another data folder serving under b's name while b beats: refused.
    with pytest.raises(Exception, match="is served from"):
        registry.start("b", address="x:1", data_dir=tmp_path / "other", down_after=down_after)
    spool = Spool(engine, tmp_path / "b", node="b")
    accept(spool)
    assert {n.name: n.spool_depth for n in registry.list(down_after=down_after)}["b"] == 1
    with pytest.raises(Exception, match="is up"):
        registry.remove("b", down_after=down_after)
    with write(engine) as conn:
        conn.execute(update(nodes_table).values(heartbeat_at=now() - timedelta(minutes=5)))
    [b] = [n for n in registry.list(down_after=down_after) if n.name == "b"]
    assert not b.up and b.silent_seconds is not None and b.silent_seconds >= 299
    with pytest.raises(Exception, match="holds 1 undelivered spool entry"):
        registry.remove("b", down_after=down_after)
    [item] = spool.due(route="local")
    spool.delivered(item)
    registry.remove("b", down_after=down_after)
    assert registry.names() == {"a"}


@pytest.mark.parametrize("skew", [-600, 600], ids=["behind", "ahead"])
def test_a_live_node_is_up_whatever_its_clock(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, skew: int
) -> None:
    """Node b's machine clock runs ten minutes behind (or ahead of) the others'. Before, b
    stamped its heartbeats with its own clock and the others compared them with theirs: b,
    beating every few seconds, was down for every other node (or, ahead, looked alive for
    ten minutes after it died). Heartbeats are stamped and read with the database's clock."""
    import mssgate.nodes

    # Half the skew: a skew counted shows as ±600 s, far outside it; the test's own run time
    # (a loaded machine) stays far inside it.
    down_after = timedelta(seconds=300)
    registry = Nodes(engine, actor="test")
    registry.start("a", address="127.0.0.1:1", data_dir=tmp_path / "a", down_after=down_after)
    real_now = mssgate.nodes.now
    with monkeypatch.context() as on_b:  # what b's process sees as the time
        on_b.setattr(mssgate.nodes, "now", lambda: real_now() + timedelta(seconds=skew))
        registry.start("b", address="127.0.0.1:2", data_dir=tmp_path / "b", down_after=down_after)
        registry.beat("b")
    listed = {n.name: n for n in registry.list(down_after=down_after)}
    assert listed["b"].up, listed["b"]
    assert listed["b"].silent_seconds is not None and 0 <= listed["b"].silent_seconds < 300
    # And read by b, whose clock is off, a's fresh heartbeat is fresh too.
    with monkeypatch.context() as on_b:
        on_b.setattr(mssgate.nodes, "now", lambda: real_now() + timedelta(seconds=skew))
        assert {n.name: n.up for n in registry.list(down_after=down_after)} == {
            "a": True,
            "b": True,
        }


# -- the CLI ---------------------------------------------------------------------------------


def test_init_writes_the_node_name_and_registers_it(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "a"
    cli.ok("init", "--data", data, "--domain", DOMAIN, "--node", "alpha")
    config = load_config(data / "mssgate.toml")
    assert config.node.name == "alpha"
    assert config.database_url == f"sqlite:///{data}/mssgate.db"  # the default stays
    listed = cli.ok("--config", data / "mssgate.toml", "node", "list", "--json").json()
    assert [(n["name"], n["address"], n["up"]) for n in listed] == [
        ("alpha", "127.0.0.1:10024", False)
    ]
    # The environment names the node too.
    os.environ["MSSGATE_NODE__NAME"] = "beta"
    try:
        assert load_config(data / "mssgate.toml").node.name == "beta"
    finally:
        del os.environ["MSSGATE_NODE__NAME"]
    bad = cli("init", "--data", tmp_path / "b", "--domain", DOMAIN, "--node", "no spaces")
    assert bad.code == 2 and "--node" in bad.err


def test_node_add_needs_postgresql(cli: Cli, tmp_path: Path) -> None:
    cli.ok("init", "--data", tmp_path / "a", "--domain", DOMAIN, "--node", "a")
    result = cli("--config", tmp_path / "a" / "mssgate.toml", "node", "add", "b",
                 "--data", tmp_path / "b")  # fmt: skip
    assert result.code == 1
    assert "PostgreSQL" in result.err and result.err.count("\n") == 1
    assert not (tmp_path / "b").exists()


@pytest.mark.postgres
def test_node_add_on_postgresql(cli: Cli, tmp_path: Path, pg_schema: str) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    cli.ok("init", "--data", a, "--domain", DOMAIN, "--database", pg_url(pg_schema),
           "--node", "a")  # fmt: skip
    conf_a = a / "mssgate.toml"
    # A second init on the same database under the same name: refused.
    again = cli("init", "--data", tmp_path / "c", "--domain", DOMAIN,
                "--database", pg_url(pg_schema), "--node", "a")  # fmt: skip
    assert again.code == 1 and "exists already in this database" in again.err
    cli.ok("--config", conf_a, "node", "add", "b", "--data", b, "--node-port", "23456")
    config_b = load_config(b / "mssgate.toml")
    assert (config_b.node.name, config_b.node.port) == ("b", 23456)
    assert config_b.database_url == pg_url(pg_schema)
    assert config_b.server.domain == DOMAIN and config_b.server.data_dir == b
    for name in ("ca.crt.pem", "ca.key.pem", "server.crt.pem", "server.key.pem", "dkim.key.pem"):
        assert (b / "certs" / name).read_bytes() == (a / "certs" / name).read_bytes()
    # The key encryption key too: node b opens the signing keys a's `cert issue` held.
    assert (b / "certs" / "escrow.kek").read_bytes() == (a / "certs" / "escrow.kek").read_bytes()
    for key in ("ca.key.pem", "server.key.pem", "dkim.key.pem", "escrow.kek"):
        assert stat.S_IMODE((b / "certs" / key).stat().st_mode) == 0o600
    assert sorted(p.name for p in (b / "certs" / "mailboxes").iterdir()) == sorted(
        p.name for p in (a / "certs" / "mailboxes").iterdir()
    )
    listed = cli.ok("--config", b / "mssgate.toml", "node", "list", "--json").json()
    assert [(n["name"], n["address"]) for n in listed] == [
        ("a", "127.0.0.1:10024"),
        ("b", "127.0.0.1:23456"),
    ]
    # A free port when none is given; a name taken is refused.
    cli.ok("--config", conf_a, "node", "add", "c", "--data", tmp_path / "c")
    port_c = load_config(tmp_path / "c" / "mssgate.toml").node.port
    assert port_c not in (0, 10024, 23456)
    taken = cli("--config", conf_a, "node", "add", "b", "--data", tmp_path / "d")
    assert taken.code == 1 and "exists already" in taken.err

    # Mailbox homes: the config's node, or --node.
    cli.ok("--config", conf_a, "directory", "add", f"imagerie@{DOMAIN}", "--name", "Imagerie",
           "--kind", "organisation")  # fmt: skip
    cli.ok("--config", conf_a, "directory", "add", f"labo@{DOMAIN}", "--name", "Labo",
           "--kind", "organisation", "--node", "b")  # fmt: skip
    unknown = cli("--config", conf_a, "directory", "add", f"x@{DOMAIN}", "--name", "X",
                  "--kind", "organisation", "--node", "nowhere")  # fmt: skip
    assert unknown.code == 1 and "no node named 'nowhere'" in unknown.err
    homes = {
        p["address"]: p["node"]
        for p in cli.ok("--config", b / "mssgate.toml", "directory", "list", "--json").json()
    }
    assert homes == {f"imagerie@{DOMAIN}": "a", f"labo@{DOMAIN}": "b"}

    # remove: refused while the node is home to mailboxes or holds undelivered entries.
    refused = cli("--config", conf_a, "node", "remove", "b")
    assert refused.code == 1 and "home of 1 mailbox" in refused.err
    engine = open_engine(pg_url(pg_schema))
    try:
        accept(Spool(engine, tmp_path / "c" / "spool", node="c"))
    finally:
        engine.dispose()
    refused = cli("--config", conf_a, "node", "remove", "c")
    assert refused.code == 1 and "holds 1 undelivered spool entry" in refused.err
    gone = cli("--config", conf_a, "node", "remove", "nowhere")
    assert gone.code == 1 and "no node named" in gone.err


def test_rows_without_a_node_are_claimed_while_serving(engine: Engine, tmp_path: Path) -> None:
    """A row that names no node (a script, an older CLI beside serve) is claimed at the next
    heartbeat: by the node holding its file, or on SQLite by the only node whatever it holds."""
    legacy = Spool(engine, tmp_path / "a")
    here, elsewhere = accept(legacy), accept(Spool(engine, tmp_path / "b"))
    a = Spool(engine, tmp_path / "a", node="a")
    assert a.adopt_unowned(only_node=False) == 1
    assert [d.spool_id for d in a.due(route="local")] == [here]
    if engine.dialect.name != "sqlite":  # another folder may serve it: only its holder
        assert a.adopt_unowned(only_node=True) == 0
        return
    assert a.adopt_unowned(only_node=True) == 1
    assert sorted(d.spool_id for d in a.due(route="local")) == sorted([here, elsewhere])
    assert a.adopt_unowned(only_node=True) == 0


def test_metrics_per_node(engine: Engine, tmp_path: Path) -> None:
    from mssgate.metrics import DatabaseCollector

    registry = Nodes(engine, actor="test")
    registry.add("a", address="127.0.0.1:1", data_dir=tmp_path / "a")
    registry.start("b", address="127.0.0.1:2", data_dir=tmp_path / "b",
                   down_after=timedelta(seconds=30))  # fmt: skip
    accept(Spool(engine, tmp_path / "b", node="b"))
    with write(engine) as conn:  # b's last beat 40 s ago
        b = nodes_table.c.name == "b"
        beat = conn.execute(select(nodes_table.c.heartbeat_at).where(b)).scalar_one()
        conn.execute(update(nodes_table).where(b).values(heartbeat_at=beat - timedelta(seconds=40)))
    # The scraping node's own clock (an hour ahead here) plays no part in a heartbeat's age.
    ahead = now() + timedelta(hours=1)
    families = {f.name: f for f in DatabaseCollector(engine, clock=lambda: ahead).collect()}
    age = {
        s.labels["node"]: s.value for s in families["mssgate_node_heartbeat_age_seconds"].samples
    }
    assert age["a"] == -1 and 39 < age["b"] < 60
    queued = {
        s.labels["node"]: s.value for s in families["mssgate_node_spool_messages_queued"].samples
    }
    assert queued == {"a": 0, "b": 1}


def test_mailboxes_made_by_the_annuaire_import_are_homed_on_the_importing_node(
    cli: Cli, tmp_path: Path
) -> None:
    from tests.test_annuaire import HEADER, per_line

    data = tmp_path / "a"
    cli.ok("init", "--data", data, "--domain", DOMAIN, "--node", "alpha")
    conf = data / "mssgate.toml"
    extract = tmp_path / "extract.txt"
    extract.write_text(
        "\n".join([HEADER, per_line(f"p1@{DOMAIN}", 1), per_line("p2@elsewhere.test", 2)])
    )
    cli.ok("--config", conf, "directory", "import-annuaire", extract)
    homes = {
        p["address"]: p["node"]
        for p in cli.ok("--config", conf, "directory", "list", "--correspondents", "--json").json()
    }
    assert homes == {f"p1@{DOMAIN}": "alpha", "p2@elsewhere.test": None}


@pytest.mark.postgres
def test_two_nodes_starting_on_an_upgraded_database_each_keep_their_own_entries(
    pg_engine: Engine, tmp_path: Path
) -> None:
    """Two data folders served one PostgreSQL before nodes existed: each holds rows that name
    no node. Node A starts first and is, for a moment, the only registered node. Before: it
    adopted every row, B's included, whose files it does not have (the relay then fails them
    as lost and bounces, issue 13's bug). On PostgreSQL another folder may always hold the
    file: a row is adopted only by the node holding it."""
    legacy_a, legacy_b = Spool(pg_engine, tmp_path / "a"), Spool(pg_engine, tmp_path / "b")
    in_a, in_b = accept(legacy_a), accept(legacy_b)
    a = Spool(pg_engine, tmp_path / "a", node="a")
    a.recover(only_node=True)
    assert a.adopt_unowned(only_node=True) == 0
    assert [d.spool_id for d in a.due(route="local")] == [in_a]
    b = Spool(pg_engine, tmp_path / "b", node="b")
    b.recover(only_node=False)
    assert [d.spool_id for d in b.due(route="local")] == [in_b]


@pytest.mark.postgres
@pytest.mark.parametrize("how", ["add", "start"])
def test_two_registrations_of_one_name_at_once_end_in_one_readable_refusal(
    pg_engine: Engine, tmp_path: Path, how: str
) -> None:
    """Two `init --node x` (or `node add x`, or two `serve` of a name without a row) on one
    database at the same moment: both read no row, both insert; the second waits for the
    first and then hits the primary key. Before: IntegrityError, an internal error; now a
    Conflict saying what to do."""
    import threading

    from mssgate.errors import Conflict

    outcome: list[BaseException | None] = []
    with write(pg_engine) as conn:
        conn.execute(nodes_table.insert().values(name="x", address="127.0.0.1:1", added_at=now()))

        def second() -> None:
            try:
                registry = Nodes(pg_engine, actor="test")
                if how == "add":
                    registry.add("x", address="127.0.0.1:2")
                else:
                    registry.start("x", address="127.0.0.1:2", data_dir=tmp_path,
                                   down_after=timedelta(seconds=10))  # fmt: skip
            except BaseException as exc:
                outcome.append(exc)
            else:
                outcome.append(None)

        racing = threading.Thread(target=second)
        racing.start()
        racing.join(timeout=1)  # its SELECT saw no row; its INSERT waits for this transaction
        assert racing.is_alive()
    racing.join(timeout=10)
    [result] = outcome
    assert isinstance(result, Conflict), repr(result)
    assert ("exists already" if how == "add" else "its own node.name") in str(result)


def test_a_data_folder_keeps_its_node_name(engine: Engine, tmp_path: Path) -> None:
    """node.name changed in a node's config (a rename): its spool entries and the mailboxes
    homed on it name the old node, which stays registered and down. Before: serve started
    under the new name, left those entries undelivered for good, and handed its mailboxes'
    mail to the old node's address (itself), refused there until relay.max_age_seconds and
    then bounced. Now the folder remembers its node and serve refuses the other name while
    the old node is registered."""
    from mssgate.errors import Conflict

    registry = Nodes(engine, actor="test")
    data = tmp_path / "data"
    data.mkdir()
    registry.claim_folder("a", data)
    registry.start("a", address="127.0.0.1:1", data_dir=data, down_after=timedelta(seconds=1))
    registry.claim_folder("a", data)  # the same name again: fine
    with pytest.raises(Conflict) as refused:
        registry.claim_folder("b", data)
    assert "node 'a'" in str(refused.value) and "node.name" in str(refused.value)
    with write(engine) as conn:  # as `node remove a` does once a holds nothing
        conn.execute(nodes_table.delete().where(nodes_table.c.name == "a"))
    registry.claim_folder("b", data)
    registry.start("b", address="127.0.0.1:1", data_dir=data, down_after=timedelta(seconds=1))
    with pytest.raises(Conflict):
        registry.claim_folder("a", data)  # now the folder is b's


@pytest.mark.postgres
def test_init_refuses_a_database_that_has_nodes_already(
    cli: Cli, tmp_path: Path, pg_schema: str
) -> None:
    """A second `init --database URL` on an installation's database made a node with a PKI of
    its own (another CA, another server certificate): the nodes pin each other to one server
    certificate, so its hand-overs were refused for good and mail waited until
    relay.max_age_seconds, then bounced; the domain had two CAs. `node add` makes a second
    node; init says so, and writes nothing."""
    url = pg_url(pg_schema)
    cli.ok("init", "--data", tmp_path / "a", "--domain", DOMAIN, "--database", url, "--node", "a")
    refused = cli("init", "--data", tmp_path / "b", "--domain", DOMAIN, "--database", url,
                  "--node", "b")  # fmt: skip
    assert refused.code == 1, refused.out + refused.err
    assert "node add" in refused.err and len(refused.err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists() or list((tmp_path / "b").iterdir()) == []
    # The first node's own folder may be made again (--force) under its name.
    again = cli("init", "--data", tmp_path / "a", "--domain", DOMAIN, "--database", url,
                "--node", "a", "--force")  # fmt: skip
    assert again.code == 0, again.err
