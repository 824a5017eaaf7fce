"""Issue 12 item 12: what hostile messages cost the document pipeline and the database.

Prints, never asserts. Each case runs in a fresh process (peak RSS is per process):

    .venv/bin/python bench/document_budgets.py            # every case
    .venv/bin/python bench/document_budgets.py archives   # one case

- archives: 17 MiB of mail carrying 40 IHE_XDM archives, each under every per-archive cap;
- tiny-elements: a 20 MiB message whose CDA (in an XDM) is 46 MiB of tiny XML elements;
- database: a 1.7 MiB message with 100 CDA documents in one XDM (allow_test_ins on) and 8
  attachments that are held, ingested into a fresh SQLite queue; the growth of the file.

Run from the repository root; to measure another tree, run it with that tree first on
PYTHONPATH (the script uses only APIs both sides of the change share).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mssgate.documents.limits import DocumentLimits
from mssgate.documents.samples import (
    PAT_TROIS,
    CdaSpec,
    EntrySpec,
    make_cda,
    make_mail,
    make_xdm,
)


def _noise_cda(size: int) -> bytes:
    # Runs of one letter with a random letter every 700 bytes: deflate squeezes it about
    # 150:1, under the 200:1 bomb ratio. In a comment: bytes to inflate, no tree to build.
    rng = random.Random(1)
    letters = b"bcdefghijklmnopqrstuvwxyz"
    noise = b"".join(b"a" * 700 + bytes([rng.choice(letters)]) for _ in range(size // 701))
    return make_cda(CdaSpec()).replace(b"?>", b"?>\n<!--" + noise + b"-->", 1)


def archives_mail() -> bytes:
    # 40 MiB of CDA per archive, 40 archives: each under every per-archive cap.
    xdm = make_xdm(PAT_TROIS, [EntrySpec("DOC0001.XML", _noise_cda(40 * 2**20))])
    return make_mail([("IHE_XDM.ZIP", xdm, "application/zip")] * 40)


def tiny_elements_mail() -> bytes:
    rng = random.Random(7)
    names = [b"e%x" % rng.randrange(4096) for _ in range(65536)]
    body = b"".join(b"<%s/>" % n for n in rng.choices(names, k=46 * 1024 * 1024 // 7))
    cda = make_cda(CdaSpec()).replace(
        b"</ClinicalDocument>", b"<x>" + body + b"</x></ClinicalDocument>"
    )
    return make_mail([("IHE_XDM.ZIP", make_xdm(PAT_TROIS, [EntrySpec("DOC0001.XML", cda)]),
                       "application/zip")])  # fmt: skip


def database_mail() -> bytes:
    entries = [
        EntrySpec(f"DOC{i:04d}.XML", make_cda(CdaSpec(doc_root=f"1.2.250.1.999.7.{i}")))
        for i in range(100)
    ]
    held = [(f"notes{i}.xml", os.urandom(150_000).hex()[:150_000].encode(), "text/xml")
            for i in range(8)]  # fmt: skip
    # Not CDA: skipped by the pipeline, but they make the message its 1.7 MiB.
    return make_mail([("IHE_XDM.ZIP", make_xdm(PAT_TROIS, entries), "application/zip"), *held])


def run_pipeline(raw: bytes) -> str:
    from mssgate.documents.pipeline import process_message

    started = time.monotonic()
    result = process_message(raw, limits=DocumentLimits(), allow_test_oids=True)
    took = time.monotonic() - started
    kinds = [type(o).__name__ for o in result.outcomes]
    reasons = {o.reason for o in result.outcomes if hasattr(o, "reason")}
    return (
        f"{len(kinds)} outcome(s) ({kinds.count('Accepted')} accepted), {took:.1f} s,"
        f" reasons {sorted(reasons)[:2]}"
    )


def run_database(raw: bytes) -> str:
    from mssgate.db import open_engine, upgrade
    from mssgate.directory import Directory
    from mssgate.directory.models import MailboxKind, NewProfessional
    from mssgate.queue import DocumentQueue, ingest_message

    folder = Path(tempfile.mkdtemp())
    path = folder / "db.sqlite"
    engine = open_engine(f"sqlite:///{path}")
    upgrade(engine)
    directory = Directory(engine, actor="bench")
    directory.domains.add_local("hopital-a.test")
    mailbox = "ris@hopital-a.test"
    directory.professionals.add(
        NewProfessional(address=mailbox, display_name="RIS", kind=MailboxKind.APP)
    )
    engine.dispose()
    before = path.stat().st_size
    engine = open_engine(f"sqlite:///{path}")
    queue = DocumentQueue(engine, data_dir=folder)
    ids = ingest_message(
        queue,
        raw,
        mailbox=mailbox,
        sender="radiologue@hopital.mssante.fr",
        message_id="<bench@hopital.mssante.fr>",
        subject="bench",
        received_at=datetime.now(UTC),
        limits=DocumentLimits(),
        allow_test_oids=True,
    )
    engine.dispose()
    grown = path.stat().st_size - before
    return (
        f"{len(ids)} queued+held rows; database grew {grown / 2**20:.1f} MiB"
        f" for a {len(raw) / 2**20:.2f} MiB message"
    )


CASES = {
    "archives": (archives_mail, run_pipeline),
    "tiny-elements": (tiny_elements_mail, run_pipeline),
    "database": (database_mail, run_database),
}


def _peak_mib() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child would
    # report its parent's peak (the builder's).
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(name: str, path: Path) -> None:
    raw = path.read_bytes()
    baseline = _peak_mib()
    summary = CASES[name][1](raw)
    print(
        f"{name:14} message {len(raw) / 2**20:5.1f} MiB | peak RSS {_peak_mib():6.0f} MiB"
        f" (message read: {baseline:.0f} MiB) | {summary}",
        flush=True,
    )


def main() -> None:
    if len(sys.argv) == 3 and os.environ.get("BENCH_CHILD") == "1":
        child(sys.argv[1], Path(sys.argv[2]))
        return
    # Messages are built here, so that the child's peak is the pipeline's, not the builder's.
    folder = Path(tempfile.mkdtemp())
    for name in sys.argv[1:] or list(CASES):
        path = folder / f"{name}.eml"
        path.write_bytes(CASES[name][0]())
        subprocess.run(
            [sys.executable, __file__, name, str(path)],
            env={**os.environ, "BENCH_CHILD": "1"},
            check=False,
        )
        path.unlink()


if __name__ == "__main__":
    main()
