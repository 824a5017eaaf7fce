"""`mssgate cert ...`: S/MIME certificates of the mailboxes."""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mssgate.cli.context import actor, emit_json, emit_table, say, state
from mssgate.errors import Conflict, NotFound, PKIError, UsageFailed
from mssgate.pki import issue_smime_files, load_certificate, load_private_key
from mssgate.smime.escrow import KeyEscrow, kek_for_writing, kek_path
from mssgate.smime.mailbox_keys import install_mailbox_key
from mssgate.smime.p12import import check_identity, read_p12

app = typer.Typer(help="S/MIME certificates.", no_args_is_help=True)


PassphraseStdin = Annotated[
    bool,
    typer.Option("--passphrase-stdin", help="Read the .p12 passphrase from standard input."),
]


def _new_passphrase() -> str:
    # 5 groups of 5 from 32 unambiguous characters: 125 bits, readable over the phone.
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"
    groups = ("".join(secrets.choice(alphabet) for _ in range(5)) for _ in range(5))
    return "-".join(groups)


@app.command("issue")
def issue(
    ctx: typer.Context,
    email: str,
    out: Annotated[Path, typer.Option("--out", help="Folder for the key, cert and .p12.")],
    passphrase_stdin: PassphraseStdin = False,
    no_passphrase: Annotated[
        bool,
        typer.Option("--no-passphrase", help="Write the .p12 unprotected (test identities)."),
    ] = False,
    p12_password_stdin: Annotated[
        bool, typer.Option("--p12-password-stdin", hidden=True, help="Old --passphrase-stdin.")
    ] = False,
    no_escrow: Annotated[
        bool,
        typer.Option(
            "--no-escrow",
            help="Do not keep the key for the gateway to sign with (the user signs alone).",
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files.")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Issue an S/MIME certificate from the dev CA and register it for EMAIL.

    The gateway keeps the key (sealed in the database) to sign what EMAIL sends unsigned
    (domain set --sign-for-users), unless --no-escrow. The .p12 for the user's mail client is
    protected by a passphrase: read from standard input with --passphrase-stdin, else made
    here and printed once; unprotected only with --no-passphrase.
    """
    st = state(ctx)
    directory = st.directory()
    owner = directory.professionals.get(email)  # before any key is made
    if (passphrase_stdin or p12_password_stdin) and no_passphrase:
        raise UsageFailed("--no-passphrase and --passphrase-stdin exclude each other")
    shown: str | None = None
    if passphrase_stdin or p12_password_stdin:
        from mssgate.cli.context import read_secret_stdin

        passphrase: str | None = read_secret_stdin("PKCS#12 passphrase")
    elif no_passphrase:
        passphrase = None
    else:
        passphrase = shown = _new_passphrase()
    config = st.config()
    certs = config.certs_dir
    ca_key, ca_cert = certs / "ca.key.pem", certs / "ca.crt.pem"
    if not ca_key.exists():
        raise PKIError(f"no dev CA key at {ca_key}: issue certificates from your real PKI")
    escrow = None if no_escrow or not owner.local else KeyEscrow(st.engine(), actor())
    kek = None
    made_kek = False
    if escrow is not None:
        # Before any file is written: a node without the installation's KEK refuses here.
        kek, made_kek = kek_for_writing(config, escrow)
    files = issue_smime_files(
        ca_key,
        ca_cert,
        owner.address,
        out,
        common_name=owner.display_name,
        p12_password=passphrase.encode("utf-8") if passphrase is not None else None,
        force=force,
    )
    record = directory.certificates.register(owner.address, files.certificate)
    if escrow is not None and kek is not None:
        key = load_private_key(files.key_path)
        assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
        escrow.put(kek, owner.address, key, files.certificate)
    if json_out:
        emit_json(
            {
                "certificate": record.model_dump(mode="json"),
                "cert": str(files.cert_path),
                "key": str(files.key_path),
                "p12": str(files.p12_path),
                "p12_passphrase": shown,
                "escrowed": escrow is not None,
            }
        )
        return
    say(f"issued and registered for {owner.address} (sha256 {record.fingerprint_sha256})")
    say(f"  {files.cert_path}\n  {files.key_path}\n  {files.p12_path}")
    if shown is not None:
        say(f"  .p12 passphrase (shown once, give it to the user with the file): {shown}")
    if escrow is not None:
        say("  the gateway holds the key and signs what this user sends unsigned")
    if made_kek:
        say(f"  made the key encryption key {kek_path(config)}: copy it to every other node")


@app.command("import")
def import_(
    ctx: typer.Context,
    email: str,
    file: Annotated[Path, typer.Argument(help="The user's S/MIME identity (.p12 / .pfx).")],
    passphrase_stdin: PassphraseStdin = False,
) -> None:
    """Keep a user's own S/MIME key (a .p12 from their CA) to sign what EMAIL sends unsigned.

    The certificate must be for EMAIL, valid now and chain to tls.ca; it is registered for
    EMAIL, and the key is held sealed in the database (every node can sign with it). The
    passphrase is read from standard input with --passphrase-stdin, else asked.
    """
    st = state(ctx)
    directory = st.directory()
    owner = directory.professionals.get(email)
    if not owner.local:
        raise NotFound(f"{owner.address} is not a mailbox of this gateway")
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise PKIError(f"cannot read {file}: {exc.strerror}") from None
    if passphrase_stdin:
        from mssgate.cli.context import read_secret_stdin

        passphrase = read_secret_stdin("PKCS#12 passphrase").encode("utf-8")
    else:
        import getpass

        passphrase = getpass.getpass(f"Passphrase of {file.name}: ").encode("utf-8")
    identity = read_p12(data, passphrase or None, file.name)
    config = st.config()
    check_identity(config, owner.address, identity, file.name)
    escrow = KeyEscrow(st.engine(), actor())
    kek, made_kek = kek_for_writing(config, escrow)
    with contextlib.suppress(Conflict):  # registered earlier: keep that record
        directory.certificates.register(owner.address, identity.cert)
    fingerprint = escrow.put(kek, owner.address, identity.key, identity.cert)
    say(f"imported for {owner.address} (sha256 {fingerprint}): the gateway signs what this")
    say("  user sends unsigned (domain set --sign-for-users)")
    if made_kek:
        say(f"  made the key encryption key {kek_path(config)}: copy it to every other node")


@app.command("drop-key")
def drop_key(ctx: typer.Context, email: str) -> None:
    """Stop holding EMAIL's signing key: the gateway signs nothing more for EMAIL (an
    unsigned message is refused, saying how to get a key). The certificate stays registered."""
    st = state(ctx)
    owner = st.directory().professionals.get(email)
    if not KeyEscrow(st.engine(), actor()).remove(owner.address):
        raise NotFound(f"no signing key is held for {owner.address}")
    say(f"the key held for {owner.address} is deleted")


@app.command("install-key")
def install_key(
    ctx: typer.Context,
    email: str,
    key: Annotated[Path, typer.Option("--key", help="Private key (PEM, RSA).")],
    cert: Annotated[Path, typer.Option("--cert", help="Its S/MIME certificate (PEM).")],
    force: Annotated[bool, typer.Option("--force", help="Replace a key pair in place.")] = False,
) -> None:
    """Install the key pair the gateway holds for EMAIL (e.g. the IGC-Santé one of a RIS).

    For a local mailbox the gateway acts for (an application such as a RIS): it signs that
    mailbox's receipts and decrypts mail sent to it. The certificate is registered for EMAIL
    too.
    """
    st = state(ctx)
    directory = st.directory()
    owner = directory.professionals.get(email)
    if not owner.local:
        raise NotFound(f"{owner.address} is not a mailbox of this gateway")
    installed = install_mailbox_key(st.config(), owner.address, key, cert, force=force)
    assert installed.certificate is not None
    # Conflict: registered earlier (a reinstall of the same certificate).
    with contextlib.suppress(Conflict):
        directory.certificates.register(owner.address, installed.certificate)
    say(f"installed for {owner.address}: {installed.key_path}, {installed.cert_path}")


@app.command("add")
def add(ctx: typer.Context, email: str, file: Path) -> None:
    """Register a professional's S/MIME certificate (PEM) for EMAIL."""
    cert = load_certificate(file)
    record = state(ctx).directory().certificates.register(email, cert)
    say(f"registered for {record.address} (sha256 {record.fingerprint_sha256})")


@app.command("list")
def list_(
    ctx: typer.Context,
    email: str,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the certificates registered for EMAIL."""
    records = state(ctx).directory().certificates.list(email)
    if json_out:
        emit_json(records)
        return
    emit_table(
        f"Certificates of {email}",
        ["sha256", "serial", "not after", "issuer"],
        [
            (r.fingerprint_sha256[:16] + "…", r.serial, f"{r.not_after:%Y-%m-%d}", r.issuer)
            for r in records
        ],
    )
