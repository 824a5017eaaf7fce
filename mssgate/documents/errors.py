"""Typed failures of the document pipeline; each maps to an ANS integration code."""

from __future__ import annotations

import enum

from mssgate.errors import MssgateError


class QuarantineCode(enum.IntEnum):
    """ANS integration error codes (HL7 ERR-3 / MDN) that a document can be held for."""

    INS_ABSENT = 903
    INS_MISMATCH = 904
    INS_INCOMPLETE = 905
    OTHER = 906


class DocumentError(MssgateError):
    """A document or its container cannot be read safely. Message is client-safe."""

    code: QuarantineCode = QuarantineCode.OTHER


class LimitExceeded(DocumentError):
    """A configured bound was hit (size, count, depth, ratio, pages, time)."""


class MimeError(DocumentError):
    """The MIME structure is unusable (too deep, too many parts)."""


class ZipError(DocumentError):
    """The archive is corrupt, unsafe (bomb, zip slip) or uses an unsupported feature."""


class XmlError(DocumentError):
    """The XML is malformed or carries a DOCTYPE / entity declarations."""


class XdmError(DocumentError):
    """The IHE XDM archive lacks or misstates its METADATA.XML."""


class CdaError(DocumentError):
    """The CDA R2 document is not one we can integrate (wrong root, no body, bad base64)."""


class TwoPatientsError(CdaError):
    """The CDA names more than one patient (several recordTarget): whose document it is cannot
    be told, so the identities disagree (904) even when one of them is valid."""

    code = QuarantineCode.INS_MISMATCH


class PdfError(DocumentError):
    """The PDF is not a PDF, cannot be parsed, is encrypted, or exceeds its budget."""
