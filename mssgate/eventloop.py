"""Which event loop runs the gateway's listeners: asyncio's own by default, uvloop (libuv,
its TLS, sockets and pipes compiled) when `server.event_loop = "uvloop"` says so.

uvloop moves the per-chunk work of TLS records, socket and pipe reads out of Python, where the
IMAP front door's relay spends its time (docs/performance.md, "IMAP relay"). It is not the
default because the MLLP listener cannot log or bound failed TLS handshakes on it
(mssgate/mllp/listener.py): an operator trades that for the relay's speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from mssgate.errors import ConfigError

EventLoop = Literal["uvloop", "asyncio"]
T = TypeVar("T")


def loop_factory(name: EventLoop) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for `asyncio.Runner`; None: asyncio's default loop."""
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        raise ConfigError(
            'server.event_loop is "uvloop" but uvloop is not installed: install it '
            '(pip install uvloop) or set server.event_loop = "asyncio"'
        ) from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], loop: EventLoop) -> T:
    """`asyncio.run(main)` on the chosen loop."""
    try:
        factory = loop_factory(loop)
    except ConfigError:
        main.close()  # never awaited: no "coroutine was never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def running() -> EventLoop:
    """The loop this code runs on, for the logs (`imap.started` names it)."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"
