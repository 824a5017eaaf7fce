"""A node renamed by editing node.name (issue 13, review): `serve` refuses, in one line, and
starts again under the name its folder is."""

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
