"""Read a zip archive into memory under caps, never touching the filesystem.

Header sizes are attacker-controlled, so every cap is enforced on the bytes actually produced
while decompressing, chunk by chunk: member count, per-member size, total size and the
expansion ratio. Member names are only dictionary keys; names that would escape a directory
if someone ever used them as paths (zip slip) make the whole archive unsafe.
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from typing import Final

from pydantic import BaseModel, ConfigDict

from mssgate.documents import budget
from mssgate.documents.errors import LimitExceeded, ZipError
from mssgate.documents.limits import DocumentLimits

_CHUNK: Final = 64 * 1024
_ALLOWED_METHODS: Final = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
_DRIVE_RE: Final = re.compile(r"^[A-Za-z]:")


class ZipMember(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    data: bytes


class ZipContents(BaseModel):
    model_config = ConfigDict(frozen=True)

    members: tuple[ZipMember, ...]

    def get(self, name: str) -> ZipMember | None:
        """Exact name first, then case-insensitive (XDM names are ISO 9660-ish capitals)."""
        for member in self.members:
            if member.name == name:
                return member
        folded = name.casefold()
        for member in self.members:
            if member.name.casefold() == folded:
                return member
        return None


def unsafe_name_reason(name: str) -> str | None:
    """Why a member name is unsafe as a relative path, or None when it is fine."""
    if not name or "\x00" in name:
        return "empty or NUL in member name"
    if "\\" in name:
        return "backslash in member name"
    if name.startswith("/") or _DRIVE_RE.match(name):
        return "absolute member name"
    if any(part == ".." for part in name.split("/")):
        return "parent directory in member name"
    return None


def read_zip(data: bytes, limits: DocumentLimits) -> ZipContents:
    """All file members of the archive, read within `limits`.

    Raises `ZipError` (corrupt, encrypted, unsupported method, unsafe or duplicate names)
    or `LimitExceeded` (count, sizes, ratio).
    """
    if len(data) > limits.max_zip_bytes:
        raise LimitExceeded("archive larger than allowed")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise ZipError("not a readable zip archive") from exc
    except NotImplementedError as exc:
        # A central directory asking for a zip version beyond what zipfile reads (found by
        # fuzzing: "zip file version 6.4"); its members could not be read anyway.
        raise ZipError("unsupported zip version") from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_zip_members:
            raise LimitExceeded(f"archive has more than {limits.max_zip_members} members")
        seen: set[str] = set()
        for info in infos:
            reason = unsafe_name_reason(info.filename)
            if reason is not None:
                raise ZipError(f"unsafe archive: {reason}")
            folded = info.filename.casefold()
            if folded in seen:
                raise ZipError("unsafe archive: duplicate member name")
            seen.add(folded)
            if info.flag_bits & 0x1:
                raise ZipError("encrypted archive member")
            if info.compress_type not in _ALLOWED_METHODS:
                raise ZipError("unsupported compression method")
        members: list[ZipMember] = []
        total = 0
        for info in infos:
            if info.is_dir():
                continue
            body = _read_member(archive, info, limits, total)
            total += len(body)
            members.append(ZipMember(name=info.filename, data=body))
        return ZipContents(members=tuple(members))


def _read_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: DocumentLimits, total_before: int
) -> bytes:
    buffer = bytearray()
    # zipfile never reads more compressed input than the header's compress_size, so the
    # ratio below is over bytes really consumed, and the output is counted as produced.
    compressed = max(info.compress_size, 1)
    try:
        with archive.open(info) as stream:
            while True:
                chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                buffer += chunk
                budget.charge_bytes(len(chunk), "an archive member")
                if len(buffer) > limits.max_zip_member_bytes:
                    raise LimitExceeded("archive member larger than allowed")
                if total_before + len(buffer) > limits.max_zip_total_bytes:
                    raise LimitExceeded("archive expands beyond the allowed total")
                # Below 1 MiB the ratio says nothing: a small XML of spaces compresses 500:1.
                if len(buffer) > 1024 * 1024 and len(buffer) / compressed > (
                    limits.max_compression_ratio
                ):
                    raise LimitExceeded("archive member compression ratio too high (zip bomb)")
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as exc:
        raise ZipError("corrupt archive member") from exc
    return bytes(buffer)
