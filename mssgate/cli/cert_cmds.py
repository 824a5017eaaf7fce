"""`mssgate cert ...`: S/MIME certificates of the mailboxes."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from mssgate.cli.context import emit_json, emit_table, say, state
from mssgate.errors import Conflict, NotFound, PKIError
from mssgate.pki import issue_smime_files, load_certificate
from mssgate.smime.mailbox_keys import install_mailbox_key

app = typer.Typer(help="S/MIME certificates.", no_args_is_help=True)


@app.command("issue")
def issue(
    ctx: typer.Context,
    email: str,
    out: Annotated[Path, typer.Option("--out", help="Folder for the key, cert and .p12.")],
    p12_password_stdin: Annotated[
        bool, typer.Option("--p12-password-stdin", help="Protect the .p12 with a password.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files.")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Issue an S/MIME certificate from the dev CA and register it for EMAIL."""
    st = state(ctx)
    directory = st.directory()
    owner = directory.professionals.get(email)  # before any key is made
    password = None
    if p12_password_stdin:
        from mssgate.cli.context import read_secret_stdin

        password = read_secret_stdin("PKCS#12 password").encode("utf-8")
    certs = st.config().certs_dir
    ca_key, ca_cert = certs / "ca.key.pem", certs / "ca.crt.pem"
    if not ca_key.exists():
        raise PKIError(f"no dev CA key at {ca_key}: issue certificates from your real PKI")
    files = issue_smime_files(
        ca_key,
        ca_cert,
        owner.address,
        out,
        common_name=owner.display_name,
        p12_password=password,
        force=force,
    )
    record = directory.certificates.register(owner.address, files.certificate)
    if json_out:
        emit_json(
            {
                "certificate": record.model_dump(mode="json"),
                "cert": str(files.cert_path),
                "key": str(files.key_path),
                "p12": str(files.p12_path),
            }
        )
        return
    say(f"issued and registered for {owner.address} (sha256 {record.fingerprint_sha256})")
    say(f"  {files.cert_path}\n  {files.key_path}\n  {files.p12_path}")


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
