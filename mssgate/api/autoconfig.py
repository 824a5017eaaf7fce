"""Mail client autoconfiguration (Mozilla's `config-v1.1.xml`, as Thunderbird fetches it).

Thunderbird looks for it at `autoconfig.<domain>/mail/config-v1.1.xml` and at
`<domain>/.well-known/autoconfig/mail/config-v1.1.xml`, with `?emailaddress=`; both paths
serve the same document, built from the configuration and the local domains, whatever the
Host header says. The answer reveals only what a client must know anyway (host names and
ports); it never says whether a mailbox exists, only whether its domain is ours.

Both servers use implicit TLS (IMAPS, SMTPS) and offer two `<authentication>` methods, in
this order: `password-cleartext` (a password inside TLS), then `TLS-client-cert` (a client
certificate registered for the address: AUTH EXTERNAL on IMAP and SMTP). Thunderbird keeps
the first value it supports and reads no further, so it sets up the password; it has no
mapping for `TLS-client-cert`, and its reader (every version since Thunderbird 3) tries
each `<authentication>` on its own, so an unknown value is skipped, never a reason to drop
the file. Clients that know client certificates can pick the second method; in Thunderbird
a certificate is still chosen by hand.

With `[oidc]` (Pro Santé Connect) a third method, `OAuth2`, comes last: Thunderbird signs in
with OAuth2 only at providers it knows (PSC is not among them), so first it would break the
password set-up; last, a client that can use the issuer's tokens (OAUTHBEARER/XOAUTH2) sees
it is offered, and the others keep the password.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from lxml import etree
from sqlalchemy import Engine

from mssgate.api.problems import ApiProblem, responses
from mssgate.config import Config
from mssgate.directory.domains import Domains
from mssgate.errors import ValidationFailed
from mssgate.identifiers import normalize_address

router = APIRouter(tags=["autoconfig"])

MEDIA_TYPE = "application/xml; charset=utf-8"
EMAIL_ADDRESS = "%EMAILADDRESS%"


def provider_domains(config: Config, local: set[str]) -> list[str]:
    """The configured domain first (it names the provider), then the others sorted."""
    main = config.server.domain.lower()
    rest = sorted(local - {main})
    return [main, *rest] if main in local else rest


def _server(
    parent: etree._Element, tag: str, kind: str, host: str, port: int, *, oauth2: bool
) -> etree._Element:
    server = etree.SubElement(parent, tag, type=kind)
    etree.SubElement(server, "hostname").text = host
    etree.SubElement(server, "port").text = str(port)
    etree.SubElement(server, "socketType").text = "SSL"
    etree.SubElement(server, "username").text = EMAIL_ADDRESS
    methods = ("password-cleartext", "TLS-client-cert")
    for method in (*methods, "OAuth2") if oauth2 else methods:
        etree.SubElement(server, "authentication").text = method
    return server


def client_config(config: Config, domains: list[str]) -> bytes:
    """The clientConfig document for `domains` (the first one names the provider)."""
    root = etree.Element("clientConfig", version="1.1")
    provider = etree.SubElement(root, "emailProvider", id=domains[0])
    for name in domains:
        etree.SubElement(provider, "domain").text = name
    etree.SubElement(provider, "displayName").text = f"{domains[0]} (MSSanté)"
    etree.SubElement(provider, "displayShortName").text = domains[0]
    host = config.server.hostname
    oidc = config.oidc
    # Only when every domain listed takes tokens: the document is one for all of them.
    oauth2 = oidc is not None and (not oidc.domains or set(domains) <= set(oidc.domains))
    _server(provider, "incomingServer", "imap", host, config.imap.imaps_port, oauth2=oauth2)
    _server(provider, "outgoingServer", "smtp", host, config.smtp.smtps_port, oauth2=oauth2)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def _answer(request: Request, emailaddress: str | None) -> Response:
    config: Config = request.app.state.config
    engine: Engine = request.app.state.engine
    # Read at each request: a domain added with the CLI shows without a restart.
    local = Domains(engine, actor="api").local_names()
    if emailaddress is not None:
        try:
            domain = normalize_address(emailaddress).rpartition("@")[2]
        except ValidationFailed:
            domain = ""
        if domain not in local:
            raise ApiProblem(404, "no mail service for this address here")
    domains = provider_domains(config, local)
    if not domains:
        raise ApiProblem(404, "this gateway hosts no mail domain yet")
    return Response(
        content=client_config(config, domains),
        headers={"Content-Type": MEDIA_TYPE, "Cache-Control": "no-store"},
    )


EmailAddress = Annotated[
    str | None,
    Query(max_length=320, description="The address the client is being set up for"),
]
_RESPONSES = {
    200: {
        "description": "Mozilla autoconfig clientConfig v1.1",
        "content": {"application/xml": {}},
    },
    **responses(404, 422),
}


@router.get(
    "/.well-known/autoconfig/mail/config-v1.1.xml",
    response_class=Response,
    responses=_RESPONSES,
    summary="Mail client autoconfiguration (Thunderbird), on the mail domain",
)
def well_known(request: Request, emailaddress: EmailAddress = None) -> Response:
    return _answer(request, emailaddress)


@router.get(
    "/mail/config-v1.1.xml",
    response_class=Response,
    responses=_RESPONSES,
    summary="Mail client autoconfiguration (Thunderbird), on autoconfig.<domain>",
)
def autoconfig_host(request: Request, emailaddress: EmailAddress = None) -> Response:
    return _answer(request, emailaddress)
