"""The hostile corpus: inputs an attacker would send, each with the outcome it must get.

Each case is built here from code (no opaque binary files): what it is stays readable, and a
bomb is never stored expanded. `tests/hostile/test_corpus.py` sends them all to a live
gateway. Kinds:
- "document": attached to a signed message for the RIS mailbox; expected: quarantine code.
- "data": the bytes after DATA in an authenticated session; expected: reply prefix, and
  whether the server must close the connection.
- "session": raw bytes from the start of an authenticated session; expected: reply prefix.
- "recipient": an address for RCPT TO; expected: reply prefix.
- "signature": a message whose signature is wrong in some way; expected: reply prefix.
- "outside": a validly signed message with another patient's IHE XDM where no signature
  covers it (signature part, preamble, a part next to the signed entity...); expected: reply
  prefix, and never a document queued from it (issue 12 B.4).
- "imap" / "imap-clear": bytes sent before login to the IMAPS listener, or to the STARTTLS
  one before STARTTLS; then `stream` bytes of filler, sent without waiting for any answer (a
  client that ignores the server). Expected: the prefix of the server's last line before it
  hangs up, and the hang-up itself when `closes`.
"""

from __future__ import annotations

import base64
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

from tests.documents.factory import (
    PAT_TROIS,
    CdaSpec,
    EntrySpec,
    make_cda,
    make_loop_pdf,
    make_metadata,
    make_xdm,
)


@dataclass(frozen=True)
class Case:
    name: str
    klass: str
    kind: str
    build: Callable[[], bytes]
    expect: str | int
    closes: bool = False
    stream: int = 0


def _zip(members: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as z:
        for name, data in members:
            z.writestr(name, data)
    return out.getvalue()


def _bomb(size: int) -> bytes:
    out = io.BytesIO()
    metadata = make_metadata(
        PAT_TROIS, [EntrySpec("DOC0001.XML", b"", write_hash=False)], subset="SUBSET01"
    )
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("IHE_XDM/SUBSET01/METADATA.XML", metadata)
        with z.open("IHE_XDM/SUBSET01/DOC0001.XML", "w", force_zip64=True) as member:
            chunk = b"\0" * (1 << 20)
            for _ in range(size >> 20):
                member.write(chunk)
    return out.getvalue()


def _laughs(depth: int) -> bytes:
    ents = b"".join(
        b'<!ENTITY l%d "%s">' % (i, (b"&l%d;" % (i - 1)) * 10 if i else b"lol")
        for i in range(depth)
    )
    return (
        b'<?xml version="1.0"?><!DOCTYPE r [' + ents + b"]>"
        b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&l%d;</title></ClinicalDocument>'
        % (depth - 1)
    )


XXE = {
    "xxe-file": b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&x;</title></ClinicalDocument>',
    "xxe-network": b'<?xml version="1.0"?><!DOCTYPE d SYSTEM "http://127.0.0.1:9/x.dtd">'
    b'<ClinicalDocument xmlns="urn:hl7-org:v3"/>',
    "xxe-parameter": b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY % p SYSTEM '
    b'"file:///etc/hostname"> %p;]><ClinicalDocument xmlns="urn:hl7-org:v3"/>',
    "xxe-utf16": (
        '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE d [<!ENTITY x SYSTEM '
        '"file:///etc/passwd">]><ClinicalDocument xmlns="urn:hl7-org:v3">&x;</ClinicalDocument>'
    ).encode("utf-16"),
    "xxe-in-metadata": _zip(
        [
            (
                "IHE_XDM/S1/METADATA.XML",
                b'<!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]><m>&x;</m>',
            )
        ]
    ),
}


def _cda_with_ins(value: str) -> bytes:
    return make_cda(CdaSpec()).replace(b"279035121518989", value.encode())


def _nested_mime(depth: int) -> bytes:
    body = b"Content-Type: text/plain\r\n\r\nleaf\r\n"
    for level in range(depth):
        b = b"b%d" % level
        body = (
            b"Content-Type: multipart/mixed; boundary="
            + b
            + b"\r\n\r\n--"
            + b
            + b"\r\n"
            + body
            + b"--"
            + b
            + b"--\r\n"
        )
    return body


CASES: list[Case] = []


def add(
    name: str,
    klass: str,
    kind: str,
    build: Callable[[], bytes],
    expect: str | int,
    closes: bool = False,
    stream: int = 0,
) -> None:
    CASES.append(Case(name, klass, kind, build, expect, closes, stream))


# -- XML: external entities and entity expansion (906) ---------------------------------
for _name, _payload in XXE.items():
    add(_name, "xxe", "document", lambda p=_payload: p, 906)
for _depth in (3, 6, 9, 12):
    add(f"laughs-{_depth}", "entity-bomb", "document", lambda d=_depth: _laughs(d), 906)
add(
    "quadratic-blowup",
    "entity-bomb",
    "document",
    lambda: (
        b'<!DOCTYPE ClinicalDocument [<!ENTITY a "' + b"A" * 50_000 + b'">]>'
        b'<ClinicalDocument xmlns="urn:hl7-org:v3">' + b"&a;" * 5000 + b"</ClinicalDocument>"
    ),
    906,
)

# -- ZIP: bombs, slips, floods (906) ------------------------------------------------------
add("zip-bomb-64m", "zip-bomb", "document", lambda: _bomb(64 << 20), 906)
add(
    "zip-bomb-nested",
    "zip-bomb",
    "document",
    lambda: _zip([(f"IHE_XDM/S1/{i}.ZIP", _bomb(16 << 20)) for i in range(8)]),
    906,
)
add(
    "zip-bomb-many-medium",
    "zip-bomb",
    "document",
    lambda: _zip([(f"IHE_XDM/S1/F{i}", b"\0" * (8 << 20)) for i in range(16)]),
    906,
)
for _i, _slip in enumerate(
    [
        "../../etc/cron.d/x",
        "/tmp/x",
        "IHE_XDM\\S1\\..\\..\\x",
        "IHE_XDM/S1/../../../x",
        "C:/windows/x",
    ]
):
    add(
        f"zip-slip-{_i}",
        "zip-slip",
        "document",
        lambda s=_slip: make_xdm(
            PAT_TROIS, [EntrySpec("DOC0001.XML", make_cda())], extra_members=[(s, b"x")]
        ),
        906,
    )
add(
    "member-flood-10000",
    "member-flood",
    "document",
    lambda: _zip([(f"IHE_XDM/S1/F{i:05d}", b"") for i in range(10_000)], zipfile.ZIP_STORED),
    906,
)
add(
    "member-flood-names",
    "member-flood",
    "document",
    lambda: _zip([("IHE_XDM/S1/" + "n" * 200 + str(i), b"") for i in range(3000)]),
    906,
)
add(
    "zip-truncated",
    "zip-malformed",
    "document",
    lambda: make_xdm(PAT_TROIS, [EntrySpec("DOC0001.XML", make_cda())])[:-40],
    906,
)
add("zip-not-a-zip", "zip-malformed", "document", lambda: b"PK\x03\x04" + b"\xff" * 500, 906)

# -- PDF and base64 (906) -----------------------------------------------------------------
add("pdf-page-loop", "pdf-loop", "document", make_loop_pdf, 906)
add(
    "pdf-loop-in-cda",
    "pdf-loop",
    "document",
    lambda: make_cda(CdaSpec(level="N1", pdf=make_loop_pdf())),
    906,
)
add("pdf-garbage", "pdf-loop", "document", lambda: b"%PDF-1.7\n" + b"\x00garbage" * 1000, 906)
add(
    "cda-base64-garbage",
    "base64",
    "document",
    lambda: make_cda(CdaSpec(level="N1", pdf_base64="@@@not*base64###")),
    906,
)
add(
    "cda-base64-not-pdf",
    "base64",
    "document",
    lambda: make_cda(CdaSpec(level="N1", pdf_base64=base64.b64encode(b"MZ\x90\x00").decode())),
    906,
)

# -- INS: bad keys and impostors ----------------------------------------------------------
for _bad in (
    "279035121518988",
    "188102B17295166",
    "162018885045300",
    "2790351215189",
    "27903512151898X",
):
    add(f"ins-{_bad}", "bad-ins", "document", lambda v=_bad: _cda_with_ins(v), 906)

# -- MIME structure -----------------------------------------------------------------------
add("mime-depth-3000", "mime-depth", "message", lambda: _nested_mime(3000), 906)
add("mime-depth-200", "mime-depth", "message", lambda: _nested_mime(200), 906)

# -- SMTP smuggling variants (550 5.6.0, connection closed) -------------------------------
for _name, _term in {
    "lf-dot-crlf": b"\n.\r\n",
    "crlf-dot-lf": b"\r\n.\n",
    "lf-dot-lf": b"\n.\n",
    "cr-dot-crlf": b"\r.\r\n",
    "crlf-dot-cr": b"\r\n.\r",
}.items():
    add(
        f"smuggle-{_name}",
        "smtp-smuggling",
        "data",
        lambda t=_term: (
            b"Subject: s\r\n\r\nfirst" + t + b"MAIL FROM:<x@evil.test>\r\n"
            b"RCPT TO:<bob@hopital-a.test>\r\nDATA\r\nevil\r\n.\r\n"
        ),
        "550 5.6.0",
        True,
    )
add(
    "bare-lf-in-body",
    "smtp-smuggling",
    "data",
    lambda: b"Subject: s\r\n\r\nline\nother\r\n.\r\n",
    "550 5.6.0",
    True,
)
add(
    "bare-cr-in-header",
    "header-injection",
    "data",
    lambda: b"Subject: a\rBcc: victim@x.test\r\n\r\nb\r\n.\r\n",
    "550 5.6.0",
    True,
)

# -- Command-level injection ---------------------------------------------------------------
add(
    "starttls-pipelined",
    "starttls-injection",
    "starttls",
    lambda: b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@example.org>\r\n",
    "250",
)
add(
    "bare-lf-command",
    "command-injection",
    "session",
    lambda: b"NOOP\nMAIL FROM:<x@evil.test>\r\n",
    "500 5.5.2",
    True,
)
add(
    "nul-in-command",
    "command-injection",
    "session",
    lambda: b"MAIL FROM:<alice@hopital-a.test\x00evil>\r\n",
    "5",
)
add(
    "long-command",
    "command-injection",
    "session",
    lambda: b"NOOP " + b"x" * 100_000 + b"\r\n",
    "500 5.5.6",
)

# -- Forged and duplicate From (553 5.7.1) -------------------------------------------------
for _i, _from in enumerate(
    [
        b"From: bob@hopital-a.test\r\n",
        b"From: alice@hopital-a.test\r\nFrom: alice@hopital-a.test\r\n",
        b"From: alice@hopital-a.test, bob@hopital-a.test\r\n",
        b'From: "alice@hopital-a.test" <bob@hopital-a.test>\r\n',
        b"",
    ]
):
    add(
        f"forged-from-{_i}",
        "forged-from",
        "data",
        lambda f=_from: f + b"Subject: s\r\n\r\nbody\r\n.\r\n",
        "553 5.7.1",
    )

# -- Oversize (552 5.3.4) ------------------------------------------------------------------
add(
    "oversize",
    "oversize",
    "data",
    lambda: b"Subject: s\r\n\r\n" + (b"y" * 76 + b"\r\n") * 70_000 + b".\r\n",
    "552 5.3.4",
)
add(
    "long-line",
    "oversize",
    "data",
    lambda: b"Subject: s\r\n\r\n" + b"z" * 5000 + b"\r\n.\r\n",
    "550 5.6.0",
)

# -- Relay attempts (550 5.7.1) --------------------------------------------------------------
for _rcpt in [
    "bob%example.org@hopital-a.test",
    "example.org!bob@hopital-a.test",
    '"bob@example.org"@hopital-a.test',
    "@example.org:bob@hopital-a.test",
    "bob@[127.0.0.1]",
    "bob",
    "bob@example.org",
    "bob@hopital-a.test.example.org",
]:
    add(f"relay-{_rcpt}", "open-relay", "recipient", lambda r=_rcpt: r.encode(), "550 5.7.1")

# -- Signature problems -------------------------------------------------------------------
for _sig, _code in {
    "unsigned": "550 5.7.1",
    "other-signer": "550 5.7.1",
    "expired": "550 5.7.5",
    "untrusted-ca": "550 5.7.1",
    "tampered": "554 5.7.7",
    "unregistered": "550 5.7.1",
}.items():
    add(f"signer-{_sig}", "bad-signer", "signature", lambda s=_sig: s.encode(), _code)

# -- Documents outside what the signature covers (250: nothing from them is ever queued) ----
for _where, _code in {
    "signature-part": "250",
    "preamble-epilogue": "250",
    "opaque-around-signature-part": "250",
    "part-next-to-signed": "550 5.7.1",
    "third-part-in-signed": "554 5.7.5",
}.items():
    add(f"outside-{_where}", "outside-signature", "outside", lambda w=_where: w.encode(), _code)

# -- IMAP before login: literal bombs (tagged BAD or BYE, connection closed) -----------------
# The front door's pre-auth budget is imap.max_preauth_line (8192 bytes for a command, its
# lines and literals together). A literal announced beyond what is left of it must be refused
# before any "+" and without reading it; whatever is sent anyway dies with the connection.
# 64 MiB of filler is what a client that ignores the refusal pushes; the test fails if the
# server is still reading when it is all sent.
IMAP_FLOOD = 64 << 20
add("imap-literal-1g-sync", "imap-literal-bomb", "imap",
    lambda: b"a LOGIN {999999999}\r\n", "a BAD", True)  # fmt: skip
add("imap-literal-1g-nonsync", "imap-literal-bomb", "imap",
    lambda: b"a LOGIN {999999999+}\r\n", "a BAD", True, IMAP_FLOOD)  # fmt: skip
add("imap-literal-1g-cleartext", "imap-literal-bomb", "imap-clear",
    lambda: b"a LOGIN {999999999+}\r\n", "a BAD", True, IMAP_FLOOD)  # fmt: skip
add("imap-literal-64k-sync", "imap-literal-bomb", "imap",
    lambda: b"a LOGIN {65536}\r\n", "a BAD", True)  # fmt: skip
add("imap-literal-over-budget", "imap-literal-bomb", "imap",
    lambda: b"a LOGIN {8192+}\r\n", "a BAD", True, 8192)  # fmt: skip
add("imap-literal-in-authenticate", "imap-literal-bomb", "imap",
    lambda: b"a AUTHENTICATE PLAIN {999999999+}\r\n", "a BAD", True, IMAP_FLOOD)  # fmt: skip
# Eleven digits: a parser that does not take this for a literal reads its bytes as commands.
add("imap-literal-11-digits", "imap-literal-bomb", "imap",
    lambda: b"a LOGIN {99999999999+}\r\nb LOGOUT\r\n", "a BAD", True, IMAP_FLOOD)  # fmt: skip
add("imap-literal-untagged", "imap-literal-bomb", "imap",
    lambda: b"* LOGIN {999999999+}\r\n", "* BYE", True, IMAP_FLOOD)  # fmt: skip
# Many small literals: each fits, together they exhaust the command's budget.
add("imap-literals-many-sync", "imap-literal-bomb", "imap",
    lambda: b"a LOGIN {1}\r\nx" + b" {1}\r\nx" * 20_000 + b"\r\n", "* BYE", True)  # fmt: skip
add("imap-literals-many-nonsync", "imap-literal-bomb", "imap",
    lambda: b"a LOGIN {64+}\r\n" + (b"y" * 64 + b" {64+}\r\n") * 2_000, "a BAD", True)  # fmt: skip
add("imap-literals-many-empty", "imap-literal-bomb", "imap",
    lambda: b"a LOGIN {0+}\r\n" + b"{0+}\r\n" * 50_000, "* BYE", True)  # fmt: skip
# Many commands, each with a small literal: the per-connection command budget ends it.
add("imap-literal-commands", "imap-literal-bomb", "imap",
    lambda: b"".join(b"n%d NOOP {100+}\r\n%s\r\n" % (i, b"z" * 100) for i in range(100)),
    "* BYE", True)  # fmt: skip
# ID may be as long as RFC 2971 allows (~63 KB on the wire, values of 1,024 octets), no more.
add("imap-id-literal-1g", "imap-literal-bomb", "imap",
    lambda: b'a ID ("name" {999999999+}\r\n', "a BAD", True, IMAP_FLOOD)  # fmt: skip
add("imap-id-endless-value", "imap-literal-bomb", "imap",
    lambda: b'a ID ("name" "', "* BYE", True, IMAP_FLOOD)  # fmt: skip
add("imap-id-many-literals", "imap-literal-bomb", "imap",
    lambda: b"a ID (" + b'"f" {1024+}\r\n' + b"v" * 1024 + (b' "f" {1024+}\r\n' + b"v" * 1024) * 99,
    "a BAD", True)  # fmt: skip
# An endless line: no CRLF ever, in the clear and inside TLS.
add("imap-endless-line", "imap-literal-bomb", "imap",
    lambda: b"a LOGIN ", "* BYE", True, IMAP_FLOOD)  # fmt: skip
add("imap-endless-line-cleartext", "imap-literal-bomb", "imap-clear",
    lambda: b"a LOGIN {", "* BYE", True, IMAP_FLOOD)  # fmt: skip
