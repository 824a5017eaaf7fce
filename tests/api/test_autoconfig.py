"""Thunderbird autoconfiguration (Mozilla clientConfig v1.1) served by the API over HTTPS."""

from __future__ import annotations

import pytest
from lxml import etree

from mssgate.directory import Directory
from tests.api.conftest import Api

PATHS = ("/.well-known/autoconfig/mail/config-v1.1.xml", "/mail/config-v1.1.xml")
# What Thunderbird's reader accepts (Mozilla's config file format).
SOCKET_TYPES = {"plain", "SSL", "STARTTLS"}
AUTH_METHODS = {
    "password-cleartext",
    "password-encrypted",
    "NTLM",
    "GSSAPI",
    "client-IP-address",
    "TLS-client-cert",
    "OAuth2",
    "none",
}


def fetch(api: Api, path: str, **params: str) -> etree._Element:
    with api.client() as client:
        response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    return etree.fromstring(response.content)


def text(element: etree._Element, path: str) -> str:
    found = element.find(path)
    assert found is not None, path
    return found.text or ""


@pytest.mark.parametrize("path", PATHS)
def test_client_config_matches_the_gateway(api: Api, path: str) -> None:
    root = fetch(api, path, emailaddress="dr.house@hopital-a.test")
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    [provider] = root.findall("emailProvider")
    assert provider.get("id") == "hopital-a.test"
    assert [d.text for d in provider.findall("domain")] == ["hopital-a.test"]

    [imap] = provider.findall("incomingServer")
    assert imap.get("type") == "imap"
    assert text(imap, "hostname") == api.config.server.hostname
    assert text(imap, "port") == str(api.config.imap.imaps_port)
    assert text(imap, "socketType") == "SSL"
    assert text(imap, "username") == "%EMAILADDRESS%"

    [smtp] = provider.findall("outgoingServer")
    assert smtp.get("type") == "smtp"
    assert text(smtp, "hostname") == api.config.server.hostname
    assert text(smtp, "port") == str(api.config.smtp.smtps_port)
    assert text(smtp, "socketType") == "SSL"
    assert text(smtp, "username") == "%EMAILADDRESS%"

    for server in (imap, smtp):
        assert text(server, "socketType") in SOCKET_TYPES
        # Thunderbird takes the first method it supports: the password must come first;
        # the certificate (AUTH EXTERNAL on both servers) is there for clients that know it.
        methods = [a.text for a in server.findall("authentication")]
        assert methods == ["password-cleartext", "TLS-client-cert"]
        assert set(methods) <= AUTH_METHODS
        assert 0 < int(text(server, "port")) < 65536


def test_every_local_domain_is_listed_and_changes_apply_at_once(api: Api) -> None:
    Directory(api.engine, actor="test").domains.add_local("clinique-c.test")
    root = fetch(api, PATHS[0])
    domains = [d.text for d in root.findall("emailProvider/domain")]
    assert domains == ["hopital-a.test", "clinique-c.test"]
    assert fetch(api, PATHS[1], emailaddress="sec@clinique-c.test") is not None


@pytest.mark.parametrize(
    "address", ["someone@gmail.test", "not-an-address", "x@peer.test", "@hopital-a.test"]
)
@pytest.mark.parametrize("path", PATHS)
def test_an_address_elsewhere_gets_a_problem(api: Api, path: str, address: str) -> None:
    Directory(api.engine, actor="test").domains.trust("peer.test", relay="mx.peer.test:25", ca=None)
    with api.client() as client:
        response = client.get(path, params={"emailaddress": address})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 404


def test_the_host_header_changes_nothing(api: Api) -> None:
    with api.client() as client:
        plain = client.get(PATHS[1]).content
        other = client.get(PATHS[1], headers={"Host": "autoconfig.evil.test"}).content
    assert plain == other
