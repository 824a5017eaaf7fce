"""`mssgate cert ...`: S/MIME certificates of the mailboxes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mssgate.cli.context import emit_json, emit_table, say, state
from mssgate.errors import PKIError
from mssgate.pki import issue_smime_files, load_certificate

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
