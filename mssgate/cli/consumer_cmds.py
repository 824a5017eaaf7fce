"""`mssgate consumer ...`: RIS systems that poll the integration queue."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import load_pem_x509_certificates

from mssgate.cli.context import State, emit_json, emit_table, say, state
from mssgate.cli.durations import parse_duration
from mssgate.directory import Directory
from mssgate.directory.consumers import MAX_TOKEN_GRACE
from mssgate.errors import NotFound, PKIError, UsageFailed, ValidationFailed
from mssgate.mllp.target import parse_push_url
from mssgate.pki import issue_client_cert, load_certificate, load_private_key
from mssgate.pki.files import ensure_private_dir, write_certificate, write_private_key
from mssgate.smime.mailbox_keys import EnsuredKey, ensure_mailbox_key

app = typer.Typer(help="RIS consumers of the integration queue.", no_args_is_help=True)

MAX_PGP_KEY_BYTES = 256 * 1024


@app.command("add")
def add(
    ctx: typer.Context,
    name: str,
    mailbox: Annotated[str, typer.Option("--mailbox", help="The mailbox it consumes.")],
    pgp_key: Annotated[
        Path | None, typer.Option("--pgp-key", help="OpenPGP public key (armoured).")
    ] = None,
    push: PushOption = None,
    push_ca: PushCaOption = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Register a consumer; its API token is printed once, now."""
    key_text = None
    if pgp_key is not None:
        data = _read_small(pgp_key, MAX_PGP_KEY_BYTES, b"BEGIN PGP PUBLIC KEY BLOCK",
                           "an armoured OpenPGP public key")  # fmt: skip
        key_text = data.decode("ascii", errors="replace")
    push_url, push_pem = _push_settings(push, push_ca, has_pgp_key=key_text is not None)
    st = state(ctx)
    directory = st.directory()
    # Before the key pair: a command refused for its name must leave nothing behind.
    directory.consumers.check_name(name)
    signing = _signing_key(st, directory, mailbox)
    consumer, token = directory.consumers.add(name, mailbox=mailbox, pgp_key=key_text)
    if push_url is not None:
        consumer = directory.consumers.set_push(name, push_url, push_pem)
    if json_out:
        emit_json(
            {
                "name": consumer.name,
                "mailbox": consumer.mailbox,
                "token": token,
                "push": consumer.push_url,
                "signing_key": {
                    "status": signing.status,
                    "key": str(signing.key_path),
                    "cert": str(signing.cert_path),
                },
            }
        )
    else:
        say(f"consumer {consumer.name} added for {consumer.mailbox}")
        say(f"token (shown once, keep it secret): {token}")
        if consumer.push_url is not None:
            say(f"its queue is pushed to {consumer.push_url} (MLLP over TLS)")
    if signing.status == "issued" and not json_out:
        say(f"receipts signed with a dev CA certificate issued now: {signing.cert_path}")
    elif signing.status == "missing":
        # stderr: the token above may be read by a script.
        typer.echo(
            f"mssgate: warning: no key for {signing.address}, so its receipts go unsigned and mail"
            " encrypted to it cannot be read; no dev CA here to issue one: import its"
            f" IGC-Santé key pair with `mssgate cert install-key {signing.address}"
            " --key KEY.pem --cert CERT.pem`",
            err=True,
        )


PushOption = Annotated[
    str | None,
    typer.Option("--push", help="Push its mailbox's queue to the RIS at mllp://host:port."),
]
PushCaOption = Annotated[
    Path | None,
    typer.Option("--push-ca", help="CA (PEM) of the RIS's TLS server; default: tls.ca."),
]
MAX_CA_BYTES = 256 * 1024
PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


def _push_settings(
    push: str | None, push_ca: Path | None, *, has_pgp_key: bool
) -> tuple[str | None, str | None]:
    """The push address checked, and the CA file's PEM text."""
    if push is None:
        if push_ca is not None:
            raise UsageFailed("--push-ca goes with --push")
        return None, None
    if has_pgp_key:
        # Its documents are stored encrypted for that key: the gateway cannot read the MDM.
        raise UsageFailed("a consumer with --pgp-key polls the API; it cannot be pushed to")
    url = str(parse_push_url(push))
    if push_ca is None:
        return url, None
    data = _read_small(push_ca, MAX_CA_BYTES, PEM_CERTIFICATE, "a PEM certificate")
    _certificates(push_ca, data)
    return url, data.decode("ascii", errors="replace")


def _read_small(path: Path, limit: int, marker: bytes, what: str) -> bytes:
    """A small file given on the command line, refused unless it holds `marker`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValidationFailed(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > limit or marker not in data:
        raise ValidationFailed(f"{path} is not {what}")
    return data


def _certificates(path: Path, data: bytes) -> list[x509.Certificate]:
    try:
        return load_pem_x509_certificates(data)
    except ValueError:
        raise ValidationFailed(f"{path} is not a PEM certificate") from None


def _signing_key(st: State, directory: Directory, mailbox: str) -> EnsuredKey:
    """The application mailbox signs its receipts (MDN) and decrypts what is sent to it with
    the key the gateway holds for it: without one, receipts leave unsigned."""
    owner = directory.professionals.get(mailbox)
    if not owner.local:
        raise NotFound(f"no mailbox {mailbox!r} in the directory")
    ensured = ensure_mailbox_key(st.config(), owner.address, common_name=owner.display_name)
    if ensured.status == "issued" and ensured.certificate is not None:
        directory.certificates.register(owner.address, ensured.certificate)
    return ensured


@app.command("list")
def list_(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List consumers."""
    rows = state(ctx).directory().consumers.list()
    if json_out:
        emit_json(rows)
        return
    emit_table(
        "Consumers",
        ["id", "name", "mailbox", "pgp", "state"],
        [
            (
                c.id,
                c.name,
                c.mailbox,
                "yes" if c.has_pgp_key else "no",
                "active" if c.active else "revoked",
            )
            for c in rows
        ],
    )


@app.command("revoke")
def revoke(ctx: typer.Context, name: str) -> None:
    """Revoke a consumer's token at once (the consumer stays listed as revoked; its name
    can be given to a new consumer)."""
    say(f"revoked {state(ctx).directory().consumers.revoke(name).name}")


@app.command("remove")
def remove(ctx: typer.Context, name: str) -> None:
    """Remove a consumer (active or revoked): its token stops working at once and its name
    can be given to a new consumer; the audit keeps both apart by id."""
    removed = state(ctx).directory().consumers.remove(name)
    say(f"removed consumer {removed.name} (id {removed.id}, {removed.mailbox})")


@app.command("token")
def token(
    ctx: typer.Context,
    name: str,
    grace: Annotated[
        str,
        typer.Option(
            "--grace",
            metavar="DURATION",
            help="How long the old token keeps working: 0 (refused at once), 90s, 30m,"
            " 12h, up to 7d.",
        ),
    ] = "0",
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Give NAME a new API token, printed once, keeping its id and so its outbound messages,
    acknowledgements, leases and MLLP certificate; the old token works for --grace more."""
    keep_old = parse_duration(grace, "--grace")
    if keep_old > MAX_TOKEN_GRACE:
        raise UsageFailed(f"invalid --grace {grace!r}: at most 7d")
    rotated = state(ctx).directory().consumers.rotate_token(name, keep_old)
    until = rotated.old_token_until
    if json_out:
        emit_json({"name": rotated.consumer.name, "id": rotated.consumer.id,
                   "token": rotated.token,
                   "old_token_until": until.isoformat() if until else None})  # fmt: skip
        return
    say(f"consumer {rotated.consumer.name} (id {rotated.consumer.id}) has a new token")
    say(f"token (shown once, keep it secret): {rotated.token}")
    if until is None:
        say("the old token is refused from now on")
    else:
        say(f"the old token works until {until:%Y-%m-%d %H:%M:%S} UTC, then is refused")


@app.command("set")
def set_(
    ctx: typer.Context,
    name: str,
    push: PushOption = None,
    push_ca: PushCaOption = None,
    no_push: Annotated[bool, typer.Option("--no-push", help="Stop pushing its queue.")] = False,
) -> None:
    """Change a consumer: where its queue is pushed (--push mllp://host:port, --no-push)."""
    if no_push == (push is not None):
        raise UsageFailed("give either --push mllp://host:port or --no-push")
    directory = state(ctx).directory()
    current = directory.consumers.active(name)
    url, pem = _push_settings(push, push_ca, has_pgp_key=current.has_pgp_key)
    changed = directory.consumers.set_push(name, url, pem)
    if changed.push_url is None:
        say(f"consumer {name}: queue no longer pushed (poll the API)")
    else:
        say(f"consumer {name}: queue pushed to {changed.push_url} (MLLP over TLS)")


@app.command("cert")
def cert(
    ctx: typer.Context,
    name: str,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for NAME.crt.pem and NAME.key.pem.")
    ] = Path("."),
    days: Annotated[int, typer.Option("--days", min=1, max=3650, help="Lifetime.")] = 825,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files.")] = False,
    existing: Annotated[
        Path | None,
        typer.Option("--cert", help="Bind this certificate (PEM, from your PKI) instead."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Issue the TLS client certificate NAME's RIS presents to the MLLP listener ([hl7]),
    from the dev CA, and bind it to NAME: the one bound before stops working. With --cert,
    bind a certificate issued elsewhere (its CA must be in [tls] ca)."""
    st = state(ctx)
    directory = st.directory()
    # Before any file is written: an unknown name leaves nothing behind.
    directory.consumers.active(name)
    if existing is not None:
        data = _read_small(existing, MAX_CA_BYTES, PEM_CERTIFICATE, "a PEM certificate")
        leaf = _certificates(existing, data)[0]
        sha256 = leaf.fingerprint(hashes.SHA256()).hex()
        directory.consumers.bind_certificate(name, sha256)
        if json_out:
            after = leaf.not_valid_after_utc.isoformat()
            emit_json({"name": name, "cert": str(existing), "key": None, "ca": None,
                       "sha256": sha256, "not_after": after})  # fmt: skip
        else:
            say(f"bound to consumer {name}: {existing} (sha256 {sha256})")
        return
    certs = st.config().certs_dir
    ca_key_path, ca_cert_path = certs / "ca.key.pem", certs / "ca.crt.pem"
    if not ca_key_path.exists():
        raise PKIError(f"no dev CA key at {ca_key_path}: issue certificates from your real PKI")
    cert_path, key_path = out / f"{name}.crt.pem", out / f"{name}.key.pem"
    for path in (cert_path, key_path):
        if not force and (path.exists() or path.is_symlink()):
            raise PKIError(f"file exists (use --force to overwrite): {path}")
    key, issued = issue_client_cert(
        load_private_key(ca_key_path),
        load_certificate(ca_cert_path),
        f"mssgate consumer {name}",
        valid_days=days,
    )
    ensure_private_dir(out)
    write_private_key(key_path, key, overwrite=force)
    write_certificate(cert_path, issued, overwrite=force)
    sha256 = issued.fingerprint(hashes.SHA256()).hex()
    directory.consumers.bind_certificate(name, sha256)
    if json_out:
        emit_json({"name": name, "cert": str(cert_path), "key": str(key_path),
                   "ca": str(ca_cert_path), "sha256": sha256,
                   "not_after": issued.not_valid_after_utc.isoformat()})  # fmt: skip
        return
    say(f"issued and bound to consumer {name} (sha256 {sha256})")
    say(f"  {cert_path}\n  {key_path}  (keep it secret)\n  server CA: {ca_cert_path}")
