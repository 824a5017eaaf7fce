"""Key pairs the gateway holds for mailboxes: `DATA/certs/mailboxes/<address>.{key,crt}.pem`.

Application mailboxes (a RIS, a DPI) read their mail through the gateway's document pipeline,
so the gateway decrypts what is encrypted to them, and signs the receipts they send. The
files are the ones `mssgate cert issue ADDRESS --out DATA/certs/mailboxes` writes (key 0600),
or a production key and certificate copied there under the same names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
