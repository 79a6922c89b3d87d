"""Which endpoints the runtime tries for a digest reference, in its order (pure).

`resolve(config, ref)` mirrors containers/image v5.38 (`sysregistriesv2.FindRegistry`,
`Registry.PullSourcesFromReference`, `docker.newImageSource`/`newDockerClient`):

1. The reference is normalised (`docker.io/busybox` is `docker.io/library/busybox`) and the
   `[[registry]]` whose prefix matches it is chosen; of several, the longest prefix wins,
   and of equally long ones the first in prefix order. A prefix matches at a `/`, `:` or
   `@` boundary or at the end - so `example.com` also matches `example.com:5000/...`, a
   quirk upstream keeps. A wildcard `*.example.com` matches any subdomain of
   `example.com` (not `example.com` itself); its length counts as written, so it beats a
   shorter plain prefix and, sorting first, wins a tie of equal length.
2. The endpoints are the registry's mirrors in order - for a digest reference all those
   not `pull-from-mirror = "tag-only"`; with `mirror-by-digest-only` all of them - then
   the primary location. Each is the reference with the matched prefix replaced by the
   endpoint's location (a wildcard entry without location keeps the reference as is).
   A rewrite the runtime cannot parse fails the whole pull there, so it raises here.
3. An endpoint is refused without being contacted when the `[[registry]]` matching its
   *rewritten* name is `blocked`: the primary of a blocked registry (OpenShift's
   `NeverContactSource`), and also a mirror that lies under a blocked prefix. A blocked
   registry whose location rewrites to a name no blocked table matches is NOT blocked:
   the runtime checks the rewritten name. A port outside 1-65535 in a location is refused
   too (the runtime fails to connect there). Refused endpoints stay in the list, so an
   error can name every endpoint the runtime would have tried.
4. `insecure` is the endpoint's own flag: the registry's for the primary, the mirror's for
   a mirror (plain HTTP after HTTPS fails, and no certificate verification).

The first endpoint that serves the manifest serves the whole image; the image keeps its
canonical name whichever endpoint served it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pinsvc.errors import StateError
from pinsvc.mirrors.config import RegistriesConfig, RegistryEntry
from pinsvc.refs import ImageRef, reference_problem, shorten


@dataclass(frozen=True)
class Endpoint:
    """One place the runtime tries for an image."""

    ref: ImageRef
    """The reference on this endpoint: `host` (host[:port]) to contact, repository `path`
    there, and the digest asked for."""
    mirror: bool
    insecure: bool = False
    """Plain HTTP and unverified TLS are allowed."""
    refused: str = ""
    """Why the runtime fails this endpoint without contacting it ("" when it may be
    contacted), e.g. "blocked by [[registry]] 'quay.io' in /etc/containers/registries.conf"."""

    def __str__(self) -> str:
        return self.ref.repository


def resolve(config: RegistriesConfig, ref: ImageRef) -> tuple[Endpoint, ...]:
    """The endpoints the runtime tries for `ref`, in order. Raises `StateError` when the
    matching `[[registry]]` rewrites `ref` into a reference the runtime cannot parse."""
    canonical = ref.normalized()
    registry = find_registry(config, canonical.repository)
    if registry is None:
        return (_endpoint(config, canonical, mirror=False, insecure=False, origin=""),)
    mirrors = [m for m in registry.mirrors
               if registry.mirror_by_digest_only or m.pull_from_mirror != "tag-only"]
    sources = [(m.location, m.insecure, True) for m in mirrors]
    sources.append((registry.location, registry.insecure, False))
    return tuple(_endpoint(config, _rewrite(canonical, registry, location), mirror=mirror, insecure=insecure,
                           origin=f"location {location!r} of [[registry]] {registry.prefix!r} in {registry.source}")
                 for location, insecure, mirror in sources)


def find_registry(config: RegistriesConfig, name: str) -> RegistryEntry | None:
    """The `[[registry]]` for `name` (host[:port]/path, normalised): the longest matching
    prefix, the first in prefix order among equals; None when none matches."""
    found: RegistryEntry | None = None
    for registry in config.registries:
        if match_length(name, registry.prefix) >= 0 and len(registry.prefix) > (len(found.prefix) if found else 0):
            found = registry
    return found


def match_length(ref: str, prefix: str) -> int:
    """How many characters of `ref` (a name or a full reference) `prefix` matches, or -1
    (containers/image `refMatchingPrefix`, quirks included)."""
    if prefix.startswith("*."):
        suffix = prefix[1:]  # ".example.com": the first occurrence decides, as upstream
        index = ref.find(suffix)
        if index < 0 or "/" in ref[:index]:
            return -1
        end = index + len(suffix)
        return end if end == len(ref) or ref[end] in ":/@" else -1
    if ref == prefix:
        return len(prefix)
    if ref.startswith(prefix) and ref[len(prefix)] in ":/@":
        return len(prefix)
    return -1


def _rewrite(canonical: ImageRef, registry: RegistryEntry, location: str) -> ImageRef:
    """`canonical` with the registry's prefix replaced by `location`."""
    if not location:  # a wildcard prefix without location: no rewrite
        return canonical
    full = str(canonical)
    length = match_length(full, registry.prefix)
    text = location + full[length:]
    problem = reference_problem(text, port_range=False) if length >= 0 else "the prefix does not match"
    if problem is None:
        name, digest = text.split("@", 1)
        rewritten = ImageRef(*name.split("/", 1), digest)
        if rewritten.normalized() == rewritten:
            return rewritten
        problem = f"the runtime reads it as {rewritten.normalized()}, a different name"
    raise StateError(f"registries configuration {registry.source}: [[registry]] {registry.prefix!r} maps "
                     f"{canonical} to {shorten(text)} through location {location!r}, which CRI-O cannot "
                     f"pull ({problem}); fix the location or the prefix")


def _endpoint(config: RegistriesConfig, ref: ImageRef, *, mirror: bool, insecure: bool, origin: str) -> Endpoint:
    blocking = find_registry(config, ref.repository)
    refused = ""
    if blocking is not None and blocking.blocked:
        refused = f"blocked by [[registry]] {blocking.prefix!r} in {blocking.source}"
    elif problem := reference_problem(str(ref)):
        refused = f"{problem} ({origin})" if origin else problem
    return Endpoint(ref, mirror=mirror, insecure=insecure, refused=refused)
