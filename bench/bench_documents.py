"""Documents per second through the pipeline, next to a bare lxml parse of the same bytes.

    .venv/bin/python bench/bench_documents.py [--seconds 2]

N1: the DRIMbox CR-IMG N1 (tests/fixtures, 110 KB with a 62 KB PDF): CDA parse, base64
decode and PDF text extraction. N3: the ANS CR-IMG 2024.01 example when ../shared/fixtures is
present, else a generated CR-IMG N3. A benchmark, not a test: numbers vary by machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lxml import etree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mssgate.documents import DocumentLimits, parse_cda, process_message, read_pdf  # noqa: E402

LIMITS = DocumentLimits()


def rate(work: Callable[[], object], seconds: float) -> float:
    work()  # warm up
    count = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        work()
        count += 1
    return count / elapsed


def samples() -> dict[str, bytes]:
    n1 = (ROOT / "tests/fixtures/drimbox/CDA/IMG_CR_IMG_2023.11_CDA-R2-Niveau-1.xml").read_bytes()
    shared = ROOT.parent / "shared/fixtures/ansforge/TestContenuCDA-3-0/IMG_CR_IMG_2024.01.xml"
    if shared.exists():
        n3 = shared.read_bytes()
    else:
        from tests.documents.factory import make_cda

        n3 = make_cda()
    return {"N1 CR-IMG (+PDF)": n1, "N3 CR-IMG": n3}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    from tests.documents.factory import make_mail

    print(f"{'document':<18} {'bytes':>8} {'lxml/s':>9} {'parse/s':>9} {'mail/s':>9} {'ratio':>6}")
    for name, data in samples().items():

        def bare(data: bytes = data) -> object:
            return etree.fromstring(data)

        def full(data: bytes = data) -> object:
            cda = parse_cda(data, LIMITS)
            if cda.body is not None:
                read_pdf(cda.body, LIMITS)
            return cda

        mail = make_mail([("doc.xml", data, "text/xml")])

        def pipeline(mail: bytes = mail) -> object:
            return process_message(mail, allow_test_oids=True)

        bare_rate = rate(bare, args.seconds)
        full_rate = rate(full, args.seconds)
        mail_rate = rate(pipeline, args.seconds)
        print(
            f"{name:<18} {len(data):>8} {bare_rate:>9.0f} {full_rate:>9.0f} {mail_rate:>9.0f}"
            f" {bare_rate / full_rate:>5.1f}x"
        )
    print("ratio = bare lxml parses per second / pipeline document parses per second")


if __name__ == "__main__":
    main()
