"""Digest references and set names: parsing and validation (pure).

A pinned image is named by a fully qualified digest reference,
`host[:port]/path@sha256:<64 lowercase hex>`, the only form CRI-O can pin reliably (pins
match the name an image was pulled by) and the only form OpenShift's PinnedImageSet takes.

The grammar is the runtime's own (containers/image `docker/reference`, which CRI-O parses
every pulled name with), so a reference accepted here is one CRI-O can pull: at most 255
characters of repository name (`host[:port]/path`, counted after Docker Hub
normalisation), a port in 1-65535, and no IPv6 literal as host (its grammar has none: CRI-O
answers "invalid reference format"; name such a registry by a host name instead).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pinsvc.errors import InvalidArgument
from pinsvc.limits import (MAX_IMAGES_PER_REQUEST, MAX_IMAGES_PER_SET, MAX_REFERENCE_LENGTH,  # noqa: F401
                           MAX_SET_NAME_LENGTH, count_problem)

MAX_NAME_LENGTH = 255
"""Characters of a repository name, `host[:port]/path` as the runtime normalises it
(containers/image `NameTotalLengthMax`; longer names fail every pull)."""

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::(?P<port>[0-9]+))?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
# Used with fullmatch: a `$` would also match before a trailing newline.
_REFERENCE = re.compile(
    rf"(?P<host>{_HOST})/(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>[\w][\w.-]{{0,127}}))?"
    rf"(?:@(?P<algorithm>[A-Za-z][A-Za-z0-9]*(?:[+._-][A-Za-z][A-Za-z0-9]*)*):(?P<hex>[0-9a-zA-Z=_-]+))?"
)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
DOCKER_HUB = "docker.io"
_SET_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")


@dataclass(frozen=True, order=True)
class ImageRef:
    """A validated digest reference."""

    host: str
    path: str
    digest: str  # "sha256:<hex>"

    @property
    def repository(self) -> str:
        return f"{self.host}/{self.path}"

    def normalized(self) -> ImageRef:
        """This reference as the runtime names it: Docker Hub's `index.docker.io` is
        `docker.io`, and a one-component Docker Hub path is under `library/`
        (containers/image `ParseNormalizedNamed`). Registries configuration and credentials
        are matched against this form."""
        host = DOCKER_HUB if self.host == "index.docker.io" else self.host
        path = f"library/{self.path}" if host == DOCKER_HUB and "/" not in self.path else self.path
        return ImageRef(host, path, self.digest)

    def __str__(self) -> str:
        return f"{self.host}/{self.path}@{self.digest}"


def reference_problem(text: str, *, port_range: bool = True) -> str | None:
    """Why `text` is not an acceptable digest reference, or None when it is.
    `port_range=False` accepts any port number, as the runtime's parser does (such a
    registry then fails to connect): for references a registries.conf rewrite produced."""
    shown = shorten(text)
    if not text:
        return "empty image reference"
    if len(text) > MAX_REFERENCE_LENGTH:
        return f"image reference {shown} is {len(text)} characters long (at most {MAX_REFERENCE_LENGTH})"
    if text != text.strip() or any(c.isspace() or not c.isprintable() for c in text):
        return f"image reference {shown} contains whitespace or control characters"
    if text.startswith("["):
        return (f"image reference {shown} names its registry by an IPv6 address: CRI-O (containers/image) "
                f"cannot parse that; use a host name that resolves to it")
    match = _REFERENCE.fullmatch(text)
    if match is None:
        if "/" not in text.split("@")[0]:
            example = text if len(text) <= 80 else text[:80] + "..."
            return f"image reference {shown} is not fully qualified: it needs a registry host, e.g. quay.io/{example}"
        return f"image reference {shown} is malformed (want host[:port]/path@sha256:<64 hex>)"
    host = match["host"]
    if "." not in host and ":" not in host and host != "localhost":
        return (f"image reference {shown} is not fully qualified: {shorten(host, 60)} is not a registry "
                f"host (it needs a dot, a port or 'localhost')")
    if match["algorithm"] is None:
        if match["tag"] is not None:
            return (f"image reference {shown} uses tag {shorten(match['tag'], 60)}: "
                    f"only digest references (@sha256:...) can be pinned")
        return f"image reference {shown} has no digest: only digest references (@sha256:...) can be pinned"
    if match["tag"] is not None:
        return f"image reference {shown} has both a tag and a digest: give the digest alone"
    if match["algorithm"] != "sha256":
        return (f"image reference {shown} uses digest algorithm {shorten(match['algorithm'], 60)}: "
                f"only sha256 is accepted")
    if not _SHA256_HEX.fullmatch(match["hex"]):
        return f"image reference {shown} has a malformed sha256 digest (want 64 lowercase hex characters)"
    if port_range and match["port"] is not None and not 1 <= int(match["port"]) <= 65535:
        return f"image reference {shown} has port {shorten(match['port'], 20)}, outside 1-65535"
    name = ImageRef(host, match["path"], "").normalized().repository
    if len(name) > MAX_NAME_LENGTH:
        return (f"image reference {shown} has a repository name of {len(name)} characters "
                f"(at most {MAX_NAME_LENGTH} for host[:port]/path, the runtime's limit)")
    return None


def parse_reference(text: str) -> ImageRef:
    """Parses a digest reference; raises InvalidArgument naming the value."""
    problem = reference_problem(text)
    if problem:
        raise InvalidArgument(problem)
    name, digest = text.split("@", 1)
    host, path = name.split("/", 1)
    return ImageRef(host=host, path=path, digest=digest)


def set_name_problem(name: str) -> str | None:
    """Why `name` is not an RFC 1123 subdomain, or None when it is."""
    if not name:
        return "empty set name"
    if len(name) > MAX_SET_NAME_LENGTH:
        return f"set name {shorten(name)} is {len(name)} characters long (at most {MAX_SET_NAME_LENGTH})"
    if not _SET_NAME.fullmatch(name):
        return (f"set name {shorten(name)} is not an RFC 1123 subdomain (lowercase letters, "
                f"digits, '-' and '.', starting and ending with a letter or digit)")
    return None


def parse_references(texts: list[str], *, where: str = "") -> list[ImageRef]:
    """Validates every reference, collapsing duplicates (first occurrence wins the order).
    Raises one InvalidArgument naming every bad value, or only the count when there are
    more than MAX_IMAGES_PER_REQUEST."""
    too_many = count_problem(len(texts), MAX_IMAGES_PER_REQUEST, "image references in the request")
    if too_many:
        raise InvalidArgument(where + too_many)
    problems: list[str] = []
    refs: dict[str, ImageRef] = {}
    for text in texts:
        problem = reference_problem(text)
        if problem:
            problems.append(f"{where}{problem}")
        elif text not in refs:
            refs[text] = parse_reference(text)
    if problems:
        raise InvalidArgument(problems)
    return list(refs.values())


def shorten(text: str, limit: int = 120) -> str:
    """`text` quoted (repr) and cut to `limit` characters, for error messages."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"
