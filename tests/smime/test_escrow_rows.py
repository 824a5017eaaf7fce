"""A held key whose database row was damaged (cut short, its certificate unreadable) is a
configuration fault the operator is told about (EscrowUnavailable: the sender gets the
"signing temporarily unavailable" reply and smime.escrow_unusable is logged), not a stray
ValueError ending DATA in a generic failure."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, update

from mssgate.db.schema import escrowed_keys
from mssgate.db.tx import write
from mssgate.directory import Directory
from mssgate.directory.models import NewProfessional
from mssgate.pki import create_dev_ca, issue_smime_cert
from mssgate.smime.escrow import EscrowUnavailable, KeyEscrow, create_kek, escrowed_key, unseal

ADDRESS = "dr.martin@hopital.test"


@pytest.mark.parametrize("cut", [0, 5, 11])
def test_a_sealed_key_cut_short_does_not_open(tmp_path: Path, cut: int) -> None:
    kek = create_kek(tmp_path / "escrow.kek")
    ca_key, ca_cert = create_dev_ca("test CA")
    _, cert = issue_smime_cert(ca_key, ca_cert, ADDRESS)
    with pytest.raises(EscrowUnavailable, match="does not open"):
        unseal(kek, ADDRESS, cert, b"\x00" * cut)


def test_a_damaged_row_is_unavailable_not_a_crash(sqlite_engine: Engine, tmp_path: Path) -> None:
    directory = Directory(sqlite_engine, actor="test")
    directory.domains.add_local("hopital.test")
    directory.professionals.add(
        NewProfessional(address=ADDRESS, display_name="Dr Martin", idnat="899700367909")
    )
    ca_key, ca_cert = create_dev_ca("test CA")
    key, cert = issue_smime_cert(ca_key, ca_cert, ADDRESS)
    kek_file = tmp_path / "escrow.kek"
    KeyEscrow(sqlite_engine, "test").put(create_kek(kek_file), ADDRESS, key, cert)  # type: ignore[arg-type]
    for damage in ({"wrapped_key": b"short"}, {"cert_pem": "-----BEGIN CERTIFICATE-----\nx"}):
        with write(sqlite_engine) as conn:
            conn.execute(update(escrowed_keys).values(**damage))
        with pytest.raises(EscrowUnavailable):
            escrowed_key(sqlite_engine, kek_file, ADDRESS)
