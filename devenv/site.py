"""A low-bandwidth site as test and benchmark peer: the upstream registry (the Internet),
the site's slow link to it (a `FaultProxy` with a shared rate cap and byte counter), and the
site's pull-through cache: Debian's `docker-registry` (distribution 2.8) in proxy mode,
`proxy.remoteurl` = the link.

The nodes reference images by a canonical name that does not resolve
(`upstream.example.invalid/...`, RFC 2606) and reach them only through the cache, by the
registries.conf drop-in `registries_conf()` writes (the canonical source blocked, as
OpenShift's `mirrorSourcePolicy: NeverContactSource` makes it).

    with Site(tmp_path, rate=4 * MiB) as site:
        refs = site.push(images)                 # canonical references
        crio.registries_conf_dir / "50-site.conf" <- site.registries_conf()
        site.link.bytes                          # what crossed the link
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from devenv import images as sample_images
from devenv.faultproxy import FaultProxy
from devenv.link import Link
from devenv.registry import Registry

CANONICAL_HOST = "upstream.example.invalid"
"""The registry part of the canonical names: never resolvable (RFC 2606 `.invalid`)."""
MiB = sample_images.MiB


def release_workload(images: int = 3, *, bases: int = 1, base_size: int = 3 * MiB, unique_size: int = 2 * MiB,
                     repo: str = "site/release") -> list[sample_images.Image]:
    """`images` images in one repository, as an OpenShift release payload keeps its images
    (`ocp-v4.0-art-dev`): each one of `bases` shared base layers plus a unique layer."""
    base_layers = [sample_images.make_layer(f"site/base/{b}", base_size) for b in range(bases)]
    return [sample_images.build_image(repo, [base_layers[i % bases],
                                             sample_images.make_layer(f"site/{repo}/{i}", unique_size)])
            for i in range(images)]


def unique_bytes(items: Sequence[sample_images.Image]) -> int:
    """Compressed bytes of the distinct blobs (layers and configs) of `items`, per repository:
    what one copy of the set weighs on the link."""
    blobs = {(i.repo, b.digest): b.size for i in items for b in (i.config, *i.layers)}
    return sum(blobs.values())


class PullThroughCache(Registry):
    """A `docker-registry` in proxy mode: it fetches what it lacks from `remote_url` (the
    first GET of a blob fetches it; see docs/warm.md for how distribution 2.8 does that) and
    serves it from its own storage afterwards."""

    def __init__(self, root: Path, remote_url: str, **kwargs) -> None:
        super().__init__(root, **kwargs)
        self.remote_url = remote_url

    def _write_config(self) -> None:
        super()._write_config()
        config = json.loads(self.config_path.read_text())
        config["proxy"] = {"remoteurl": self.remote_url}
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")

    def wipe(self) -> None:
        """Stops the cache, forgets everything it holds, starts it again (same port)."""
        self.stop()
        shutil.rmtree(self.root / "data", ignore_errors=True)
        self.start()


class Site:
    """The upstream registry, the link (`rate` bytes/s, 0 = no cap) and the cache, all on
    loopback under `root`."""

    def __init__(self, root: Path, *, rate: float) -> None:
        self.root = Path(root)
        self.upstream = Registry(self.root / "upstream")
        self.link = Link(rate)
        self.proxy: FaultProxy | None = None
        self.cache: PullThroughCache | None = None

    def start(self) -> None:
        self.upstream.start()
        self.proxy = FaultProxy(self.upstream.host, link=self.link)
        self.proxy.start()
        self.cache = PullThroughCache(self.root / "cache", self.proxy.url)
        self.cache.start()

    def stop(self) -> None:
        for peer in (self.cache, self.proxy, self.upstream):
            if peer is not None:
                peer.stop()

    def __enter__(self) -> Site:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def push(self, items: Sequence[sample_images.Image | sample_images.Index]) -> list[str]:
        """Pushes to the upstream registry (not over the link); the canonical references."""
        refs = asyncio.run(sample_images.push_many(self.upstream.host, list(items)))
        return [self.canonical(ref) for ref in refs]

    def canonical(self, ref: str) -> str:
        """`127.0.0.1:UPSTREAM/repo@digest` -> `upstream.example.invalid/repo@digest`."""
        host, _, rest = ref.partition("/")
        if host != self.upstream.host:
            raise ValueError(f"{ref} is not on the upstream registry {self.upstream.host}")
        return f"{CANONICAL_HOST}/{rest}"

    def registries_conf(self, *, blocked: bool = True, source: str = CANONICAL_HOST) -> str:
        """The nodes' registries.conf drop-in: `source` mirrored through the cache; with
        `blocked`, the source itself is never contacted."""
        assert self.cache is not None, "start() the site first"
        return (f'[[registry]]\nprefix = "{source}"\nlocation = "{source}"\n'
                f"blocked = {'true' if blocked else 'false'}\n"
                f'[[registry.mirror]]\nlocation = "{self.cache.host}"\ninsecure = true\n')

    def blob_transfers(self) -> dict[str, list[int]]:
        """Blob digest -> body bytes of each GET of it that crossed the link."""
        assert self.proxy is not None
        transfers: dict[str, list[int]] = {}
        for request in self.proxy.requests:
            if request.method == "GET" and "/blobs/" in request.path:
                transfers.setdefault(request.path.rsplit("/", 1)[1], []).append(request.body_bytes)
        return transfers
