"""Review of issue 12 A.2 on the relay: one spool entry whose delivery breaks in a way nobody
planned for is set aside (`held`, with the reason), and the others go on.

Before, the relay caught the footing's errors only (database, disk): anything else left
`run_once`, the supervisor restarted the relay, and the same message came first again, so
the relay crash-looped and every message behind it, to every peer, waited.
"""

from __future__ import annotations

import asyncio

from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import update

from mssgate.db.schema import certificates
from mssgate.db.tx import write
from mssgate.directory.models import EncryptionPolicy
from mssgate.pki import create_dev_ca, issue_smime_cert
from mssgate.relay.encryption import OutgoingEncryption
from tests.relay.conftest import DR_B, DR_C, World, message

# A certificate row that no longer parses (an older import's bug, a hand edit): the
# encryption plan of a message to its owner raises ValueError.
BROKEN_PEM = "-----BEGIN CERTIFICATE-----\nMIIBbroken\n-----END CERTIFICATE-----\n"


def test_a_message_the_relay_cannot_handle_is_held_and_the_next_one_goes(world: World) -> None:
    ca_key, ca_cert = create_dev_ca("peer S/MIME CA")
    key, cert = issue_smime_cert(ca_key, ca_cert, DR_C)
    assert isinstance(key, rsa.RSAPrivateKey)
    world.directory.certificates.register(DR_C, cert)
    with write(world.engine) as conn:
        conn.execute(update(certificates).values(pem=BROKEN_PEM))
    encryption = OutgoingEncryption(
        world.directory,
        default=EncryptionPolicy("opportunistic"),
        dkim_selector="mssgate",
        dkim_key_pem=None,
    )
    bad = world.submit(message(body="to C"), DR_C)
    good = world.submit(message(body="to B"), DR_B)

    async def scenario() -> list[bytes]:
        peer = world.peer()
        await peer.start()
        try:
            await world.worker(encryption=encryption).run_once()
        finally:
            await peer.stop()
        return [m.content for m in peer.handler.messages]

    sent = asyncio.run(scenario())
    assert len(sent) == 1 and b"to B" in sent[0]
    assert world.state(good, DR_B) == "delivered"
    held = world.spool.recipient_state(bad, DR_C)
    assert held.state == "held"
    assert held.last_error is not None and "ValueError" in held.last_error
    # It keeps its file until an operator releases it.
    assert world.spool.path(bad).exists()
    assert world.spool.release(bad, actor="test") == 1
    assert world.state(bad, DR_C) == "pending"
