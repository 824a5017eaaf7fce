"""Time the `mssgate` command's start-up: wall and CPU time per run, against the interpreter.

    .venv/bin/python bench/cli_startup.py [--runs 15] [--data DIR]

Each row runs one command as a fresh process (`.venv/bin/mssgate`, the console script operators
run) `--runs` times, the rows alternating round by round so that a load change on the machine
falls on every row alike. The reference, measured in the same run, is `python -c pass`: the
interpreter's own start-up, which no change to mssgate can remove. Printed per row: median wall
ms (min..max), median CPU ms (user + system of the child, less bent by a busy machine than wall
time), the ratio of each to the reference, and how many modules the command imports
(`-X importtime`, one extra run).

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


def _rows(data: Path) -> list[tuple[str, list[str]]]:
    mssgate = [str(MSSGATE)] if MSSGATE.exists() else [str(PYTHON), "-m", "mssgate"]
    return [
        ("python -c pass (reference)", [str(PYTHON), "-c", "pass"]),
        ("mssgate --version", [*mssgate, "--version"]),
        ("mssgate --help", [*mssgate, "--help"]),
        ("mssgate directory list (SQLite)", [*mssgate, "directory", "list"]),
    ]


def _env(data: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["MSSGATE_CONFIG"] = str(data / "mssgate.toml")
    env.pop("PYTHONPROFILEIMPORTTIME", None)
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
    rest = argv[1:] if argv[0] == str(PYTHON) else argv  # the console script is a Python file
    done = subprocess.run(
        [str(PYTHON), "-X", "importtime", *rest],
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
    args = parser.parse_args()
    _init(args.data)
    env = _env(args.data)
    rows = _rows(args.data)
    walls: dict[str, list[float]] = {name: [] for name, _ in rows}
    cpus: dict[str, list[float]] = {name: [] for name, _ in rows}
    for argv in (argv for _, argv in rows):  # warm the page cache and .pyc files, unmeasured
        _run_once(argv, env)
    for _ in range(args.runs):
        for name, argv in rows:
            wall, cpu = _run_once(argv, env)
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
        f"{'command':34} {'wall ms':>8} {'min..max':>13} {'/ python':>9} "
        f"{'CPU ms':>8} {'/ python':>9} {'modules':>8}"
    )
    for name, argv in rows:
        wall = statistics.median(walls[name])
        cpu = statistics.median(cpus[name])
        span = f"{min(walls[name]) * 1e3:.0f}..{max(walls[name]) * 1e3:.0f}"
        print(
            f"{name:34} {wall * 1e3:8.0f} {span:>13} {wall / ref_wall:9.1f} "
            f"{cpu * 1e3:8.0f} {cpu / ref_cpu:9.1f} {_module_count(argv, env):8d}"
        )


if __name__ == "__main__":
    main()
