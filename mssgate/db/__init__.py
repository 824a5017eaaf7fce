"""Database access: one SQLAlchemy Core engine per process, schema managed by Alembic."""

from mssgate.db.engine import open_engine, sqlalchemy_url
from mssgate.db.migrate import upgrade

__all__ = ["open_engine", "sqlalchemy_url", "upgrade"]
