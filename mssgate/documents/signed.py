"""The document pipeline over what a message's signature covers, and nothing else.

Every caller that turns a received message into documents (the RIS feed at delivery, a
quarantine release, the X-MSS fields of outgoing mail, a pipeline worker process) goes
through here rather than calling `process_message` on the whole message: the signature part
and whatever lies around the signed entity are the sender's to fill without breaking the
signature (issue 12 B).
"""

from __future__ import annotations

from mssgate.documents.errors import QuarantineCode
from mssgate.documents.limits import DocumentLimits
from mssgate.documents.pipeline import hold_message, process_message
from mssgate.documents.record import PipelineResult, Quarantined
from mssgate.smime.content import signed_content
from mssgate.smime.extract import MalformedSigned
from mssgate.smime.layers import is_encrypted_entity


def process_signed_message(
    raw: bytes,
    *,
    limits: DocumentLimits | None = None,
    allow_test_oids: bool = False,
    require_birthplace: bool = True,
) -> PipelineResult:
    """`process_message` over the signed content of `raw` (`mssgate.smime.content`).

    A message whose signature structure cannot be read here (it passed the check at DATA, so
    only with signatures off, or a bug) is held whole with the reason, never read as a whole.
    """
    try:
        content = signed_content(raw)
    except MalformedSigned as exc:
        return hold_message(raw, QuarantineCode.OTHER, f"signed content unreadable: {exc}"[:500])
    if is_encrypted_entity(content):
        # Encrypted for its recipient with a key the gateway does not hold: DATA took it from
        # a trusted peer unverified (the signature is inside), on the word of one Content-Type
        # parameter. Its body is ciphertext, or the sender's bytes pretending: never documents.
        return hold_message(
            raw,
            QuarantineCode.OTHER,
            "S/MIME encrypted for its recipient: the gateway can neither open nor verify it,"
            " its documents are not read",
        )
    result = process_message(
        content,
        limits=limits if limits is not None else DocumentLimits(),
        allow_test_oids=allow_test_oids,
        require_birthplace=require_birthplace,
    )
    if content is raw:
        return result
    # Held whole, it is the message received that is held, not the rewrite read here: the
    # quarantine keeps the message once (its content is the stored message), and its digest
    # and size are the message's.
    outcomes = tuple(
        hold_message(raw, o.code, o.reason).outcomes[0]
        if isinstance(o, Quarantined) and o.origin == "message" and o.content == content
        else o
        for o in result.outcomes
    )
    return result.model_copy(update={"outcomes": outcomes})
