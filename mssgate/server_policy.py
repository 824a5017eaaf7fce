"""The document policy of the running server, published in the database.

`quarantine release` runs in the CLI, whose environment is not the server's: a gateway served
with MSSGATE_POLICY__ALLOW_TEST_INS=true held nothing for test INS, but the CLI run from
another shell read its own (default) policy and held the released document again. `serve`
therefore publishes, at each start, what decides a document's fate (test INS, birthplace,
the per-message limits of `[documents]`), one row per node; the CLI applies the newest.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import Engine, delete, select

from mssgate.config import Config, DocumentsConfig
from mssgate.db.schema import server_policy
from mssgate.db.tx import write


class DocumentPolicy(BaseModel):
    """What the document pipeline reads from the configuration."""

    model_config = ConfigDict(frozen=True)

    allow_test_ins: bool
    require_birthplace: bool
    documents: DocumentsConfig

    @classmethod
    def of(cls, config: Config) -> DocumentPolicy:
        return cls(
            allow_test_ins=config.policy.allow_test_ins,
            require_birthplace=config.policy.require_birthplace,
            documents=config.documents,
        )


class PublishedPolicy(BaseModel):
    model_config = ConfigDict(frozen=True)

    node: str
    published_at: datetime
    policy: DocumentPolicy


def publish_policy(engine: Engine, node: str, policy: DocumentPolicy) -> None:
    """Replaces the node's row: the policy of the serve starting now."""
    with write(engine) as conn:
        conn.execute(delete(server_policy).where(server_policy.c.node == node))
        conn.execute(
            server_policy.insert().values(
                node=node,
                policy_json=policy.model_dump_json(),
                published_at=datetime.now(UTC),
            )
        )


def newest_policy(engine: Engine) -> PublishedPolicy | None:
    """The policy the most recently started server published, if any did."""
    with engine.connect() as conn:
        row = conn.execute(
            select(server_policy).order_by(server_policy.c.published_at.desc()).limit(1)
        ).first()
    if row is None:
        return None
    at = row.published_at
    if at.tzinfo is None:  # SQLite gives the stored UTC time back without its zone
        at = at.replace(tzinfo=UTC)
    try:
        policy = DocumentPolicy.model_validate(json.loads(row.policy_json))
    except (ValueError, ValidationError):
        return None  # written by another version of mssgate: the CLI's own policy applies
    return PublishedPolicy(node=row.node, published_at=at, policy=policy)
