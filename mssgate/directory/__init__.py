"""The directory of professionals, domains and RIS consumers."""

from __future__ import annotations

from sqlalchemy import Engine

from mssgate.directory.certificates import Certificates
from mssgate.directory.consumers import Consumers
from mssgate.directory.domains import Domains
from mssgate.directory.professionals import Professionals


class Directory:
    """Every directory operation, each change audited as `actor`."""

    def __init__(self, engine: Engine, *, actor: str) -> None:
        self.engine = engine
        self.professionals = Professionals(engine, actor)
        self.certificates = Certificates(engine, actor)
        self.domains = Domains(engine, actor)
        self.consumers = Consumers(engine, actor)


__all__ = ["Directory"]
