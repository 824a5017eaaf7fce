"""`python -m mssgate.imap STATUS_FILE`: Dovecot plus the IMAP front door alone.

For tests, the benchmark and trying the IMAP side without the rest of the gateway; `mssgate
serve` runs the same pieces. Writes {"pid", "ports", "lmtp", "dovecot_pid"} to STATUS_FILE
once listening, and keeps it current when Dovecot is restarted; SIGTERM stops everything.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from mssgate import eventloop
from mssgate.config import Config, load_config
from mssgate.db import open_engine
from mssgate.directory import Directory
from mssgate.dovecot import DovecotSupervisor
from mssgate.errors import MssgateError
from mssgate.imap.server import start_imap
from mssgate.logs import configure
from mssgate.passwords import configure as configure_passwords
from mssgate.smtp.limits import AuthPenalty, ConnectionLimiter


async def main(status: Path, config: Config) -> int:
    configure_passwords(config.auth)
    engine = open_engine(config.database_url)
    directory = Directory(engine, actor="imap")
    dovecot = DovecotSupervisor(config, data_dir=config.server.data_dir)
    await dovecot.start()
    watch = asyncio.create_task(dovecot.run(), name="dovecot")
    penalty = AuthPenalty.from_config(config.smtp)
    limiter = ConnectionLimiter(config.smtp.max_connections_per_ip)
    service = await start_imap(
        config, directory, dovecot.imap_backend, penalty=penalty, limiter=limiter
    )

    def write_status() -> None:
        body = {
            "pid": os.getpid(),
            "ports": service.ports,
            "lmtp": str(dovecot.lmtp_socket),
            "dovecot_pid": dovecot.pid,
            "restarts": dovecot.restarts,
        }
        tmp = status.with_suffix(".tmp")
        tmp.write_text(json.dumps(body))
        tmp.replace(status)

    write_status()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    restarts = dovecot.restarts
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 0.1)
        except TimeoutError:
            if dovecot.restarts != restarts:
                restarts = dovecot.restarts
                write_status()
    await service.stop()
    await dovecot.stop()
    await watch
    engine.dispose()
    return 0


if __name__ == "__main__":
    configure()
    if len(sys.argv) != 2:
        sys.exit("usage: python -m mssgate.imap STATUS_FILE")
    try:
        config = load_config()
        sys.exit(eventloop.run(main(Path(sys.argv[1]), config), config.server.event_loop))
    except MssgateError as exc:
        sys.exit(f"error: {exc}")
