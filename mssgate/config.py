"""Configuration: frozen pydantic models, loaded from TOML plus environment overrides.

The models do not know where their values came from (a file, the environment, a test); the
loader does. Every limit is a named field so that an operator can see and change it, and so
that tests can shrink it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from mssgate.errors import ConfigError, ValidationFailed
from mssgate.routing.model import RuleSpec

CONFIG_ENV = "MSSGATE_CONFIG"
DEFAULT_CONFIG_NAME = "mssgate.toml"

Port = int


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerConfig(_Section):
    hostname: str = "localhost"
    domain: str = "localhost"
    data_dir: Path = Path("var")
    # The event loop of `serve` and its listeners (mssgate/eventloop.py): the standard
    # library's, or "uvloop" (faster relay; the MLLP listener then logs no failed handshake).
    event_loop: Literal["uvloop", "asyncio"] = "asyncio"
    # SMTP acceptance processes (`serve --workers`): the parent and workers - 1 children on
    # the same ports. 0 or "auto": one per core, as one process (one GIL) leaves the other
    # cores idle under load.
    workers: Annotated[int, Field(ge=0, le=256)] | Literal["auto"] = "auto"

    @property
    def acceptance_processes(self) -> int:
        if self.workers == "auto" or self.workers == 0:
            return max(1, os.cpu_count() or 1)
        return int(self.workers)


class SmtpConfig(_Section):
    submission_port: Port = Field(10587, ge=0, le=65535)
    smtps_port: Port = Field(10465, ge=0, le=65535)
    mta_port: Port = Field(10025, ge=0, le=65535)
    bind: str = "127.0.0.1"
    max_message_size: int = Field(26_214_400, gt=0)
    max_recipients: int = Field(100, gt=0)
    max_line_length: int = Field(998, ge=78, le=65536)
    max_commands_before_auth: int = Field(10, gt=0)
    max_connections_per_ip: int = Field(20, gt=0)
    idle_timeout_seconds: float = Field(300.0, gt=0)
    auth_failures_before_delay: int = Field(3, ge=0)
    auth_failure_delay_max_seconds: float = Field(15.0, ge=0)
    # An address's AUTH failures are forgotten this long after its last one (the penalty,
    # shared with IMAP, starts again from nothing).
    auth_failure_forget_seconds: float = Field(900.0, gt=0)
    drain_seconds: float = Field(30.0, ge=0)
    # Memory for whole-message work at once (S/MIME, DKIM, the document pipeline), a message
    # counting six times its size: bounds the peak whatever the number of sessions.
    processing_memory: int = Field(160 << 20, ge=1 << 20)
    # A message body larger than this goes to an anonymous file in the spool while it arrives.
    spill_threshold: int = Field(1 << 20, ge=0)


def parse_lmtp_target(target: str | Path) -> tuple[str, int | None]:
    """(unix socket path, None) or (host, port) for `imap.lmtp_target`'s two forms.

    Raises:
        ValueError: neither an absolute path nor host:port with a port in 1-65535.
    """
    text = str(target)
    if text.startswith("/"):
        return text, None
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [::1]:24
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"LMTP target {text!r} is neither an absolute socket path nor host:port")
    return host, int(port)


class ImapConfig(_Section):
    # IMAP needs Dovecot (Debian's dovecot-imapd and dovecot-lmtpd). Off: local mail is
    # written as Maildir under the data folder and nobody can read it over IMAP.
    enabled: bool = True
    port: Port = Field(10143, ge=0, le=65535)
    imaps_port: Port = Field(10993, ge=0, le=65535)
    bind: str = "127.0.0.1"
    max_preauth_line: int = Field(8192, gt=0)
    idle_timeout_seconds: float = Field(60.0, gt=0)
    # Commands a connection may send before it is logged in (failed logins included).
    max_preauth_commands: int = Field(20, gt=0)
    # An existing Dovecot instead of a private instance under the data folder (docs/imap.md,
    # "An existing Dovecot"): its config file, from which the LMTP socket (<base_dir>/lmtp)
    # and the post-login `imap` sessions follow; and/or each of those two set by itself.
    dovecot_config: Path | None = None
    # Where local delivery goes: an absolute unix socket path, or host:port (LMTP over TCP).
    lmtp_target: str | None = None
    # The post-login backend: a command that starts an IMAP session already logged in as
    # "{user}" (replaced by the authenticated address) on its stdin/stdout and greets with
    # "* PREAUTH", e.g. ["/usr/lib/dovecot/imap", "-c", "/etc/dovecot/dovecot.conf", "-u",
    # "{user}"], or the same behind ssh for a Dovecot on another machine.
    backend_command: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _existing_dovecot(self) -> ImapConfig:
        if self.lmtp_target is not None:
            parse_lmtp_target(self.lmtp_target)  # ValueError: reported with the key path
        if self.backend_command and not any("{user}" in arg for arg in self.backend_command):
            # Without it every login would open the same mailbox.
            raise ValueError("imap.backend_command must contain {user}")
        if self.dovecot_config is None and bool(self.lmtp_target) != bool(self.backend_command):
            raise ValueError(
                "an existing Dovecot without imap.dovecot_config needs both imap.lmtp_target"
                " and imap.backend_command"
            )
        return self

    @property
    def external_dovecot(self) -> bool:
        return bool(self.dovecot_config or self.lmtp_target or self.backend_command)


class ApiConfig(_Section):
    port: Port = Field(10443, ge=0, le=65535)
    bind: str = "127.0.0.1"


class Hl7Config(_Section):
    """MLLP over TLS for RIS products that speak no HTTPS (mssgate.mllp, docs/ris-integration.md).

    The listener takes the same HL7 messages as POST /v1/outbound from clients holding a
    certificate of `mssgate consumer cert`; the push sends a consumer's queue to its RIS."""

    # Off by default: a port nobody asked for stays closed.
    enabled: bool = False
    port: Port = Field(10575, ge=0, le=65535)
    bind: str = "127.0.0.1"
    # One frame's HL7 at most; None: the SMTP message size limit (the same documents).
    max_message_size: int | None = Field(None, gt=0)
    # Each read (the TLS handshake, a frame's next bytes, the next frame) may wait this long.
    read_timeout_seconds: float = Field(60.0, gt=0)
    # Connections served at once: each may hold one frame (up to max_message_size) in memory.
    max_connections: int = Field(8, ge=1, le=1000)
    # The push (consumer add --push mllp://host:port): connecting, then waiting for the ACK.
    push_connect_timeout_seconds: float = Field(30.0, gt=0)
    push_ack_timeout_seconds: float = Field(60.0, gt=0)
    # After a refusal (AE/AR), a timeout or a connection that fails: first * 2**n, capped.
    push_retry_first_seconds: float = Field(10.0, gt=0)
    push_retry_max_seconds: float = Field(600.0, gt=0)
    # How often a push lane with nothing to send looks at its queue again.
    push_poll_seconds: float = Field(5.0, gt=0)


class AdminConfig(_Section):
    """The read-only admin console at /admin on the API port (docs/operator-guide.md)."""

    # Off: /admin answers 404 like any unknown path.
    enabled: bool = False
    # How long a console login (its session cookie) lasts; a new token ends every session.
    session_seconds: int = Field(3600, ge=60, le=86_400)
    # Rows per page of each table.
    page_size: int = Field(50, ge=1, le=500)


class QueueConfig(_Section):
    """The RIS integration queue (lease/ack API)."""

    # Lease length when a consumer does not ask for one, and the longest it may ask for.
    visibility_timeout_seconds: int = Field(300, ge=1, le=86_400)
    max_lease_seconds: int = Field(3600, ge=1, le=86_400)
    # Deliveries (leases) before a document goes dead; it never blocks the rest meanwhile.
    max_attempts: int = Field(5, ge=1, le=1000)
    max_lease_batch: int = Field(100, ge=1, le=1000)
    # Nack codes that end a document at once (e.g. 902-905, identity problems no retry can
    # fix); by default every nack is retried until max_attempts.
    final_nack_codes: tuple[int, ...] = ()
    # `mssgate serve` reaps expired leases (dead documents get their error MDN without
    # waiting for a consumer of that mailbox) and resends receipts left in the outbox.
    maintenance_interval_seconds: float = Field(5.0, gt=0, le=3600)


class RelayConfig(_Section):
    """Outgoing relay to peer operators' gateways (mssgate/relay, docs/relay.md)."""

    # Backoff after a temporary failure: first * factor**attempts, capped; jitter shortens a
    # delay by up to that fraction so that a peer coming back is not hit by every retry at once.
    retry_first_seconds: float = Field(60.0, gt=0)
    retry_factor: float = Field(2.0, ge=1.0)
    retry_max_seconds: float = Field(3600.0, gt=0)
    retry_jitter: float = Field(0.1, ge=0.0, lt=1.0)
    # Give up (DSN) this long after arrival: RFC 5321 4.5.4.1 asks for at least 4-5 days.
    max_age_seconds: float = Field(432_000.0, gt=0)
    # RFC 5321 4.5.3.2 timeouts; "command" covers EHLO, STARTTLS and its handshake, MAIL, QUIT.
    connect_timeout_seconds: float = Field(60.0, gt=0)
    greeting_timeout_seconds: float = Field(300.0, gt=0)
    command_timeout_seconds: float = Field(300.0, gt=0)
    rcpt_timeout_seconds: float = Field(300.0, gt=0)
    data_init_timeout_seconds: float = Field(120.0, gt=0)
    data_block_timeout_seconds: float = Field(180.0, gt=0)
    data_end_timeout_seconds: float = Field(600.0, gt=0)
    poll_seconds: float = Field(5.0, gt=0)
    batch: int = Field(100, ge=1, le=10_000)


class DeliveryConfig(_Section):
    """Local delivery from the spool into the mailboxes (Maildir, or LMTP into Dovecot)."""

    # Attempts before a temporary failure becomes permanent; between them a delay of
    # retry_first * 2**attempts, capped at retry_max.
    max_attempts: int = Field(30, ge=1, le=1000)
    retry_first_seconds: float = Field(30.0, gt=0)
    retry_max_seconds: float = Field(3600.0, gt=0)
    # How often the worker looks for due deliveries when nothing wakes it.
    poll_seconds: float = Field(5.0, gt=0)
    # One LMTP exchange with Dovecot (connect, each command, the data) may take this long.
    lmtp_timeout_seconds: float = Field(120.0, gt=0)
    # Mailboxes delivered to at once. One mailbox's messages still go in order, one at a
    # time; a slow or failing mailbox holds only its own lane.
    concurrency: int = Field(4, ge=1, le=64)


class DocumentsConfig(_Section):
    """The document pipeline that feeds the RIS queue: what one message may cost it."""

    # Per message, over all its parts: bytes decoded (MIME, archives, base64 bodies),
    # documents, XML elements and attributes. Over any, the message is held whole.
    max_decoded_bytes: int = Field(128 << 20, gt=0)
    max_documents: int = Field(100, gt=0)
    max_xml_nodes: int = Field(1_000_000, gt=0)
    # Wall time of the pipeline for one message, in a worker process that is killed and
    # replaced when it runs over; the message is then held whole.
    time_budget_seconds: float = Field(60.0, gt=0)
    # Worker processes running the pipeline at once (each may use one core), and the address
    # space each may map (RLIMIT_AS): past it the message is held, the gateway untouched.
    workers: int = Field(1, ge=1, le=64)
    worker_memory_bytes: int = Field(2 << 30, ge=256 << 20)
    # How often the document worker looks for pending messages when nothing wakes it.
    poll_seconds: float = Field(5.0, gt=0)


class RoutingConfig(_Section):
    """Routing rules (`[[routing.rule]]`, beside those `mssgate route add` stores) and the
    budget of the rules' XPaths over one message's CDAs (docs/operator-guide.md, "Routing
    rules")."""

    rule: tuple[RuleSpec, ...] = ()
    # XPaths run in a document worker process killed past this, one budget for a message's
    # CDAs (a sender chooses how many); over it, or over the nodes, the document is held.
    xpath_seconds: float = Field(2.0, gt=0, le=300)
    xpath_max_nodes: int = Field(200_000, ge=1, le=10_000_000)
    # The application mailbox a `forward` action sends from (signed with its key, like a RIS's
    # outbound message) unless the action names one; and at most this many forwards per
    # received message, whose sender decides how many documents it carries.
    forward_from: str | None = Field(None, max_length=254)
    max_forwards: int = Field(10, ge=0, le=1000)

    @field_validator("forward_from")
    @classmethod
    def _forward_from(cls, value: str | None) -> str | None:
        from mssgate.identifiers import normalize_address

        if value is None:
            return None
        try:
            return normalize_address(value)
        except ValidationFailed as exc:
            raise ValueError(f"routing.forward_from: {exc}") from None

    @model_validator(mode="after")
    def _unique(self) -> RoutingConfig:
        names = [r.name for r in self.rule]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"routing.rule: the name {twice[0]!r} is given twice")
        return self


NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _host_name() -> str:
    # The host name is the default so that one node per machine needs no setting; `init`
    # writes it into the file all the same, so that a container that gets a new host name
    # at every start keeps the node (and the spool entries it holds) it had.
    name = socket.gethostname()
    return name if NODE_NAME.fullmatch(name) else "localhost"


class NodeConfig(_Section):
    """This gateway among the nodes that share one database (docs/operator-guide.md, Nodes)."""

    name: str = Field(default_factory=_host_name)
    # The listener for node-to-node traffic, and the address other nodes must use for it
    # (default 127.0.0.1:port, enough for several nodes on one host).
    port: Port = Field(10024, ge=0, le=65535)
    bind: str = "127.0.0.1"
    address: str | None = None
    # How often `serve` writes its heartbeat, and how long a node may stay silent before
    # `node list` and /healthz call it down.
    heartbeat_seconds: float = Field(5.0, gt=0, le=300)
    down_after_seconds: float = Field(30.0, gt=0)
    # Node-link connections served at once: hand-overs (up to delivery.concurrency per other
    # node) and the IMAP sessions other nodes relay here (one each, for their whole length).
    max_connections: int = Field(500, ge=1, le=100_000)

    @model_validator(mode="after")
    def _check(self) -> NodeConfig:
        if not NODE_NAME.fullmatch(self.name):
            raise ValueError(
                f"node name {self.name!r}: 1 to 63 letters, digits or . _ -, a letter or"
                " digit first"
            )
        if self.address is not None:
            parse_lmtp_target(self.address)  # host:port, same rules
            if self.address.startswith("/"):
                raise ValueError("node.address must be host:port")
        if self.down_after_seconds <= self.heartbeat_seconds:
            raise ValueError("node.down_after_seconds must exceed node.heartbeat_seconds")
        return self

    @property
    def announced_address(self) -> str:
        return self.address or f"127.0.0.1:{self.port}"


class DatabaseConfig(_Section):
    # None means "mssgate.db in the data folder", resolved by Config.
    url: str | None = None


class TlsConfig(_Section):
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None


class PolicyConfig(_Section):
    require_signature: bool = True
    encryption: Literal["required", "opportunistic", "off"] = "opportunistic"
    allow_test_ins: bool = False
    # The birthplace code is a strict INS trait: without it a received document is held
    # (905). Off for senders whose XDS metadata never carries PID-11 (DRIMbox).
    require_birthplace: bool = True
    # "Mon espace santé": patients' mailboxes are <INS>@this domain, reached through the
    # operator on the trust list for it; the local part must be an INS whose key checks.
    patient_domain: str = "patient.mssante.fr"
    # X-MSS-NIL on every message the gateway sends or relays (MSSanté interface level).
    mss_nil: str = "1"
    # CRLs (PEM or DER files) of the CAs that issue practitioners' and peers' certificates;
    # with any given, every certificate of a signer's chain must be covered by one.
    crl_files: tuple[Path, ...] = ()
    # How long a signer's successful path validation answers for later messages (0: never,
    # every message validated in full), and how many signer paths are remembered.
    smime_path_cache_seconds: float = Field(300, ge=0, le=3600)
    smime_path_cache_entries: int = Field(4096, gt=0)


class DkimConfig(_Section):
    selector: str = "mssgate"
    key: Path | None = None
    verify: bool = True
    # TXT records served without DNS ("selector._domainkey.domain" -> "v=DKIM1; ..."): for a
    # closed network whose peers publish their keys out of band, and for tests.
    dns_overrides: dict[str, str] = {}


class SmimeConfig(_Section):
    """S/MIME the gateway does for its users (docs/smime.md, "Signed by the gateway")."""

    # The key that seals the practitioners' signing keys the gateway holds in the database
    # (32 random bytes in base64, mode 0600): made by `init`, copied by `node add`, the same
    # file on every node. Default: certs/escrow.kek in the data folder.
    key_encryption_key_file: Path | None = None


class AuthConfig(_Section):
    """Password logins on SMTP submission and IMAP (docs/security-model.md, "Logins")."""

    # A successful password login is remembered this long (0: never; every login pays one
    # Argon2id verification): a keyed digest bound to the stored hash, re-checked against
    # the account row at each login, so a change made on any node ends it at once.
    cache_seconds: float = Field(300.0, ge=0, le=86_400)
    # Accounts remembered at most (least recently used forgotten first): bounds memory.
    cache_entries: int = Field(10_000, gt=0, le=1_000_000)
    # Argon2id cost of new hashes (RFC 9106's second recommendation by default). Existing
    # hashes keep the cost they were made with, which each hash records.
    argon2_memory_kib: int = Field(65_536, ge=8, le=4 << 20)
    argon2_time_cost: int = Field(3, ge=1, le=100)
    argon2_parallelism: int = Field(4, ge=1, le=64)

    @model_validator(mode="after")
    def _argon2_minimum(self) -> AuthConfig:
        if self.argon2_memory_kib < 8 * self.argon2_parallelism:
            raise ValueError("auth.argon2_memory_kib must be at least 8 x auth.argon2_parallelism")
        return self


class AnnuaireConfig(_Section):
    max_line_bytes: int = Field(8192, gt=0)
    max_rejects_reported: int = Field(1000, ge=0)


class OidcConfig(_Section):
    """Pro Santé Connect (OpenID Connect) bearer tokens on SMTP and IMAP (docs/clients.md).

    Absent: OAUTHBEARER and XOAUTH2 are neither advertised nor accepted."""

    # The provider's issuer URL (https); its /.well-known/openid-configuration names the JWKS.
    issuer: str
    # What the token's `aud` must contain: the gateway's client id or resource at the issuer.
    audience: str = Field(min_length=1)
    # PEM bundle trusting the issuer's TLS certificate (a private issuer); None: system CAs.
    ca: Path | None = None
    jwks_cache_seconds: float = Field(300.0, ge=0, le=86_400)
    # An unknown `kid` refetches the JWKS at most this often (a forged kid costs one fetch).
    jwks_refetch_min_seconds: float = Field(30.0, ge=0, le=3600)
    # The claim holding the national identifier ("8" + RPPS as PSC writes it, or the RPPS).
    id_claim: str = Field("preferred_username", min_length=1)
    # `acr` values accepted (PSC: "eidas1" for strong authentication); empty: any.
    acr_values: tuple[str, ...] = ()
    clock_skew_seconds: float = Field(60.0, ge=0, le=600)
    algorithms: tuple[str, ...] = ("RS256", "PS256", "ES256", "RS384", "RS512", "ES384", "EdDSA")
    # RFC 7662 introspection instead of local JWT checks: the endpoint (default: the one the
    # discovery document names) is asked with these client credentials.
    introspection: bool = False
    introspection_endpoint: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    # Local domains whose mailboxes may log in with a token; empty: every local domain.
    domains: tuple[str, ...] = ()
    http_timeout_seconds: float = Field(5.0, gt=0, le=60)
    max_document_bytes: int = Field(256 << 10, ge=1024, le=16 << 20)

    @model_validator(mode="after")
    def _check(self) -> OidcConfig:
        if not self.issuer.startswith("https://"):
            raise ValueError("oidc.issuer must be an https:// URL")
        if self.introspection and not (self.client_id and self.client_secret):
            raise ValueError("oidc.introspection needs oidc.client_id and oidc.client_secret")
        bad = [a for a in self.algorithms if a == "none" or a.startswith("HS")]
        if bad:
            # A shared-secret or unsigned token could be made by anyone who knows the JWKS.
            raise ValueError(f"oidc.algorithms: {', '.join(bad)} not allowed")
        return self


class Config(BaseSettings):
    """The whole configuration. Relative paths are relative to the data folder."""

    model_config = SettingsConfigDict(
        env_prefix="MSSGATE_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        case_sensitive=False,
    )

    server: ServerConfig = ServerConfig()
    node: NodeConfig = NodeConfig()
    smtp: SmtpConfig = SmtpConfig()
    imap: ImapConfig = ImapConfig()
    api: ApiConfig = ApiConfig()
    hl7: Hl7Config = Hl7Config()
    admin: AdminConfig = AdminConfig()
    queue: QueueConfig = QueueConfig()
    relay: RelayConfig = RelayConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    documents: DocumentsConfig = DocumentsConfig()
    routing: RoutingConfig = RoutingConfig()
    database: DatabaseConfig = DatabaseConfig()
    tls: TlsConfig = TlsConfig()
    policy: PolicyConfig = PolicyConfig()
    dkim: DkimConfig = DkimConfig()
    annuaire: AnnuaireConfig = AnnuaireConfig()
    oidc: OidcConfig | None = None
    auth: AuthConfig = AuthConfig()
    smime: SmimeConfig = SmimeConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init kwargs; the environment overrides them.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _resolve_paths(self) -> Config:
        data = self.server.data_dir
        certs = data / "certs"

        def under_data(p: Path | None, default: Path) -> Path:
            if p is None:
                return default
            return p if p.is_absolute() else data / p

        tls = TlsConfig(
            cert=under_data(self.tls.cert, certs / "server.crt.pem"),
            key=under_data(self.tls.key, certs / "server.key.pem"),
            ca=under_data(self.tls.ca, certs / "ca.crt.pem"),
        )
        dkim = self.dkim.model_copy(
            update={"key": under_data(self.dkim.key, certs / "dkim.key.pem")}
        )
        smime = SmimeConfig(
            key_encryption_key_file=under_data(
                self.smime.key_encryption_key_file, certs / "escrow.kek"
            )
        )
        object.__setattr__(self, "smime", smime)
        db = self.database
        if db.url is None:
            db = DatabaseConfig(url=f"sqlite:///{data / 'mssgate.db'}")
        # Frozen model: bypass __setattr__ once, while the object is still being built.
        object.__setattr__(self, "tls", tls)
        object.__setattr__(self, "dkim", dkim)
        object.__setattr__(self, "database", db)
        if self.oidc is not None and self.oidc.ca is not None:
            oidc = self.oidc.model_copy(update={"ca": under_data(self.oidc.ca, certs)})
            object.__setattr__(self, "oidc", oidc)
        return self

    @property
    def database_url(self) -> str:
        assert self.database.url is not None  # set by _resolve_paths
        return self.database.url

    @property
    def certs_dir(self) -> Path:
        return self.server.data_dir / "certs"


def _env_source(loc: tuple[int | str, ...]) -> str | None:
    """The environment variable that set the value at `loc`, when one did: it overrides the
    file, so a bad value there must not be blamed on the file.

    A list or a table comes from one variable holding JSON (`MSSGATE_QUEUE__FINAL_NACK_CODES`,
    or a whole section as `MSSGATE_SMTP`), so an error's location may lie below the variable's
    own: the longest prefix of `loc` naming a set variable is it, provided the rest of the
    location is inside that variable's JSON (a table from the environment is merged with the
    file's, whose keys keep their own blame)."""
    for end in range(len(loc), 0, -1):
        name = "MSSGATE_" + "__".join(str(p) for p in loc[:end]).upper()
        found = [key for key in os.environ if key.upper() == name]  # case_sensitive=False
        if found and (end == len(loc) or _json_has(os.environ[found[0]], loc[end:])):
            return found[0]
    return None


def _json_has(text: str, path: tuple[int | str, ...]) -> bool:
    try:
        value: Any = json.loads(text)
    except ValueError:
        return False
    for step in path:
        if isinstance(value, dict) and str(step) in value:
            value = value[str(step)]
        elif isinstance(value, list) and isinstance(step, int) and 0 <= step < len(value):
            value = value[step]
        else:
            return False
    return True


def _unparsable_env(error: SettingsError) -> str:
    """pydantic-settings parses a list, table or section from the environment as JSON and
    raises its own error, naming only the section, when that fails: name the variable."""
    section = re.search(r'field "([^"]+)"', str(error))
    hint = 'a list or table is given as JSON, e.g. [1, 2] or {"key": "value"}'
    if section is None or section.group(1) not in Config.model_fields:
        return f"invalid configuration in the environment: {hint}"
    name = section.group(1)
    model = Config.model_fields[name].annotation
    fields = model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else {}
    blamed = []
    for variable, value in sorted(os.environ.items()):
        upper = variable.upper()
        if upper == f"MSSGATE_{name.upper()}":
            loc = name
        elif upper.startswith(f"MSSGATE_{name.upper()}__"):
            key = upper.split("__", 1)[1].lower()
            if key not in fields or get_origin(fields[key].annotation) not in _JSON_TYPES:
                continue
            loc = f"{name}.{key}"
        else:
            continue
        try:
            json.loads(value)
        except ValueError:
            blamed.append(f"{variable} ({loc})")
    where = ", ".join(blamed) or f"a MSSGATE_{name.upper()}__ variable"
    return f"invalid configuration in the environment: {where}: {hint}"


_JSON_TYPES = (tuple, list, dict, set, frozenset)


def _format_errors(error: ValidationError, origin: str) -> str:
    in_file, in_env = [], []
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        variable = _env_source(err["loc"])
        if variable is not None:
            in_env.append(f"{variable} ({loc}): {msg}")
        else:
            in_file.append(f"{loc}: {msg}")
    said = []
    if in_env:
        said.append("invalid configuration in the environment: " + "; ".join(in_env))
    if in_file:
        said.append(f"invalid configuration in {origin}: " + "; ".join(in_file))
    return "; ".join(said)


def config_from_mapping(data: Mapping[str, Any], *, origin: str = "settings") -> Config:
    """Builds a Config from a mapping (a parsed TOML file), with environment overrides."""
    unknown = _unknown_env_sections()
    try:
        config = Config(**dict(data))
    except ValidationError as exc:
        raise ConfigError("; ".join([*unknown, _format_errors(exc, origin)])) from None
    except SettingsError as exc:
        raise ConfigError("; ".join([*unknown, _unparsable_env(exc)])) from None
    if unknown:
        raise ConfigError("; ".join(unknown))
    return config


def _unknown_env_sections() -> list[str]:
    """pydantic-settings skips a MSSGATE_X__KEY whose X is no section, so a misspelt section
    (`MSSGATE_SMPT__SUBMISSION_PORT`) would leave the value unset without a word, where the
    same typo in the file is an error. Variables without `__` (MSSGATE_CONFIG) are no keys."""
    found = []
    for variable in sorted(os.environ):
        if variable.upper().startswith("MSSGATE_") and "__" in variable:
            section = variable[len("MSSGATE_") :].split("__", 1)[0].lower()
            if section not in Config.model_fields:
                found.append(
                    f"invalid configuration in the environment: {variable} ({section}):"
                    " unknown section"
                )
    return found


def resolve_config_path(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    return Path(DEFAULT_CONFIG_NAME)


def load_config(path: Path | None = None) -> Config:
    """Loads the configuration file (see `resolve_config_path`) and the environment.

    A missing file is an error: running with silent defaults against the wrong data folder is
    how an operator loses track of a directory.
    """
    file = resolve_config_path(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"configuration file not found: {file} (run 'mssgate init' or pass --config)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {file}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"configuration file {file} is not valid TOML: {exc}") from None
    server = data.get("server")
    if isinstance(server, dict) and "data_dir" in server:
        # A relative data folder is relative to the file that names it, not to the cwd.
        data_dir = Path(str(server["data_dir"]))
        if not data_dir.is_absolute():
            server["data_dir"] = str((file.parent / data_dir).resolve())
    return config_from_mapping(data, origin=str(file))


def render_config(
    data_dir: Path,
    domain: str,
    hostname: str,
    *,
    node: str | None = None,
    node_port: int | None = None,
    node_address: str | None = None,
    database_url: str | None = None,
) -> str:
    """The TOML that `mssgate init` (and `node add`) writes: only what differs from the
    defaults, commented."""
    text = (
        "# mssgate configuration. Every key can be overridden by MSSGATE_<SECTION>__<KEY>.\n"
        "# See docs/operator-guide.md for every section and limit.\n\n"
        "[server]\n"
        f"hostname = {_toml_str(hostname)}\n"
        f"domain = {_toml_str(domain)}\n"
        f"data_dir = {_toml_str(str(data_dir))}\n\n"
    )
    if node is not None:
        text += f"[node]\nname = {_toml_str(node)}\n"
        if node_port is not None:
            text += f"port = {node_port}\n"
        if node_address is not None:
            text += f"address = {_toml_str(node_address)}\n"
        text += "\n"
    if database_url is not None:
        text += f"[database]\nurl = {_toml_str(database_url)}\n\n"
    return text + '[policy]\nrequire_signature = true\nencryption = "opportunistic"\n'


def _toml_str(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
