"""Per-registry TLS material from `certs.d` (containers-certs.d(5)), decided from a listing.

For an endpoint `host[:port]` the runtime uses the first of its certs.d directories
(`~/.config/containers/certs.d`, `/etc/containers/certs.d`, `/etc/docker/certs.d`) that
has a `host[:port]` entry, and only that one. In it, in name order (containers/image
`tlsclientconfig.SetupCertificates`):

- every `*.crt` is a CA certificate, trusted in addition to the system's;
- every `*.cert` is a client certificate whose key is the `*.key` of the same base name;
  a `.cert` without its `.key`, or a `.key` without its `.cert`, fails that endpoint.

Docker Hub's directory is `docker.io`, the name in the reference, not the API host.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pinsvc.errors import StateError


@dataclass(frozen=True)
class TlsFiles:
    """The TLS files of one endpoint."""

    directory: Path
    ca_files: tuple[Path, ...] = ()
    client_pairs: tuple[tuple[Path, Path], ...] = ()
    """(certificate, key) pairs, in name order."""


def tls_files(directory: Path, names: Iterable[str]) -> TlsFiles:
    """What the runtime loads from `directory`, whose entries are `names`. Raises
    `StateError` naming the file when a client certificate or key lacks its other half."""
    names = sorted(names)
    present = set(names)
    cas, pairs = [], []
    for name in names:
        if name.endswith(".crt"):
            cas.append(directory / name)
        if name.endswith(".cert"):
            key = name.removesuffix(".cert") + ".key"
            if key not in present:
                raise StateError(f"certs.d {directory}: client certificate {name} has no key {key} "
                                 f"(CA certificates take the extension .crt)")
            pairs.append((directory / name, directory / key))
        if name.endswith(".key") and name.removesuffix(".key") + ".cert" not in present:
            raise StateError(f"certs.d {directory}: key {name} has no client certificate "
                             f"{name.removesuffix('.key')}.cert")
    return TlsFiles(directory, tuple(cas), tuple(pairs))
