"""A private Postfix instance on a loopback port, as the benchmark's durable reference.

Postfix accepts a message into its queue (written and fsynced by its cleanup daemon) before
it answers 250, then hands it to the discard transport: the same promise the gateway makes
("acknowledged means on disk"), without delivery costs. STARTTLS is required, with the same
server certificate as the gateway. No SASL (Postfix would need Cyrus or Dovecot for it): the
load tool skips AUTH for this peer.

Needs Debian's postfix package and root (Postfix drops privileges to its own user).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = bench-postfix.test
mydomain = bench.test
mydestination =
relay_domains = {domain}
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
default_transport = discard:benchmark
relay_transport = discard:benchmark
local_transport = discard:benchmark
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_security_level = encrypt
smtpd_tls_mandatory_protocols = >=TLSv1.2
message_size_limit = 30000000
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
alias_maps =
alias_database =
smtpd_client_connection_count_limit = 0
smtpd_client_message_rate_limit = 0
default_process_limit = 100
"""


class PostfixPeer:
    def __init__(self, root: Path, *, port: int, cert: Path, key: Path, domain: str) -> None:
        self.root = root
        self.port = port
        self.etc = root / "etc"
        for sub in ("etc", "spool", "data"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        shutil.chown(root / "data", "postfix")
        (self.etc / "main.cf").write_text(
            MAIN_CF.format(root=root, cert=cert, key=key, domain=domain)
        )
        master = Path("/etc/postfix/master.cf").read_text().splitlines()
        lines = []
        for line in master:
            if line.startswith("smtp ") and " inet " in line:
                line = f"127.0.0.1:{port} inet n - n - - smtpd"
            lines.append(line)
        (self.etc / "master.cf").write_text("\n".join(lines) + "\n")

    def _postfix(self, *args: str) -> None:
        subprocess.run(
            ["postfix", "-c", str(self.etc), *args], check=True, capture_output=True, text=True
        )

    def start(self) -> None:
        self._postfix("set-permissions")
        self._postfix("start")
        deadline = time.monotonic() + 30
        import socket

        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("postfix did not start: " + (self.root / "maillog").read_text()[-2000:])

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.etc), "stop"], capture_output=True)
