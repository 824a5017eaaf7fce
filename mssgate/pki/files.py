"""Reading and writing PEM/PKCS#12 material on disk.

Writes are atomic (temp file in the same folder, fsync, rename) so that a crash never leaves a
half-written key that a later start would fail to parse, and private files are created 0600 from
the first byte rather than chmod-ed after the fact.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from mssgate.errors import PKIError
from mssgate.pki._types import PrivateKey

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
PRIVATE_DIR_MODE = 0o700

_PEM_CERT_MARKER = b"-----BEGIN CERTIFICATE-----"


def write_private_key(path: Path, key: PrivateKey, *, overwrite: bool = True) -> None:
    """Write `key` as unencrypted PEM PKCS#8, mode 0600."""
    data = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    write_private_file(path, data, overwrite=overwrite)


def write_certificate(path: Path, cert: x509.Certificate, *, overwrite: bool = True) -> None:
    """Write `cert` as PEM, mode 0644."""
    write_public_file(path, cert.public_bytes(serialization.Encoding.PEM), overwrite=overwrite)


def write_private_file(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Write secret bytes (keys, PKCS#12 bundles) atomically with mode 0600."""
    _atomic_write(path, data, PRIVATE_MODE, overwrite=overwrite)


def write_public_file(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Write non-secret bytes (certificates) atomically with mode 0644."""
    _atomic_write(path, data, PUBLIC_MODE, overwrite=overwrite)


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and parents) if missing; a folder this creates is 0700."""
    if path.exists():
        if not path.is_dir():
            raise PKIError(f"not a directory: {path}")
        return
    try:
        path.mkdir(parents=True, mode=PRIVATE_DIR_MODE)
        # mkdir's mode is filtered by the umask; the intent is exactly 0700 whatever it is.
        path.chmod(PRIVATE_DIR_MODE)
    except OSError as exc:
        raise PKIError(f"cannot create directory {path}: {_reason(exc)}") from exc


def _atomic_write(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    directory = path.parent
    tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise PKIError(f"cannot write {path}: {_reason(exc)}") from exc
    try:
        try:
            # The umask may have removed bits from a 0644 file; set the exact mode we promise.
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_no_clobber(tmp, path)
        _fsync_dir(directory)
    except FileExistsError:
        raise PKIError(f"file exists (use --force to overwrite): {path}") from None
    except OSError as exc:
        raise PKIError(f"cannot write {path}: {_reason(exc)}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _link_no_clobber(tmp: Path, path: Path) -> None:
    # link(2) fails with EEXIST atomically, unlike an exists() check followed by a rename.
    try:
        os.link(tmp, path)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # Some filesystems (FAT, some FUSE mounts) have no hard links: fall back to check+rename.
        if path.exists():
            raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
        os.replace(tmp, path)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable; not every platform/filesystem lets a folder be opened for it.
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PKIError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise PKIError(f"is a directory, not a file: {path}") from None
    except PermissionError:
        raise PKIError(f"permission denied: {path}") from None
    except OSError as exc:
        raise PKIError(f"cannot read {path}: {_reason(exc)}") from exc


def load_certificate(path: Path) -> x509.Certificate:
    """Load the first PEM certificate of `path`."""
    return load_certificates(path)[0]


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Load every certificate of a PEM bundle (a chain or a set of trust anchors)."""
    data = _read(path)
    if _PEM_CERT_MARKER not in data:
        raise PKIError(f"not a PEM certificate: {path}")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise PKIError(f"not a PEM certificate: {path}") from exc


def load_private_key(path: Path, *, password: bytes | None = None) -> PrivateKey:
    """Load a PEM private key (PKCS#8 or traditional) of a supported type."""
    data = _read(path)
    # `from None` throughout: nothing derived from the key bytes may ride along in a traceback.
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError:
        if password is None:
            raise PKIError(f"private key is encrypted, a password is needed: {path}") from None
        raise PKIError(f"private key is not encrypted but a password was given: {path}") from None
    except UnsupportedAlgorithm:
        raise PKIError(f"unsupported private key type: {path}") from None
    except ValueError:
        if password is not None and b"ENCRYPTED" in data:
            raise PKIError(f"wrong password or corrupt private key: {path}") from None
        raise PKIError(f"not a PEM private key: {path}") from None
    if not isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise PKIError(f"unsupported private key type: {path}")
    return key


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__
