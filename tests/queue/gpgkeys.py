"""A throw-away OpenPGP key pair made with Debian's gpg, in a short-lived GnuPG home."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class KeyPair:
    home: Path
    public: str

    def decrypt(self, data: bytes) -> bytes:
        done = subprocess.run(
            ["gpg", "--homedir", str(self.home), "--batch", "--quiet", "--decrypt"],
            input=data,
            capture_output=True,
            check=True,
            timeout=60,
        )
        return done.stdout


@contextmanager
def key_pair(uid: str) -> Iterator[KeyPair]:
    if shutil.which("gpg") is None:
        pytest.skip("gpg is not installed (apt-get install gnupg)")
    # A short path: gpg-agent's socket lives in the home and socket paths are short.
    home = Path(tempfile.mkdtemp(prefix="g", dir="/tmp"))
    base = ["gpg", "--homedir", str(home), "--batch", "--quiet"]
    try:
        subprocess.run(
            [*base, "--passphrase", "", "--quick-gen-key", uid, "default", "default", "never"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        public = subprocess.run(
            [*base, "--armor", "--export", uid], check=True, capture_output=True, timeout=60
        ).stdout.decode("ascii")
        yield KeyPair(home, public)
    finally:
        subprocess.run(
            ["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, check=False
        )
        shutil.rmtree(home, ignore_errors=True)
