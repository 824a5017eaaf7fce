"""A routing rule as data: a name, an order, a match, actions, enabled.

The same model is read from `[[routing.rule]]` in the configuration, stored in the database
(`routing_rules`, `mssgate route add`) and written by the CLI's `--match FIELD=VALUE[,VALUE]`
and `--action` expressions, so a rule means the same wherever it was written. Everything an
operator types is bounded and checked here, before it reaches a running gateway.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mssgate.errors import ValidationFailed

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TAG: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
# As the French write them: 01..95 (2A, 2B for Corsica), overseas 971..989.
_DEPARTEMENT: Final = re.compile(r"(?:0[1-9]|1\d|2[1-9AB]|[3-8]\d|9[0-5]|9[78]\d)")
FORMATS: Final = ("cda-n1", "cda-n3", "pdf", "xdm")
_MAX_VALUES: Final = 50
_MAX_VALUE: Final = 200
MAX_XPATH: Final = 1000
# The CDA namespace under both prefixes people write (`cda:` in IHE texts, `hl7:` in ANS's).
XPATH_NAMESPACES: Final = {
    "cda": "urn:hl7-org:v3",
    "hl7": "urn:hl7-org:v3",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
}

Value = Annotated[str, Field(min_length=1, max_length=_MAX_VALUE)]
Values = Annotated[tuple[Value, ...], Field(max_length=_MAX_VALUES)]

# Compared without case: addresses and domains, formats; codes the documents write upper.
_LOWER: Final = frozenset({"mailbox", "domain", "sender", "sender_domain", "format", "d2lm"})
_UPPER: Final = frozenset({"confidentiality", "departement"})
# Match fields whose values are read from the CDA itself (mssgate.routing.probe).
CDA_FIELDS: Final = ("template_id", "service_event", "practice_setting", "departement", "d2lm")
# The `d2lm` values (mssgate.routing.probe.d2lm_labels computes them).
D2LM_VALUES: Final = ("fin", "fidd", "l2-eligible", "not-l2", "l2-read")


class Match(BaseModel):
    """Every field given must match (AND); a field matches when any of its values does (OR).
    An empty match matches every document."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mailbox: Values = Field((), description="The recipient mailbox the document came to")
    domain: Values = Field((), description="The recipient mailbox's domain")
    sender: Values = Field((), description="The envelope sender")
    sender_domain: Values = Field((), description="The envelope sender's domain")
    format: Values = Field((), description="cda-n1, cda-n3, pdf or xdm")
    code: Values = Field((), description="The document's code (LOINC)")
    template_id: Values = Field((), description="A templateId root of the CDA header")
    service_event: Values = Field((), description="documentationOf/serviceEvent/code (CCAM)")
    practice_setting: Values = Field((), description="standardIndustryClassCode of the header")
    confidentiality: Values = Field((), description="A confidentiality code (N, R, V...)")
    departement: Values = Field((), description="The patient's département (postal code)")
    d2lm: Values = Field(
        (),
        description="A CANCER-D2LM form: fin, fidd, l2-eligible (ACR 1 or 2 both breasts), "
        "not-l2, l2-read (its L2 section has a result)",
    )
    xpath: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_XPATH,
        description="XPath 1.0 over the CDA (prefix cda: or hl7:); matches when its value is "
        "true, a non-empty node set, a non-empty string or a non-zero number",
    )

    @model_validator(mode="before")
    @classmethod
    def _clean(cls, data: object) -> object:
        """Values stripped and cased once, whatever wrote them (TOML, the CLI, the database);
        no comma inside one, as the CLI separates values with commas."""
        if not isinstance(data, dict):
            return data
        cleaned: dict[str, object] = {}
        for name, value in data.items():
            if name == "xpath" or not isinstance(value, list | tuple):
                cleaned[name] = value
                continue
            values = []
            for item in value:
                if not isinstance(item, str):
                    raise ValueError(f"{name}: values are strings")
                item = item.strip()
                if not item or "," in item or not item.isprintable():
                    raise ValueError(f"{name}: {item[:40]!r} is not a value (empty, comma)")
                values.append(
                    item.upper() if name in _UPPER else item.lower() if name in _LOWER else item
                )
            cleaned[name] = tuple(values)
        return cleaned

    @field_validator("format")
    @classmethod
    def _format(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        bad = [v for v in values if v not in FORMATS]
        if bad:
            raise ValueError(f"format {bad[0]!r} is none of {', '.join(FORMATS)}")
        return values

    @field_validator("d2lm")
    @classmethod
    def _d2lm(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        bad = [v for v in values if v not in D2LM_VALUES]
        if bad:
            raise ValueError(f"d2lm {bad[0]!r} is none of {', '.join(D2LM_VALUES)}")
        return values

    @field_validator("departement")
    @classmethod
    def _departement(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        bad = [v for v in values if not _DEPARTEMENT.fullmatch(v)]
        if bad:
            raise ValueError(f"département {bad[0]!r} is not one (75, 2A, 971...)")
        return values

    @field_validator("xpath")
    @classmethod
    def _xpath(cls, value: str | None) -> str | None:
        if value is not None:
            compile_xpath(value)
        return value

    def needs_cda(self) -> bool:
        """Whether matching needs the CDA read again (fields outside the document record)."""
        return self.xpath is not None or any(getattr(self, f) for f in CDA_FIELDS)


def compile_xpath(expression: str) -> object:
    """The compiled XPath, or ValueError. lxml is imported here only: a CLI command that
    never sees an XPath does not pay for it. EXSLT regular expressions are off: a pattern
    of ours is no place for backtracking over a hostile document."""
    from lxml import etree

    try:
        return etree.XPath(
            expression, namespaces=XPATH_NAMESPACES, regexp=False, smart_strings=False
        )
    except etree.XPathError as exc:
        raise ValueError(f"XPath does not compile: {exc}") from None


ActionKind = Literal["copy-to", "forward", "tag", "hold", "stop"]
ACTION_KINDS: Final = ("copy-to", "forward", "tag", "hold", "stop")


class Action(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ActionKind
    value: str | None = Field(None, max_length=_MAX_VALUE)

    @model_validator(mode="after")
    def _check(self) -> Action:
        if self.kind == "stop":
            if self.value:
                raise ValueError("stop takes no value")
            return self
        if not self.value:
            raise ValueError(f"{self.kind} needs a value")
        if self.kind == "copy-to":
            from mssgate.identifiers import normalize_address

            try:
                address = normalize_address(self.value)
            except ValidationFailed as exc:
                raise ValueError(f"copy-to: {exc}") from None
            object.__setattr__(self, "value", address)
        elif self.kind == "forward":
            object.__setattr__(self, "value", _forward_value(self.value))
        elif self.kind == "tag" and not _TAG.fullmatch(self.value):
            raise ValueError(
                "tag: 1 to 64 letters, digits, '.', '_', ':' or '-',"
                " starting with a letter or digit"
            )
        elif self.kind == "hold" and not self.value.isprintable():
            raise ValueError("hold: the reason must be printable text on one line")
        return self

    def text(self) -> str:
        return self.kind if self.value is None else f"{self.kind} {self.value}"

    def forward_parts(self) -> tuple[str, str | None]:
        """(recipient, sending mailbox or None for `[routing] forward_from`) of a forward."""
        assert self.kind == "forward" and self.value is not None
        to, _, sender = self.value.partition(" from ")
        return to, sender or None


def _forward_value(value: str) -> str:
    """`ADDRESS` or `ADDRESS from APP@DOMAIN`, both addresses normalised; ValueError else."""
    from mssgate.identifiers import normalize_address

    to, sep, sender = value.strip().partition(" from ")
    try:
        target = normalize_address(to.strip())
        if not sep:
            return target
        return f"{target} from {normalize_address(sender.strip())}"
    except ValidationFailed as exc:
        raise ValueError(f"forward: {exc} (forward ADDRESS [from APP-MAILBOX])") from None


class Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    order: int = Field(100, ge=0, le=1_000_000, description="Lower runs first; then by name")
    enabled: bool = True
    match: Match = Match()
    actions: tuple[Action, ...] = Field(min_length=1, max_length=20)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(
                "name: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return value

    @model_validator(mode="after")
    def _no_forward_loop(self) -> Rule:
        # A rule that only matches what X sent and forwards it to X forwards every document
        # back where it came from: refused here, not found at the first message.
        for action in self.actions:
            if action.kind == "forward":
                to, _ = action.forward_parts()
                if self.match.sender and set(self.match.sender) <= {to}:
                    raise ValueError(f"forward {to}: the rule only matches what {to} sent (a loop)")
                if self.match.mailbox and set(self.match.mailbox) <= {to}:
                    raise ValueError(f"forward {to}: the rule only matches mail to {to} (a loop)")
        return self

    @field_validator("actions", mode="before")
    @classmethod
    def _actions(cls, value: object) -> object:
        # In TOML and on the command line an action is one string: "copy-to ADDRESS".
        if isinstance(value, list | tuple):
            return tuple(parse_action(v) if isinstance(v, str) else v for v in value)
        return value


class RuleSpec(Rule):
    """A rule as `[[routing.rule]]` writes it: `match` a table of FIELD = "value" or
    ["values"], `actions` a list of strings."""

    @field_validator("match", mode="before")
    @classmethod
    def _match(cls, value: object) -> object:
        if isinstance(value, dict):
            return {
                k: ((v,) if isinstance(v, str) and k != "xpath" else v) for k, v in value.items()
            }
        return value


def parse_action(text: str) -> Action:
    """`copy-to ADDRESS`, `forward ADDRESS [from APP-MAILBOX]`, `tag LABEL`, `hold
    REASON...`, `stop`; ValueError otherwise."""
    kind, _, value = text.strip().partition(" ")
    kind = kind.lower()
    if kind not in ACTION_KINDS:
        raise ValueError(f"action {kind!r} is none of {', '.join(ACTION_KINDS)}")
    return Action.model_validate({"kind": kind, "value": value.strip() or None})


def parse_match(items: list[str]) -> Match:
    """`FIELD=VALUE[,VALUE...]` items (the CLI's --match), into a Match; ValueError with one
    readable line otherwise. A field given twice adds its values; `xpath=` takes the rest of
    the item whole (an XPath has commas and '=')."""
    fields: dict[str, list[str] | str] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        name = key.strip().lower().replace("-", "_")
        if not sep or not name:
            raise ValueError(f"--match {item[:60]!r}: expected FIELD=VALUE")
        if name not in Match.model_fields:
            known = ", ".join(f.replace("_", "-") for f in Match.model_fields)
            raise ValueError(f"--match: unknown field {key.strip()[:40]!r} (known: {known})")
        if name == "xpath":
            if "xpath" in fields:
                raise ValueError("--match: one xpath per rule")
            fields["xpath"] = raw.strip()
            continue
        values = [v.strip() for v in raw.split(",")]
        if not all(values):
            raise ValueError(f"--match {key.strip()}: an empty value")
        existing = fields.setdefault(name, [])
        assert isinstance(existing, list)
        existing.extend(values)
    return Match.model_validate(fields)


def match_items(match: Match) -> list[str]:
    """The `FIELD=VALUE,...` items that give back `match` (for `route show` and the tests)."""
    items: list[str] = []
    for name in Match.model_fields:
        value = getattr(match, name)
        if not value:
            continue
        shown = value if isinstance(value, str) else ",".join(value)
        items.append(f"{name.replace('_', '-')}={shown}")
    return items
