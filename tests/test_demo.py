"""`mssgate demo` as an operator runs it: a subprocess that must exit 0 and show each step."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_runs_every_step() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSGATE_")}
    script = Path(sys.executable).parent / "mssgate"
    out = subprocess.run(
        [script, "demo"], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    steps = [line.split("]")[0].strip("[ ") for line in out.stdout.splitlines() if "]" in line]
    for step in ("setup", "submit", "accept", "relay", "queued", "verify", "lease", "INS",
                 "document", "imaging", "HL7", "ack", "receipt", "done"):  # fmt: skip
        assert step in steps, f"missing step {step}: {out.stdout}"
    # Queued before it is leased, and the RIS leases the very document that was queued.
    assert steps.index("queued") < steps.index("lease") < steps.index("ack")
    queued = re.search(r"\[  queued\] \S+ queued document ([0-9a-f]{32}) ", out.stdout)
    assert queued, out.stdout
    assert f"[   lease] the RIS leased document {queued.group(1)} " in out.stdout
    # The receipt is checked as signed (and verified at the clinic), not just received.
    assert "the MDN is signed: multipart/signed, smime=pass at mx.clinique-b" in out.stdout
    assert "smime=pass" in out.stdout and "dkim=pass" in out.stdout
    assert "279035121518989^^^ASIP-SANTE-INS-NIR" in out.stdout
    assert "TLSv1.3" in out.stdout
