"""Registry credentials from a kubelet pull secret (docker `config.json` format).

    {"auths": {"quay.io/org": {"auth": "<base64 user:password>"},
               "https://index.docker.io/v1/": {"username": "u", "password": "p"},
               "registry.example:5000": {"identitytoken": "..."}}}

Two lookups, because the runtime sees the file twice:

- `lookup(image)` matches keys the way kubelet's keyring does, for the credentials pinsvc
  hands CRI-O in the CRI `AuthConfig` of a pull (what kubelet would send): the scheme, a
  `/v1/` or `/v2/` suffix and trailing slashes are ignored, the host must match exactly
  (kubelet's per-label `*` globs such as `*.example.com` are honoured) and so must the
  port, and the key's path must be a prefix of the image path on a segment boundary. The
  most specific key wins: the longest path, then an exact host over a glob, then the
  first in the file. `docker.io`, `index.docker.io` and `registry-1.docker.io` are one
  registry.
- `lookup_endpoint(host, path)` reads it as containers/image reads an auth file (CRI-O's
  `global_auth_file`, `/var/lib/kubelet/config.json` on OpenShift), for an endpoint
  actually contacted - a mirror included (`pkg/docker/config`): the keys
  `host/a/b/c`, `host/a/b`, `host/a`, `host` exactly as written (no globs, case
  sensitive), the first present one decides, even when it holds nothing usable; failing
  those, a key with a scheme (`https://host/...`, its path ignored) naming the host.
  Only `auth` (and `identitytoken` beside it) counts there; `username`/`password` fields
  do not. `for_endpoint` combines both the way CRI-O does for one pull.

So the canonical registry's credentials never reach a mirror on another host: CRI-O sends
the `AuthConfig` only to endpoints on the image's own host. The credentials are a
`pinsvc.model.Credentials`, whose repr hides the secrets.

Secrets never appear in a repr, a log record or an error message: errors name the file
and the key only.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from pinsvc.errors import StateError
from pinsvc.model import Credentials
from pinsvc.refs import ImageRef

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_API_VERSION_PATHS = ("v1", "v2")


@dataclass(frozen=True)
class _Entry:
    """One usable `auths` key, normalised for matching."""

    host: str  # lowercase, without port; may hold `*` globs per label
    port: str  # "" when the key has none
    path: str  # no leading or trailing "/"; "" matches every repository
    credentials: Credentials = field(repr=False)

    def matches(self, host: str, port: str, path: str) -> bool:
        """Whether this key applies to an image at `host:port/path` (already normalised)."""
        return (self.port == port and _host_matches(self.host, host)
                and (not self.path or path == self.path or path.startswith(self.path + "/")))

    @property
    def specificity(self) -> tuple[int, bool]:
        """Sort key: a longer path, then an exact host, is more specific."""
        return len(self.path), "*" not in self.host


@dataclass(frozen=True)
class PullSecret:
    """The usable entries of one pull secret, in file order."""

    entries: tuple[_Entry, ...] = ()
    auth_file: dict[str, Credentials | None] = field(default_factory=dict, repr=False, hash=False)
    """Every key as written -> what containers/image reads from it (None: nothing usable)."""

    def lookup(self, ref: ImageRef) -> Credentials | None:
        """The credentials of the most specific key that matches `ref`, or None."""
        host, port = _split_host_port(ref.host)
        host = _canonical_host(host)
        matching = [entry for entry in self.entries if entry.matches(host, port, ref.path)]
        if not matching:
            return None
        return max(matching, key=lambda entry: entry.specificity).credentials

    def lookup_endpoint(self, host: str, path: str) -> Credentials | None:
        """What the runtime reads from this file for endpoint `host` (host[:port], as in a
        normalised reference) and repository `path` on it, or None."""
        key = f"{host}/{path}"
        while key not in self.auth_file:
            key, slash, _ = key.rpartition("/")
            if not slash:
                registry = _hub_as_index(host)
                key = next((k for k in self.auth_file if _auth_file_registry(k) == registry), "")
                break
        credentials = self.auth_file.get(key)
        return replace(credentials, server_address=host) if credentials else None

    def for_endpoint(self, image: ImageRef, endpoint: ImageRef) -> Credentials | None:
        """The credentials CRI-O uses at `endpoint` (a `pinsvc.mirrors` endpoint reference)
        when pinsvc pulls `image` with the `AuthConfig` `lookup(image)`: that user and
        password on the image's own host (CRI-O reads nothing else of it), otherwise, or
        when it has no user, the endpoint's own entry (`lookup_endpoint`). This assumes
        CRI-O's `global_auth_file` is this file."""
        given = self.lookup(image)
        if given and given.username and endpoint.host == image.normalized().host:
            return Credentials(username=given.username, password=given.password,
                               server_address=given.server_address)
        return self.lookup_endpoint(endpoint.host, endpoint.path)


def load_pull_secret(path: Path) -> PullSecret:
    """Reads a docker `config.json` pull secret. A missing file is an empty secret.

    Raises `StateError` naming the file (and the key) when the file cannot be read, is
    not valid JSON or holds a malformed entry; never with a secret value in the message.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return PullSecret()
    except OSError as e:
        raise StateError(f"pull secret {path}: cannot read it ({_os_reason(e)})") from e
    except UnicodeDecodeError:
        # The codec's message quotes a byte of the file: drop the chain.
        raise StateError(f"pull secret {path}: not UTF-8 text") from None
    return parse_pull_secret(text, source=str(path))


def parse_pull_secret(text: str, *, source: str = "<text>") -> PullSecret:
    """Parses the text of a docker `config.json`; `source` names it in errors."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        # The message holds a position only; `from None` keeps the document (and its
        # secrets) out of the exception chain.
        raise StateError(f"pull secret {source}: not valid JSON ({e.msg} at line {e.lineno} "
                         f"column {e.colno})") from None
    if not isinstance(document, dict):
        raise StateError(f"pull secret {source}: the top level is not a JSON object")
    auths = document.get("auths", {})
    if not isinstance(auths, dict):
        raise StateError(f"pull secret {source}: 'auths' is not a JSON object")
    entries = (_parse_entry(key, value, source) for key, value in auths.items())
    return PullSecret(tuple(entry for entry in entries if entry is not None),
                      {key: _auth_file_entry(key, value) for key, value in auths.items()})


class PullSecretFile:
    """A pull secret file, re-read whenever it changes (mtime, size or inode), so
    credential rotation needs no restart (core's `PullCredentials` port). `lookup` fits
    `RegistryClient(credentials=...)`.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._signature: tuple[int, int, int, int] | None = None
        self._secret = PullSecret()

    def current(self) -> PullSecret:
        """The secret as the file holds it now (re-read only when the file changed)."""
        signature = self._stat()
        if signature != self._signature:
            self._secret = load_pull_secret(self.path) if signature else PullSecret()
            self._signature = signature
        return self._secret

    def lookup(self, ref: ImageRef) -> Credentials | None:
        """The credentials for `ref` from the current file, or None."""
        return self.current().lookup(ref)

    def lookup_endpoint(self, host: str, path: str) -> Credentials | None:
        """`PullSecret.lookup_endpoint` on the current file."""
        return self.current().lookup_endpoint(host, path)

    def for_endpoint(self, image: ImageRef, endpoint: ImageRef) -> Credentials | None:
        """`PullSecret.for_endpoint` on the current file."""
        return self.current().for_endpoint(image, endpoint)

    def _stat(self) -> tuple[int, int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateError(f"pull secret {self.path}: cannot stat it ({_os_reason(e)})") from e
        return st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev


def _parse_entry(key: str, value: object, source: str) -> _Entry | None:
    """One `auths` entry, or None when it carries no credential at all."""
    where = f"pull secret {source}: key {key!r}"
    if not isinstance(value, dict):
        raise StateError(f"{where}: the entry is not a JSON object")
    for name in ("auth", "username", "password", "identitytoken", "registrytoken"):
        if not isinstance(value.get(name, ""), str):
            raise StateError(f"{where}: {name!r} is not a string")
    username, password = value.get("username", ""), value.get("password", "")
    if value.get("auth"):  # like kubelet: `auth` wins over username/password
        username, password = _decode_auth(value["auth"], where)
    identity_token, registry_token = value.get("identitytoken", ""), value.get("registrytoken", "")
    if not (username or password or identity_token or registry_token):
        return None
    host, port, path = _parse_key(key, where)
    credentials = Credentials(username=username, password=password,
                              identity_token=identity_token, registry_token=registry_token,
                              server_address=f"{host}:{port}" if port else host)
    return _Entry(host=host, port=port, path=path, credentials=credentials)


def _auth_file_entry(key: str, value: dict) -> Credentials | None:
    """What containers/image takes from an entry (already validated by `_parse_entry`):
    the `auth` user and password, and `identitytoken` only beside an `auth`."""
    if not value.get("auth"):
        return None
    username, password = _decode_auth(value["auth"], "")
    identity_token = value.get("identitytoken", "")
    if not (username or password or identity_token):
        return None
    return Credentials(username=username, password=password, identity_token=identity_token)


def _auth_file_registry(key: str) -> str:
    """containers/image's fallback match of a key: with a scheme, its host alone."""
    stripped = key.removeprefix("http://").removeprefix("https://")
    if stripped != key:
        stripped = stripped.split("/", 1)[0]
    return _hub_as_index(stripped)


def _hub_as_index(registry: str) -> str:
    """containers/image names Docker Hub `index.docker.io` in that fallback."""
    return "index.docker.io" if registry in ("docker.io", "registry-1.docker.io") else registry


def _decode_auth(auth: str, where: str) -> tuple[str, str]:
    """`base64("user:password")` -> (user, password); trailing NULs are dropped (kubelet)."""
    text = auth.strip()
    try:
        decoded = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error as e:
        raise StateError(f"{where}: 'auth' is not valid base64") from e
    try:
        user_pass = decoded.decode("utf-8")
    except UnicodeDecodeError:
        # The codec's message quotes a byte of the secret: drop the chain.
        raise StateError(f"{where}: 'auth' does not decode to UTF-8 text") from None
    username, colon, password = user_pass.partition(":")
    if not colon:
        raise StateError(f"{where}: 'auth' must be base64 of 'username:password' (no ':' found)")
    return username, password.strip("\x00")


def _parse_key(key: str, where: str) -> tuple[str, str, str]:
    """`[scheme://]host[:port][/path][/]` -> (canonical host, port, path)."""
    text = key.strip()
    if "://" not in text:
        text = "https://" + text
    try:
        parts = urlsplit(text)
        port = str(parts.port) if parts.port is not None else ""
    except ValueError as e:
        raise StateError(f"{where}: not a registry address ({e})") from e
    if not parts.hostname:
        raise StateError(f"{where}: not a registry address (no host)")
    path = parts.path.strip("/")
    if path in _API_VERSION_PATHS or path.split("/", 1)[0] in _API_VERSION_PATHS:
        path = path[3:]  # kubelet: ".../v1/" and ".../v2/" mean the registry itself
    return _canonical_host(parts.hostname), port, path.strip("/")


def _split_host_port(netloc: str) -> tuple[str, str]:
    """`host[:port]` or `[v6]:port` of an image reference -> (lowercase host, port)."""
    parts = urlsplit("//" + netloc)
    return (parts.hostname or netloc).lower(), str(parts.port) if parts.port is not None else ""


def _canonical_host(host: str) -> str:
    """Lowercase, with Docker Hub's aliases folded into `docker.io`."""
    host = host.lower()
    return DOCKER_HUB if host in DOCKER_HUB_ALIASES else host


def _host_matches(pattern: str, host: str) -> bool:
    """Kubelet's host match: the same number of labels, each matched as a glob."""
    if "*" not in pattern:
        return pattern == host
    pattern_labels, host_labels = pattern.split("."), host.split(".")
    return len(pattern_labels) == len(host_labels) and all(
        fnmatch.fnmatchcase(label, glob) for label, glob in zip(host_labels, pattern_labels))


def _os_reason(error: OSError) -> str:
    """The OS reason without the file name (e.g. "Permission denied")."""
    return error.strerror or type(error).__name__
