"""Per local domain: whether the gateway signs its users' unsigned submissions with the key
it holds for them (`domain set D --sign-for-users`; docs/smime.md, "Signed by the gateway")."""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import Engine, delete, select

from mssgate import audit
from mssgate.db.schema import domain_signing, domains
from mssgate.db.tx import write
from mssgate.errors import NotFound, ValidationFailed
from mssgate.identifiers import normalize_domain


class SignForUsers(StrEnum):
    # Today's rule: an unsigned submission is refused.
    OFF = "off"
    # The default: a submission that carries no signature at all is signed for its sender.
    MISSING = "missing"
    # Every submission whose whole message is not signed is signed for its sender (a client
    # signature over one part only gets the gateway's around the whole); a message the user
    # signed as a whole is left as it is.
    ALWAYS = "always"

    @classmethod
    def from_cli(cls, word: str) -> SignForUsers:
        try:
            return cls(word.strip().lower())
        except ValueError:
            raise ValueError(f"invalid choice {word!r}: use off, missing or always") from None


DEFAULT = SignForUsers.MISSING


def sign_for_users(engine: Engine, domain: str) -> SignForUsers:
    """The domain's setting (asked per message); the default when none is stored."""
    query = select(domain_signing.c.sign_for_users).where(domain_signing.c.name == domain)
    with engine.connect() as conn:
        value = conn.execute(query).scalar()
    return SignForUsers(value) if value else DEFAULT


def set_sign_for_users(engine: Engine, actor: str, domain: str, mode: SignForUsers) -> None:
    key = normalize_domain(domain)
    with write(engine) as conn:
        kind = conn.execute(select(domains.c.kind).where(domains.c.name == key)).scalar()
        if kind is None:
            raise NotFound(f"no domain {key!r} (add it with 'mssgate domain add')")
        if kind != "local":
            raise ValidationFailed(
                "--sign-for-users applies to a local domain (its users' submissions), not to"
                " a peer domain"
            )
        conn.execute(delete(domain_signing).where(domain_signing.c.name == key))
        conn.execute(domain_signing.insert().values(name=key, sign_for_users=mode.value))
        audit.append(
            conn,
            actor=actor,
            action="domain.sign_for_users",
            subject=key,
            detail={"sign_for_users": mode.value},
        )
