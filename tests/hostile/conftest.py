"""The live-gateway fixtures of the SMTP tests, shared here."""

from tests.smtp.conftest import gateway_setup, peer_pki

__all__ = ["gateway_setup", "peer_pki"]
