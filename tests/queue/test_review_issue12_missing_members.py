"""Review of issue 12 D.12: an archive is held once, however many documents it fails to hold.

Each document an XDM lists but does not carry was held with the whole archive as its
content: a 300 KiB archive listing 60 absent documents put 60 copies of it (18 MiB) in
the database, the multiplication the per-message budgets were written against."""

from __future__ import annotations

import secrets

from sqlalchemy import Engine, func, select

from mssgate.db.schema import quarantine
from mssgate.queue import DocumentQueue
from tests.documents.factory import PAT_TROIS, EntrySpec, make_mail, make_metadata, zip_tree
from tests.queue.helpers import deliver

XDM = "application/zip"


def test_an_archive_missing_many_documents_is_held_once(
    engine: Engine, queue: DocumentQueue
) -> None:
    listed = [EntrySpec(f"DOC{n:04}.XML", b"x") for n in range(60)]
    metadata = make_metadata(PAT_TROIS, listed, subset="SUBSET01")
    padding = secrets.token_bytes(300 * 1024)  # incompressible: the archive is this large
    archive = zip_tree(
        [("IHE_XDM/SUBSET01/METADATA.XML", metadata), ("IHE_XDM/SUBSET01/PAD.BIN", padding)]
    )
    ids = deliver(queue, make_mail([("IHE_XDM.ZIP", archive, XDM)]))
    [entry] = queue.quarantine.entries()
    assert ids == [entry.id]
    assert "60 documents listed in XDM metadata are missing from the archive" in entry.reason
    assert queue.quarantine.content(entry.id) == archive
    with engine.connect() as conn:
        stored = conn.execute(select(func.sum(func.length(quarantine.c.content)))).scalar_one()
    assert stored == len(archive)
