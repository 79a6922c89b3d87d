"""The registry manifest client: pure decisions, then a real `docker-registry` (plain and
htpasswd) and a small scripted HTTP server on loopback for what a real registry will not
do on demand (bearer tokens, 429/503, wrong bytes, slow answers)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_asyncio

from devenv import images
from devenv.images import Image, Index, push_many
from devenv.registry import Registry
from pinsvc.adapters.pullsecret import Credentials, PullSecretFile
from pinsvc.adapters.registry.auth import Challenge, parse_challenges
from pinsvc.adapters.registry.client import RegistryClient
from pinsvc.adapters.registry.manifest import (
    ImageLayers,
    ManifestIndex,
    Platform,
    PlatformManifest,
    choose_platform,
    parse_manifest,
    wanted_platforms,
)
from pinsvc.errors import ImageNotFound, RegistryError, Unauthorized
from pinsvc.model import Layer, SizedImage
from pinsvc.refs import ImageRef, parse_reference
from pinsvc.retry import Backoff

AMD64 = ("linux", "amd64", "")
PASSWORD = "Corr3ct-Horse-Battery"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def full_text(error: BaseException) -> str:
    """Everything a traceback of `error` would print, causes included."""
    return "".join(traceback.format_exception(error))


# == pure decisions =====================================================================


def entries(*platforms: str) -> list[PlatformManifest]:
    """Index entries for "os/arch[/variant]" strings; the digest names the platform."""
    return [PlatformManifest(f"sha256:{p}", Platform(*p.split("/"))) for p in platforms]


@pytest.mark.parametrize(("node", "available", "chosen"), [
    (("linux", "amd64", ""), ["linux/arm64", "linux/amd64", "linux/s390x"], "linux/amd64"),
    (("linux", "amd64", ""), ["linux/arm64", "linux/386", "windows/amd64"], None),
    (("linux", "arm64", ""), ["linux/amd64", "linux/arm64/v8"], "linux/arm64/v8"),
    (("linux", "arm64", "v8"), ["linux/amd64", "linux/arm64"], "linux/arm64"),
    (("linux", "arm64", "v8"), ["linux/arm64", "linux/arm64/v8"], "linux/arm64/v8"),
    (("linux", "arm64", ""), ["linux/arm64/v8", "linux/arm64"], "linux/arm64"),
    (("linux", "arm64", "v8"), ["linux/arm/v7"], None),
    (("linux", "arm", "v7"), ["linux/arm/v5", "linux/arm/v6"], "linux/arm/v6"),
    (("linux", "arm", "v6"), ["linux/arm/v7"], None),
    (("linux", "arm", "v7"), ["linux/arm"], "linux/arm"),
])
def test_choose_platform_like_cri_o(node, available, chosen):
    entry = choose_platform(entries(*available), Platform(*node))
    assert (entry.digest.removeprefix("sha256:") if entry else None) == chosen


def test_choose_platform_takes_the_first_of_duplicates():
    first, second = PlatformManifest("sha256:1", Platform("linux", "amd64")), PlatformManifest(
        "sha256:2", Platform("linux", "amd64"))
    assert choose_platform([first, second], Platform(*AMD64)) is first


def test_wanted_platforms_order():
    assert [str(p) for p in wanted_platforms(Platform("linux", "arm", "v7"))] == [
        "linux/arm/v7", "linux/arm/v6", "linux/arm/v5", "linux/arm"]
    assert [str(p) for p in wanted_platforms(Platform("linux", "amd64"))] == ["linux/amd64"]


@pytest.mark.parametrize(("headers", "expected"), [
    (['Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"'],
     [Challenge("bearer", {"realm": "https://auth.example/token", "service": "registry.example",
                           "scope": "repository:a/b:pull"})]),
    (['Basic realm="Registry Realm"'], [Challenge("basic", {"realm": "Registry Realm"})]),
    (['bearer realm=https://a/t, scope="repository:x:pull,push"'],
     [Challenge("bearer", {"realm": "https://a/t", "scope": "repository:x:pull,push"})]),
    (['Basic realm="a \\"quoted\\" realm", Bearer realm="https://a/t"'],
     [Challenge("basic", {"realm": 'a "quoted" realm'}), Challenge("bearer", {"realm": "https://a/t"})]),
    (['Negotiate', 'Basic realm="r"'], [Challenge("negotiate", {}), Challenge("basic", {"realm": "r"})]),
    ([], []),
])
def test_parse_challenges(headers, expected):
    assert parse_challenges(headers) == expected


def manifest_bytes(document: dict) -> bytes:
    return json.dumps(document).encode()


DESCRIPTOR = {"digest": "sha256:" + "1" * 64, "size": 10}


def test_parse_an_oci_manifest_without_media_type():
    body = manifest_bytes({"schemaVersion": 2, "config": {**DESCRIPTOR, "size": 7},
                           "layers": [DESCRIPTOR, {"digest": "sha256:" + "2" * 64, "size": 0}]})
    assert parse_manifest(body, "sha256:x") == ImageLayers(
        "sha256:x", (Layer("sha256:" + "1" * 64, 10), Layer("sha256:" + "2" * 64, 0)), 7, DESCRIPTOR["digest"])


def test_parse_an_index_skips_entries_without_a_platform():
    body = manifest_bytes({"schemaVersion": 2, "mediaType": images.OCI_INDEX, "manifests": [
        {**DESCRIPTOR, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"digest": "sha256:" + "3" * 64, "size": 5}]})
    assert parse_manifest(body, "sha256:x") == ManifestIndex(
        (PlatformManifest(DESCRIPTOR["digest"], Platform("linux", "arm64", "v8")),))


@pytest.mark.parametrize(("document", "problem"), [
    ({"schemaVersion": 1, "fsLayers": []}, "schema 1"),
    ({"schemaVersion": 2, "mediaType": "application/vnd.oci.artifact.manifest.v1+json"}, "unsupported media type"),
    ({"schemaVersion": 2, "mediaType": images.DOCKER_MANIFEST, "config": DESCRIPTOR,
      "layers": [{"digest": "sha256:" + "1" * 64}]}, "no valid size"),
    ({"schemaVersion": 2, "mediaType": images.DOCKER_MANIFEST, "config": DESCRIPTOR,
      "layers": [{"digest": "sha256:" + "1" * 64, "size": True}]}, "no valid size"),
    ({"schemaVersion": 2, "mediaType": images.DOCKER_MANIFEST, "layers": []}, "no 'config' object"),
    ({"schemaVersion": 2, "mediaType": images.OCI_INDEX,
      "manifests": [{"digest": "sha256:../../etc/passwd", "size": 1}]}, "malformed digest"),
])
def test_parse_manifest_refuses_what_it_cannot_size(document, problem):
    with pytest.raises(ValueError, match=problem):
        parse_manifest(manifest_bytes(document), "sha256:x")


# == a real registry ====================================================================


@dataclass
class Pushed:
    registry: Registry
    items: dict[str, Image | Index]
    refs: dict[str, ImageRef]


async def start_and_push(root: Path, items: dict[str, Image | Index], *,
                         htpasswd: dict[str, str] | None = None) -> Pushed:
    registry = Registry(root, htpasswd=htpasswd)
    await asyncio.to_thread(registry.start)
    auth = next(iter(htpasswd.items())) if htpasswd else None
    refs = await push_many(registry.host, list(items.values()), auth=auth)
    return Pushed(registry, items, {name: parse_reference(r) for name, r in zip(items, refs)})


@pytest_asyncio.fixture(scope="module")
async def small(tmp_path_factory) -> AsyncIterator[Pushed]:
    """The small workload in a plain-http registry shared by the module."""
    pushed = await start_and_push(tmp_path_factory.mktemp("registry"), images.small_workload())
    yield pushed
    pushed.registry.stop()


@pytest_asyncio.fixture
async def client(small) -> AsyncIterator[RegistryClient]:
    async with RegistryClient(insecure_hosts=[small.registry.host], platform=AMD64) as client:
        yield client


@pytest_asyncio.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fails a test that leaves a task of its own running (e.g. a manifest fetch)."""
    before = asyncio.all_tasks()
    yield
    leaked = [t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()]
    assert leaked == []


def expected_layers(image: Image) -> ImageLayers:
    return ImageLayers(image.digest, tuple(Layer(b.digest, b.size) for b in image.layers), image.config.size,
                       image.config.digest)


@pytest.mark.parametrize("name", ["app-a", "three-layers", "oci"])
async def test_docker_and_oci_manifests_give_the_pushed_layer_sizes(small, client, name):
    image = small.items[name]
    result = await client.layers(small.refs[name])
    assert result == expected_layers(image)
    assert sum(layer.size for layer in result.layers) == image.compressed_bytes


@pytest.mark.parametrize(("platform", "arch"), [(AMD64, "amd64"), (("linux", "arm64", "v8"), "arm64")])
async def test_an_index_resolves_to_the_child_for_the_node_platform(small, platform, arch):
    index = small.items["multiarch"]
    child = next(image for image in index.images if image.arch == arch)
    async with RegistryClient(insecure_hosts=[small.registry.host], platform=platform) as client:
        result = await client.layers(small.refs["multiarch"])
    assert result == expected_layers(child)
    assert result.manifest_digest != index.digest


async def test_an_index_without_the_node_platform_names_the_image_and_what_it_has(small):
    ref = small.refs["multiarch"]
    async with RegistryClient(insecure_hosts=[small.registry.host], platform=("linux", "s390x", "")) as client:
        with pytest.raises(ImageNotFound) as raised:
            await client.layers(ref)
    assert str(raised.value) == (f"image {ref}: no manifest for platform linux/s390x in its index "
                                 f"(available: linux/amd64, linux/arm64)")


async def test_an_unknown_digest_is_image_not_found_naming_the_image(small, client):
    ref = parse_reference(images.missing_ref(small.registry.host, "pinsvc-test/app-a"))
    with pytest.raises(ImageNotFound) as raised:
        await client.layers(ref)
    assert str(raised.value) == f"image {ref}: manifest unknown on {small.registry.host}"


async def test_an_unknown_repository_is_image_not_found(small, client):
    ref = parse_reference(images.missing_ref(small.registry.host, "pinsvc-test/never-pushed"))
    with pytest.raises(ImageNotFound, match=f"image {ref}: "):
        await client.layers(ref)


async def test_many_returns_results_and_errors_per_image(small, client):
    missing = parse_reference(images.missing_ref(small.registry.host))
    refs = [small.refs["app-b"], missing, small.refs["oci"], small.refs["app-b"]]
    results = await client.many({ref: () for ref in refs})
    assert list(results) == [small.refs["app-b"], missing, small.refs["oci"]]
    assert results[small.refs["app-b"]].layers == expected_layers(small.items["app-b"]).layers
    assert results[small.refs["app-b"]].via == small.refs["app-b"].repository
    assert isinstance(results[missing], ImageNotFound)
    assert results[small.refs["oci"]].layers == expected_layers(small.items["oci"]).layers


async def test_a_plain_http_registry_not_listed_as_insecure_fails_clearly(small):
    async with RegistryClient(platform=AMD64, backoff=Backoff(attempts=1)) as client:
        with pytest.raises(RegistryError) as raised:
            await client.layers(small.refs["app-a"])
    assert "TLS handshake" in str(raised.value) and "insecure hosts" in str(raised.value)
    assert raised.value.retryable is False


# -- a registry that goes away ----------------------------------------------------------


@pytest_asyncio.fixture
async def own(tmp_path) -> AsyncIterator[Pushed]:
    """A registry of its own (this test stops it), holding `app-a` and `multiarch`."""
    workload = images.small_workload()
    pushed = await start_and_push(tmp_path / "registry", {n: workload[n] for n in ("app-a", "multiarch")})
    yield pushed
    pushed.registry.stop()


async def test_a_stopped_registry_is_a_retryable_error(own, caplog):
    own.registry.stop()
    async with RegistryClient(insecure_hosts=[own.registry.host], backoff=Backoff(initial_seconds=0.01, attempts=3)) as client:
        with pytest.raises(RegistryError) as raised:
            await client.layers(own.refs["app-a"])
    assert raised.value.retryable is True
    assert str(raised.value) == f"image {own.refs['app-a']}: cannot reach {own.registry.host}: connection refused"
    assert raised.value.__cause__ is not None
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert [m.split(" failed")[0] for m in retries] == [
        f"image {own.refs['app-a']}: attempt 1/3", f"image {own.refs['app-a']}: attempt 2/3"]


async def test_a_cached_manifest_needs_no_registry(own):
    async with RegistryClient(insecure_hosts=[own.registry.host], platform=AMD64) as client:
        first = {name: await client.layers(ref) for name, ref in own.refs.items()}
        own.registry.stop()
        assert {name: await client.layers(ref) for name, ref in own.refs.items()} == first


async def test_the_disk_cache_survives_a_restart_of_the_agent(own, tmp_path):
    cache = tmp_path / "manifests"
    async with RegistryClient(insecure_hosts=[own.registry.host], platform=AMD64, cache_dir=cache) as client:
        first = await client.layers(own.refs["multiarch"])
    index_digest = own.refs["multiarch"].digest
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        f"{d.replace(':', '-')}.json" for d in (index_digest, first.manifest_digest))
    assert (cache / f"{index_digest.replace(':', '-')}.json").read_bytes() == own.items["multiarch"].manifest

    own.registry.stop()
    async with RegistryClient(insecure_hosts=[own.registry.host], platform=AMD64, cache_dir=cache,
                              backoff=Backoff(attempts=1)) as restarted:
        assert await restarted.layers(own.refs["multiarch"]) == first
        with pytest.raises(RegistryError):  # not cached: it really asks the (stopped) registry
            await restarted.layers(own.refs["app-a"])


async def test_a_corrupt_cache_file_is_replaced_by_a_fresh_fetch(own, tmp_path):
    ref = own.refs["app-a"]
    cached = tmp_path / "manifests" / f"{ref.digest.replace(':', '-')}.json"
    cached.parent.mkdir()
    cached.write_text('{"schemaVersion": 2, "layers": []}')
    async with RegistryClient(insecure_hosts=[own.registry.host], cache_dir=cached.parent) as client:
        assert await client.layers(ref) == expected_layers(own.items["app-a"])
    assert cached.read_bytes() == own.items["app-a"].manifest
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no temp file left


# -- a registry that wants a password ----------------------------------------------------


@pytest_asyncio.fixture(scope="module")
async def private(tmp_path_factory) -> AsyncIterator[Pushed]:
    workload = images.small_workload()
    pushed = await start_and_push(tmp_path_factory.mktemp("private"), {"app-a": workload["app-a"]},
                                  htpasswd={"alice": PASSWORD})
    yield pushed
    pushed.registry.stop()


def write_pull_secret(path: Path, host: str, user: str, password: str) -> PullSecretFile:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {f"http://{host}/": {"auth": encoded}}}))
    return PullSecretFile(path)


def assert_no_secret(caplog, *errors: BaseException) -> None:
    encoded = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    texts = [full_text(e) for e in errors] + [r.getMessage() for r in caplog.records]
    texts += [repr(r.args) for r in caplog.records]
    assert not [t for t in texts if PASSWORD in t or encoded in t]


async def test_anonymous_access_to_a_private_registry_is_unauthorized(private, caplog):
    caplog.set_level(logging.DEBUG)
    ref = private.refs["app-a"]
    async with RegistryClient(insecure_hosts=[private.registry.host]) as client:
        with pytest.raises(Unauthorized) as raised:
            await client.layers(ref)
    assert str(raised.value) == (f"image {ref}: access denied and no credentials for "
                                 f"{private.registry.host} in the pull secret")


async def test_the_right_password_works_and_never_shows(private, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    secret = write_pull_secret(tmp_path / "config.json", private.registry.host, "alice", PASSWORD)
    async with RegistryClient(insecure_hosts=[private.registry.host], credentials=secret.for_endpoint) as client:
        assert await client.layers(private.refs["app-a"]) == expected_layers(private.items["app-a"])
    assert caplog.records  # httpx and the client did log; none of it holds the password
    assert_no_secret(caplog)


async def test_a_wrong_password_is_refused_without_showing_it(private, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    ref = private.refs["app-a"]
    secret = write_pull_secret(tmp_path / "config.json", private.registry.host, "alice", PASSWORD + "-old")
    async with RegistryClient(insecure_hosts=[private.registry.host], credentials=secret.for_endpoint) as client:
        with pytest.raises(Unauthorized) as raised:
            await client.layers(ref)
    assert str(raised.value) == f"image {ref}: credentials for {private.registry.host} refused"
    assert_no_secret(caplog, raised.value)


async def test_a_rotated_password_is_picked_up_without_a_restart(private, tmp_path):
    path = tmp_path / "config.json"
    secret = write_pull_secret(path, private.registry.host, "alice", "stale")
    async with RegistryClient(insecure_hosts=[private.registry.host], credentials=secret.for_endpoint) as client:
        with pytest.raises(Unauthorized):
            await client.layers(private.refs["app-a"])
        write_pull_secret(path, private.registry.host, "alice", PASSWORD)
        assert await client.layers(private.refs["app-a"]) == expected_layers(private.items["app-a"])


# == a scripted registry for what a real one will not do on demand =========================

REPO = "team/app"


def image_manifest(seed: str, *sizes: int) -> bytes:
    layers = [{"mediaType": images.OCI_LAYER, "digest": sha256(f"{seed}/{i}".encode()), "size": size}
              for i, size in enumerate(sizes)]
    return manifest_bytes({"schemaVersion": 2, "mediaType": images.OCI_MANIFEST,
                           "config": {"digest": sha256(seed.encode()), "size": 3}, "layers": layers})


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None
    form: dict[str, list[str]]


class Scripted:
    """An HTTP server on 127.0.0.1: `route(method, path, seen) -> Answer`; records
    every request and the most requests it had in flight at once."""

    def __init__(self, route: Callable[[Seen], Answer]) -> None:
        self.route = route
        self.seen: list[Seen] = []
        self.in_flight = self.most_in_flight = 0
        self._lock = threading.Lock()
        self.server = _QuietServer(("127.0.0.1", 0), self._handler())
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def requests(self, prefix: str) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith(prefix)]

    def ref(self, body: bytes) -> ImageRef:
        return parse_reference(f"{self.host}/{REPO}@{sha256(body)}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode()) if length else {}
                seen = Seen(self.command, url.path, parse_qs(url.query), self.headers.get("Authorization"), form)
                with scripted._lock:
                    scripted.seen.append(seen)
                    scripted.in_flight += 1
                    scripted.most_in_flight = max(scripted.most_in_flight, scripted.in_flight)
                try:
                    answer = scripted.route(seen)
                    time.sleep(answer.delay)
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                finally:
                    with scripted._lock:
                        scripted.in_flight -= 1

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


class _QuietServer(ThreadingHTTPServer):
    """Does not print the broken pipes of clients that gave up (timeouts, size limits)."""

    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[Seen], Answer]], Scripted]]:
    servers: list[Scripted] = []

    def start(route: Callable[[Seen], Answer]) -> Scripted:
        servers.append(Scripted(route))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def manifests(*bodies: bytes, delay: float = 0.0) -> Callable[[Seen], Answer]:
    """Serves these manifests by digest, 404 MANIFEST_UNKNOWN for anything else."""
    by_path = {f"/v2/{REPO}/manifests/{sha256(body)}": body for body in bodies}

    def route(seen: Seen) -> Answer:
        if seen.path in by_path:
            return Answer(body=by_path[seen.path], headers={"Content-Type": images.OCI_MANIFEST}, delay=delay)
        return Answer(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}')

    return route


def bearer(server_host: Callable[[], str], inner: Callable[[Seen], Answer], *, token: str = "tok-1",
           expires_in: int = 300, user: str | None = None) -> Callable[[Seen], Answer]:
    """A registry that wants `Bearer token` and a token server at /token (basic auth for
    `user` when given, or a POSTed refresh token "refresh-me")."""
    def route(seen: Seen) -> Answer:
        if seen.path == "/token":
            allowed = (user is None or seen.authorization == _basic(user)
                       or seen.form.get("refresh_token") == ["refresh-me"])
            if not allowed:
                return Answer(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
            return Answer(body=json.dumps({"token": token, "expires_in": expires_in}).encode())
        if seen.authorization != f"Bearer {token}":
            challenge = (f'Bearer realm="http://{server_host()}/token",service="scripted",'
                         f'scope="repository:{REPO}:pull"')
            return Answer(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": challenge})
        return inner(seen)

    return route


def _basic(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()


def scripted_client(server: Scripted, attempts: int = 3, **kwargs) -> RegistryClient:
    return RegistryClient(insecure_hosts=[server.host], platform=AMD64,
                          backoff=Backoff(initial_seconds=0.01, jitter=0.0, attempts=attempts), **kwargs)


async def test_bearer_token_is_fetched_once_per_repository_and_reused(serve):
    first, second = image_manifest("a", 5, 6), image_manifest("b", 7)
    server = serve(bearer(lambda: server.host, manifests(first, second), user="alice"))
    credentials = Credentials(username="alice", password=PASSWORD)
    async with scripted_client(server, credentials=lambda image, endpoint: credentials) as client:
        assert [layer.size for layer in (await client.layers(server.ref(first))).layers] == [5, 6]
        assert [layer.size for layer in (await client.layers(server.ref(second))).layers] == [7]
    [token_request] = server.requests("/token")
    assert token_request.query == {"service": ["scripted"], "scope": [f"repository:{REPO}:pull"]}
    assert token_request.authorization == _basic("alice")
    assert [s.authorization for s in server.requests("/v2/")] == [None, "Bearer tok-1", "Bearer tok-1"]


async def test_an_expiring_token_is_fetched_again(serve):
    first, second = image_manifest("a", 5), image_manifest("b", 7)
    server = serve(bearer(lambda: server.host, manifests(first, second), expires_in=10))
    async with scripted_client(server) as client:  # anonymous token: public repository
        await client.layers(server.ref(first))
        await client.layers(server.ref(second))
    assert len(server.requests("/token")) == 2


async def test_identity_token_is_exchanged_by_oauth2_refresh(serve):
    body = image_manifest("a", 5)
    server = serve(bearer(lambda: server.host, manifests(body), user="nobody"))
    credentials = Credentials(identity_token="refresh-me")
    async with scripted_client(server, credentials=lambda image, endpoint: credentials) as client:
        await client.layers(server.ref(body))
    [token_request] = server.requests("/token")
    assert token_request.method == "POST"
    assert token_request.form["grant_type"] == ["refresh_token"]
    assert token_request.form["scope"] == [f"repository:{REPO}:pull"]


async def test_registry_token_is_sent_as_the_bearer_token(serve):
    body = image_manifest("a", 5)
    server = serve(bearer(lambda: server.host, manifests(body), token="from-the-secret"))
    credentials = Credentials(registry_token="from-the-secret")
    async with scripted_client(server, credentials=lambda image, endpoint: credentials) as client:
        await client.layers(server.ref(body))
    assert server.requests("/token") == []


async def test_a_token_server_refusing_the_credentials_is_unauthorized(serve, caplog):
    caplog.set_level(logging.DEBUG)
    body = image_manifest("a", 5)
    server = serve(bearer(lambda: server.host, manifests(body), user="alice"))
    credentials = Credentials(username="alice", password="wrong-" + PASSWORD)
    async with scripted_client(server, credentials=lambda image, endpoint: credentials) as client:
        with pytest.raises(Unauthorized, match=f"credentials for {server.host} refused") as raised:
            await client.layers(server.ref(body))
    assert PASSWORD not in full_text(raised.value)
    assert not [r for r in caplog.records if PASSWORD in r.getMessage()]


async def test_a_transient_503_is_retried(serve, caplog):
    body = image_manifest("a", 5)
    serve_manifest, calls = manifests(body), []

    def flaky(seen: Seen) -> Answer:
        calls.append(seen)
        return Answer(503) if len(calls) == 1 else serve_manifest(seen)

    server = serve(flaky)
    async with scripted_client(server) as client:
        assert (await client.layers(server.ref(body))).layers[0].size == 5
    assert len(calls) == 2
    assert any(f"attempt 1/3 failed: HTTP 503 from {server.host}; retrying in" in r.getMessage() for r in caplog.records)


async def test_a_lasting_503_is_a_retryable_error_after_three_attempts(serve):
    server = serve(lambda seen: Answer(503))
    ref = server.ref(b"x")
    async with scripted_client(server) as client:
        with pytest.raises(RegistryError) as raised:
            await client.layers(ref)
    assert str(raised.value) == f"image {ref}: HTTP 503 from {server.host}"
    assert raised.value.retryable is True
    assert len(server.seen) == 3


async def test_429_with_a_long_retry_after_is_reported_not_waited_for(serve):
    server = serve(lambda seen: Answer(429, headers={"Retry-After": "120"}))
    ref = server.ref(b"x")
    async with scripted_client(server) as client:
        with pytest.raises(RegistryError) as raised:
            await client.layers(ref)
    assert str(raised.value) == f"image {ref}: rate limited by {server.host} (HTTP 429, retry after 120 s)"
    assert raised.value.retryable is True
    assert len(server.seen) == 1


async def test_429_with_a_short_retry_after_waits_that_long(serve):
    body = image_manifest("a", 5)
    serve_manifest, calls = manifests(body), []

    def limited(seen: Seen) -> Answer:
        calls.append(seen)
        return Answer(429, headers={"Retry-After": "1"}) if len(calls) == 1 else serve_manifest(seen)

    server = serve(limited)
    started = time.monotonic()
    async with scripted_client(server) as client:
        assert (await client.layers(server.ref(body))).layers[0].size == 5
    assert len(calls) == 2 and time.monotonic() - started >= 1.0, "the 0.01 s backoff is not enough"


async def test_other_4xx_is_not_retryable(serve):
    server = serve(lambda seen: Answer(400, b'{"errors":[{"code":"DIGEST_INVALID"}]}'))
    ref = server.ref(b"x")
    async with scripted_client(server) as client:
        with pytest.raises(RegistryError) as raised:
            await client.layers(ref)
    assert str(raised.value) == f"image {ref}: HTTP 400 from {server.host} (DIGEST_INVALID)"
    assert raised.value.retryable is False
    assert len(server.seen) == 1


async def test_a_manifest_that_does_not_match_its_digest_is_refused(serve):
    asked, served = image_manifest("a", 5), image_manifest("evil", 1)
    server = serve(lambda seen: Answer(body=served))
    ref = server.ref(asked)
    async with scripted_client(server) as client:
        with pytest.raises(RegistryError) as raised:
            await client.layers(ref)
    assert str(raised.value).startswith(f"image {ref}: {server.host} served a manifest whose digest is ")
    assert raised.value.retryable is False


async def test_an_oversized_answer_is_refused(serve):
    server = serve(lambda seen: Answer(body=b" " * (5 * 1024 * 1024)))
    async with scripted_client(server) as client:
        with pytest.raises(RegistryError, match="larger than") as raised:
            await client.layers(server.ref(b"x"))
    assert raised.value.retryable is False


async def test_a_slow_registry_times_out_retryably(serve):
    server = serve(lambda seen: Answer(delay=2))
    ref = server.ref(b"x")
    async with scripted_client(server, timeout=0.2, attempts=1) as client:
        with pytest.raises(RegistryError) as raised:
            await client.layers(ref)
    assert str(raised.value) == f"image {ref}: {server.host} timed out"
    assert raised.value.retryable is True


async def test_concurrent_requests_for_one_digest_share_one_fetch(serve):
    body = image_manifest("a", 5)
    server = serve(manifests(body, delay=0.2))
    async with scripted_client(server) as client:
        results = await asyncio.gather(*(client.layers(server.ref(body)) for _ in range(8)))
        assert len(set(results)) == 1
        await client.layers(server.ref(body))  # and later ones hit the cache
    assert len(server.seen) == 1


async def test_max_concurrency_bounds_requests_in_flight(serve):
    bodies = [image_manifest(f"m{i}", i) for i in range(6)]
    server = serve(manifests(*bodies, delay=0.1))
    async with scripted_client(server, max_concurrency=2) as client:
        results = await client.many({server.ref(body): () for body in bodies})
    assert all(isinstance(result, SizedImage) for result in results.values())
    assert server.most_in_flight == 2


async def test_a_cancelled_caller_does_not_break_the_shared_fetch(serve):
    body = image_manifest("a", 5)
    server = serve(manifests(body, delay=0.3))
    async with scripted_client(server) as client:
        impatient = asyncio.create_task(client.layers(server.ref(body)))
        patient = asyncio.create_task(client.layers(server.ref(body)))
        await asyncio.sleep(0.1)
        impatient.cancel()
        assert (await patient).layers[0].size == 5
    assert impatient.cancelled()
    assert len(server.seen) == 1
