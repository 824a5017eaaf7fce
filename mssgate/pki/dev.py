"""File-level workflows: the development PKI that `mssgate init` lays down, S/MIME identities."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from mssgate.errors import PKIError
from mssgate.pki._types import KeyType
from mssgate.pki.bundle import write_pkcs12
from mssgate.pki.ca import create_dev_ca
from mssgate.pki.files import (
    ensure_private_dir,
    load_certificate,
    load_private_key,
    write_certificate,
    write_private_key,
)
from mssgate.pki.issue import issue_server_cert, issue_smime_cert
from mssgate.pki.keys import generate_dkim_key
from mssgate.pki.names import dns_name, general_names, mail_address

DEV_SERVER_EXTRA_NAMES = ("localhost", "127.0.0.1")


@dataclass(frozen=True, slots=True)
class DevPKIPaths:
    """Where `init_dev_pki` put each file."""

    certs_dir: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    dkim_key: Path

    @classmethod
    def under(cls, certs_dir: Path) -> DevPKIPaths:
        """The file layout inside `certs_dir`, whether or not the files exist yet."""
        return cls(
            certs_dir=certs_dir,
            ca_cert=certs_dir / "ca.crt.pem",
            ca_key=certs_dir / "ca.key.pem",
            server_cert=certs_dir / "server.crt.pem",
            server_key=certs_dir / "server.key.pem",
            dkim_key=certs_dir / "dkim.key.pem",
        )

    def files(self) -> tuple[Path, ...]:
        """Every file path, keys included."""
        return (self.ca_cert, self.ca_key, self.server_cert, self.server_key, self.dkim_key)


@dataclass(frozen=True, slots=True)
class SmimeFiles:
    """What `issue_smime_files` wrote, and the certificate it issued."""

    cert_path: Path
    key_path: Path
    p12_path: Path
    certificate: x509.Certificate


def init_dev_pki(
    certs_dir: Path, *, domain: str, hostname: str, force: bool = False
) -> DevPKIPaths:
    """Create a development CA, a TLS certificate for `hostname` and a DKIM key in `certs_dir`.

    Existing files are checked before any key is generated, so a refusal leaves the folder as
    it was; with `force` every file is replaced.
    """
    domain = dns_name(domain)
    general_names([hostname])  # fail on a bad host name before anything is written
    paths = DevPKIPaths.under(certs_dir)
    if not force:
        _refuse_existing(paths.files())
    ensure_private_dir(certs_dir)

    ca_key, ca_cert = create_dev_ca(f"mssgate dev CA {domain}")
    server_key, server_cert = issue_server_cert(
        ca_key, ca_cert, hostname, extra_names=DEV_SERVER_EXTRA_NAMES
    )
    dkim_key = generate_dkim_key()

    overwrite = force
    write_private_key(paths.ca_key, ca_key, overwrite=overwrite)
    write_certificate(paths.ca_cert, ca_cert, overwrite=overwrite)
    write_private_key(paths.server_key, server_key, overwrite=overwrite)
    write_certificate(paths.server_cert, server_cert, overwrite=overwrite)
    write_private_key(paths.dkim_key, dkim_key, overwrite=overwrite)
    return paths


def issue_smime_files(
    ca_key_path: Path,
    ca_cert_path: Path,
    email: str,
    out_dir: Path,
    *,
    common_name: str | None = None,
    p12_password: bytes | None = None,
    force: bool = False,
    key_type: KeyType = "rsa",
    valid_days: int = 825,
) -> SmimeFiles:
    """Issue an S/MIME certificate for `email` and write EMAIL.crt.pem, EMAIL.key.pem, EMAIL.p12.

    The file names use the address with its domain lower-cased. The PKCS#12 bundle carries the
    CA certificate too, so a mail client importing it can build the chain.
    """
    address = mail_address(email)
    cert_path = out_dir / f"{address}.crt.pem"
    key_path = out_dir / f"{address}.key.pem"
    p12_path = out_dir / f"{address}.p12"
    if not force:
        _refuse_existing((cert_path, key_path, p12_path))

    ca_key = load_private_key(ca_key_path)
    ca_cert = load_certificate(ca_cert_path)
    key, cert = issue_smime_cert(
        ca_key, ca_cert, address, common_name=common_name, key_type=key_type, valid_days=valid_days
    )

    ensure_private_dir(out_dir)
    write_private_key(key_path, key, overwrite=force)
    write_certificate(cert_path, cert, overwrite=force)
    write_pkcs12(
        p12_path,
        key,
        cert,
        ca_cert,
        friendly_name=address.encode("utf-8"),
        password=p12_password,
        overwrite=force,
    )
    return SmimeFiles(cert_path=cert_path, key_path=key_path, p12_path=p12_path, certificate=cert)


def _refuse_existing(paths: tuple[Path, ...]) -> None:
    for path in paths:
        if path.exists() or path.is_symlink():
            raise PKIError(f"file exists (use --force to overwrite): {path}")
