"""A real OpenID Connect provider (npm's oidc-provider) run by the tests, over HTTPS.

`npm ci` installs it from tests/oidc/package-lock.json the first time (CI installs Node with
Debian's nodejs and npm); without node the tests that need it are skipped, saying why.
"""

from __future__ import annotations

import json
import select
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mssgate.pki import create_dev_ca, issue_server_cert, write_certificate, write_private_key
from tests.conftest import install_lock

HERE = Path(__file__).resolve().parent
AUDIENCE = "https://mssgate.test/"
OPAQUE_AUDIENCE = "https://mssgate-introspected.test/"
# Luhn-valid RPPS numbers: Alice's and Bob's mailboxes, and a practitioner with none here.
ALICE_RPPS = "99700000005"
BOB_RPPS = "99700000013"
STRANGER_RPPS = "99700000021"
SECRET = "a client secret long enough for the provider"

CLIENTS = [
    {"client_id": "alice", "preferred_username": "8" + ALICE_RPPS, "acr": "eidas1"},
    {"client_id": "alice-bare", "preferred_username": ALICE_RPPS, "acr": "eidas1"},
    {"client_id": "alice-weak", "preferred_username": "8" + ALICE_RPPS, "acr": "eidas0"},
    {"client_id": "alice-short", "preferred_username": "8" + ALICE_RPPS, "acr": "eidas1", "ttl": 1},
    {"client_id": "bob", "preferred_username": "8" + BOB_RPPS, "acr": "eidas1"},
    {"client_id": "stranger", "preferred_username": "8" + STRANGER_RPPS, "acr": "eidas1"},
    {"client_id": "no-rpps", "acr": "eidas1"},
    {"client_id": "gateway"},
]


@dataclass
class OidcProvider:
    issuer: str
    ca: Path

    def token(self, client: str, resource: str = AUDIENCE) -> str:
        """An access token from the provider's token endpoint (client_credentials)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        with httpx.Client(verify=context, timeout=30) as http:
            metadata = http.get(self.issuer + "/.well-known/openid-configuration").json()
            answer = http.post(
                metadata["token_endpoint"],
                data={"grant_type": "client_credentials", "resource": resource, "scope": "mss"},
                auth=(client, SECRET),
            )
        answer.raise_for_status()
        token: str = answer.json()["access_token"]
        return token

    def env(self, **extra: str) -> dict[str, str]:
        """The gateway's [oidc] section, as environment overrides."""
        return {
            "MSSGATE_OIDC__ISSUER": self.issuer,
            "MSSGATE_OIDC__AUDIENCE": AUDIENCE,
            "MSSGATE_OIDC__CA": str(self.ca),
            # No leeway: a token past its exp is refused in the tests at once.
            "MSSGATE_OIDC__CLOCK_SKEW_SECONDS": "0",
            **extra,
        }


def _install() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js is not installed (apt-get install nodejs npm): no OpenID provider")
    with install_lock(HERE / "node_modules"):  # one npm ci when test processes run side by side
        if not (HERE / "node_modules" / "oidc-provider").is_dir():
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--silent"],
                cwd=HERE,
                check=True,
                timeout=600,
            )


@pytest.fixture(scope="module")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    _install()
    top = tmp_path_factory.mktemp("oidc")
    ca_key, ca_cert = create_dev_ca("OIDC test CA")
    key, cert = issue_server_cert(ca_key, ca_cert, "127.0.0.1")
    paths = {name: top / f"{name}.pem" for name in ("ca", "cert", "key")}
    write_certificate(paths["ca"], ca_cert)
    write_certificate(paths["cert"], cert)
    write_private_key(paths["key"], key)
    spec = top / "spec.json"
    clients = [{"client_secret": SECRET, **c} for c in CLIENTS]
    document = {"key": str(paths["key"]), "cert": str(paths["cert"]), "clients": clients,
                "opaque_resource": OPAQUE_AUDIENCE}  # fmt: skip
    spec.write_text(json.dumps(document))
    log = (top / "provider.log").open("wb")
    # Node hung once at start-up (after its import, before listening: threads on a futex)
    # and the fixture waited on readline for pytest-timeout's 300 s, leaving the process
    # and its pipes behind. A start is now bounded, killed when late, and tried once more.
    for attempt in (1, 2):
        proc = subprocess.Popen(
            ["node", str(HERE / "provider.mjs"), str(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        assert proc.stdout is not None and proc.stdin is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else b""
        if line:
            break
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        if attempt == 2:
            log.close()
            raise RuntimeError(
                f"provider not ready in 60 s, twice: {(top / 'provider.log').read_text()}"
            )
    try:
        yield OidcProvider(issuer=json.loads(line)["issuer"], ca=paths["ca"])
    finally:
        proc.stdin.close()  # the provider exits when its stdin ends
        proc.stdout.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
