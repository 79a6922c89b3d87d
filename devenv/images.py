"""Deterministic synthetic images and a pusher for the registry HTTP API.

Layers are real gzip'd tar archives whose content comes from a seeded PRNG, so they are
incompressible, valid for a runtime to unpack, and identical on every run: the same seeds
always give the same digests. Images are Docker schema2 or OCI manifests; indexes are
Docker manifest lists or OCI image indexes.

    images = small_workload()
    refs = asyncio.run(push_many(registry.url, list(images.values())))

CLI: `python -m devenv.images push --registry 127.0.0.1:PORT --workload small`
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import hashlib
import io
import json
import random
import re
import sys
import tarfile
import time
from collections import defaultdict
from collections.abc import Coroutine, Generator, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

KiB = 1024
MiB = 1024 * KiB

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

EPOCH = "1970-01-01T00:00:00Z"
PUSH_CONCURRENCY = 8
"""Images pushed at the same time by `push_many`."""
PUSH_TIMEOUT = 60.0
"""Seconds any single registry request may take."""


class PushError(RuntimeError):
    """The registry refused or failed a push; the message names the request and why."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Blob:
    """Content-addressed bytes. Layers also carry `diff_id`, the digest of the tar."""

    digest: str
    size: int
    data: bytes = field(repr=False)
    media_type: str
    diff_id: str | None = None

    def descriptor(self) -> dict:
        """The OCI/Docker descriptor referencing this blob."""
        return {"mediaType": self.media_type, "size": self.size, "digest": self.digest}


@dataclass(frozen=True)
class Image:
    """One image manifest with its config and layers, to be pushed to `repo`."""

    repo: str
    manifest: bytes = field(repr=False)
    digest: str
    media_type: str
    config: Blob
    layers: tuple[Blob, ...]
    arch: str
    os: str

    def ref(self, host: str) -> str:
        """The digest reference `host/repo@sha256:...`."""
        return f"{host}/{self.repo}@{self.digest}"

    @property
    def compressed_bytes(self) -> int:
        """Sum of the (compressed) layer sizes, what a runtime downloads."""
        return sum(layer.size for layer in self.layers)


@dataclass(frozen=True)
class Index:
    """A manifest list or OCI index over `images`, all pushed to `repo`."""

    repo: str
    manifest: bytes = field(repr=False)
    digest: str
    media_type: str
    images: tuple[Image, ...]

    def ref(self, host: str) -> str:
        """The digest reference `host/repo@sha256:...`."""
        return f"{host}/{self.repo}@{self.digest}"

    @property
    def compressed_bytes(self) -> int:
        """Sum of the layer sizes of all child images."""
        return sum(image.compressed_bytes for image in self.images)


# --- building ---------------------------------------------------------------------------


def make_layer(seed: str, size: int) -> Blob:
    """A gzip'd tar holding one file of `size` pseudo-random bytes drawn from `seed`.

    Tar headers are fixed (mtime 0, uid/gid 0, mode 0644) and gzip uses level 0 (stored)
    with mtime 0, so the blob is a pure function of `(seed, size)` and cheap to make.
    """
    if size < 0:
        raise ValueError(f"layer size must be >= 0, got {size} for seed {seed!r}")
    tar = _tar_one_file(f"pinsvc-{_slug(seed)}.bin", random.Random(seed).randbytes(size))
    data = gzip.compress(tar, compresslevel=0, mtime=0)
    return Blob(_sha256(data), len(data), data, DOCKER_LAYER, diff_id=_sha256(tar))


def build_image(
    repo: str, layers: Sequence[Blob], *, oci: bool = False, arch: str = "amd64", os: str = "linux"
) -> Image:
    """An image of `layers` (from `make_layer`) with a Docker schema2 or OCI manifest."""
    missing = [layer.digest for layer in layers if layer.diff_id is None]
    if missing:
        raise ValueError(f"layers without diff_id (not made by make_layer): {missing}")
    layer_type = OCI_LAYER if oci else DOCKER_LAYER
    layers = tuple(replace(layer, media_type=layer_type) for layer in layers)
    config_bytes = _canonical_json(_image_config(layers, arch=arch, os=os))
    config_type = OCI_CONFIG if oci else DOCKER_CONFIG
    config = Blob(_sha256(config_bytes), len(config_bytes), config_bytes, config_type)
    media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
    manifest = _canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": config.descriptor(),
            "layers": [layer.descriptor() for layer in layers],
        }
    )
    return Image(repo, manifest, _sha256(manifest), media_type, config, layers, arch, os)


def build_index(repo: str, images: Sequence[Image], *, oci: bool = False) -> Index:
    """A manifest list (or OCI index) over `images`; the children are moved to `repo`."""
    media_type = OCI_INDEX if oci else DOCKER_MANIFEST_LIST
    children = tuple(replace(image, repo=repo) for image in images)
    manifest = _canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [
                {
                    "mediaType": image.media_type,
                    "size": len(image.manifest),
                    "digest": image.digest,
                    "platform": {"architecture": image.arch, "os": image.os},
                }
                for image in children
            ],
        }
    )
    return Index(repo, manifest, _sha256(manifest), media_type, children)


def missing_ref(host: str, repo: str = "pinsvc-test/missing") -> str:
    """A well-formed digest reference that no workload pushes (manifest unknown)."""
    return f"{host}/{repo}@{_sha256(b'pinsvc-test: this image was never pushed')}"


def _image_config(layers: Sequence[Blob], *, arch: str, os: str) -> dict:
    return {
        "created": EPOCH,
        "architecture": arch,
        "os": os,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/pinsvc-test"],
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created": EPOCH, "created_by": f"pinsvc-test layer {i}"} for i in range(len(layers))
        ],
    }


def _tar_one_file(name: str, content: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _slug(seed: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", seed)[:80]


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical_json(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# --- workloads --------------------------------------------------------------------------


def small_workload() -> dict[str, Image | Index]:
    """Six images and one manifest list, ~3 MiB stored, under `pinsvc-test/...`.

    `app-a` and `app-b` share a 1 MiB base layer; `oci` is an OCI image; `three-layers`
    has three layers; `multiarch` is a manifest list with distinct amd64 and arm64 children.
    """
    base = make_layer("small/base", 1 * MiB)
    three_sizes = (256 * KiB, 128 * KiB, 64 * KiB)
    multiarch = [
        build_image("pinsvc-test/multiarch", [make_layer(f"small/multiarch/{a}", 256 * KiB)], arch=a)
        for a in ("amd64", "arm64")
    ]
    return {
        "app-a": build_image("pinsvc-test/app-a", [base, make_layer("small/app-a", 256 * KiB)]),
        "app-b": build_image("pinsvc-test/app-b", [base, make_layer("small/app-b", 256 * KiB)]),
        "oci": build_image("pinsvc-test/oci", [make_layer("small/oci", 512 * KiB)], oci=True),
        "three-layers": build_image(
            "pinsvc-test/three-layers",
            [make_layer(f"small/three-layers/{i}", size) for i, size in enumerate(three_sizes)],
        ),
        "multiarch": build_index("pinsvc-test/multiarch", multiarch),
    }


def bench_workload(
    n: int = 100, *, bases: int = 5, base_size: int = 2 * MiB, unique_size: int = 3 * MiB // 2
) -> list[Image]:
    """`n` images `pinsvc-bench/img-NNN`, each one of `bases` shared base layers plus one
    unique layer (defaults: 100 images, ~160 MiB stored, ~350 MiB summed per image)."""
    if n < 0 or bases < 1:
        raise ValueError(f"bench workload needs n >= 0 and bases >= 1, got n={n}, bases={bases}")
    base_layers = [make_layer(f"bench/base/{b}", base_size) for b in range(bases)]
    return [
        build_image(
            f"pinsvc-bench/img-{i:03d}",
            [base_layers[i % bases], make_layer(f"bench/unique/{i}", unique_size)],
        )
        for i in range(n)
    ]


# --- pushing ----------------------------------------------------------------------------


class RegistryAuth(httpx.Auth):
    """Registry auth: basic credentials sent up front; a `Bearer` challenge is answered
    with a token from its realm (fetched with the basic credentials, cached per repo)."""

    requires_response_body = True

    def __init__(self, credentials: tuple[str, str] | None) -> None:
        self._basic = None
        if credentials is not None:
            user, password = credentials
            self._basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self._tokens: dict[str, str] = {}

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        repo = _repo_of(request.url.path)
        if repo in self._tokens:
            request.headers["Authorization"] = f"Bearer {self._tokens[repo]}"
        elif self._basic is not None:
            request.headers["Authorization"] = self._basic
        response = yield request
        scheme, params = _parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if response.status_code != 401 or scheme != "bearer" or "realm" not in params:
            return
        token_response = yield self._token_request(params)
        token = _token_of(token_response, params)
        self._tokens[repo] = token
        request.headers["Authorization"] = f"Bearer {token}"
        yield request

    def _token_request(self, challenge: dict[str, str]) -> httpx.Request:
        query = [("service", challenge["service"])] if "service" in challenge else []
        query += [("scope", scope) for scope in challenge.get("scope", "").split()]
        headers = {"Authorization": self._basic} if self._basic else {}
        return httpx.Request("GET", challenge["realm"], params=query, headers=headers)


def _token_of(response: httpx.Response, challenge: dict[str, str]) -> str:
    """The token from a token endpoint's answer, or `PushError` naming the endpoint."""
    where = f"token endpoint {challenge['realm']} (scope {challenge.get('scope', '')!r})"
    if response.status_code != 200:
        raise PushError(f"{where} answered HTTP {response.status_code}", status=response.status_code)
    try:
        body = response.json()
        return body.get("token") or body["access_token"]
    except (ValueError, KeyError, AttributeError) as e:
        raise PushError(f"{where} answered without a token: {response.text[:200]!r}") from e


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="r",service="s"` -> ("bearer", {"realm": "r", "service": "s"})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


def _repo_of(path: str) -> str:
    match = re.match(r"^/v2/(.+?)/(?:blobs|manifests|tags)/", path)
    return match.group(1) if match else ""


class _Pusher:
    """Pushes over one client; remembers which repo holds each blob to mount from it."""

    def __init__(self, client: httpx.AsyncClient, *, user: str | None) -> None:
        self._client = client
        self._user = user
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._holders: dict[str, str] = {}

    async def push(self, item: Image | Index) -> None:
        """Push `item`'s blobs (an index: its children) and then its manifest by digest."""
        if isinstance(item, Index):
            await _all(self.push(image) for image in item.images)
        else:
            await _all(self._ensure_blob(item.repo, blob) for blob in (item.config, *item.layers))
        what = f"push manifest {item.repo}@{item.digest}"
        response = await self._request(
            "PUT", f"/v2/{item.repo}/manifests/{item.digest}", what,
            expect=(201,), content=item.manifest, headers={"Content-Type": item.media_type},
        )
        _check_digest(response, item.digest, what)

    async def _ensure_blob(self, repo: str, blob: Blob) -> None:
        async with self._locks[blob.digest]:  # one upload per digest; later repos mount it
            what = f"push blob {blob.digest} to {repo}"
            head = await self._request(
                "HEAD", f"/v2/{repo}/blobs/{blob.digest}", what, expect=(200, 404)
            )
            if head.status_code == 404:
                source = self._holders.get(blob.digest)
                params = {"mount": blob.digest, "from": source} if source else None
                start = await self._request(
                    "POST", f"/v2/{repo}/blobs/uploads/", what, expect=(201, 202), params=params
                )
                if start.status_code == 202:  # a fresh upload, or a mount the registry declined
                    await self._upload(start.headers["Location"], blob, what)
            self._holders.setdefault(blob.digest, repo)

    async def _upload(self, location: str, blob: Blob, what: str) -> None:
        # Location may be relative and carries the upload state in its query: keep it.
        url = self._client.base_url.join(location).copy_merge_params({"digest": blob.digest})
        response = await self._request(
            "PUT", str(url), what, expect=(201,),
            content=blob.data, headers={"Content-Type": "application/octet-stream"},
        )
        _check_digest(response, blob.digest, what)

    async def _request(
        self, method: str, url: str, what: str, *, expect: tuple[int, ...], **kwargs: Any
    ) -> httpx.Response:
        """Send one request; `PushError` naming `what` unless the status is in `expect`."""
        try:
            response = await self._client.request(method, url, **kwargs)
        except httpx.HTTPError as e:
            raise PushError(f"{what}: {method} {self._client.base_url.join(url)} failed: {e!r}") from e
        if response.status_code in expect:
            return response
        message = (
            f"{what}: registry {self._client.base_url} answered {method} with "
            f"HTTP {response.status_code} {response.reason_phrase}"
        )
        if errors := _registry_errors(response):
            message += f": {errors}"
        if response.status_code == 401 and self._user is None:
            message += " (anonymous; pass auth=(user, password))"
        elif response.status_code == 401:
            message += f" (credentials of user {self._user!r} refused)"
        raise PushError(message, status=response.status_code)


async def _all(coroutines: Iterable[Coroutine[None, None, None]]) -> None:
    """Run `coroutines` concurrently; on the first failure cancel the others and raise it."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _registry_errors(response: httpx.Response) -> str:
    """The registry's error codes and messages, e.g. `UNAUTHORIZED: authentication required`."""
    try:
        errors = response.json()["errors"]
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except (ValueError, KeyError, TypeError, AttributeError):
        return response.text[:200].strip()


def _check_digest(response: httpx.Response, expected: str, what: str) -> None:
    actual = response.headers.get("Docker-Content-Digest")
    if actual != expected:
        raise PushError(f"{what}: registry answered Docker-Content-Digest {actual!r}, expected {expected}")


def _base_url(registry: str) -> httpx.URL:
    """`127.0.0.1:5000` or `http://127.0.0.1:5000` -> the registry's base URL."""
    return httpx.URL(registry if "://" in registry else f"http://{registry}")


async def push_many(
    registry: str,
    items: Sequence[Image | Index],
    *,
    auth: tuple[str, str] | None = None,
    concurrency: int = PUSH_CONCURRENCY,
) -> list[str]:
    """Push `items` (at most `concurrency` at a time); their references, in order.

    `registry` is `host:port` or a base URL. Shared blobs are uploaded once and mounted
    into the other repositories. Raises `PushError` naming the item and the registry's answer.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    base_url = _base_url(registry)
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, auth=RegistryAuth(auth), timeout=PUSH_TIMEOUT, trust_env=False
    ) as client:
        pusher = _Pusher(client, user=auth[0] if auth else None)

        async def push_one(item: Image | Index) -> None:
            async with limit:
                await pusher.push(item)

        await _all(push_one(item) for item in items)
    return [item.ref(base_url.netloc.decode()) for item in items]


def push(registry: str, item: Image | Index, *, auth: tuple[str, str] | None = None) -> str:
    """Push one image or index (blocking; from async code use `push_many`); its reference."""
    return asyncio.run(push_many(registry, [item], auth=auth))[0]


# --- CLI --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """`push --registry HOST:PORT --workload small|bench [--count N] [--json OUT]`."""
    parser = argparse.ArgumentParser(
        prog="python -m devenv.images", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    push_cmd = commands.add_parser("push", help="push a workload; print its references as JSON")
    push_cmd.add_argument("--registry", required=True, help="registry host:port or base URL")
    push_cmd.add_argument("--workload", choices=("small", "bench"), required=True)
    push_cmd.add_argument("--count", type=int, help="number of bench images (default 100)")
    push_cmd.add_argument("--json", type=Path, help="also write the references to this file")
    args = parser.parse_args(argv)
    if args.count is not None and args.workload != "bench":
        parser.error("--count applies only to --workload bench")

    started = time.monotonic()
    items = _workload(args.workload, args.count)
    built = time.monotonic()
    try:
        refs = asyncio.run(push_many(args.registry, list(items.values())))
    except PushError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    pushed = time.monotonic()
    output = json.dumps(dict(zip(items, refs)), indent=2) + "\n"
    sys.stdout.write(output)
    if args.json is not None:
        args.json.write_text(output)
    mib = sum(item.compressed_bytes for item in items.values()) / MiB
    print(
        f"{len(items)} items ({mib:.1f} MiB of layers): built in {built - started:.2f} s, "
        f"pushed in {pushed - built:.2f} s",
        file=sys.stderr,
    )
    return 0


def _workload(name: str, count: int | None) -> dict[str, Image | Index]:
    if name == "small":
        return small_workload()
    images = bench_workload(100 if count is None else count)
    return {image.repo.rsplit("/", 1)[-1]: image for image in images}


if __name__ == "__main__":
    sys.exit(main())
