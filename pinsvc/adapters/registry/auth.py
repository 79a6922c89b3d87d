"""Registry authentication: anonymous first, then the registry's challenge (a Bearer token
from the realm, or Basic) with the credentials of the endpoint asked, looked up only then:
`credentials(image, endpoint)` (the pull secret as the runtime reads it for that endpoint).
Tokens are cached per (host, scope) until shortly before they expire. Credentials never
appear in errors or logs.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from pinsvc.adapters.registry.manifest import ACCEPT
from pinsvc.adapters.registry.transport import Reply, Target, Transport, http_error
from pinsvc.errors import RegistryError, Unauthorized
from pinsvc.model import Credentials
from pinsvc.refs import ImageRef
from pinsvc.retry import Backoff

DEFAULT_TOKEN_LIFETIME = 60
"""Seconds a bearer token lives when the token server does not say (distribution spec)."""
TOKEN_EXPIRY_MARGIN = 10
"""Seconds before its expiry a cached token is no longer used."""

_CHALLENGE_TOKEN = re.compile(
    r"""\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)(?:\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*))?\s*,?""")


@dataclass(frozen=True)
class Challenge:
    """One `WWW-Authenticate` challenge: scheme (lowercase) and parameters."""

    scheme: str
    params: dict[str, str]


def parse_challenges(headers: Iterable[str]) -> list[Challenge]:
    """Parses `WWW-Authenticate` values (RFC 7235: a scheme, then `key=value` or
    `key="quoted"` parameters; one header may hold several challenges)."""
    parsed: list[tuple[str, dict[str, str]]] = []
    for header in headers:
        for match in _CHALLENGE_TOKEN.finditer(header):
            name, value = match[1], match[2]
            if value is None:
                parsed.append((name.lower(), {}))
            elif parsed:
                if value.startswith('"'):
                    value = re.sub(r"\\(.)", r"\1", value[1:-1])
                parsed[-1][1][name.lower()] = value
    return [Challenge(scheme, params) for scheme, params in parsed]


@dataclass(frozen=True)
class Authorization:
    """An `Authorization` header value and when it stops being usable (monotonic s)."""

    header: str
    expires_at: float = math.inf

    @property
    def valid(self) -> bool:
        return time.monotonic() < self.expires_at


def headers(authorization: str | None) -> dict[str, str]:
    """Request headers: the manifest types accepted, and the authorization if any."""
    out = {"Accept": ACCEPT}
    if authorization:
        out["Authorization"] = authorization
    return out


class Authenticator:
    """Authorized GETs: the cached authorization of the target's repository (or none), a
    401 answered once with a new one."""

    def __init__(self, transport: Transport,
                 credentials: Callable[[ImageRef, ImageRef], Credentials | None]) -> None:
        self._transport = transport
        self._credentials = credentials
        self._cache: dict[tuple[str, str], Authorization] = {}

    def credentials(self, target: Target) -> Credentials | None:
        """The credentials for the target's endpoint (from the current pull secret)."""
        return self._credentials(target.image or target.ref, target.ref)

    async def get(self, target: Target, url: str, *, backoff: Backoff | None = None) -> Reply:
        """GET with the cached authorization (or none); on 401 answer the challenge once.
        `backoff`: the attempts of each request (None: the transport's)."""
        ref = target.ref
        key = (ref.host, f"repository:{ref.path}:pull")
        cached = self._cache.get(key)
        header = cached.header if cached is not None and cached.valid else None
        reply = await self._transport.request(target, "GET", url, headers=headers(header), backoff=backoff)
        if reply.status != 401:
            return reply
        self._cache.pop(key, None)
        authorization = await self._authorize(target, reply, scope=key[1], backoff=backoff)
        reply = await self._transport.request(target, "GET", url, headers=headers(authorization.header),
                                              backoff=backoff)
        if reply.status in (401, 403):
            raise self.unauthorized(target)
        self._cache[key] = authorization
        return reply

    async def _authorize(self, target: Target, reply: Reply, *, scope: str, backoff: Backoff | None) -> Authorization:
        """Answers a 401: a bearer token (from the realm, or the secret's registry token)
        or Basic auth, with the target's credentials."""
        ref, credentials = target.ref, self.credentials(target)
        challenges = {c.scheme: c for c in parse_challenges(reply.headers.getall("www-authenticate", []))}
        if "bearer" in challenges:
            if credentials is not None and credentials.registry_token:
                return Authorization(f"Bearer {credentials.registry_token}")
            return await self._fetch_token(target, challenges["bearer"], credentials, scope, backoff)
        if "basic" in challenges:
            if credentials is None:
                raise self.unauthorized(target)
            if not credentials.username:
                raise Unauthorized(f"image {ref}: {ref.host} wants a username and password; the "
                                   f"pull secret has only a token for it")
            return Authorization(_basic(credentials))
        schemes = ", ".join(sorted(challenges)) or "no challenge"
        raise Unauthorized(f"image {ref}: {ref.host} wants an authentication scheme pinsvc does "
                           f"not support ({schemes})")

    async def _fetch_token(self, target: Target, challenge: Challenge, credentials: Credentials | None,
                           scope: str, backoff: Backoff | None) -> Authorization:
        """A bearer token from the challenge's realm (docker token / OAuth2 refresh flow)."""
        ref = target.ref
        realm = self._checked_realm(target, challenge)
        params = {"service": challenge.params.get("service", ""),
                  "scope": challenge.params.get("scope") or scope}
        params = {name: value for name, value in params.items() if value}
        if credentials is not None and credentials.identity_token:
            form = {**params, "grant_type": "refresh_token", "client_id": "pinsvc",
                    "refresh_token": credentials.identity_token}
            reply = await self._transport.request(target, "POST", realm, data=form, backoff=backoff)
        else:
            basic = _basic(credentials) if credentials is not None and credentials.username else None
            reply = await self._transport.request(target, "GET", realm, params=params, headers=headers(basic),
                                                  backoff=backoff)
        peer = f"token server {urlsplit(realm).netloc}"
        if reply.status in (401, 403):
            raise self.unauthorized(target)
        if reply.status != 200:
            raise http_error(ref, reply, peer)
        return _parse_token(ref, reply.body, peer)

    def _checked_realm(self, target: Target, challenge: Challenge) -> str:
        """The token realm URL; plain http only when the endpoint itself is insecure."""
        realm = challenge.params.get("realm", "")
        scheme = urlsplit(realm).scheme
        if scheme == "https" or (scheme == "http" and self._transport.insecure(target)):
            return realm
        raise RegistryError(f"image {target.ref}: {target.ref.host} names an unusable token realm {realm!r} "
                            f"(want an https URL)", retryable=False)

    def unauthorized(self, target: Target) -> Unauthorized:
        """The error for a refused request: no credentials for the endpoint, or wrong ones."""
        ref = target.ref
        if self.credentials(target) is None:
            return Unauthorized(f"image {ref}: access denied and no credentials for {ref.host} "
                                f"in the pull secret")
        return Unauthorized(f"image {ref}: credentials for {ref.host} refused")


def _parse_token(ref: ImageRef, body: bytes, peer: str) -> Authorization:
    """The bearer authorization from a token server's JSON answer."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        document = {}
    token = document.get("token") or document.get("access_token")
    if not isinstance(token, str) or not token:
        raise RegistryError(f"image {ref}: {peer} answered without a token", retryable=False)
    lifetime = document.get("expires_in")
    if not isinstance(lifetime, (int, float)) or lifetime <= 0:
        lifetime = DEFAULT_TOKEN_LIFETIME
    return Authorization(f"Bearer {token}", time.monotonic() + max(lifetime - TOKEN_EXPIRY_MARGIN, 0))


def _basic(credentials: Credentials) -> str:
    pair = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")
