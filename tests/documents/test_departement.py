"""The département of a woman's postal code (issue 16 section 2: the CRCDC of her
département of residence). Saint-Barthélemy (97133) and Saint-Martin (97150) are collectivités
of their own, INSEE 977 and 978, though their postal codes start with Guadeloupe's 971;
Monaco's 98000 is no French département at all."""

from __future__ import annotations

import pytest

from mssgate.documents.departement import departement_of


@pytest.mark.parametrize(
    ("postal", "departement"),
    [("75011", "75"), ("01000", "01"), ("20000", "2A"), ("20199", "2A"), ("20200", "2B"),
     ("20600", "2B"), ("97110", "971"), ("97133", "977"), ("97150", "978"), ("97200", "972"),
     ("97500", "975"), ("97600", "976"), ("98800", "988"), ("98714", "987"), ("98000", None),
     ("00100", None), ("7501", None), ("750011", None), ("ABCDE", None),
     ("\uff17\uff15\uff10\uff11\uff11", None), (" 75 011 ", "75"), ("", None), (None, None)],
)  # fmt: skip
def test_departement_of_a_postal_code(postal: str | None, departement: str | None) -> None:
    assert departement_of(postal) == departement
