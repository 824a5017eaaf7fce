"""Time the `mssgate` command's start-up: wall and CPU time per run, against the interpreter.

    .venv/bin/python bench/cli_startup.py [--runs 15] [--data DIR] [--baseline DIR]

Each row runs one command as a fresh process (`.venv/bin/mssgate`, the console script operators
run) `--runs` times, the rows alternating round by round so that a load change on the machine
falls on every row alike. The reference, measured in the same run, is `python -c pass`: the
interpreter's own start-up, which no change to mssgate can remove. Printed per row: median wall
ms (min..max), median CPU ms (user + system of the child, less bent by a busy machine than wall
time), the ratio of each to the reference, and how many modules the command imports
(`-X importtime`, one extra run).

`--baseline DIR` adds the same commands run with an older tree's `mssgate` package first on
PYTHONPATH (`git archive COMMIT mssgate | tar -x -C DIR`), interleaved with the others: the
before/after of a change measured in one run, and its ratio printed.

`directory list` runs against a data folder made once by `mssgate init` (SQLite; default
$TMPDIR/mssgate-cli-bench, kept between runs), with MSSGATE_CONFIG pointing at it. A benchmark,
not a test: it prints and asserts nothing beyond "the command exited 0".
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = Path(sys.executable)
MSSGATE = PYTHON.parent / "mssgate"


COMMANDS = [
    ("mssgate --version", ["--version"]),
    ("mssgate --help", ["--help"]),
    ("mssgate directory list (SQLite)", ["directory", "list"]),
]


def _rows(baseline: Path | None) -> list[tuple[str, list[str], Path | None]]:
    """(name, argv, PYTHONPATH): the console script run by the interpreter, so that a
    baseline tree on PYTHONPATH is found before the installed package."""
    script = [str(PYTHON), str(MSSGATE)] if MSSGATE.exists() else [str(PYTHON), "-m", "mssgate"]
    rows: list[tuple[str, list[str], Path | None]] = [
        ("python -c pass (reference)", [str(PYTHON), "-c", "pass"], None)
    ]
    for name, args in COMMANDS:
        if baseline is not None:
            rows.append((f"{name} [baseline]", [*script, *args], baseline))
        rows.append((name, [*script, *args], None))
    return rows


def _env(data: Path, pythonpath: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env["MSSGATE_CONFIG"] = str(data / "mssgate.toml")
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


def _run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """One run: (wall seconds, child CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{argv} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _module_count(argv: list[str], env: dict[str, str]) -> int:
    done = subprocess.run(
        [argv[0], "-X", "importtime", *argv[1:]],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=True,
    )
    return sum(1 for line in done.stderr.decode().splitlines() if line.startswith("import time:"))


def _init(data: Path) -> None:
    if (data / "mssgate.toml").exists():
        return
    shutil.rmtree(data, ignore_errors=True)
    subprocess.run(
        [str(PYTHON), "-m", "mssgate", "init", "--data", str(data), "--domain", "example.test"],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument(
        "--data", type=Path, default=Path(tempfile.gettempdir()) / "mssgate-cli-bench"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a folder holding an older `mssgate` package, measured in the same run"
        " (git archive COMMIT mssgate | tar -x -C DIR)",
    )
    args = parser.parse_args()
    _init(args.data)
    rows = _rows(args.baseline)
    envs = {name: _env(args.data, pythonpath) for name, _, pythonpath in rows}
    walls: dict[str, list[float]] = {name: [] for name, _, _ in rows}
    cpus: dict[str, list[float]] = {name: [] for name, _, _ in rows}
    for name, argv, _ in rows:  # warm the page cache and .pyc files, unmeasured
        _run_once(argv, envs[name])
    for _ in range(args.runs):
        for name, argv, _ in rows:
            wall, cpu = _run_once(argv, envs[name])
            walls[name].append(wall)
            cpus[name].append(cpu)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(
        f"python {platform.python_version()}, {os.cpu_count()} cores, {args.runs} runs per row, "
        f"alternating; load average at the end {load}"
    )
    ref_name = rows[0][0]
    ref_wall = statistics.median(walls[ref_name])
    ref_cpu = statistics.median(cpus[ref_name])
    print(
        f"{'command':45} {'wall ms':>8} {'min..max':>13} {'/ python':>9} "
        f"{'CPU ms':>8} {'/ python':>9} {'modules':>8}"
    )
    for name, argv, _ in rows:
        wall = statistics.median(walls[name])
        cpu = statistics.median(cpus[name])
        span = f"{min(walls[name]) * 1e3:.0f}..{max(walls[name]) * 1e3:.0f}"
        print(
            f"{name:45} {wall * 1e3:8.0f} {span:>13} {wall / ref_wall:9.1f} "
            f"{cpu * 1e3:8.0f} {cpu / ref_cpu:9.1f} {_module_count(argv, envs[name]):8d}"
        )
    if args.baseline is not None:
        print("after / baseline (median wall, median CPU):")
        for name, _ in COMMANDS:
            before = f"{name} [baseline]"
            print(
                f"  {name:43} {statistics.median(walls[name]) / statistics.median(walls[before]):.2f}"
                f" {statistics.median(cpus[name]) / statistics.median(cpus[before]):.2f}"
            )


if __name__ == "__main__":
    main()
