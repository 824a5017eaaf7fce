"""Per local domain: whether the gateway signs its users' unsigned submissions with the key
it holds for them (`domain set D --sign-for-users`; docs/smime.md, "Signed by the gateway")."""

from __future__ import annotations

from sqlalchemy import Engine, bindparam, delete, select

from mssgate import audit
from mssgate.db.schema import domain_signing, domains
from mssgate.db.tx import write
from mssgate.directory.models import SignForUsers as SignForUsers
from mssgate.errors import NotFound, ValidationFailed
from mssgate.identifiers import normalize_domain

DEFAULT = SignForUsers.MISSING
# Asked per message: built once (queue/statements.py says why). Parameter: domain_name.
_SIGN_FOR_USERS = select(domain_signing.c.sign_for_users).where(
    domain_signing.c.name == bindparam("domain_name")
)


def sign_for_users(engine: Engine, domain: str) -> SignForUsers:
    """The domain's setting (asked per message); the default when none is stored."""
    with engine.connect() as conn:
        value = conn.execute(_SIGN_FOR_USERS, {"domain_name": domain}).scalar()
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
