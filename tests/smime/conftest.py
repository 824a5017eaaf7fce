"""Fixtures for the S/MIME tests: a test CA, practitioners' certificates, openssl on files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from smime_fixtures import OPENSSL, Identity, Pki, RunOpenssl, write_identity

from mssgate.pki import create_dev_ca, issue_smime_cert


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    counter = iter(range(10_000))

    def ca(name: str) -> Identity:
        key, cert = create_dev_ca(name)
        cert_path, key_path = write_identity(directory, f"ca{next(counter)}", key, cert)
        return Identity("", key, cert, cert_path, key_path)

    main_ca = ca("mssgate test CA")

    def make(email: str, *, issuer: Identity = main_ca, **options: object) -> Identity:
        key, cert = issue_smime_cert(issuer.key, issuer.cert, email, **options)  # type: ignore[arg-type]
        assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
        cert_path, key_path = write_identity(directory, f"id{next(counter)}", key, cert)
        return Identity(email, key, cert, cert_path, key_path)

    return Pki(
        ca=main_ca,
        other_ca=ca("another CA"),
        alice=make("dr.alice.martin@hopital-a.test"),
        bob=make("dr.bob.durand@clinique-b.test"),
        carol_ec=make("carol.petit@hopital-a.test", key_type="ec"),
        make=make,
    )


@pytest.fixture(scope="session")
def openssl() -> RunOpenssl:
    if not Path(OPENSSL).exists():
        pytest.skip("needs /usr/bin/openssl")

    def run(
        *args: str | Path, check: bool = True, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(
            [OPENSSL, *map(str, args)], capture_output=True, input=stdin, timeout=60, check=False
        )
        if check and result.returncode != 0:
            pytest.fail(f"openssl {' '.join(map(str, args))} failed:\n{result.stderr.decode()}")
        return result

    return run
