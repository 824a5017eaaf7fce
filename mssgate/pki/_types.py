"""Type aliases shared by the PKI modules."""

from __future__ import annotations

from typing import Literal, TypeAlias

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

# Only the key types the gateway can sign with (TLS, S/MIME, DKIM). DSA, Ed448 and X25519
# keys are refused on load rather than carried around as types nobody handles.
PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
KeyType: TypeAlias = Literal["rsa", "ec"]
