"""What signing for a user costs the gateway per message, against what every submission
already costs: the verification of a client-signed message (issue 14 part 1).

    .venv/bin/python bench/gateway_sign.py [--runs 200] [--size 65536]

An RSA-2048 S/MIME key from a dev CA, sealed with a random key encryption key as the
escrow keeps it. Per message, CPU time (median of --runs):

- `reference`: `verify_signed_message` of a message the client signed (path cache warm:
  the steady state), what the gateway pays for any submission;
- `gateway`: opening the held key (`unseal`, AES-GCM), `sign_message`, then the same
  verification (the gateway verifies what it signed before spooling it).

Prints both and the ratio gateway / reference. Measured in the same run, on the same
machine: the ratio is the figure; the milliseconds vary by machine. Asserts nothing beyond
"the message verified".
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from cryptography.hazmat.primitives.asymmetric import rsa

from mssgate.pki import create_dev_ca, issue_smime_cert
from mssgate.smime import sign_message, verify_signed_message
from mssgate.smime.escrow import Kek, SigningKey, seal, unseal

ADDRESS = "dr.martin@hopital-a.test"


def message(size: int, n: int) -> bytes:
    line = b"x" * 74 + b"\r\n"
    body = line * max(1, size // len(line))
    head = f"From: {ADDRESS}\r\nTo: b@hopital-a.test\r\nSubject: m{n}\r\n"
    return head.encode() + f"Message-ID: <{n}@bench>\r\n\r\n".encode() + body


def cpu_ms(run: list[float]) -> float:
    return statistics.median(run) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--size", type=int, default=65536)
    args = parser.parse_args()
    ca_key, ca_cert = create_dev_ca("bench CA")
    key, cert = issue_smime_cert(ca_key, ca_cert, ADDRESS)
    assert isinstance(key, rsa.RSAPrivateKey)
    signer: SigningKey = key
    kek = Kek.of(os.urandom(32))
    sealed = seal(kek, ADDRESS, signer, cert)

    def verify(raw: bytes) -> None:
        verdict = verify_signed_message(raw, trust_anchors=[ca_cert], registered=[cert])
        assert verdict.ok, verdict.detail

    verify(sign_message(message(args.size, -1), key=signer, cert=cert))  # warms the path cache
    reference, gateway = [], []
    for n in range(args.runs):
        signed = sign_message(message(args.size, n), key=signer, cert=cert)
        start = time.process_time()
        verify(signed)
        reference.append(time.process_time() - start)
        raw = message(args.size, n)
        start = time.process_time()
        opened = unseal(kek, ADDRESS, cert, sealed)
        verify(sign_message(raw, key=opened, cert=cert))
        gateway.append(time.process_time() - start)
    ref, gw = cpu_ms(reference), cpu_ms(gateway)
    print(f"{args.size} bytes, {args.runs} messages, CPU ms per message (median)")
    print(f"  reference (verify a client-signed message)  {ref:6.2f}")
    print(f"  gateway   (open key, sign, verify)          {gw:6.2f}")
    print(f"  ratio gateway / reference                   {gw / ref:6.2f}")


if __name__ == "__main__":
    main()
