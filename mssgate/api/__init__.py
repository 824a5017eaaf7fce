"""The HTTPS API for RIS consumers (FastAPI on uvicorn, TLS from mssgate.tls)."""

from mssgate.api.app import create_app
from mssgate.api.server import ApiServer, start_api

__all__ = ["ApiServer", "create_app", "start_api"]
