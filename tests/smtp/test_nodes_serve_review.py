"""serve and nodes (issue 13, review): a node renamed by editing node.name is refused in one
line and starts again under the name its folder is; a single SQLite node opens no node listener."""

from __future__ import annotations

import pytest

from tests.smtp.conftest import Gateway


def test_serve_refuses_a_data_folder_under_another_node_name(gateway_setup: Gateway) -> None:
    gateway_setup.start()
    gateway_setup.stop()
    try:
        with pytest.raises(RuntimeError) as refused:
            gateway_setup.start(extra_env={"MSSGATE_NODE__NAME": "renamed"})
    finally:
        if gateway_setup.proc is not None and gateway_setup.proc.poll() is None:
            gateway_setup.stop()  # started under the new name (before the fix)
    assert "serve exited 1" in str(refused.value)
    assert "(node.name says 'renamed')" in gateway_setup.logs()
    gateway_setup.start()  # its own name: as before
    gateway_setup.stop()


def test_a_single_sqlite_node_opens_no_node_listener(gateway_setup: Gateway) -> None:
    """The single-node default on SQLite: no node-to-node listener on node.port, nothing
    handed over (every mailbox is delivered here)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gateway_setup.start(extra_env={"MSSGATE_NODE__PORT": str(port)})
    try:
        with socket.socket() as client, pytest.raises(ConnectionRefusedError):
            client.connect(("127.0.0.1", port))
        assert not [e for e in gateway_setup.events() if str(e.get("event")).startswith("node.l")]
    finally:
        gateway_setup.stop()
