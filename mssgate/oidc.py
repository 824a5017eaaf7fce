"""Pro Santé Connect access tokens: is this token good, and which RPPS does it speak for?

The issuer is found by OpenID Connect discovery (`/.well-known/openid-configuration`), its
signing keys (JWKS) fetched over HTTPS with the configured CA and kept for
`oidc.jwks_cache_seconds`; a token signed with a key id not in the cache refetches them, at
most once per `oidc.jwks_refetch_min_seconds` (the provider rotated its keys, or a forger
is trying kids: either way one fetch). Signatures are checked by PyJWT, never here.

A provider that fails to answer (discovery, JWKS, introspection) is not asked again for
`oidc.jwks_refetch_min_seconds`: meanwhile what needs it fails at once (ProviderError), while
tokens signed by keys already held go on being checked. A failure counts nothing toward a
client's login penalty, so without this every made-up token would cost one more connection and
a worker thread for up to `http_timeout_seconds`.

With `oidc.introspection` the provider is asked instead (RFC 7662), for opaque tokens or an
operator who wants revocation seen at once; the same claims are checked on its answer.

Every call may block on the network (bounded by `http_timeout_seconds` for the whole
response and `max_document_bytes`): callers run it off the event loop.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from mssgate.config import OidcConfig
from mssgate.errors import ValidationFailed
from mssgate.identifiers import parse_practitioner_id


class TokenRejected(Exception):
    """The token does not let its bearer in; `reason` is for the log, never for the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProviderError(TokenRejected):
    """The provider could not be asked (down, slow, answering nonsense)."""


@dataclass(frozen=True)
class VerifiedToken:
    idnat: str  # "8" + RPPS, as the directory keeps it
    subject: str | None  # `sub`, for the log only: never who the client is
    acr: str | None


class TokenVerifier:
    def __init__(self, config: OidcConfig, *, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._issuer = config.issuer.rstrip("/")
        self._clock = clock
        context = ssl.create_default_context(cafile=str(config.ca) if config.ca else None)
        # No proxy from the environment, no redirects: the configured issuer is who we ask.
        self._http = httpx.Client(
            verify=context,
            timeout=config.http_timeout_seconds,
            follow_redirects=False,
            trust_env=False,
        )
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._keys: dict[str | None, dict[str, Any]] = {}
        self._keys_at = 0.0
        self._keys_tried_at = float("-inf")
        # Until when (time.monotonic) the provider is not asked: set by a failure.
        self._down_until = float("-inf")

    @property
    def issuer(self) -> str:
        return self._issuer

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ checks
    def verify(self, token: str) -> VerifiedToken:
        """The token's practitioner, or TokenRejected saying why not."""
        claims = self._introspect(token) if self._config.introspection else self._decode(token)
        acr = claims.get("acr")
        accepted = self._config.acr_values
        if accepted and acr not in accepted:
            raise TokenRejected(f"acr {str(acr)[:40]!r} not accepted")
        return VerifiedToken(
            idnat=self._idnat(claims),
            subject=str(claims.get("sub"))[:200] if claims.get("sub") is not None else None,
            acr=acr if isinstance(acr, str) else None,
        )

    def _idnat(self, claims: dict[str, Any]) -> str:
        # Only the national identifier names the practitioner: `email` may be anyone's
        # (a provider lets users edit it) and `sub` of a client-credentials token is the client.
        value = claims.get(self._config.id_claim)
        if not isinstance(value, str):
            raise TokenRejected(f"no {self._config.id_claim} claim")
        try:
            found = parse_practitioner_id(value)
        except ValidationFailed:
            raise TokenRejected(f"{self._config.id_claim} is no RPPS") from None
        if found.id_type != "RPPS":
            raise TokenRejected(f"{self._config.id_claim} is no RPPS")
        return found.idnat

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejected("not a JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._config.algorithms:
            raise TokenRejected(f"algorithm {str(alg)[:20]!r} not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenRejected("malformed kid")
        key = self._key(kid, alg)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._config.audience,
                issuer=(self._issuer, self._issuer + "/"),
                leeway=self._config.clock_skew_seconds,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("expired") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("wrong issuer") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("not yet valid") from None
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"invalid: {type(exc).__name__}") from None
        return claims

    def _key(self, kid: str | None, alg: str) -> Any:
        jwk = self._jwk(kid)
        if jwk is None:
            raise TokenRejected("unknown signing key")
        if jwk.get("alg") not in (None, alg) or jwk.get("use") not in (None, "sig"):
            raise TokenRejected("key not meant for this algorithm")
        try:
            return jwt.PyJWK(jwk, algorithm=alg).key
        except jwt.PyJWTError:
            raise TokenRejected("unusable signing key") from None

    def _jwk(self, kid: str | None) -> dict[str, Any] | None:
        with self._lock:
            now = time.monotonic()
            stale = now - self._keys_at > self._config.jwks_cache_seconds
            if stale or (
                kid not in self._keys
                and now - self._keys_tried_at >= self._config.jwks_refetch_min_seconds
            ):
                self._keys_tried_at = now
                self._keys = self._fetch_keys()
                self._keys_at = now
            return self._keys.get(kid)

    def _fetch_keys(self) -> dict[str | None, dict[str, Any]]:
        uri = self._discovered("jwks_uri")
        document = self._get_json("GET", uri)
        keys = document.get("keys")
        if not isinstance(keys, list):
            raise self._failed(ProviderError("JWKS without keys"))
        found: dict[str | None, dict[str, Any]] = {}
        for key in keys:
            if isinstance(key, dict) and key.get("use") in (None, "sig"):
                kid = key.get("kid")
                found[kid if isinstance(kid, str) else None] = key
        signing = list(found.values())
        if len(signing) == 1:
            found.setdefault(None, signing[0])  # a token without kid and one key: that key
        return found

    def _introspect(self, token: str) -> dict[str, Any]:
        config = self._config
        endpoint = config.introspection_endpoint or self._discovered("introspection_endpoint")
        assert config.client_id is not None and config.client_secret is not None
        answer = self._get_json(
            "POST",
            endpoint,
            data={"token": token, "token_type_hint": "access_token"},
            auth=(config.client_id, config.client_secret),
        )
        if answer.get("active") is not True:
            raise TokenRejected("inactive")
        now, skew = self._clock(), config.clock_skew_seconds
        exp, nbf = answer.get("exp"), answer.get("nbf")
        if not isinstance(exp, int | float) or exp + skew < now:
            raise TokenRejected("expired")
        if isinstance(nbf, int | float) and nbf - skew > now:
            raise TokenRejected("not yet valid")
        if "iss" in answer and str(answer["iss"]).rstrip("/") != self._issuer:
            raise TokenRejected("wrong issuer")
        aud = answer.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if config.audience not in audiences:
            raise TokenRejected("wrong audience")
        return answer

    # ------------------------------------------------------------------ provider
    def _discovered(self, name: str) -> str:
        """An endpoint from the discovery document (cached like the keys)."""
        now = time.monotonic()
        if self._metadata is None or now - self._metadata_at > self._config.jwks_cache_seconds:
            url = self._issuer + "/.well-known/openid-configuration"
            metadata = self._get_json("GET", url)
            if str(metadata.get("issuer", "")).rstrip("/") != self._issuer:
                # OpenID Connect Discovery 4.3: a document for another issuer is not ours.
                raise self._failed(ProviderError("discovery names another issuer"))
            self._metadata, self._metadata_at = metadata, now
        value = self._metadata.get(name)
        if not isinstance(value, str) or not value.startswith("https://"):
            raise self._failed(ProviderError(f"discovery gives no https {name}"))
        return value

    def _failed(self, error: ProviderError) -> ProviderError:
        """`error`, after which the provider rests for `jwks_refetch_min_seconds`."""
        self._down_until = time.monotonic() + self._config.jwks_refetch_min_seconds
        return error

    def _get_json(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        if time.monotonic() < self._down_until:
            raise ProviderError("the provider failed to answer lately: not asked again yet")
        try:
            return self._ask(method, url, **kwargs)
        except ProviderError as exc:
            self._failed(exc)
            raise

    def _ask(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        limit = self._config.max_document_bytes
        deadline = time.monotonic() + self._config.http_timeout_seconds
        body = bytearray()
        try:
            with self._http.stream(method, url, **kwargs) as response:
                if response.status_code != 200:
                    raise ProviderError(f"{url[:100]} answered {response.status_code}")
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise ProviderError(f"{url[:100]} answered more than {limit} bytes")
                    if time.monotonic() > deadline:
                        raise ProviderError(f"{url[:100]} too slow")
        except httpx.HTTPError as exc:
            raise ProviderError(f"{url[:100]}: {type(exc).__name__}") from None
        try:
            document = json.loads(body)
        except ValueError:
            raise ProviderError(f"{url[:100]} answered no JSON") from None
        if not isinstance(document, dict):
            raise ProviderError(f"{url[:100]} answered no JSON object")
        return document
