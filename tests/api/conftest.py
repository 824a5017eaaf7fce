"""A real gateway API over HTTPS: `mssgate init` data folder, uvicorn on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from mssgate.api.server import ApiServer, start_api
from mssgate.config import Config, load_config
from mssgate.db import open_engine, upgrade
from mssgate.queue import DocumentQueue, QueueSettings
from tests.queue.helpers import RIS_A, RIS_B, add_consumer, add_mailboxes


class Running:
    """The server in its own thread and event loop, as `mssgate serve` would run it."""

    def __init__(self, config: Config, engine: Engine, queue: DocumentQueue) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(
            start_api(config, engine, queue=queue, port=0), self.loop
        )
        self.server: ApiServer = started.result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Api:
    base_url: str
    ca: ssl.SSLContext
    queue: DocumentQueue
    engine: Engine
    config: Config
    token_a: str
    token_b: str

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url, verify=self.ca, headers=headers, timeout=30)

    def async_client(self, token: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url,
            verify=self.ca,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )


@pytest.fixture
def gateway(datadir: Path) -> Iterator[tuple[Config, Engine]]:
    config = load_config(datadir / "mssgate.toml")
    engine = open_engine(config.database_url)
    upgrade(engine)
    add_mailboxes(engine, RIS_A, RIS_B)
    yield config, engine
    engine.dispose()


@pytest.fixture
def api(gateway: tuple[Config, Engine], datadir: Path) -> Iterator[Api]:
    config, engine = gateway
    _, token_a = add_consumer(engine, "ris-a", RIS_A)
    _, token_b = add_consumer(engine, "ris-b", RIS_B)
    queue = DocumentQueue(
        engine, settings=QueueSettings(max_attempts=3), data_dir=config.server.data_dir
    )
    running = Running(config, engine, queue)
    ca = ssl.create_default_context(cafile=str(datadir / "certs" / "ca.crt.pem"))
    try:
        yield Api(
            f"https://127.0.0.1:{running.server.port}",
            ca,
            queue,
            engine,
            config,
            token_a,
            token_b,
        )
    finally:
        running.stop()
