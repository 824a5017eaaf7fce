"""Listeners: one asyncio server per SMTP port, all sharing the TLS factory and limits."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mssgate.authn import DirectoryAuthenticator
from mssgate.bearer import from_config as bearer_from_config
from mssgate.config import Config
from mssgate.directory import Directory
from mssgate.directory.models import EncryptionPolicy
from mssgate.listen import bind_failed
from mssgate.logincache import LoginCache
from mssgate.pki import load_certificates
from mssgate.smime.crlfiles import CrlFiles
from mssgate.smime.mailbox_keys import mailbox_keys_dir
from mssgate.smtp import replies
from mssgate.smtp.body import MemoryBudget
from mssgate.smtp.encryption import EncryptionSettings
from mssgate.smtp.limits import AuthPenalty, ConnectionLimiter
from mssgate.smtp.policy import (
    Listener,
    PolicyLimits,
    SmtpPolicy,
    TrustSettings,
)
from mssgate.smtp.protocol import GatewaySMTP
from mssgate.spool import Spool
from mssgate.tls import add_client_cas, server_context


@dataclass
class Sessions:
    """Open SMTP sessions, for a graceful stop."""

    open: set[GatewaySMTP] = field(default_factory=set)

    def add(self, s: GatewaySMTP) -> None:
        self.open.add(s)

    def remove(self, s: GatewaySMTP) -> None:
        self.open.discard(s)

    def busy(self) -> int:
        return sum(1 for s in self.open if s.busy)


def trust_settings(config: Config) -> TrustSettings:
    """What DATA checks: certificates read once at start; CRL files read at start and again
    whenever they change (mssgate.smime.crlfiles)."""
    assert config.tls.ca is not None
    data = config.server.data_dir
    crls = CrlFiles(
        [path if path.is_absolute() else data / path for path in config.policy.crl_files]
    )
    overrides = {k.lower().rstrip("."): v.encode() for k, v in config.dkim.dns_overrides.items()}

    def dns(name: str) -> bytes | None:
        return overrides.get(name.lower().rstrip("."))

    dkim_key = None
    if config.dkim.key is not None and config.dkim.key.exists():
        dkim_key = config.dkim.key.read_bytes()
    return TrustSettings(
        patient_domain=config.policy.patient_domain.lower(),
        mss_nil=config.policy.mss_nil,
        allow_test_ins=config.policy.allow_test_ins,
        dkim_selector=config.dkim.selector,
        dkim_key_pem=dkim_key,
        require_signature=config.policy.require_signature,
        local_anchors=tuple(load_certificates(config.tls.ca)),
        crls=crls,
        verify_dkim=config.dkim.verify,
        dkim_dns=dns if overrides else None,
        encryption=EncryptionSettings(
            default=EncryptionPolicy(config.policy.encryption),
            mailbox_keys=mailbox_keys_dir(config),
        ),
        key_encryption_key_file=config.smime.key_encryption_key_file,
    )


def _peer_cas(directory: Directory) -> list[str]:
    return [pem for pem in directory.domains.trusted_cas().values() if pem]


async def start_smtp(
    config: Config,
    directory: Directory,
    spool: Spool,
    sessions: Sessions,
    on_accepted: Callable[[str], None],
    *,
    penalty: AuthPenalty | None = None,
    budget: MemoryBudget | None = None,
    login_cache: LoginCache | None = None,
    limiter: ConnectionLimiter | None = None,
    ports: dict[Listener, int] | None = None,
    reuse_port: bool = False,
    admission: Callable[[Callable[[], GatewaySMTP]], Callable[[], asyncio.Protocol]] | None = None,
) -> dict[Listener, asyncio.Server]:
    """Starts the three listeners and returns them, by kind, once they accept connections.

    `serve --workers` (mssgate.workers): every acceptance process binds the same `ports` with
    `reuse_port` (SO_REUSEPORT: the kernel spreads connections over them), and a child wraps
    each connection in `admission`, which asks the parent's per-address limit first."""
    smtp = config.smtp
    assert config.tls.cert is not None and config.tls.key is not None
    assert config.tls.ca is not None
    own_ca = config.tls.ca.read_text()
    client_ctx = server_context(
        config.tls.cert, config.tls.key, client_cas=[own_ca], request_client_cert=True
    )
    peer_cas = _peer_cas(directory)
    mta_ctx = server_context(
        config.tls.cert,
        config.tls.key,
        client_cas=[own_ca, *peer_cas],
        request_client_cert=True,
    )
    limiter = limiter or ConnectionLimiter(smtp.max_connections_per_ip)
    # One penalty per process, shared with IMAP: a guesser gains nothing by switching protocol.
    penalty = penalty or AuthPenalty.from_config(smtp)
    # Shared with IMAP by serve, like the penalty: one verification serves both protocols.
    login_cache = login_cache or LoginCache.from_config(config.auth)
    limits = PolicyLimits(max_recipients=smtp.max_recipients)
    trust = trust_settings(config)
    loop = asyncio.get_running_loop()
    # One budget for all listeners: it bounds the process, not a port.
    budget = budget or MemoryBudget(smtp.processing_memory)
    spill_dir = spool.root / "tmp"
    # Bearer tokens (Pro Santé Connect) when [oidc] is set; one verifier, one JWKS cache.
    bearer = bearer_from_config(directory, config.oidc)

    def factory(listener: Listener) -> Callable[[], asyncio.Protocol]:
        policy = SmtpPolicy(
            listener=listener,
            directory=directory,
            spool=spool,
            hostname=config.server.hostname,
            limits=limits,
            trust=trust,
            on_accepted=on_accepted,
            budget=budget,
        )
        for_clients = listener.for_clients
        actor = f"smtp:{listener.value}"
        auth = DirectoryAuthenticator(directory, actor, login_cache) if for_clients else None

        def make() -> GatewaySMTP:
            if listener is Listener.MTA:
                # A peer put on the trust list with the CLI is known from its next connection.
                add_client_cas(mta_ctx, _peer_cas(directory))
            server = GatewaySMTP(
                policy,
                listener=listener.value,
                implicit_tls=listener is Listener.SMTPS,
                limiter=limiter,
                penalty=penalty,
                authenticator=auth,
                bearer=bearer if for_clients else None,
                max_line=smtp.max_line_length,
                max_commands_before_auth=smtp.max_commands_before_auth,
                on_open=sessions.add,
                on_close=sessions.remove,
                hostname=config.server.hostname,
                tls_context=client_ctx if for_clients else mta_ctx,
                require_starttls=listener is not Listener.SMTPS,
                auth_required=for_clients,
                auth_require_tls=True,
                data_size_limit=smtp.max_message_size,
                timeout=smtp.idle_timeout_seconds,
                loop=loop,
            )
            server.spill_dir = spill_dir
            server.spill_threshold = smtp.spill_threshold
            return server

        return make if admission is None else admission(make)

    ports = ports or {
        Listener.SUBMISSION: smtp.submission_port,
        Listener.SMTPS: smtp.smtps_port,
        Listener.MTA: smtp.mta_port,
    }
    servers: dict[Listener, asyncio.Server] = {}
    for listener, port in ports.items():
        try:
            servers[listener] = await loop.create_server(
                factory(listener),
                host=smtp.bind,
                port=port,
                reuse_address=True,
                reuse_port=reuse_port or None,
            )
        except OSError as exc:
            for started in servers.values():
                started.close()
            setting = f"smtp.{listener.value}_port"
            raise bind_failed(f"SMTP {listener.value}", smtp.bind, port, setting, exc) from None
    return servers


async def drain(
    servers: dict[Listener, asyncio.Server], sessions: Sessions, drain_seconds: float
) -> None:
    """A graceful stop: no new connection; sessions in the middle of a transaction finish
    within `drain_seconds`; the rest are told 421 and closed."""
    for server in servers.values():
        server.close()
    deadline = time.monotonic() + drain_seconds
    while sessions.busy() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for session in list(sessions.open):
        with contextlib.suppress(Exception):
            await session.reply(replies.SHUTTING_DOWN)
        session.close("shutting down")


def bound_port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])
