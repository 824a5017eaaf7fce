"""PKI tooling: the development CA, TLS/S/MIME/DKIM material, and reading certificates.

Built on `cryptography` only. Every failure is a `PKIError` whose message names the file or the
reason, never key material.
"""

from __future__ import annotations

from mssgate.pki._types import KeyType, PrivateKey, PublicKey
from mssgate.pki.bundle import pkcs12_bytes, write_pkcs12
from mssgate.pki.ca import create_dev_ca
from mssgate.pki.dev import DevPKIPaths, SmimeFiles, init_dev_pki, issue_smime_files
from mssgate.pki.files import (
    load_certificate,
    load_certificates,
    load_private_key,
    write_certificate,
    write_private_file,
    write_private_key,
    write_public_file,
)
from mssgate.pki.inspect import CertificateInfo, certificate_info, days_left, is_smime_for
from mssgate.pki.issue import issue_client_cert, issue_server_cert, issue_smime_cert
from mssgate.pki.keys import dkim_dns_record, generate_dkim_key, generate_key

__all__ = [
    "CertificateInfo",
    "DevPKIPaths",
    "KeyType",
    "PrivateKey",
    "PublicKey",
    "SmimeFiles",
    "certificate_info",
    "create_dev_ca",
    "days_left",
    "dkim_dns_record",
    "generate_dkim_key",
    "generate_key",
    "init_dev_pki",
    "is_smime_for",
    "issue_client_cert",
    "issue_server_cert",
    "issue_smime_cert",
    "issue_smime_files",
    "load_certificate",
    "load_certificates",
    "load_private_key",
    "pkcs12_bytes",
    "write_certificate",
    "write_pkcs12",
    "write_private_file",
    "write_private_key",
    "write_public_file",
]
