"""`mssgate consumer ...`: RIS systems that poll the integration queue."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mssgate.cli.context import State, emit_json, emit_table, say, state
from mssgate.directory import Directory
from mssgate.errors import NotFound, ValidationFailed
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
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Register a consumer; its API token is printed once, now."""
    key_text = None
    if pgp_key is not None:
        try:
            data = pgp_key.read_bytes()
        except OSError as exc:
            raise ValidationFailed(f"cannot read {pgp_key}: {exc.strerror}") from None
        if len(data) > MAX_PGP_KEY_BYTES or b"BEGIN PGP PUBLIC KEY BLOCK" not in data:
            raise ValidationFailed(f"{pgp_key} is not an armoured OpenPGP public key")
        key_text = data.decode("ascii", errors="replace")
    st = state(ctx)
    directory = st.directory()
    # Before the key pair: a command refused for its name must leave nothing behind.
    directory.consumers.check_name(name)
    signing = _signing_key(st, directory, mailbox)
    consumer, token = directory.consumers.add(name, mailbox=mailbox, pgp_key=key_text)
    if json_out:
        emit_json(
            {
                "name": consumer.name,
                "mailbox": consumer.mailbox,
                "token": token,
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
