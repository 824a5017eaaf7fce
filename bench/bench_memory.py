"""Peak memory of the gateway with many large messages at once.

Twenty sessions (by default) each submit one 25 MB S/MIME-signed message at the same moment,
over STARTTLS + AUTH, to the full path (signature verified, document pipeline, spool,
delivery). The gateway's peak resident memory (VmHWM from /proc) is read at the end and
compared with its resident memory when idle. A benchmark: it prints, it asserts nothing.

Usage: .venv/bin/python bench/bench_memory.py [--sessions 20] [--size-mb 25] [--unsigned]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import smtplib
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_smtp


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def send(port: int, cafile: str, message: bytes, start: mp.Event, out: mp.Queue) -> None:
    client = smtplib.SMTP("127.0.0.1", port, timeout=600)
    client.starttls(context=ssl.create_default_context(cafile=cafile))
    client.login(bench_smtp.SENDER, bench_smtp.PASSWORD)
    start.wait()
    began = time.perf_counter()
    try:
        client.sendmail(bench_smtp.SENDER, [bench_smtp.RCPT], message)
        out.put(("250", time.perf_counter() - began))
    except smtplib.SMTPException as exc:
        out.put((str(exc)[:80], time.perf_counter() - began))
    finally:
        client.quit()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size-mb", type=int, default=25)
    parser.add_argument("--unsigned", action="store_true")
    parser.add_argument("--timeline", action="store_true", help="RSS second by second")
    args = parser.parse_args()
    size = args.size_mb * 1_000_000  # under max_message_size (26,214,400) with headers
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "gw"
        gw, port = bench_smtp.start_gateway(data, signed=not args.unsigned)
        try:
            message = bench_smtp.signed_message(size)
            ca = str(data / "certs" / "ca.crt.pem")
            idle_kb = status_kb(gw.pid, "VmRSS")
            start = mp.Event()
            results: mp.Queue = mp.Queue()
            procs = [
                mp.Process(target=send, args=(port, ca, message, start, results))
                for _ in range(args.sessions)
            ]
            for p in procs:
                p.start()
            time.sleep(2)  # every session logged in before the first byte of DATA
            began = time.perf_counter()
            samples: list[tuple[float, int]] = []
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    samples.append((time.perf_counter() - began, status_kb(gw.pid, "VmRSS")))
                    time.sleep(0.1)

            sampler = threading.Thread(target=sample)
            sampler.start()
            start.set()
            if os.environ.get("BENCH_PYSPY_AT"):  # where the peak comes from (py-spy dump)
                time.sleep(float(os.environ["BENCH_PYSPY_AT"]))
                subprocess.run([str(bench_smtp.BIN / "py-spy"), "dump", "-p", str(gw.pid)])
            outcomes = [results.get(timeout=1800) for _ in procs]
            elapsed = time.perf_counter() - began
            for p in procs:
                p.join()
            done.set()
            sampler.join()
            peak_kb = status_kb(gw.pid, "VmHWM")
        finally:
            gw.send_signal(signal.SIGTERM)
            gw.wait(timeout=120)
    accepted = sum(1 for code, _ in outcomes if code == "250")
    print(
        f"# {args.sessions} sessions x {len(message) / 1e6:.1f} MB "
        f"({'unsigned' if args.unsigned else 'S/MIME-signed, full path'})"
    )
    print("| accepted | idle RSS MB | peak RSS MB (VmHWM) | wall s |")
    print("|---|---|---|---|")
    print(
        f"| {accepted}/{len(outcomes)} | {idle_kb / 1024:.0f} | {peak_kb / 1024:.0f} | {elapsed:.1f} |"
    )
    if args.timeline:
        for second in range(int(elapsed) + 1):
            window = [kb for t, kb in samples if second <= t < second + 1]
            if window:
                print(f"t={second:3d}s RSS max {max(window) / 1024:.0f} MB")
    for code, took in outcomes:
        if code != "250":
            print(f"refused after {took:.1f} s: {code}")


if __name__ == "__main__":
    main()
