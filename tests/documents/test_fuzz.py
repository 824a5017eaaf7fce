"""Mutation fuzzing: damaged CDA, METADATA.XML and archives only ever give typed errors, and
write no file. (test_fuzz_structured.py checks results against an oracle.)"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mssgate.documents import (
    DocumentError,
    DocumentLimits,
    parse_cda,
    parse_metadata,
    process_message,
    read_xdm,
)
from tests.fuzzing import no_file_writes

from .conftest import DRIMBOX
from .factory import (
    PAT_TROIS,
    CdaSpec,
    EntrySpec,
    make_cda,
    make_mail,
    make_metadata,
    make_pdf,
    make_xdm,
)

LIMITS = DocumentLimits()
SEEDS_CDA = [
    make_cda(),
    make_cda(CdaSpec(level="N1", pdf=make_pdf([f"INS {PAT_TROIS.ins}"]))),
    (DRIMBOX / "CDA" / "IMG_CR_IMG_2023.11_CDA-R2-Niveau-1.xml").read_bytes(),
]
SEED_METADATA = [
    make_metadata(PAT_TROIS, [EntrySpec("DOC0001.XML", b"x")], subset="SUBSET01", soap=True),
    (DRIMBOX / "XDM" / "KA202401" / "IHE_XDM" / "SS000001" / "METADATA.XML").read_bytes(),
]
SEED_XDM = make_xdm(PAT_TROIS, [EntrySpec("DOC0001.XML", SEEDS_CDA[1])])

pytestmark = pytest.mark.fuzz
# Run length and randomness come from the Hypothesis profile (tests/conftest.py): bounded in
# CI, long under bench/fuzz.py.
FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(min_value=0, max_value=8))):
        position = draw(st.integers(min_value=0, max_value=len(data) - 1))
        action = draw(st.sampled_from(["flip", "delete", "insert"]))
        if action == "flip":
            data[position] = draw(st.integers(min_value=0, max_value=255))
        elif action == "delete":
            del data[position : position + draw(st.integers(min_value=1, max_value=64))]
        else:
            snippet = draw(
                st.sampled_from([b"<", b">", b"&", b"<!DOCTYPE x>", b"\x00", b"]]>", b"\xff\xfe"])
            )
            data[position:position] = snippet
        if not data:
            data = bytearray(b"<")
    if draw(st.booleans()):
        data = data[: draw(st.integers(min_value=0, max_value=len(data)))]
    return bytes(data)


@FUZZ
@given(mutated(SEEDS_CDA))
def test_cda_parser_only_raises_typed_errors(data: bytes) -> None:
    with no_file_writes(), contextlib.suppress(DocumentError):
        parse_cda(data, LIMITS)


@FUZZ
@given(mutated(SEED_METADATA))
def test_metadata_parser_only_raises_typed_errors(data: bytes) -> None:
    with no_file_writes(), contextlib.suppress(DocumentError):
        parse_metadata(data, LIMITS)


@FUZZ
@given(mutated([SEED_XDM]))
def test_xdm_reader_only_raises_typed_errors(data: bytes) -> None:
    with no_file_writes(), contextlib.suppress(DocumentError):
        read_xdm(data, LIMITS)


@FUZZ
@given(mutated(SEEDS_CDA[:2]), st.booleans())
def test_pipeline_never_raises(data: bytes, as_xdm: bool) -> None:
    if as_xdm:
        attachment = (
            "IHE_XDM.ZIP",
            make_xdm(PAT_TROIS, [EntrySpec("DOC0001.XML", data)]),
            "application/zip",
        )
    else:
        attachment = ("cr.xml", data, "text/xml")
    with no_file_writes():
        result = process_message(make_mail([attachment]), allow_test_oids=True)
    for outcome in result.quarantined:
        assert 903 <= outcome.code <= 906 and outcome.reason and outcome.content is not None
