"""The [oidc] section: absent means off, the environment overrides it, autoconfig says OAuth2."""

from __future__ import annotations

import pytest
from lxml import etree

from mssgate.api.autoconfig import client_config
from mssgate.config import config_from_mapping
from mssgate.errors import ConfigError

SECTION = {"issuer": "https://auth.psc.test/realms/esante", "audience": "mssgate"}


def methods(document: bytes) -> list[list[str]]:
    root = etree.fromstring(document)
    servers = root.findall("emailProvider/incomingServer") + root.findall(
        "emailProvider/outgoingServer"
    )
    return [[m.text or "" for m in s.findall("authentication")] for s in servers]


def test_absent_means_off_and_autoconfig_offers_no_oauth2(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MSSGATE_OIDC__AUDIENCE", raising=False)
    config = config_from_mapping({})
    assert config.oidc is None
    for found in methods(client_config(config, ["hopital-a.test"])):
        assert "OAuth2" not in found


def test_environment_overrides_and_autoconfig(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSSGATE_OIDC__AUDIENCE", "from-the-environment")
    config = config_from_mapping({"oidc": SECTION})
    assert config.oidc is not None
    assert config.oidc.audience == "from-the-environment"
    assert config.oidc.id_claim == "preferred_username"
    for found in methods(client_config(config, ["hopital-a.test"])):
        # Last: Thunderbird keeps the first method it supports, the password.
        assert found == ["password-cleartext", "TLS-client-cert", "OAuth2"]
    # Limited to other domains: this document offers no OAuth2.
    limited = config_from_mapping({"oidc": {**SECTION, "domains": ["other.test"]}})
    for found in methods(client_config(limited, ["hopital-a.test"])):
        assert "OAuth2" not in found


@pytest.mark.parametrize(
    "bad",
    [
        {**SECTION, "issuer": "http://auth.psc.test"},
        {**SECTION, "algorithms": ["HS256"]},
        {**SECTION, "introspection": True},
    ],
)
def test_refused_settings(bad: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MSSGATE_OIDC__AUDIENCE", raising=False)
    with pytest.raises(ConfigError):
        config_from_mapping({"oidc": bad})
