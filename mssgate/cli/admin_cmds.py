"""`mssgate init` and `mssgate check`: set a data folder up, and check it."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy import Engine, text

from mssgate.cli.context import actor, emit_json, say, state
from mssgate.config import (
    DEFAULT_CONFIG_NAME,
    NODE_NAME,
    Config,
    config_from_mapping,
    render_config,
)
from mssgate.db import open_engine, upgrade
from mssgate.db.migrate import current_revision, head_revision
from mssgate.directory import Directory
from mssgate.errors import Conflict, MssgateError, UsageFailed
from mssgate.identifiers import normalize_domain
from mssgate.nodes import Nodes
from mssgate.pki import (
    days_left,
    init_dev_pki,
    issue_smime_files,
    load_certificate,
    load_private_key,
)
from mssgate.smime.escrow import create_kek, escrow_status, kek_path

CERT_WARN_DAYS = 30


class CheckFailed(MssgateError):
    pass


def init(
    data: Annotated[Path, typer.Option("--data", help="The data folder to create.")],
    domain: Annotated[str, typer.Option("--domain", help="The first local domain.")],
    hostname: Annotated[
        str | None, typer.Option("--hostname", help="Public host name (default mx.DOMAIN).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing setup.")] = False,
    database: Annotated[
        str | None,
        typer.Option(
            "--database",
            help="Database URL (postgresql://user@host/db for several nodes); default SQLite.",
        ),
    ] = None,
    node: Annotated[
        str | None, typer.Option("--node", help="This node's name (default: the host name).")
    ] = None,
    port_base: Annotated[
        int | None,
        typer.Option(
            "--port-base",
            metavar="N",
            help="Listen on N + each protocol's number: submission N+587, SMTPS N+465, peers"
            " N+25, IMAP N+143 and N+993, RIS API N+443, nodes N+24 (default ports: N=10000)."
            " E.g. 20000 beside a gateway on the defaults (make run).",
        ),
    ] = None,
) -> None:
    """Create a data folder: configuration, database, dev PKI, first local domain, first node."""
    dom = normalize_domain(domain)
    host = hostname or f"mx.{dom}"
    data_dir = data.resolve()
    config_file = data_dir / DEFAULT_CONFIG_NAME
    if config_file.exists() and not force:
        raise Conflict(f"{config_file} exists already (use --force to start over)")
    if node is not None and not NODE_NAME.fullmatch(node):
        raise UsageFailed(
            f"--node {node!r}: 1 to 63 letters, digits or . _ -, a letter or digit first"
        )
    # Checked before anything is written: a bad URL leaves no half-made folder.
    mapping: dict[str, Any] = {
        "server": {"data_dir": str(data_dir), "domain": dom, "hostname": host},
        "node": {} if node is None else {"name": node},
    }
    if database is not None:
        mapping["database"] = {"url": database}
    ports = _ports_from(port_base) if port_base is not None else {}
    for section, values in ports.items():
        mapping.setdefault(section, {}).update(values)
    config = config_from_mapping(mapping, origin=str(config_file))
    if database is not None:
        _check_database_nodes(database, config.node.name, data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)  # the folder holds mail and keys
    # The node's name is written even when it is the host name's default: a host renamed
    # (a container made again) must not orphan the spool entries the node holds.
    content = render_config(
        data_dir,
        dom,
        host,
        node=config.node.name,
        node_port=ports["node"]["port"] if ports else None,
        database_url=database,
    ) + _ports_toml(ports)
    pki = init_dev_pki(config.certs_dir, domain=dom, hostname=host, force=force)
    # The gateway signs its own DSNs as mailer-daemon@DOMAIN (see mssgate.integration).
    issue_smime_files(
        pki.ca_key, pki.ca_cert, f"mailer-daemon@{dom}", config.certs_dir / "mailboxes",
        common_name=f"mssgate {dom}", force=force,
    )  # fmt: skip
    # The key that seals the practitioners' signing keys the gateway holds (smime/escrow.py);
    # kept by --force: keys held in the database were sealed with it.
    kek = kek_path(config)
    if not kek.exists():
        create_kek(kek)
    engine = open_engine(config.database_url)
    try:
        upgrade(engine)
        directory = Directory(engine, actor=actor())
        if dom not in directory.domains.local_names():
            directory.domains.add_local(dom)
        registry = Nodes(engine, actor=actor())
        _refuse_other_nodes(registry, config.node.name, data_dir)
        if config.node.name not in registry.data_dirs():
            registry.add(config.node.name, address=config.node.announced_address, data_dir=data_dir)
    finally:
        engine.dispose()
    # Written last: its presence means the folder is complete.
    tmp = config_file.with_suffix(".toml.tmp")
    tmp.write_text(content, encoding="utf-8")
    tmp.replace(config_file)
    say(f"initialised {data_dir} for {dom} (host {host})")
    say(f"  configuration  {config_file}")
    say(f"  dev CA         {pki.ca_cert}")
    say(f"  server cert    {pki.server_cert}")
    say(f"  database       {_shown_url(config.database_url)}")
    if ports:
        smtp, imap = config.smtp, config.imap
        say(
            f"  ports          submission {smtp.submission_port}, SMTPS {smtp.smtps_port},"
            f" peers {smtp.mta_port}, IMAP {imap.port}/{imap.imaps_port},"
            f" RIS API {config.api.port}, nodes {config.node.port}"
        )
    say(f"  node           {config.node.name}")
    say(f"next: export MSSGATE_CONFIG={config_file}")


def _shown_url(url: str) -> str:
    """The URL without its password (the terminal may be shared, scrolled back, logged)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is reported by open_engine, not here
        return url


# `init --port-base N`: each listener on N + the usual number of its protocol, so that the
# ports of a second gateway on one machine read like the defaults (N = 10000).
_PORT_OFFSETS = {
    "smtp": {"submission_port": 587, "smtps_port": 465, "mta_port": 25},
    "imap": {"port": 143, "imaps_port": 993},
    "api": {"port": 443},
    "node": {"port": 24},
}


def _check_database_nodes(database: str, name: str, data_dir: Path) -> None:
    """Before anything is written: a database of another installation's nodes is refused."""
    engine = open_engine(database)
    try:
        upgrade(engine)
        _refuse_other_nodes(Nodes(engine, actor=actor()), name, data_dir)
    finally:
        engine.dispose()


def _refuse_other_nodes(registry: Nodes, name: str, data_dir: Path) -> None:
    known = registry.data_dirs()
    if name in known and known[name] not in (None, str(data_dir)):
        # Two data folders under one name would each deliver the other's entries.
        raise Conflict(
            f"node {name!r} exists already in this database (data folder {known[name]}):"
            " give this one another name with --node"
        )
    others = sorted(n for n in known if n != name)
    if others:
        # init makes a PKI of its own: its server certificate would not be the one the
        # other nodes pin (mssgate.nodelink), and the domain would have a second CA.
        raise Conflict(
            f"this database has node {', '.join(repr(n) for n in others)} already: make"
            " another node with `mssgate --config <its mssgate.toml> node add NAME --data"
            " DIR`, which copies the installation's certificates"
        )


def _ports_from(base: int) -> dict[str, dict[str, int]]:
    highest = max(o for offsets in _PORT_OFFSETS.values() for o in offsets.values())
    if not 1024 <= base <= 65535 - highest:
        raise UsageFailed(f"--port-base {base}: must be between 1024 and {65535 - highest}")
    return {
        section: {key: base + offset for key, offset in offsets.items()}
        for section, offsets in _PORT_OFFSETS.items()
    }


def _ports_toml(ports: dict[str, dict[str, int]]) -> str:
    """The sections of the ports, [node] apart (render_config writes that one)."""
    return "".join(
        f"\n[{section}]\n" + "".join(f"{key} = {port}\n" for key, port in values.items())
        for section, values in ports.items()
        if section != "node"
    )


def _mailbox_key_checks(folder: Path, now: datetime) -> list[tuple[str, bool, str]]:
    """The pairs in DATA/certs/mailboxes that receipts are signed (and mail to an application
    decrypted) with: a pair that expired, does not match or is readable by others fails at a
    peer, not here, unless `check` says so."""
    from mssgate.pki import is_smime_for
    from mssgate.pki.keys import same_key

    found = []
    for key_path in sorted(folder.glob("*.key.pem")) if folder.is_dir() else []:
        address = key_path.name.removesuffix(".key.pem")
        cert_path = folder / f"{address}.crt.pem"
        label = f"mailbox key {address}"
        try:
            key = load_private_key(key_path)
            cert = load_certificate(cert_path)
        except MssgateError as exc:
            found.append((label, False, str(exc)))
            continue
        problems = []
        if not same_key(key, cert.public_key()):
            problems.append(f"{key_path.name} does not match {cert_path.name}")
        if not is_smime_for(cert, address):
            # Another mailbox's pair copied under this name: peers refuse a signer that is
            # not the From.
            problems.append(f"{cert_path.name} is not an S/MIME certificate for {address}")
        left = days_left(cert, now)
        if left < 0:
            problems.append(f"{cert_path} expired")
        if key_path.stat().st_mode & 0o077:
            problems.append(f"{key_path} readable by others")
        warn = " (renew soon)" if 0 <= left < CERT_WARN_DAYS else ""
        found.append(
            (label, not problems, "; ".join(problems) or f"{cert_path}: {left} days left{warn}")
        )
    return found


def check(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Validate the configuration, certificates (expiry) and the database."""
    st = state(ctx)
    cfg = st.config()  # a broken file fails here, with every bad key listed
    results: list[dict[str, object]] = []

    def record(name: str, ok: bool, detail: str, *, warning: bool = False) -> None:
        # A warning is no failure (exit 0): a setting that works but is weaker than it seems.
        # `warning` on every entry: scripts read one shape whatever the outcome.
        results.append({"check": name, "ok": ok, "detail": detail, "warning": warning})

    record("configuration", True, "loaded")
    now = datetime.now(UTC)
    for label, path in (("tls certificate", cfg.tls.cert), ("tls ca", cfg.tls.ca)):
        assert path is not None
        try:
            left = days_left(load_certificate(path), now)
        except MssgateError as exc:
            record(label, False, str(exc))
            continue
        if left < 0:
            record(label, False, f"{path} expired")
        else:
            warn = " (renew soon)" if left < CERT_WARN_DAYS else ""
            record(label, True, f"{path}: {left} days left{warn}")
    for label, key_path in (("tls key", cfg.tls.key), ("dkim key", cfg.dkim.key)):
        assert key_path is not None
        try:
            load_private_key(key_path)
            mode = key_path.stat().st_mode & 0o077
            record(label, mode == 0, f"{key_path}" + (" readable by others" if mode else ""))
        except MssgateError as exc:
            record(label, False, str(exc))
    for label, ok, detail in _mailbox_key_checks(cfg.certs_dir / "mailboxes", now):
        record(label, ok, detail)
    try:
        engine = open_engine(cfg.database_url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        current = current_revision(engine)
        engine.dispose()
        head = head_revision()
        record(
            "database",
            True,
            f"reachable, schema {current or 'empty'}"
            + ("" if current == head else f" (will migrate to {head})"),
        )
        if current == head:
            # The keys the gateway signs with for its users open only with the installation's
            # key encryption key: a node without its copy would answer those users 451.
            engine = open_engine(cfg.database_url)
            try:
                record("signing keys held", *escrow_status(engine, kek_path(cfg)))
                record("routing rules", *_routing_status(engine, cfg))
                unsigned = _unsigned_forwards(engine, cfg)
                if unsigned is not None:
                    record("unsigned forwards", True, unsigned, warning=True)
                detail, warning = _patient_domain_status(engine, cfg)
                record("patient domain", True, detail, warning=warning)
            finally:
                engine.dispose()
    except Exception as exc:  # any driver failure is a failed check, not a crash
        record("database", False, f"unreachable: {exc.__class__.__name__}")
    if cfg.imap.enabled and not cfg.imap.external_dovecot:
        from mssgate.dovecot.paths import UnsafeFolder

        try:
            record("dovecot", True, _dovecot_places(cfg.server.data_dir))
        except UnsafeFolder as exc:  # serve would refuse to start: say why here too
            record("dovecot", False, str(exc))
    if json_out:
        emit_json({"ok": all(r["ok"] for r in results), "checks": results})
    else:
        for r in results:
            mark = "WARN" if r.get("warning") else "ok  " if r["ok"] else "FAIL"
            say(f"{mark} {r['check']}: {r['detail']}")
    failed = [r for r in results if not r["ok"]]
    if failed:
        raise CheckFailed(f"{len(failed)} check(s) failed: {failed[0]['check']}")


def _routing_status(engine: Engine, cfg: Config) -> tuple[bool, str]:
    """The rules serve would apply: each copy-to must name a mailbox of this gateway, each
    forward be sendable (a rule of the file is not checked by `route add`)."""
    from mssgate.routing.store import RuleStore, unknown_copy_targets

    rules = RuleStore(engine, cfg.routing.rule).rules()
    unknown = unknown_copy_targets(engine, rules)
    if unknown:
        rule, target = unknown[0]
        return False, f"rule {rule}: copy-to {target} is no mailbox of this gateway"
    from mssgate.directory import Directory
    from mssgate.outbound.forward import forward_problems

    # A forward that could not be sent holds every document its rule matches.
    unsendable = forward_problems(cfg, Directory(engine, actor="check"), rules)
    if unsendable:
        return False, unsendable[0][1]
    return True, f"{len(rules)} rule(s), {len(cfg.routing.rule)} of them in the file"


def _unsigned_forwards(engine: Engine, cfg: Config) -> str | None:
    """Why to warn, if so: signatures not required while a rule forwards. A forward is a new
    message signed by our application mailbox, so unsigned mail, anyone's word, would go on
    under that mailbox's signature."""
    if cfg.policy.require_signature:
        return None
    from mssgate.routing.preset import RESULT_RULE
    from mssgate.routing.store import RuleStore

    rules = RuleStore(engine, cfg.routing.rule).rules()
    # The d2lm preset's result rule forwards the GP's copy (and to the L1 reader elsewhere).
    forwarding = [
        r.name
        for r in rules
        if r.enabled and (r.name == RESULT_RULE or any(a.kind == "forward" for a in r.actions))
    ]
    if not forwarding:
        return None
    names = ", ".join(forwarding[:3]) + (" ..." if len(forwarding) > 3 else "")
    return (
        f"[policy] require_signature = false and rule {names} forwards: unsigned mail would"
        " go out signed by our application mailbox (set require_signature = true)"
    )


def _patient_domain_status(engine: Engine, cfg: Config) -> tuple[str, bool]:
    """The patient domain's trust entry, and whether to warn: trusted without an operator DN,
    any certificate of its CA (every IGC-Santé gateway) may write as a patient."""
    domain = cfg.policy.patient_domain
    peer = Directory(engine, actor="check").domains.trusted_peer(domain)
    if peer is None:
        return f"{domain} not on the trust list (messages to patients are refused)", False
    if not peer.operator_dn:
        return (
            f"{domain} is trusted without an operator DN: any gateway certificate of its CA"
            f" may write as a patient (mssgate domain trust {domain} --relay ... --operator-dn"
            " DN)"
        ), True
    return f"{domain} trusted, operator DN {peer.operator_dn}", False


def _dovecot_places(data_dir: Path) -> str:
    """Where the private Dovecot's sockets and mail are (the mail may live outside the data
    folder: it must then be in the backups too)."""
    from mssgate.dovecot.conf import resolve_users
    from mssgate.dovecot.paths import mail_root, runtime_dir

    try:
        users = resolve_users(data_dir)
        mail = mail_root(
            data_dir, mail_uid=users.mail_uid, mail_gid=users.mail_gid, privileged=users.privileged
        )
    except (KeyError, OSError):  # Dovecot's users not installed yet: serve will say so
        mail = data_dir / "mail"
    return f"sockets in {runtime_dir(data_dir)}, mail in {mail}"


def serve(
    ctx: typer.Context,
    workers: Annotated[
        str | None,
        typer.Option(
            "--workers",
            help="SMTP acceptance processes on the same ports: a number, or 0 or auto for one"
            " per core (default: server.workers, auto).",
        ),
    ] = None,
) -> None:
    """Run every listener (SMTP submission, SMTPS, MTA) until SIGTERM."""
    from mssgate.serve import serve as run

    config = state(ctx).config()
    if workers is not None:
        count: int | str = workers.strip().lower()
        if count != "auto":
            try:
                count = int(count)
            except ValueError:
                count = -1
            if not 0 <= count <= 256:
                raise UsageFailed(f"--workers must be auto or a number from 0 to 256: {workers!r}")
        server = config.server.model_copy(update={"workers": count})
        config = config.model_copy(update={"server": server})
    code = run(config)
    if code:
        raise typer.Exit(code)


def demo(
    keep: Annotated[bool, typer.Option("--keep", help="Keep the temporary folder.")] = False,
) -> None:
    """Two gateways in a temporary folder: a signed imaging report from clinic to RIS."""
    from mssgate.demo import demo as run_demo

    code = run_demo(keep=keep)
    if code:
        raise typer.Exit(code)
