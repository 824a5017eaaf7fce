"""Schema migrations: Alembic, driven from code (no alembic.ini for operators to keep).

Every command opens the database through `upgrade`, and at the newest revision it has nothing
to do; Alembic costs a third of a second to import and more to load every migration script to
find the newest. So the common case is answered without it: the version row read with one
SELECT, the newest revision read from the migration files as text. Alembic is imported only
when they differ, or when the files say anything the plain reading does not follow (it then
decides, as before).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from mssgate.db.tx import write
from mssgate.errors import StorageError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

SCRIPT_LOCATION = "mssgate.db:migrations"
VERSIONS = Path(__file__).parent / "migrations" / "versions"


def _alembic_config() -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None  # the package ships at least one migration
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


_DECLARED = {
    name: re.compile(rf"^{name}\s*(?::[^=\n]*)?=\s*(.*?)\s*(?:#.*)?$", re.MULTILINE)
    for name in ("revision", "down_revision", "branch_labels", "depends_on")
}
_QUOTED = re.compile(r"""^(["'])([\w.-]+)\1$""")


def declared_head() -> str | None:
    """The newest revision as the migration files declare it, or None when any file is not
    of the plain shape every one of ours has (`revision = "0016"`, `down_revision = "0015"`
    or None, no branch labels, no dependencies) or the chain has other than one head."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in VERSIONS.glob("*.py"):
        if path.name == "__init__.py":
            continue
        source = path.read_text(encoding="utf-8")
        found = {name: pattern.findall(source) for name, pattern in _DECLARED.items()}
        if any(len(values) != 1 for values in found.values()):
            return None
        if found["branch_labels"] != ["None"] or found["depends_on"] != ["None"]:
            return None
        revision = _QUOTED.match(found["revision"][0])
        down = found["down_revision"][0]
        parent = _QUOTED.match(down)
        if revision is None or (parent is None and down != "None"):
            return None
        revisions.add(revision.group(2))
        if parent is not None:
            parents.add(parent.group(2))
    heads = revisions - parents
    if len(heads) != 1 or not parents <= revisions:
        return None
    return heads.pop()


def _stored_revision(engine: Engine) -> str | None:
    """The database's one version row, or None when there is no such table or not one row
    (a new database, or one Alembic must look at)."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    except SQLAlchemyError:
        return None
    return str(rows[0][0]) if len(rows) == 1 else None


def upgrade(engine: Engine) -> None:
    """Brings the schema to the newest revision; a no-op when it is there already."""
    stored = _stored_revision(engine)
    if stored is not None and stored == declared_head():
        return
    from alembic import command

    try:
        if current_revision(engine) == head_revision():
            return
        cfg = _alembic_config()
        with write(engine) as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot migrate the database: {exc.__class__.__name__}") from exc
