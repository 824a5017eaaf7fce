"""Run the fuzz targets on a clock: every test marked `fuzz` (docs/reliability.md, "Fuzzing").

    .venv/bin/python bench/fuzz.py --minutes 30            # all targets, time shared equally
    .venv/bin/python bench/fuzz.py --minutes 5 -k pdf      # the PDF targets only
    .venv/bin/python bench/fuzz.py --list

The targets are ordinary Hypothesis tests, so CI runs each one a bounded number of times
(the "ci" profile of tests/conftest.py) and this script runs the same code for as long as it
is given: pytest collects them with the "fuzz" profile (fresh random inputs, no deadline),
and each target is run again and again, one full Hypothesis run after another, until its
share of the time is spent. A failure is shrunk and printed by Hypothesis as in any test run,
and saved in .hypothesis/ so that the next plain `pytest` replays it.

With --engine atheris (pip install atheris, not a project dependency) one target that needs
no fixture is run under libFuzzer's coverage-guided mutation instead; that process ends when
libFuzzer does.

Exit status: 0 when no target failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
# A failure found late in a target's share is still shrunk, within this extra time.
SHRINK_GRACE_SECONDS = 120.0


class _TimeUp(KeyboardInterrupt):
    """Raised from inside a Hypothesis run to end it, before an example starts drawing.

    Hypothesis treats an interruption as "stop now": not a failure, nothing saved, no
    half-drawn example left in its tree (another BaseException would be concluded as a
    passing example that drew nothing, which it then reports as a flaky strategy).
    """


@dataclass
class TargetResult:
    target: str
    seconds: float = 0.0
    runs: int = 0
    examples: int = 0
    failures: int = 0
    failure: str | None = None
    notes: list[str] = field(default_factory=list)


class FuzzPlugin:
    def __init__(self, total_seconds: float, engine: str, atheris_args: list[str]) -> None:
        self.total_seconds = total_seconds
        self.engine = engine
        self.atheris_args = atheris_args
        self.share = total_seconds
        self.results: list[TargetResult] = []

    # -- collection: keep Hypothesis tests only, and share the time among them -----------------
    # Last, so that -k and -m have already deselected what they deselect.
    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: Any, items: list[Any]) -> None:
        keep = [i for i in items if getattr(getattr(i, "obj", None), "is_hypothesis_test", False)]
        dropped = [i for i in items if i not in keep]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = keep
        self.share = self.total_seconds / max(1, len(keep))
        if self.engine == "atheris" and len(keep) != 1:
            # libFuzzer owns the process and exits at the end: one target per run.
            names = ", ".join(i.name for i in keep) or "none"
            raise pytest.UsageError(f"--engine atheris runs one target; -k selected: {names}")

    # -- one target: Hypothesis runs back to back until its share is spent --------------------
    @pytest.hookimpl(tryfirst=True)  # instead of pytest's own call of the test function
    def pytest_pyfunc_call(self, pyfuncitem: Any) -> bool:
        function = pyfuncitem.obj
        arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
        if self.engine == "atheris":
            _atheris(function, arguments, self.atheris_args)  # never returns
        result = TargetResult(pyfuncitem.nodeid)
        self.results.append(result)
        handle = function.hypothesis
        inner = handle.inner_test
        started = time.monotonic()
        deadline = started + self.share
        failing = False

        def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal failing
            now = time.monotonic()
            if now > deadline and (not failing or now > deadline + SHRINK_GRACE_SECONDS):
                raise _TimeUp
            result.examples += 1
            try:
                return inner(*args, **kwargs)
            except Exception as exc:
                if not failing:
                    result.notes.append(f"first failure: {type(exc).__name__}: {exc}"[:300])
                failing = True  # from here on Hypothesis shrinks: let it, within the grace
                raise

        handle.inner_test = counted
        try:
            while time.monotonic() < deadline:
                try:
                    function(**arguments)
                except _TimeUp:
                    if failing:
                        result.notes.append("shrinking cut short: the example shown is unshrunk")
                        raise AssertionError("failed; shrinking ran out of time") from None
                    break
                result.runs += 1
        except Exception as exc:
            result.failures = 1
            result.failure = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
            raise
        finally:
            handle.inner_test = inner
            result.seconds = time.monotonic() - started
        return True


# Coverage for libFuzzer comes from these packages only: instrumenting everything loaded
# (pytest, Hypothesis, cryptography...) takes minutes and steers the search towards noise.
ATHERIS_INSTRUMENTED = ["mssgate", "pypdf", "email", "zipfile", "aiosmtpd"]


def _instrument_for_atheris() -> None:
    try:
        import atheris  # type: ignore[import-not-found]  # optional, see the module docstring
    except ImportError:
        sys.exit("atheris is not installed: .venv/bin/pip install atheris")
    # Entered before pytest imports anything, never left: what these names import is
    # instrumented as it loads.
    atheris.instrument_imports(include=ATHERIS_INSTRUMENTED).__enter__()


def _atheris(function: Any, arguments: dict[str, Any], args: list[str]) -> None:
    import atheris

    if arguments:
        sys.exit(f"--engine atheris needs a target without fixtures; this one has {arguments}")
    # libFuzzer mutates bytes; Hypothesis reads its choices from them (fuzz_one_input).
    atheris.Setup([sys.argv[0], *args], function.hypothesis.fuzz_one_input)
    atheris.Fuzz()


def _table(results: list[TargetResult], wall: float) -> str:
    lines = [
        f"{'target':<88} {'s':>6} {'runs':>5} {'examples':>9} {'ex/s':>7} failed",
        "-" * 126,
    ]
    for r in results:
        rate = r.examples / r.seconds if r.seconds else 0.0
        name = r.target if len(r.target) <= 88 else "…" + r.target[-87:]
        lines.append(
            f"{name:<88} {r.seconds:>6.0f} {r.runs:>5} {r.examples:>9} {rate:>7.0f} {r.failures:>6}"
        )
        lines += [f"    {text}" for text in ([r.failure] if r.failure else []) + r.notes]
    total = sum(r.examples for r in results)
    failed = sum(r.failures for r in results)
    lines.append(
        f"{len(results)} targets, {total} examples, {failed} failed, {wall / 60:.1f} min wall time"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    clock = parser.add_mutually_exclusive_group()
    clock.add_argument("--minutes", type=float, help="total time, shared by the targets")
    clock.add_argument("--seconds", type=float, help="total time, in seconds")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression to pick targets")
    parser.add_argument("--list", action="store_true", help="list the targets and stop")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--engine", choices=["hypothesis", "atheris"], default="hypothesis")
    parser.add_argument("--atheris-arg", action="append", default=[], help="passed to libFuzzer")
    parser.add_argument("paths", nargs="*", default=["tests"], help="where to look for targets")
    options = parser.parse_args()
    total = options.seconds if options.seconds is not None else (options.minutes or 5.0) * 60
    # Read by tests/conftest.py when pytest imports it: must be set before.
    os.environ["HYPOTHESIS_PROFILE"] = "fuzz"
    os.chdir(REPO)
    args = ["-m", "fuzz", "-p", "no:cacheprovider", "-o", "timeout=0", "-q", *options.paths]
    if options.keyword:
        args += ["-k", options.keyword]
    if options.list:
        return int(pytest.main([*args, "--collect-only"], plugins=[FuzzPlugin(0, "", [])]))
    atheris_args = options.atheris_arg
    if options.engine == "atheris":
        atheris_args = [f"-max_total_time={int(total)}", *atheris_args]
        args.append("-s")  # libFuzzer reports on file descriptor 2: no capture
        _instrument_for_atheris()
    plugin = FuzzPlugin(total, options.engine, atheris_args)
    started = time.monotonic()
    code = pytest.main(args, plugins=[plugin])
    wall = time.monotonic() - started
    print()
    print(_table(plugin.results, wall))
    if options.json is not None:
        options.json.write_text(json.dumps([asdict(r) for r in plugin.results], indent=2))
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return int(code)
    return 1 if any(r.failures for r in plugin.results) else 0


if __name__ == "__main__":
    sys.exit(main())
