"""The pure core of the document pipeline: MIME, IHE XDM, CDA R2, PDF, INS reconciliation.

Entry point: `process_message(raw, limits=..., allow_test_oids=...)`.
"""

from mssgate.documents.cda import CdaDocument, CdaHeader, CdaSection, parse_cda
from mssgate.documents.errors import (
    CdaError,
    DocumentError,
    LimitExceeded,
    MimeError,
    PdfError,
    QuarantineCode,
    XdmError,
    XmlError,
    ZipError,
)
from mssgate.documents.headers import (
    build_ddm_subject,
    mss_headers,
    parse_ddm_subject,
    x_mss_codecda,
    x_mss_ins,
)
from mssgate.documents.imaging import ImagingPointers, ImagingRef
from mssgate.documents.limits import DocumentLimits
from mssgate.documents.mime import Attachment, MimeWalk, walk_message
from mssgate.documents.pdf import PdfInfo, find_labelled_ins, read_pdf
from mssgate.documents.pipeline import process_message
from mssgate.documents.reconcile import IdentityClaim, IdentityProblem, ResolvedIdentity, reconcile
from mssgate.documents.record import (
    Accepted,
    DdmSubject,
    DocumentInfo,
    DocumentRecord,
    InsRecord,
    PatientRecord,
    PipelineResult,
    Quarantined,
)
from mssgate.documents.xdm import XdmEntry, XdmPackage, parse_metadata, read_xdm
from mssgate.documents.ziparchive import ZipContents, read_zip

__all__ = [
    "Accepted",
    "Attachment",
    "CdaDocument",
    "CdaError",
    "CdaHeader",
    "CdaSection",
    "DdmSubject",
    "DocumentError",
    "DocumentInfo",
    "DocumentLimits",
    "DocumentRecord",
    "IdentityClaim",
    "IdentityProblem",
    "ImagingPointers",
    "ImagingRef",
    "InsRecord",
    "LimitExceeded",
    "MimeError",
    "MimeWalk",
    "PatientRecord",
    "PdfError",
    "PdfInfo",
    "PipelineResult",
    "QuarantineCode",
    "Quarantined",
    "ResolvedIdentity",
    "XdmEntry",
    "XdmError",
    "XdmPackage",
    "XmlError",
    "ZipContents",
    "ZipError",
    "build_ddm_subject",
    "find_labelled_ins",
    "mss_headers",
    "parse_cda",
    "parse_ddm_subject",
    "parse_metadata",
    "process_message",
    "read_pdf",
    "read_xdm",
    "read_zip",
    "reconcile",
    "walk_message",
    "x_mss_codecda",
    "x_mss_ins",
]
