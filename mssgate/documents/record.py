"""What the pipeline hands over: a `DocumentRecord` (published JSON schema) or a quarantine.

The record mirrors interface.md "Document record". Envelope fields (id, received_at,
message_id, subject, sender, mailbox, state) belong to the caller, which knows the message;
the pipeline leaves them empty. Original bytes travel next to the record, not inside it, so
that the JSON stays small and the bytes are served as they came.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mssgate.documents.errors import QuarantineCode
from mssgate.documents.imaging import DicomStudy, ImagingRef
from mssgate.ins import InsKind, Sex

DocumentFormat = Literal["cda-n1", "cda-n3", "pdf", "xdm"]
InsSource = Literal["cda", "xdm", "pdf"]


class InsRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    value: str = Field(description="15 characters: 13-character matricule (NIR or NIA) + key")
    oid: str | None = Field(description="Authority OID; None only when read from PDF text")
    kind: InsKind
    test: bool = Field(description="Issued under a test/demo OID (fictitious patient)")
    qualified: bool = Field(description="Matricule, OID and every strict trait present")
    source: InsSource = Field(description="Where the value was read (others agreed with it)")


class PatientRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    birth_family: str | None = None
    given: str | None = Field(default=None, description="Birth first names, space-separated")
    first_given: str | None = Field(default=None, description="First birth first name")
    birth_date: str | None = Field(default=None, description="ISO date, may be partial")
    sex: Sex | None = None
    birthplace: str | None = Field(default=None, description="INSEE COG code of birthplace")


class DocumentInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: DocumentFormat
    type_code: str | None = Field(default=None, description="LOINC (or CI-SIS) document code")
    type_code_system: str | None = None
    title: str | None = None
    effective_time: str | None = Field(default=None, description="ISO 8601, source precision")
    unique_id: str | None = Field(default=None, description="root^extension or root")
    set_id: str | None = None
    version: int | None = None
    replaces: str | None = Field(default=None, description="unique_id of the replaced document")
    author_rpps: str | None = Field(default=None, description="IDNPS of the author (RPPS OID)")
    custodian: str | None = Field(
        default=None, description="Custodian organisation id (root^extension), CDA only"
    )
    custodian_name: str | None = None
    confidentiality: tuple[str, ...] = ()
    class_code: str | None = None
    format_code: str | None = None
    sections: tuple[str, ...] = Field(default=(), description="N3 section codes, in order")
    withdrawn: bool = Field(
        default=False,
        description="The sender withdrew this document (XDM status Deprecated): the RIS gets "
        "it as MDM^T04, OBX-11 D",
    )
    pdf_metadata: dict[str, str] = Field(
        default_factory=dict,
        description="PDF document information (Author, Creator, Producer, CreationDate...), "
        "names without the slash; of the embedded PDF for an N1",
    )


class DdmSubject(BaseModel):
    """The CI-SIS subject `XDM/1.0/DDM+<title> <NAME> <first name> <dd/mm/yyyy>`, read."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    title: str
    family: str
    given: str
    birth_date: str = Field(description="ISO YYYY-MM-DD")
    error_code: int | None = Field(default=None, description="From a `[KO...][code]` prefix")


class DocumentRecord(BaseModel):
    """One document delivered to consumers (interface.md "Document record")."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="DocumentRecord")

    id: str | None = None
    received_at: datetime | None = None
    message_id: str | None = None
    subject: str | None = None
    sender: str | None = None
    mailbox: str | None = None
    state: str | None = None
    duplicate_of: str | None = Field(
        default=None,
        description="The earlier queue entry of this mailbox holding the same bytes (sha256), "
        "when the document came again in a new message: a resend, kept as its own entry",
    )
    ins: InsRecord
    patient: PatientRecord
    document: DocumentInfo
    imaging: tuple[ImagingRef, ...] = ()
    dicom_catalog: tuple[DicomStudy, ...] = Field(
        default=(),
        description="The CDA's DICOM object catalog: studies, series, SOP instances, WADO links",
    )
    ddm_subject: DdmSubject | None = Field(
        default=None, description="The subject, read by the CI-SIS convention, when it follows it"
    )
    notes: tuple[str, ...] = Field(
        default=(),
        description="What did not stop the document but a reader should know (truncated text, "
        "rejected INS candidates, a subject off the convention)",
    )
    tags: tuple[str, ...] = Field(
        default=(),
        description="Labels routing rules put on this entry (`tag`), for the consumer's "
        "POST /v1/leases?tag=; empty without rules",
    )
    sha256: str
    size: int
    content_type: str
    origin: str = Field(description="Where the bytes were found in the message")


class Accepted(BaseModel):
    model_config = ConfigDict(frozen=True)

    outcome: Literal["accepted"] = "accepted"
    record: DocumentRecord
    content: bytes = Field(repr=False)


class Quarantined(BaseModel):
    """A document (or container) held for a human, with the ANS code and the untouched bytes."""

    model_config = ConfigDict(frozen=True)

    outcome: Literal["quarantined"] = "quarantined"
    code: QuarantineCode
    reason: str
    content: bytes = Field(repr=False)
    sha256: str
    size: int
    content_type: str
    origin: str
    # Whatever could be read before the verdict, for the operator's screen.
    document: DocumentInfo | None = None
    type_code: str | None = None


DocumentOutcome = Accepted | Quarantined


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def quarantine(
    code: QuarantineCode,
    reason: str,
    content: bytes,
    *,
    content_type: str,
    origin: str,
    document: DocumentInfo | None = None,
) -> Quarantined:
    return Quarantined(
        code=code,
        reason=reason,
        content=content,
        sha256=sha256_hex(content),
        size=len(content),
        content_type=content_type,
        origin=origin,
        document=document,
        type_code=document.type_code if document is not None else None,
    )


class PipelineResult(BaseModel):
    """Per-document outcomes of one message, plus message-level facts the caller may use."""

    model_config = ConfigDict(frozen=True)

    outcomes: tuple[Accepted | Quarantined, ...] = ()
    defects: tuple[str, ...] = ()
    message_id: str | None = None
    subject: str | None = None
    # Codes of the CDA documents found inside IHE_XDM archives (X-MSS-CODECDA), and whether
    # one of them carried a qualified INS (X-MSS-INS).
    xdm_cda_codes: tuple[str, ...] = ()
    xdm_qualified_ins: bool = False

    @property
    def accepted(self) -> tuple[Accepted, ...]:
        return tuple(o for o in self.outcomes if isinstance(o, Accepted))

    @property
    def quarantined(self) -> tuple[Quarantined, ...]:
        return tuple(o for o in self.outcomes if isinstance(o, Quarantined))
