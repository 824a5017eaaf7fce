"""Every bound the document pipeline applies, in one frozen model (a config section later)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from mssgate.config import DocumentsConfig


class DocumentLimits(BaseModel):
    """Caps on hostile input. Defaults fit a 25 MiB MSSanté message with a few documents."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_message_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    max_mime_depth: int = Field(default=10, gt=0)
    max_mime_parts: int = Field(default=200, gt=0)
    max_zip_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    max_zip_members: int = Field(default=1000, gt=0)
    max_zip_total_bytes: int = Field(default=128 * 1024 * 1024, gt=0)
    max_zip_member_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    # Deflate tops out near 1032:1 on pure zeros; real CDA/PDF/DICOM stay well under 100:1.
    max_compression_ratio: float = Field(default=200.0, gt=1.0)
    max_xml_bytes: int = Field(default=48 * 1024 * 1024, gt=0)
    max_pdf_bytes: int = Field(default=48 * 1024 * 1024, gt=0)
    max_pdf_pages: int = Field(default=200, gt=0)
    # Text is read for the labelled INS only, which a report prints in the header of its
    # first pages: the pages read from the first, stopping after the one that carries it.
    pdf_ins_pages: int = Field(default=3, gt=0)
    pdf_time_budget_seconds: float = Field(default=10.0, gt=0)
    max_pdf_text_chars: int = Field(default=2_000_000, gt=0)
    max_documents: int = Field(default=100, gt=0)
    # Per message, whatever the number of parts (mssgate.documents.budget): bytes decoded
    # from MIME parts, archives and base64 bodies; documents; XML elements and attributes.
    max_message_decoded_bytes: int = Field(default=128 * 1024 * 1024, gt=0)
    max_message_documents: int = Field(default=100, gt=0)
    max_message_xml_nodes: int = Field(default=1_000_000, gt=0)
    # False where only the XDM and CDA facts are wanted (the MSSanté headers of mail leaving
    # for a peer, computed inside the SMTP transaction): PDF text extraction is the one step
    # whose CPU time no in-process check bounds, so it is skipped there rather than run
    # without a worker process that could be killed.
    read_pdfs: bool = True

    @classmethod
    def from_config(cls, config: DocumentsConfig) -> DocumentLimits:
        """The defaults, with the per-message budgets an operator set in `[documents]`."""
        return cls(
            max_message_decoded_bytes=config.max_decoded_bytes,
            max_message_documents=config.max_documents,
            max_message_xml_nodes=config.max_xml_nodes,
        )
