"""Whether a peer gateway's TLS client certificate belongs to the operator of a domain.

The TLS handshake already verified the certificate against every CA the MTA trusts (ours and
all peers'); this says *which* peer it may speak for. It must chain, by real path validation,
to a root of the bundle configured for the domain (`domain trust --ca`), with the bundle's
other certificates and the chain the peer presented as intermediates; and, when the domain
has an operator DN, its subject must be that name. Under IGC-Santé every operator's gateway
certificate comes from the same CA, so the operator DN is what tells two operators apart.
"""

from __future__ import annotations

import datetime as dt
import functools
import ssl
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from mssgate.directory.domains import TrustedPeer

# Reasons, for the log line of a refusal (never sent to the client).
NO_CA = "no CA configured for the domain"
NO_CHAIN = "certificate does not chain to the domain's CA"
WRONG_SUBJECT = "certificate subject is not the domain's operator DN"
BAD_OPERATOR_DN = "the domain's operator DN is not a valid RFC 4514 name"
_ENCODING_DER = 2  # _ssl.ENCODING_DER, for the private chain of Python before 3.13


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@functools.lru_cache(maxsize=256)
def _bundle(ca_pem: str) -> tuple[Store, tuple[x509.Certificate, ...]] | None:
    """(trust anchors, intermediates) of a stored bundle; parsed once per distinct text.

    The anchors are its self-signed certificates. A bundle without one (a single
    intermediate CA, as data stored before bundles were kept may hold) is anchored on all of
    its certificates, which is what trusting that one CA always meant.
    """
    try:
        certs = x509.load_pem_x509_certificates(ca_pem.encode("ascii"))
        roots = [c for c in certs if _self_signed(c)]
        anchors = roots or certs
        return Store(anchors), tuple(c for c in certs if c not in anchors)
    except ValueError:  # not PEM, or no certificate in it
        return None


@functools.lru_cache(maxsize=256)
def _name(operator_dn: str) -> x509.Name | None:
    try:
        return x509.Name.from_rfc4514_string(operator_dn)
    except ValueError:
        return None


def chains_to(
    cert: x509.Certificate, ca_pem: str, presented: Sequence[x509.Certificate] = ()
) -> bool:
    """Whether `cert` validates up to a root of `ca_pem` as a TLS client certificate."""
    bundle = _bundle(ca_pem)
    if bundle is None:
        return False
    store, intermediates = bundle
    verifier = PolicyBuilder().store(store).time(dt.datetime.now(dt.UTC)).build_client_verifier()
    try:
        verifier.verify(cert, [*intermediates, *presented])
    except (VerificationError, ValueError):
        return False
    return True


def refusal(
    cert: x509.Certificate, peer: TrustedPeer, presented: Sequence[x509.Certificate] = ()
) -> str | None:
    """Why `cert` may not speak for the domain `peer` describes; None when it may."""
    if not peer.ca_pem:
        return NO_CA
    if not chains_to(cert, peer.ca_pem, presented):
        return NO_CHAIN
    if peer.operator_dn:
        expected = _name(peer.operator_dn)
        if expected is None:
            # Stored by the trust-list import, which takes the list's text as it is: refuse
            # rather than skip a check the list asks for.
            return BAD_OPERATOR_DN
        if cert.subject != expected:
            return WRONG_SUBJECT
    return None


def presented_chain(obj: ssl.SSLObject | None) -> list[x509.Certificate]:
    """The certificates the peer sent in its handshake, when Python lets us read them.

    Public from Python 3.13 (`get_unverified_chain`); 3.10 to 3.12 have the same call on the
    private `_sslobj`. Where neither exists the bundle's intermediates alone are used.
    """
    if obj is None:
        return []
    getter = getattr(obj, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(obj, "_sslobj", None), "get_unverified_chain", None)
    if getter is None:
        return []
    chain = []
    for item in getter() or []:
        der = item if isinstance(item, bytes) else item.public_bytes(_ENCODING_DER)
        try:
            chain.append(x509.load_der_x509_certificate(der))
        except ValueError:
            continue
    return chain
