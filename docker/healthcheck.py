"""Container healthcheck: GET /healthz on the local API over TLS; exit 0 when it answers ok.

The certificate is verified against the configured CA bundle, but not its host name: the
check talks to localhost, while a production certificate names the public host.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import urllib.request


def main() -> int:
    data = os.environ.get("MSSGATE_SERVER__DATA_DIR", "/var/lib/mssgate")
    ca = os.environ.get("MSSGATE_TLS__CA", os.path.join(data, "certs", "ca.crt.pem"))
    port = int(os.environ.get("MSSGATE_API__PORT", "10443"))
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False
    url = f"https://localhost:{port}/healthz"
    try:
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            body = json.loads(response.read())
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"unhealthy: {exc}\n")
        return 1
    return 0 if body.get("status") == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
