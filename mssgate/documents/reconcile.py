"""One patient per document, one truth: reconcile the identities a document states.

A document may name its patient up to three times: the XDM metadata (patientId and
sourcePatientInfo), the CDA header (recordTarget) and the text of its PDF (a labelled INS).
Every INS stated must be valid and equal, and every strict trait stated twice must agree;
otherwise the document is held with the ANS integration code:

- 903 no INS anywhere;
- 904 two sources disagree (INS value, OID, or a strict trait);
- 905 an INS without the strict traits (or without an OID: PDF text alone);
- 906 an INS that is not one (bad key, unknown or refused OID).

Reasons name sources and traits, never values: they reach operators and senders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from pydantic import BaseModel, ConfigDict

from mssgate.documents.errors import QuarantineCode
from mssgate.documents.record import InsSource
from mssgate.ins import (
    INS,
    InvalidINS,
    PatientTraits,
    is_qualified,
    merge_traits,
    parse_ins,
    trait_conflicts,
)

_PRIORITY: Final[dict[str, int]] = {"cda": 0, "xdm": 1, "pdf": 2}


class IdentityClaim(BaseModel):
    """What one source says about the patient. `oid` is None for PDF text."""

    model_config = ConfigDict(frozen=True)

    source: InsSource
    ins_value: str | None = None
    oid: str | None = None
    traits: PatientTraits | None = None


class ResolvedIdentity(BaseModel):
    model_config = ConfigDict(frozen=True)

    ins: INS
    source: InsSource
    traits: PatientTraits
    # Strict definition: matricule + OID + all five traits, birthplace included.
    qualified: bool


class IdentityProblem(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: QuarantineCode
    reason: str


def reconcile(
    claims: Sequence[IdentityClaim], *, allow_test_oids: bool, require_birthplace: bool = True
) -> ResolvedIdentity | IdentityProblem:
    ordered = sorted(claims, key=lambda c: _PRIORITY[c.source])
    checked: list[tuple[IdentityClaim, INS | None]] = []
    for claim in ordered:
        if claim.ins_value is None:
            continue
        if claim.oid is None:
            checked.append((claim, None))
            continue
        try:
            checked.append(
                (claim, parse_ins(claim.ins_value, claim.oid, allow_test_oids=allow_test_oids))
            )
        except InvalidINS as exc:
            return IdentityProblem(
                code=QuarantineCode.OTHER, reason=f"INS from {claim.source}: {exc.reason.value}"
            )
    if not checked:
        return IdentityProblem(code=QuarantineCode.INS_ABSENT, reason="INS absent")
    first_claim = checked[0][0]
    for claim, _ in checked[1:]:
        if claim.ins_value != first_claim.ins_value:
            return IdentityProblem(
                code=QuarantineCode.INS_MISMATCH,
                reason=f"INS differs between {first_claim.source} and {claim.source}",
            )
    oids = {ins.oid for _, ins in checked if ins is not None}
    if len(oids) > 1:
        return IdentityProblem(
            code=QuarantineCode.INS_MISMATCH, reason="INS issued under different OIDs"
        )
    with_traits = [c for c in ordered if c.traits is not None and not c.traits.is_empty()]
    merged = PatientTraits()
    for index, claim in enumerate(with_traits):
        assert claim.traits is not None
        for other in with_traits[index + 1 :]:
            assert other.traits is not None
            conflicts = trait_conflicts(claim.traits, other.traits)
            if conflicts:
                names = ", ".join(c.value for c in conflicts)
                return IdentityProblem(
                    code=QuarantineCode.INS_MISMATCH,
                    reason=f"traits differ between {claim.source} and {other.source}: {names}",
                )
        merged = merge_traits(merged, claim.traits)
    ins = next((ins for _, ins in checked if ins is not None), None)
    if ins is None:
        return IdentityProblem(
            code=QuarantineCode.INS_INCOMPLETE, reason="INS without OID (PDF text only)"
        )
    missing = merged.missing(require_birthplace=require_birthplace)
    if missing:
        names = ", ".join(m.value for m in missing)
        return IdentityProblem(
            code=QuarantineCode.INS_INCOMPLETE, reason=f"INS without strict traits: {names}"
        )
    source = next(claim.source for claim, value in checked if value is not None)
    return ResolvedIdentity(
        ins=ins,
        source=source,
        traits=merged,
        qualified=is_qualified(ins, merged, require_birthplace=True),
    )
