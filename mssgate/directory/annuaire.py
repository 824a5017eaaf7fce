"""Import of the Annuaire Santé MSSanté extract ("Extraction Correspondance MSSanté").

The file is pipe-separated, 31 columns, one header line, UTF-8 or (older files) Latin-1, about
535,000 lines, and the address is its only key: an address repeats on several lines (one per
activity). The import streams: batches of lines go to the database, and the addresses already
seen in this run live in a temporary table rather than in memory.
"""

from __future__ import annotations

import io
import unicodedata
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import Column, Connection, Engine, MetaData, String, Table, select, update

from mssgate import audit
from mssgate.db.schema import professionals
from mssgate.db.tx import write_on
from mssgate.directory.models import MailboxKind, NewProfessional
from mssgate.directory.professionals import row_values
from mssgate.directory.timeutil import now
from mssgate.errors import ValidationFailed, describe_validation

# The header line of the published extract, column by column (docs/annuaire.md).
HEADER = (
    "Type de BAL", "Adresse BAL", "Type Identifiant PP", "Identifiant PP",
    "Identification nationale PP", "Type identifiant structure", "Identification Structure",
    "Service de rattachement", "Civilité d'exercice", "Nom d'exercice", "Prénom d'exercice",
    "Catégorie profession", "Libellé de catégorie profession", "Code Profession",
    "Libellé Profession", "Code savoir-faire", "Libellé savoir-faire", "Dématérialisation",
    "Raison Sociale structure BAL", "Enseigne commerciale structure BAL",
    "L2COMPLEMENTLOCALISATION", "L3COMPLEMENTDISTRIBUTION", "L4NUMEROVOIE",
    "L4COMPLEMENTNUMEROVOIE", "NL4TYPEVOIE", "L4LIBELLEVOIE", "L5LIEUDITMENTION",
    "L6LIGNEACHEMINEMENT", "Code postal", "Département", "Pays",
)  # fmt: skip
COLUMNS = len(HEADER)
BATCH = 2000

# Column positions in the extract (see docs/annuaire.md).
C_KIND, C_ADDRESS, C_IDNAT = 0, 1, 4
C_SERVICE, C_LAST, C_FIRST, C_PROFESSION = 7, 9, 10, 13
C_ORG_NAME, C_ORG_SIGN = 18, 19


class AnnuaireLine(BaseModel):
    model_config = ConfigDict(frozen=True)

    number: int
    professional: NewProfessional


class Rejected(BaseModel):
    model_config = ConfigDict(frozen=True)

    number: int
    reason: str


class ImportReport(BaseModel):
    lines: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    merged: int = 0
    skipped_other_domains: int = 0
    rejected: int = 0
    local_mailboxes: int = 0
    rejects: list[Rejected] = []


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).strip().lower()


def _decode(raw: bytes) -> str:
    # Per line, because a file re-saved by a spreadsheet can mix both; a Latin-1 line almost
    # never happens to be valid UTF-8.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _display_name(kind: MailboxKind, cols: list[str]) -> str:
    if kind is MailboxKind.PER:
        return " ".join(p for p in (cols[C_FIRST].strip(), cols[C_LAST].strip()) if p)
    for c in (C_ORG_NAME, C_ORG_SIGN, C_SERVICE):
        if cols[c].strip():
            return cols[c].strip()
    return ""


def parse_line(number: int, text: str) -> AnnuaireLine | Rejected:
    cols = text.split("|")
    if len(cols) != COLUMNS:
        return Rejected(number=number, reason=f"{len(cols)} columns instead of {COLUMNS}")
    kind_text = cols[C_KIND].strip().upper()
    if kind_text not in ("PER", "ORG", "APP"):
        return Rejected(number=number, reason=f"unsupported mailbox kind {kind_text!r}")
    kind = MailboxKind(kind_text)
    idnat = cols[C_IDNAT].strip() or None
    name = _display_name(kind, cols) or cols[C_ADDRESS].strip()
    try:
        prof = NewProfessional(
            address=cols[C_ADDRESS],
            display_name=name,
            # The extract fills the practitioner columns of a PER line only; whatever an
            # ORG line carries there describes no person of that mailbox.
            idnat=idnat if kind is MailboxKind.PER else None,
            profession_code=cols[C_PROFESSION].strip() or None,
            kind=kind,
        )
    except ValidationError as exc:
        return Rejected(number=number, reason=describe_validation(exc))
    return AnnuaireLine(number=number, professional=prof)


def _check_header(text: str) -> None:
    cols = [_fold(c) for c in text.split("|")]
    if len(cols) != COLUMNS or cols[0] != "type de bal" or cols[1] != "adresse bal":
        raise ValidationFailed(
            "not an Annuaire Santé MSSanté extract: the header must have 31 pipe-separated"
            " columns starting with 'Type de BAL|Adresse BAL'"
        )


def parse_stream(stream: IO[bytes], *, max_line_bytes: int) -> Iterator[AnnuaireLine | Rejected]:
    """Yields each data line, parsed or rejected with its line number (the header is 1)."""
    header = stream.readline(max_line_bytes + 1)
    if header.startswith(b"\xef\xbb\xbf"):
        header = header[3:]
    _check_header(_decode(header).rstrip("\r\n"))
    number = 1
    while True:
        raw = stream.readline(max_line_bytes + 1)
        if not raw:
            return
        number += 1
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            # Skip the rest of the overlong line without holding it.
            while raw and not raw.endswith(b"\n"):
                raw = stream.readline(max_line_bytes + 1)
            yield Rejected(number=number, reason=f"line longer than {max_line_bytes} bytes")
            continue
        text = _decode(raw).rstrip("\r\n")
        if not text.strip():
            continue
        yield parse_line(number, text)


@contextmanager
def _open_extract(path: Path) -> Iterator[tuple[IO[bytes], int]]:
    """The text stream and its size (for progress); a published ZIP is read as is."""
    with ExitStack() as stack:
        if zipfile.is_zipfile(path):
            archive = stack.enter_context(zipfile.ZipFile(path))
            members = [i for i in archive.infolist() if i.filename.lower().endswith(".txt")]
            if len(members) != 1:
                raise ValidationFailed("the ZIP must hold exactly one .txt extract")
            yield stack.enter_context(archive.open(members[0])), members[0].file_size
        else:
            yield stack.enter_context(path.open("rb")), path.stat().st_size


class _Seen:
    """Addresses met earlier in this import, kept in a temporary table, not in memory."""

    def __init__(self, conn: Connection) -> None:
        meta = MetaData()
        self.table = Table(
            "annuaire_seen",
            meta,
            Column("address", String(254), primary_key=True),
            prefixes=["TEMPORARY"],
        )
        meta.create_all(conn)
        self._conn = conn

    def split(self, addresses: list[str]) -> set[str]:
        rows = self._conn.execute(
            select(self.table.c.address).where(self.table.c.address.in_(addresses))
        )
        return {r.address for r in rows}

    def add(self, addresses: Iterable[str]) -> None:
        values = [{"address": a} for a in addresses]
        if values:
            self._conn.execute(self.table.insert(), values)


_COMPARED = ("display_name", "id_type", "idnat", "profession_code", "kind", "local")


def _apply(
    conn: Connection,
    seen: _Seen,
    batch: list[AnnuaireLine],
    local_domains: set[str],
    report: ImportReport,
    actor: str,
    home_node: str | None = None,
) -> None:
    # Within a batch the first line of an address wins, as across batches.
    firsts: dict[str, AnnuaireLine] = {}
    for line in batch:
        if line.professional.address in firsts:
            report.merged += 1
        else:
            firsts[line.professional.address] = line
    earlier = seen.split(list(firsts))
    report.merged += len(earlier)
    todo = {a: line for a, line in firsts.items() if a not in earlier}
    existing = {
        r.address: r
        for r in conn.execute(select(professionals).where(professionals.c.address.in_(list(todo))))
    }
    stamp = now()
    inserts: list[dict[str, Any]] = []
    for address, line in todo.items():
        local = address.split("@", 1)[1] in local_domains
        values = row_values(line.professional) | {"local": local}
        report.local_mailboxes += local
        old = existing.get(address)
        if old is None:
            inserts.append(
                values
                | {
                    "address": address,
                    "state": "active",
                    "password_hash": None,
                    "source": "annuaire",
                    "created_at": stamp,
                    "updated_at": stamp,
                    # A new hosted mailbox lives on the importing node (docs, "Nodes").
                    "node": home_node if local else None,
                }
            )
            report.added += 1
        elif any(getattr(old, k) != values[k] for k in _COMPARED):
            if old.local and not local:
                values["local"] = True  # never demote a hosted mailbox by an import
            if values["local"] and old.node is None:
                values["node"] = home_node  # a correspondent made a mailbox gets a home
            conn.execute(
                update(professionals)
                .where(professionals.c.address == address)
                .values(updated_at=stamp, **values)
            )
            report.updated += 1
        else:
            report.unchanged += 1
            continue
        if local:
            audit.append(
                conn,
                actor=actor,
                action="directory.import",
                subject=address,
                detail={"line": line.number, "kind": values["kind"]},
            )
    if inserts:
        conn.execute(professionals.insert(), inserts)
    seen.add(todo)


def import_annuaire(
    engine: Engine,
    path: Path,
    *,
    local_domains: set[str],
    only_domains: set[str] | None = None,
    actor: str,
    max_line_bytes: int = 8192,
    max_rejects_reported: int = 1000,
    on_progress: Callable[[int, int], None] | None = None,
    home_node: str | None = None,
) -> ImportReport:
    """Imports the extract; each batch commits on its own, so a re-run completes a cut one."""
    report = ImportReport()
    try:
        with _open_extract(path) as (stream, total), engine.connect() as conn:
            counter = _CountingRaw(stream)
            reader = io.BufferedReader(counter, 1 << 16)
            with write_on(conn):
                seen = _Seen(conn)
            batch: list[AnnuaireLine] = []

            def flush() -> None:
                with write_on(conn):
                    _apply(conn, seen, batch, local_domains, report, actor, home_node)
                batch.clear()
                if on_progress is not None:
                    on_progress(counter.position, total)

            for item in parse_stream(reader, max_line_bytes=max_line_bytes):
                report.lines += 1
                if isinstance(item, Rejected):
                    report.rejected += 1
                    if len(report.rejects) < max_rejects_reported:
                        report.rejects.append(item)
                    continue
                domain = item.professional.address.split("@", 1)[1]
                if only_domains and domain not in only_domains:
                    report.skipped_other_domains += 1
                    continue
                batch.append(item)
                if len(batch) >= BATCH:
                    flush()
            flush()
            with write_on(conn):
                audit.append(
                    conn,
                    actor=actor,
                    action="directory.import-annuaire",
                    subject=path.name,
                    detail=report.model_dump(exclude={"rejects"}),
                )
    except FileNotFoundError:
        raise ValidationFailed(f"file not found: {path}") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise ValidationFailed(f"cannot read {path}: {exc}") from None
    return report


class _CountingRaw(io.RawIOBase):
    """Counts the bytes read, for a progress bar that works on a ZIP member too."""

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner = inner
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._inner.read(len(b))
        n = len(data)
        b[:n] = data
        self.position += n
        return n
