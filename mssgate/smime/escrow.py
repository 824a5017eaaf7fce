"""Practitioners' signing keys the gateway holds to sign for them (docs/smime.md, "Signed by
the gateway").

A key is kept in the database, so that every node can sign, sealed with AES-256-GCM under
the installation's key encryption key (KEK): 32 random bytes in `smime.key_encryption_key_file`
(0600, made by `init`, copied by `node add`). The associated data binds a sealed key to its
mailbox and certificate: a row copied onto another mailbox does not open. What the database
holds is useless without the file; what the file holds is useless without the database.
Nothing here logs or audits key material: the audit trail gets the certificate's fingerprint.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine, Row, delete, func, select

from mssgate import audit
from mssgate.config import Config
from mssgate.db.schema import escrowed_keys, professionals
from mssgate.db.tx import write
from mssgate.directory.timeutil import now
from mssgate.errors import NotFound, PKIError
from mssgate.identifiers import normalize_address
from mssgate.pki.files import write_private_file
from mssgate.pki.keys import same_key

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

_KEK_BYTES = 32
_NONCE_BYTES = 12
_AAD_PREFIX = b"mssgate key escrow v1\x00"


class EscrowUnavailable(PKIError):
    """The key encryption key is missing, unreadable, or not the one the keys were sealed
    with: the gateway cannot sign for anyone until an operator puts the right file back."""


@dataclass(frozen=True)
class Kek:
    """The key encryption key and its public name (a digest: says which file, reveals
    nothing of it)."""

    key: bytes
    kek_id: str

    @classmethod
    def of(cls, key: bytes) -> Kek:
        digest = hashlib.sha256(b"mssgate kek id\x00" + key).hexdigest()[:32]
        return cls(key, digest)


@dataclass(frozen=True)
class EscrowedKey:
    """A practitioner's signing key and certificate, opened for one use."""

    address: str
    key: SigningKey
    cert: x509.Certificate


def kek_path(config: Config) -> Path:
    path = config.smime.key_encryption_key_file
    assert path is not None  # resolved by Config
    return path


def load_kek(path: Path) -> Kek:
    """The KEK in `path`; refused when others may read the file (it opens every key)."""
    try:
        mode = path.stat().st_mode
        text = path.read_bytes()
    except FileNotFoundError:
        raise EscrowUnavailable(
            f"no key encryption key at {path} (smime.key_encryption_key_file): copy it from"
            " another node, or let `mssgate cert issue` make one when no key is held yet"
        ) from None
    except OSError as exc:
        raise EscrowUnavailable(f"cannot read {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise EscrowUnavailable(f"{path} is readable by other users: chmod 600 it")
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        key = b""
    if len(key) != _KEK_BYTES:
        raise EscrowUnavailable(f"{path} does not hold a key encryption key (32 bytes, base64)")
    return Kek.of(key)


def create_kek(path: Path) -> Kek:
    """A new KEK written to `path` (0600, never over an existing file)."""
    key = secrets.token_bytes(_KEK_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private_file(path, base64.b64encode(key) + b"\n", overwrite=False)
    return Kek.of(key)


def _aad(address: str, fingerprint: str) -> bytes:
    return _AAD_PREFIX + address.encode() + b"\x00" + fingerprint.encode()


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def seal(kek: Kek, address: str, key: SigningKey, cert: x509.Certificate) -> bytes:
    """nonce || AES-256-GCM(PKCS#8 DER of `key`), bound to `address` and `cert`."""
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(kek.key).encrypt(nonce, der, _aad(address, fingerprint(cert)))


def unseal(kek: Kek, address: str, cert: x509.Certificate, sealed: bytes) -> SigningKey:
    nonce, body = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
    try:
        der = AESGCM(kek.key).decrypt(nonce, body, _aad(address, fingerprint(cert)))
    except (InvalidTag, ValueError):  # ValueError: a row cut short (no whole nonce)
        # `from None`: nothing of the key or the ciphertext rides along in a traceback.
        raise EscrowUnavailable(
            f"the signing key held for {address} does not open with this key encryption key"
        ) from None
    # The bytes are the ones `seal` wrote (GCM authenticated them) from a key checked when it
    # was put: OpenSSL's RSA consistency check, ~100 ms of CPU, would run on every message.
    key = serialization.load_der_private_key(
        der, password=None, unsafe_skip_rsa_key_validation=True
    )
    if not isinstance(key, SigningKey):
        raise EscrowUnavailable(f"the key held for {address} is not an RSA or EC key")
    return key


class KeyEscrow:
    """The `escrowed_keys` table: one signing key per local mailbox."""

    def __init__(self, engine: Engine, actor: str) -> None:
        self._engine = engine
        self._actor = actor

    def put(self, kek: Kek, address: str, key: SigningKey, cert: x509.Certificate) -> str:
        """Holds `key` for `address` (replacing an earlier one); the fingerprint of `cert`."""
        if not same_key(key, cert.public_key()):
            raise PKIError("the private key does not match the certificate")
        owner = normalize_address(address)
        print_ = fingerprint(cert)
        sealed = seal(kek, owner, key, cert)
        pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        with write(self._engine) as conn:
            found = conn.execute(
                select(professionals.c.id, professionals.c.local).where(
                    professionals.c.address == owner
                )
            ).first()
            if found is None or not found.local:
                raise NotFound(f"{owner} is not a mailbox of this gateway")
            conn.execute(delete(escrowed_keys).where(escrowed_keys.c.professional_id == found.id))
            conn.execute(
                escrowed_keys.insert().values(
                    professional_id=found.id,
                    fingerprint_sha256=print_,
                    cert_pem=pem,
                    kek_id=kek.kek_id,
                    wrapped_key=sealed,
                    added_at=now(),
                )
            )
            audit.append(
                conn,
                actor=self._actor,
                action="key.escrow",
                subject=owner,
                detail={"fingerprint_sha256": print_, "kek_id": kek.kek_id},
            )
        return print_

    def remove(self, address: str) -> bool:
        owner = normalize_address(address)
        with write(self._engine) as conn:
            ids = select(professionals.c.id).where(professionals.c.address == owner)
            result = conn.execute(
                delete(escrowed_keys).where(escrowed_keys.c.professional_id.in_(ids))
            )
            if result.rowcount:
                audit.append(conn, actor=self._actor, action="key.unescrow", subject=owner)
            return bool(result.rowcount)

    def holds(self, address: str) -> bool:
        return self._row(address) is not None

    def kek_ids(self) -> set[str]:
        with self._engine.connect() as conn:
            return {r.kek_id for r in conn.execute(select(escrowed_keys.c.kek_id).distinct())}

    def open(self, kek: Kek, address: str) -> EscrowedKey | None:
        """The key held for `address`, opened; None when none is held."""
        row = self._row(address)
        if row is None:
            return None
        owner = normalize_address(address)
        if row.kek_id != kek.kek_id:
            raise EscrowUnavailable(
                f"the signing key held for {owner} was sealed with another key encryption key"
                f" ({row.kek_id}, this node has {kek.kek_id}): copy the installation's file"
            )
        try:
            cert = x509.load_pem_x509_certificate(row.cert_pem.encode("ascii"))
        except ValueError:
            raise EscrowUnavailable(f"the certificate held for {owner} is unreadable") from None
        key = unseal(kek, owner, cert, bytes(row.wrapped_key))
        return EscrowedKey(owner, key, cert)

    def _row(self, address: str) -> Row[Any] | None:
        owner = normalize_address(address)
        query = (
            select(escrowed_keys)
            .join(professionals, professionals.c.id == escrowed_keys.c.professional_id)
            .where(professionals.c.address == owner)
        )
        with self._engine.connect() as conn:
            return conn.execute(query).first()


def kek_for_writing(config: Config, escrow: KeyEscrow) -> tuple[Kek, bool]:
    """The KEK to seal a new key with, and whether it was made now.

    Made only when no key is held yet: with keys sealed under another file, a new one would
    split the installation (nodes could open some keys and not others).
    """
    path = kek_path(config)
    if path.exists():
        return load_kek(path), False
    if escrow.kek_ids():
        raise EscrowUnavailable(
            f"no key encryption key at {path} but keys are held under one: copy the"
            " installation's file there (from the first node's certs folder)"
        )
    return create_kek(path), True


def escrowed_key(engine: Engine, config: Config | Path, address: str) -> EscrowedKey | None:
    """The signing key and certificate the gateway holds for `address`, or None.

    `config`: the configuration, or the KEK file itself. Raises EscrowUnavailable when a key
    is held but cannot be opened on this node (no KEK file, another KEK): a configuration
    fault, not a missing key. The KEK file is read at each call: a file put in place
    applies to the next message.
    """
    escrow = KeyEscrow(engine, actor="gateway")
    if not escrow.holds(address):
        return None
    path = config if isinstance(config, Path) else kek_path(config)
    return escrow.open(load_kek(path), address)


def escrow_status(engine: Engine, path: Path) -> tuple[bool, str]:
    """`mssgate check`'s line: whether this node can open the keys held in the database."""
    escrow = KeyEscrow(engine, actor="check")
    with engine.connect() as conn:
        held = conn.execute(select(func.count()).select_from(escrowed_keys)).scalar_one()
    try:
        kek = load_kek(path)
    except EscrowUnavailable as exc:
        if held == 0 and not path.exists():
            return True, f"no signing key held yet ({path} is made by the first cert issue)"
        return False, str(exc)
    foreign = escrow.kek_ids() - {kek.kek_id}
    if foreign:
        return False, (
            f"{len(foreign)} other key encryption key(s) sealed keys held here: this node"
            f" cannot open them with {path}"
        )
    return True, f"{held} signing key(s) held, opened with {path}"
