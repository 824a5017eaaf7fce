"""One readable line when a listener cannot bind: which listener, which address, why, and the
setting that chooses its port."""

from __future__ import annotations

import errno

from mssgate.errors import ConfigError

_WHY = {
    errno.EADDRINUSE: "the port is in use (another program, or another mssgate serve)",
    errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
    errno.EADDRNOTAVAIL: "this machine has no such address",
}


def bind_failed(listener: str, host: str, port: int, setting: str, exc: OSError) -> ConfigError:
    why = _WHY.get(exc.errno or 0) or (exc.strerror or str(exc))
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRNOTAVAIL:
        # The address is the trouble, not the port: its setting is the section's bind.
        section = setting.split(".", 1)[0]
        fix = f"set another address with {section}.bind"
    else:
        # Both places a port is chosen: the file, and the environment that overrides it.
        variable = "MSSGATE_" + setting.upper().replace(".", "__")
        fix = f"choose another port with {setting} (or {variable})"
    return ConfigError(f"cannot listen for {listener} on {where}: {why}; {fix}")
