"""The DSN extension's ESMTP parameters (RFC 3461): MAIL FROM's RET and ENVID, RCPT TO's
NOTIFY and ORCPT, read from a client and written for a peer.

Values are bounded as the RFC bounds them (ENVID 100 characters, ORCPT 500, both once
xtext-decoded), and kept decoded: what goes on a wire again is encoded again (`encode_xtext`),
so a value that held "+2B" or a space can never end a parameter or a command line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

# RFC 3461 4.4 and 4.2: the lengths once xtext-decoded.
ENVID_MAX: Final = 100
ORCPT_MAX: Final = 500
NOTIFY_VALUES: Final = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})
_HEX: Final = re.compile(r"\+([0-9A-F]{2})")
# xtext (RFC 3461 4): printable ASCII except "+" and "=", or "+" and two upper-case hex digits.
_XTEXT: Final = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")
_ADDR_TYPE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,31}")


class DsnSyntaxError(ValueError):
    """A DSN parameter the client got wrong; the text says which and why (for a 501)."""


@dataclass(frozen=True)
class MessageDsn:
    """MAIL FROM's parameters: RET=FULL|HDRS, ENVID (decoded)."""

    ret: str | None = None
    envid: str | None = None


@dataclass(frozen=True)
class RecipientDsn:
    """RCPT TO's parameters: NOTIFY (None: not given, RFC 3461's default of failures and
    delays) and ORCPT as (address type, decoded address)."""

    notify: frozenset[str] | None = None
    orcpt: tuple[str, str] | None = None

    @property
    def wants_success(self) -> bool:
        return self.notify is not None and "SUCCESS" in self.notify

    @property
    def wants_failure(self) -> bool:
        """Failures are reported unless NOTIFY was given without FAILURE (NEVER, SUCCESS)."""
        return self.notify is None or "FAILURE" in self.notify

    def notify_text(self) -> str | None:
        if self.notify is None:
            return None
        order = ("NEVER", "SUCCESS", "FAILURE", "DELAY")
        return ",".join(v for v in order if v in self.notify)

    def orcpt_text(self) -> str | None:
        """ORCPT as stored and sent: `type;xtext`."""
        if self.orcpt is None:
            return None
        return f"{self.orcpt[0]};{encode_xtext(self.orcpt[1])}"


def decode_xtext(value: str, *, what: str) -> str:
    if not _XTEXT.fullmatch(value):
        raise DsnSyntaxError(f"{what} is not valid xtext (RFC 3461 4)")
    decoded = _HEX.sub(lambda m: chr(int(m.group(1), 16)), value)
    # Decoded, it is still one printable ASCII line: a control character (a CR, a NUL) would
    # reach a DSN's fields.
    if any(not (0x20 <= ord(c) < 0x7F) for c in decoded):
        raise DsnSyntaxError(f"{what} decodes to a control character")
    return decoded


def encode_xtext(value: str) -> str:
    return "".join(
        c if 0x21 <= ord(c) <= 0x7E and c not in "+=" else f"+{ord(c):02X}" for c in value
    )


def _once(seen: set[str], key: str) -> None:
    if key in seen:
        raise DsnSyntaxError(f"{key} given twice")
    seen.add(key)


def split_params(params: Iterable[str], keys: frozenset[str]) -> tuple[dict[str, str], list[str]]:
    """The parameters named in `keys` (upper-cased names, values as given) and the others,
    untouched. A DSN parameter without a value is a syntax error."""
    ours: dict[str, str] = {}
    rest: list[str] = []
    for param in params:
        name, eq, value = param.partition("=")
        key = name.upper()
        if key not in keys:
            rest.append(param)
            continue
        if not eq or not value:
            raise DsnSyntaxError(f"{key} needs a value")
        if key in ours:
            raise DsnSyntaxError(f"{key} given twice")
        ours[key] = value
    return ours, rest


MAIL_KEYS: Final = frozenset({"RET", "ENVID"})
RCPT_KEYS: Final = frozenset({"NOTIFY", "ORCPT"})


def parse_mail(params: dict[str, str]) -> MessageDsn:
    ret = params.get("RET")
    if ret is not None:
        ret = ret.upper()
        if ret not in ("FULL", "HDRS"):
            raise DsnSyntaxError("RET must be FULL or HDRS")
    envid = params.get("ENVID")
    if envid is not None:
        envid = decode_xtext(envid, what="ENVID")
        if len(envid) > ENVID_MAX:
            raise DsnSyntaxError(f"ENVID longer than {ENVID_MAX} characters")
    return MessageDsn(ret=ret, envid=envid)


def parse_notify(value: str) -> frozenset[str]:
    items = [v.upper() for v in value.split(",")]
    seen: set[str] = set()
    for item in items:
        if item not in NOTIFY_VALUES:
            raise DsnSyntaxError("NOTIFY takes NEVER, or any of SUCCESS, FAILURE, DELAY")
        _once(seen, f"NOTIFY value {item}")
    if "NEVER" in items and len(items) > 1:
        raise DsnSyntaxError("NOTIFY=NEVER cannot be combined with other values")
    return frozenset(items)


def parse_orcpt(value: str) -> tuple[str, str]:
    kind, semi, address = value.partition(";")
    if not semi or not _ADDR_TYPE.fullmatch(kind) or not address:
        raise DsnSyntaxError("ORCPT must be addr-type;xtext (rfc822;user@example.org)")
    decoded = decode_xtext(address, what="ORCPT")
    if len(decoded) > ORCPT_MAX:
        raise DsnSyntaxError(f"ORCPT longer than {ORCPT_MAX} characters")
    return kind.lower(), decoded


def parse_rcpt(params: dict[str, str]) -> RecipientDsn:
    notify = params.get("NOTIFY")
    orcpt = params.get("ORCPT")
    return RecipientDsn(
        notify=parse_notify(notify) if notify is not None else None,
        orcpt=parse_orcpt(orcpt) if orcpt is not None else None,
    )


def dsn_mail_options(dsn: MessageDsn) -> list[str]:
    """MAIL FROM's RET and ENVID for a peer or a node that offers DSN. Values are kept decoded
    and encoded here: nothing in them can end the parameter or the line."""
    options = [f"RET={dsn.ret}"] if dsn.ret else []
    if dsn.envid:
        options.append(f"ENVID={encode_xtext(dsn.envid)}")
    return options


def dsn_rcpt_options(dsn: RecipientDsn) -> list[str]:
    """RCPT TO's NOTIFY and ORCPT, likewise."""
    options = [f"NOTIFY={dsn.notify_text()}"] if dsn.notify is not None else []
    if dsn.orcpt is not None:
        options.append(f"ORCPT={dsn.orcpt_text()}")
    return options


def stored_rcpt(notify: str | None, orcpt: str | None) -> RecipientDsn:
    """A recipient's parameters as the spool keeps them (what `notify_text`/`orcpt_text`
    wrote); a row that no longer parses counts as none given."""
    try:
        return RecipientDsn(
            notify=parse_notify(notify) if notify else None,
            orcpt=parse_orcpt(orcpt) if orcpt else None,
        )
    except DsnSyntaxError:
        return RecipientDsn()
