"""Key pairs the gateway holds for mailboxes: `DATA/certs/mailboxes/<address>.{key,crt}.pem`.

Application mailboxes (a RIS, a DPI) read their mail through the gateway's document pipeline,
so the gateway decrypts what is encrypted to them, and signs the receipts they send. The
files are the ones `mssgate cert issue ADDRESS --out DATA/certs/mailboxes` writes (key 0600),
or a production key and certificate copied there under the same names.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from mssgate.config import Config
from mssgate.errors import PKIError
from mssgate.pki import load_certificate, load_private_key
from mssgate.pki.keys import same_key


def mailbox_keys_dir(config: Config) -> Path:
    return config.certs_dir / "mailboxes"


@dataclass(frozen=True)
class MailboxKey:
    address: str
    key: rsa.RSAPrivateKey
    cert: x509.Certificate


def key_paths(directory: Path, address: str) -> tuple[Path, Path]:
    """(key, certificate) file paths of `address` (a normalised directory address)."""
    return directory / f"{address}.key.pem", directory / f"{address}.crt.pem"


def find_mailbox_key(directory: Path, address: str) -> MailboxKey | None:
    """The RSA key pair held for `address`, or None when there is none to decrypt with.

    Read at each call (a key put in place applies to the next message). Directory addresses
    are normalised and carry no `/`, but a name that could leave the folder is refused
    anyway: the address came from a peer's envelope. A key that does not match its
    certificate is an operator's mistake worth an error, not a silent miss.
    """
    if "/" in address or address.startswith(".") or "\x00" in address:
        return None
    key_path, cert_path = key_paths(directory, address)
    if not (key_path.is_file() and cert_path.is_file()):
        return None
    key = load_private_key(key_path)
    cert = load_certificate(cert_path)
    if not isinstance(key, rsa.RSAPrivateKey):
        # ECDH key agreement (RFC 5753) is not implemented: such a key cannot decrypt here.
        return None
    if not same_key(key, cert.public_key()):
        raise PKIError(f"{key_path.name} does not match {cert_path.name}")
    return MailboxKey(address, key, cert)


@dataclass(frozen=True)
class EnsuredKey:
    """What `ensure_mailbox_key` found or did for a mailbox."""

    address: str
    key_path: Path
    cert_path: Path
    # "existing": a key pair was in place; "issued": the dev CA issued one now;
    # "missing": no key and no dev CA to issue one (production: import the IGC-Santé one);
    # "installed": `mssgate cert install-key` copied one in.
    status: str
    certificate: x509.Certificate | None = None


def dev_ca_paths(config: Config) -> tuple[Path, Path]:
    """(key, certificate) of the development CA `mssgate init` lays down."""
    return config.certs_dir / "ca.key.pem", config.certs_dir / "ca.crt.pem"


def ensure_mailbox_key(config: Config, address: str, *, common_name: str) -> EnsuredKey:
    """Makes sure the gateway holds a key pair for `address` where serve looks for it.

    An existing pair is kept (checked: key and certificate must match); otherwise the dev CA
    issues one when this installation has its key. A production installation has no CA key:
    the caller says how to import the IGC-Santé key pair (`mssgate cert install-key`).
    """
    from mssgate.pki import issue_smime_cert, write_certificate, write_private_key
    from mssgate.pki.files import ensure_private_dir

    directory = mailbox_keys_dir(config)
    key_path, cert_path = key_paths(directory, address)
    found = find_mailbox_key(directory, address)
    if found is not None:
        return EnsuredKey(address, key_path, cert_path, "existing", found.cert)
    if key_path.exists() and not cert_path.exists():
        # Half a pair: another `consumer add` between its two writes, or a leftover.
        return _settled(config, address, key_path, cert_path)
    if key_path.exists() or cert_path.exists():
        # Half a pair, or a key this gateway cannot use: replacing it silently would throw
        # away what an operator put there.
        raise PKIError(
            f"{directory} holds an unusable key or certificate for {address}: fix or remove"
            f" {key_path.name} and {cert_path.name}"
        )
    ca_key_path, ca_cert_path = dev_ca_paths(config)
    if not ca_key_path.exists():
        return EnsuredKey(address, key_path, cert_path, "missing")
    key, cert = issue_smime_cert(
        load_private_key(ca_key_path),
        load_certificate(ca_cert_path),
        address,
        common_name=common_name,
    )
    ensure_private_dir(directory)
    try:
        write_private_key(key_path, key, overwrite=False)
    except PKIError:
        if not key_path.exists():
            raise
        # Another `consumer add` of the same mailbox won the race (the write refuses a file
        # that appeared since): its pair is this one's once its certificate is in place.
        return _settled(config, address, key_path, cert_path)
    write_certificate(cert_path, cert, overwrite=False)
    return EnsuredKey(address, key_path, cert_path, "issued", cert)


def _settled(config: Config, address: str, key_path: Path, cert_path: Path) -> EnsuredKey:
    """The pair another process is writing (key first, then certificate), once written."""
    directory = mailbox_keys_dir(config)
    deadline = time.monotonic() + 5
    while True:
        found = find_mailbox_key(directory, address)
        if found is not None:
            return EnsuredKey(address, key_path, cert_path, "existing", found.cert)
        if time.monotonic() > deadline:
            raise PKIError(
                f"{directory} holds an unusable key or certificate for {address}: fix or remove"
                f" {key_path.name} and {cert_path.name}"
            )
        time.sleep(0.05)


def install_mailbox_key(
    config: Config, address: str, key_file: Path, cert_file: Path, *, force: bool = False
) -> EnsuredKey:
    """Copies a production key pair (an IGC-Santé certificate for an application or
    organisation mailbox) where serve finds it, after checking it is usable."""
    from mssgate.pki import is_smime_for, write_certificate, write_private_key
    from mssgate.pki.files import ensure_private_dir

    key = load_private_key(key_file)
    cert = load_certificate(cert_file)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise PKIError(f"{key_file.name}: only RSA keys can decrypt here (ECDH is not supported)")
    if not same_key(key, cert.public_key()):
        raise PKIError(f"{key_file.name} does not match {cert_file.name}")
    if not is_smime_for(cert, address):
        raise PKIError(
            f"{cert_file.name} is not an S/MIME certificate for {address}"
            " (needs EKU emailProtection and the address in subjectAltName)"
        )
    # Checked before anything is written: a refusal must leave the folder as it was.
    moment = dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc <= moment:
        raise PKIError(
            f"{cert_file.name} expired on {cert.not_valid_after_utc:%Y-%m-%d}: peers refuse what"
            " it signs"
        )
    if cert.not_valid_before_utc > moment:
        raise PKIError(
            f"{cert_file.name} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}"
            " UTC: install it from then on"
        )
    _check_chain(config, cert_file, cert)
    directory = mailbox_keys_dir(config)
    key_path, cert_path = key_paths(directory, address)
    if not force:
        # Both, before either is written: a key written beside an old certificate it does
        # not match is a pair serve fails on, worse than none.
        for path in (key_path, cert_path):
            if path.exists() or path.is_symlink():
                raise PKIError(f"file exists (use --force to overwrite): {path}")
    ensure_private_dir(directory)
    write_private_key(key_path, key, overwrite=force)
    write_certificate(cert_path, cert, overwrite=force)
    return EnsuredKey(address, key_path, cert_path, "installed", cert)


def _check_chain(config: Config, cert_file: Path, cert: x509.Certificate) -> None:
    """Refuses a certificate that does not chain to the installation's trust anchors
    (`tls.ca`): peers trust our operator's bundle, so they would refuse every receipt signed
    with it. Intermediates may follow the certificate in its file."""
    from mssgate.pki import load_certificates

    others = [c for c in load_certificates(cert_file) if c != cert]
    check_chain(config, cert_file.name, cert, others)


def check_chain(
    config: Config, name: str, cert: x509.Certificate, others: list[x509.Certificate]
) -> None:
    """`_check_chain` for a certificate from anywhere (`name` for the message), with
    `others` as intermediates (a .p12's extra certificates)."""
    import asyncio

    from asn1crypto import x509 as asn1_x509  # type: ignore[import-untyped]
    from cryptography.hazmat.primitives.serialization import Encoding
    from pyhanko_certvalidator import CertificateValidator, ValidationContext
    from pyhanko_certvalidator.errors import PathBuildingError, PathValidationError

    from mssgate.pki import load_certificates

    if config.tls.ca is None:
        raise PKIError("tls.ca is not set: no trust anchors to check the certificate against")

    def asn1(c: x509.Certificate) -> asn1_x509.Certificate:
        return asn1_x509.Certificate.load(c.public_bytes(Encoding.DER))

    anchors = load_certificates(config.tls.ca)
    context = ValidationContext(
        trust_roots=[asn1(c) for c in anchors],
        other_certs=[asn1(c) for c in others],
        allow_fetching=False,
        revocation_mode="soft-fail",
    )
    validator = CertificateValidator(asn1(cert), validation_context=context)
    try:
        validate = cast(Callable[..., Coroutine[Any, Any, object]], validator.async_validate_usage)
        asyncio.run(validate({"digital_signature"}, extended_key_usage={"email_protection"}))
    except (PathBuildingError, PathValidationError):
        raise PKIError(
            f"{name} does not chain to the trust anchors of tls.ca ({config.tls.ca}):"
            " add its CA there first: peers would refuse what it signs"
        ) from None
