"""Documents per second through the pipeline, next to a bare lxml parse of the same bytes.

    .venv/bin/python bench/bench_documents.py [--seconds 2] [--rounds 3] [--baseline DIR]
    .venv/bin/python bench/bench_documents.py --profile      # cProfile of the N1 mail

Documents (built once by this tree, the same bytes for every tree measured):
- N1 CR-IMG: the DRIMbox CR-IMG N1 (tests/fixtures, 110 KB with a 62 KB one-page Word PDF
  that carries no labelled INS);
- N1 500 p. INS p.1: a generated N1 whose PDF has 500 pages, the patient's labelled INS on
  each (a report that repeats its header);
- N1 20 p. no INS: a generated N1 whose 20-page PDF names no INS;
- N3 CR-IMG: the ANS CR-IMG 2024.01 example when ../shared/fixtures is present, else a
  generated CR-IMG N3.

Rates are per second of the measuring process's CPU time (not wall time, which on a busy
machine measures the neighbours). Columns: bare `lxml.etree.fromstring`/s; parse/s = CDA parse + PDF text (`parse_cda` and
`read_pdf`); mail/s = `process_message` of a mail carrying the document (MIME walk, CDA, PDF,
reconciliation); pages = PDF pages whose text was extracted. Where the optional pypdfium2 is
importable (it is no dependency of mssgate: `pip install --target DIR pypdfium2`, then
`PYTHONPATH=DIR` for this script), "pdfium parse/s" adds a reference: the same CDA parse and
the same pages' text extracted by PDFium instead of pypdf.

Each tree runs in a process of its own, the rounds alternating between trees so that a load
change on this shared machine falls on both; the median of the rounds is printed, with the
spread. `--baseline DIR` measures an older tree's `mssgate` too
(`git archive COMMIT mssgate | tar -x -C DIR`): before and after in one run. Prints, never
asserts: a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rate(work: Callable[[], object], seconds: float) -> float:
    """Runs per second of this process's CPU time: on this shared 2-core machine wall time
    mostly measured the neighbours (the same bare lxml parse varied 4x within one run)."""
    work()  # warm up
    count = 0
    started = time.perf_counter()
    cpu = time.process_time()
    while time.perf_counter() - started < seconds:
        work()
        count += 1
    return count / max(time.process_time() - cpu, 1e-9)


def build(folder: Path) -> list[str]:
    """The documents, written to `folder` as NAME.xml; their names in order."""
    from mssgate.documents.samples import PAT_TROIS, CdaSpec, make_cda, make_pdf

    report = [f"Ligne {n} du compte rendu, lorem ipsum dolor sit amet." for n in range(30)]
    n1 = (ROOT / "tests/fixtures/drimbox/CDA/IMG_CR_IMG_2023.11_CDA-R2-Niveau-1.xml").read_bytes()
    shared = ROOT.parent / "shared/fixtures/ansforge/TestContenuCDA-3-0/IMG_CR_IMG_2024.01.xml"
    n3 = shared.read_bytes() if shared.exists() else make_cda(CdaSpec())
    long_pdf = make_pdf(["CR scanner", f"INS : {PAT_TROIS.ins}", *report], pages=500)
    no_ins_pdf = make_pdf(["CR scanner", *report], pages=20)
    documents = {
        "N1 CR-IMG": n1,
        "N1 500 p. INS p.1": make_cda(CdaSpec(level="N1", pdf=long_pdf)),
        "N1 20 p. no INS": make_cda(CdaSpec(level="N1", pdf=no_ins_pdf)),
        "N3 CR-IMG": n3,
    }
    for index, data in enumerate(documents.values()):
        (folder / f"{index}.xml").write_bytes(data)
    return list(documents)


def child(folder: Path, index: int, name: str, seconds: float) -> None:
    """One tree's figures for one document, as JSON (the tree is the first `mssgate` on
    sys.path)."""
    from lxml import etree

    from mssgate.documents import DocumentLimits, parse_cda, process_message, read_pdf
    from mssgate.documents.samples import make_mail

    limits = DocumentLimits()
    data = (folder / f"{index}.xml").read_bytes()
    mail = make_mail([("doc.xml", data, "text/xml")])

    def bare() -> object:
        return etree.fromstring(data)

    def full() -> int:
        cda = parse_cda(data, limits)
        if cda.body is None or cda.level != "N1":
            return 0
        return read_pdf(cda.body, limits).pages_read

    def pipeline() -> object:
        return process_message(mail, allow_test_oids=True)

    figures: dict[str, object] = {
        "name": name,
        "bytes": len(data),
        "lxml": rate(bare, seconds),
        "parse": rate(full, seconds),
        "mail": rate(pipeline, seconds),
        "pages": full(),
    }
    pdfium = _pdfium_reference(data, limits, int(str(figures["pages"])))
    if pdfium is not None:
        figures["pdfium"] = rate(pdfium, seconds)
    print(json.dumps(figures), flush=True)


def _pdfium_reference(data: bytes, limits: object, pages: int) -> Callable[[], object] | None:
    """A reference, where the optional pypdfium2 (PDFium, C++) is importable: the same CDA
    parse and the text of the same pages, extracted by PDFium instead of pypdf. Not used by
    mssgate: it says what an engine change would buy, measured in the same run."""
    try:
        import pypdfium2  # type: ignore[import-not-found]
    except ImportError:
        return None
    from mssgate.documents import parse_cda

    if pages == 0:
        return None

    def work() -> str:
        cda = parse_cda(data, limits)  # type: ignore[arg-type]
        document = pypdfium2.PdfDocument(cda.body)
        try:
            texts = []
            for index in range(min(pages, len(document))):
                page = document[index]
                textpage = page.get_textpage()
                texts.append(textpage.get_text_range())
                textpage.close()
                page.close()
            return "\n".join(texts)
        finally:
            document.close()

    return work


def profile() -> None:
    import cProfile
    import pstats

    sys.path.insert(0, str(ROOT))
    from mssgate.documents import process_message
    from mssgate.documents.samples import make_mail

    n1 = (ROOT / "tests/fixtures/drimbox/CDA/IMG_CR_IMG_2023.11_CDA-R2-Niveau-1.xml").read_bytes()
    mail = make_mail([("doc.xml", n1, "text/xml")])
    process_message(mail, allow_test_oids=True)
    profiler = cProfile.Profile()
    profiler.runcall(lambda: [process_message(mail, allow_test_oids=True) for _ in range(50)])
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}..{max(values):.0f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="an older tree holding mssgate/")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.index, args.name, args.seconds)
        return
    if args.profile:
        profile()
        return
    sys.path.insert(0, str(ROOT))
    folder = Path(tempfile.mkdtemp(prefix="bench-documents-"))
    names = build(folder)
    trees = {"this tree": ROOT}
    if args.baseline is not None:
        trees = {"baseline": args.baseline.resolve(), **trees}
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    # Rounds, then documents, then trees: the trees' figures for one document are taken
    # seconds apart, each in a fresh process.
    for round_number in range(args.rounds):
        for index, name in enumerate(names):
            for label, tree in trees.items():
                path = [str(tree), *filter(None, [os.environ.get("PYTHONPATH")])]
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
                argv = [sys.executable, __file__, "--child", str(folder), "--index", str(index),
                        "--name", name, "--seconds", str(args.seconds)]  # fmt: skip
                out = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    raise SystemExit(f"{label}: {out.stderr.strip()[-800:]}")
                results.setdefault((name, label), []).append(json.loads(out.stdout))
        print(f"round {round_number + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    head = f"{'document':<18} {'tree':<10} {'bytes':>7} {'lxml/s':>14} {'parse/s':>14}"
    print(f"{head} {'mail/s':>14} {'pages':>5}")
    for name in names:
        for label in trees:
            rows = results[(name, label)]
            cells = [_spread([r[key] for r in rows]) for key in ("lxml", "parse", "mail")]
            pdfium = [r["pdfium"] for r in rows if "pdfium" in r]
            reference = f"  pdfium parse/s {_spread(pdfium)}" if pdfium else ""
            print(f"{name:<18} {label:<10} {rows[0]['bytes']:>7} {cells[0]:>14} {cells[1]:>14}"
                  f" {cells[2]:>14} {rows[0]['pages']:>5}{reference}")  # fmt: skip
        if args.baseline is not None:
            ratios = []
            for key in ("parse", "mail"):
                before = statistics.median(r[key] for r in results[(name, "baseline")])
                after = statistics.median(r[key] for r in results[(name, "this tree")])
                ratios.append(f"{key} x{after / before:.2f}")
            print(f"{'':<18} after/before: {', '.join(ratios)}")
    print("median of the rounds (min..max); pages = PDF pages whose text was extracted")


if __name__ == "__main__":
    main()
