"""The registry client through an image's endpoints (registries.conf mirrors), against real
`docker-registry` processes: the runtime's order, refused endpoints never contacted, one
error naming every endpoint, per-endpoint credentials and TLS, the deadline, and the
layers the space check reads without a registry (diff_ids, the manifest cache)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devenv import images
from pinsvc.adapters.pullsecret import parse_pull_secret
from pinsvc.adapters.registry.client import RegistryClient
from pinsvc.errors import ImageNotFound, RegistryError
from pinsvc.mirrors.config import load
from pinsvc.mirrors.resolve import Endpoint, resolve
from pinsvc.model import Layer
from pinsvc.refs import ImageRef, parse_reference
from pinsvc.retry import Backoff
from tests.unit.test_registry_client import AMD64, Answer, Pushed, Seen, manifests, serve, small  # noqa: F401

CANONICAL = "quay.io/openshift-release-dev"
ONCE = Backoff(initial_seconds=0.01, jitter=0.0, attempts=1)


@pytest_asyncio.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    before = asyncio.all_tasks()
    yield
    leaked = [t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()]
    assert leaked == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def black_hole() -> Iterator[str]:
    """host:port of a listener that accepts connections (the kernel's backlog) and never
    answers: a registry that hangs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"127.0.0.1:{s.getsockname()[1]}"


def endpoints(image: str, *mirrors: str, blocked: bool = True, insecure: bool = True) -> tuple[Endpoint, ...]:
    """The endpoints of `image` under a registries.conf mirroring CANONICAL to `mirrors`
    (each `host:port/namespace`), in that order, its source blocked."""
    text = f'[[registry]]\nprefix = "{CANONICAL}"\nlocation = "{CANONICAL}"\nblocked = {str(blocked).lower()}\n'
    text += "".join(f'[[registry.mirror]]\nlocation = "{m}"\ninsecure = {str(insecure).lower()}\n' for m in mirrors)
    return resolve(load(("registries.conf", text)), parse_reference(image))


def canonical(pushed: Pushed, name: str) -> ImageRef:
    """`name` of the small workload under its canonical name (pushed as pinsvc-test/<name>)."""
    return parse_reference(f"{CANONICAL}/{name}@{pushed.refs[name].digest}")


async def test_the_first_endpoint_that_has_the_manifest_serves_it_and_is_named(small):
    image, live = canonical(small, "app-a"), f"{small.registry.host}/pinsvc-test"
    dead = f"127.0.0.1:{free_port()}/openshift-release-dev"
    async with RegistryClient(platform=AMD64, backoff=ONCE) as client:
        sized = await client.sized(image, endpoints(str(image), dead, live))
    assert sized.via == f"{live}/app-a"
    assert [layer.size for layer in sized.layers] == [b.size for b in small.items["app-a"].layers]


async def test_when_no_endpoint_serves_it_one_error_names_each_endpoint_and_its_cause(small):
    image = parse_reference(f"{CANONICAL}/app-a@{images.missing_ref('x').split('@')[1]}")
    dead_port = free_port()
    chain = endpoints(str(image), f"127.0.0.1:{dead_port}/openshift-release-dev", f"{small.registry.host}/pinsvc-test")
    async with RegistryClient(platform=AMD64, backoff=ONCE) as client:
        with pytest.raises(RegistryError) as raised:
            await client.layers(image, chain)
    assert str(raised.value) == (
        f"image {image}: none of its 3 endpoints (registries.conf, in the runtime's order) served it: "
        f"127.0.0.1:{dead_port}/openshift-release-dev/app-a: cannot reach 127.0.0.1:{dead_port}: connection refused; "
        f"{small.registry.host}/pinsvc-test/app-a: manifest unknown on {small.registry.host}; "
        f"{CANONICAL}/app-a: not contacted: blocked by [[registry]] '{CANONICAL}' in registries.conf")
    assert raised.value.retryable, "the dead mirror may come back"


async def test_a_mirror_without_the_image_and_a_blocked_source_is_not_found(small):
    image = parse_reference(f"{CANONICAL}/app-a@{images.missing_ref('x').split('@')[1]}")
    async with RegistryClient(platform=AMD64) as client:
        with pytest.raises(ImageNotFound, match=f"{CANONICAL}/app-a: not contacted: blocked by"):
            await client.layers(image, endpoints(str(image), f"{small.registry.host}/pinsvc-test"))


async def test_a_blocked_source_without_mirrors_is_refused_without_contact(small):
    image = canonical(small, "app-a")
    async with RegistryClient(platform=AMD64) as client:
        with pytest.raises(RegistryError) as raised:
            await client.layers(image, endpoints(str(image)))
    assert str(raised.value).endswith(f"{CANONICAL}/app-a: not contacted: blocked by [[registry]] '{CANONICAL}' "
                                      f"in registries.conf")
    assert not raised.value.retryable


async def test_a_silent_mirror_gives_way_to_the_next_after_the_request_timeout(small, black_hole):
    image, live = canonical(small, "app-a"), f"{small.registry.host}/pinsvc-test"
    started = time.monotonic()
    async with RegistryClient(platform=AMD64, backoff=ONCE, timeout=0.5) as client:
        sized = await client.sized(image, endpoints(str(image), f"{black_hole}/x", live))
    assert sized.via == f"{live}/app-a"
    assert 0.5 <= time.monotonic() - started < 2.5, "one timeout (HTTPS is not tried again in plain HTTP)"


async def test_the_deadline_fails_the_image_naming_the_endpoint_waited_on(small, black_hole):
    image, other = canonical(small, "app-a"), canonical(small, "oci")
    live = f"{small.registry.host}/pinsvc-test"
    wanted = {image: endpoints(str(image), f"{black_hole}/x", live), other: endpoints(str(other), live)}
    started = time.monotonic()
    async with RegistryClient(platform=AMD64, timeout=30) as client:
        results = await client.many(wanted, timeout=0.5)
    assert time.monotonic() - started < 2
    assert results[other].via == f"{live}/oci", "the others are sized"
    assert isinstance(results[image], RegistryError) and results[image].retryable
    assert str(results[image]) == (f"image {image}: no registry served its manifest in the 0.5 s the space "
                                   f"check's deadline left ({black_hole}/x/app-a: no answer yet)")


async def test_each_endpoint_gets_its_own_credentials_and_never_the_canonical_ones(serve):
    """The mirror wants Basic auth; the pull secret holds credentials for the canonical
    repository and for the mirror: only the mirror's reach it."""
    body = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":' \
           b'{"digest":"sha256:' + b"c" * 64 + b'","size":3},"layers":[]}'
    inner = manifests(body)

    def route(seen: Seen) -> Answer:
        if seen.authorization != "Basic " + base64.b64encode(b"mirror-user:mirror-pw").decode():
            return Answer(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": 'Basic realm="m"'})
        return inner(seen)

    server = serve(route)
    image = parse_reference(f"{CANONICAL}/app@{server.ref(body).digest}")
    secret = parse_pull_secret(json.dumps({"auths": {
        CANONICAL: {"auth": base64.b64encode(b"quay-user:quay-pw").decode()},
        server.host: {"auth": base64.b64encode(b"mirror-user:mirror-pw").decode()}}}))
    chain = endpoints(str(image), f"{server.host}/team")  # the scripted server's REPO is team/app
    async with RegistryClient(platform=AMD64, credentials=secret.for_endpoint, backoff=ONCE) as client:
        assert (await client.sized(image, chain)).via == f"{server.host}/team/app"
    sent = {s.authorization for s in server.seen}
    assert sent == {None, "Basic " + base64.b64encode(b"mirror-user:mirror-pw").decode()}


async def test_diff_ids_come_from_the_image_config_of_the_serving_endpoint(small):
    image = canonical(small, "three-layers")
    async with RegistryClient(platform=AMD64, backoff=ONCE) as client:
        sized = await client.sized(image, endpoints(str(image), f"{small.registry.host}/pinsvc-test"), diff_ids=True)
    pushed = small.items["three-layers"].layers
    assert sized.layers == tuple(Layer(b.digest, b.size, b.diff_id) for b in pushed)


async def test_cached_layers_read_the_disk_cache_and_never_a_registry(small, tmp_path):
    cache = tmp_path / "manifests"
    index, plain = small.refs["multiarch"], small.refs["app-a"]
    async with RegistryClient(platform=AMD64, cache_dir=cache, insecure_hosts=[small.registry.host]) as client:
        sized = await client.many({index: (), plain: ()})
    unknown = "sha256:" + "f" * 64
    async with RegistryClient(platform=AMD64, cache_dir=cache, timeout=0.01) as restarted:
        found = await restarted.cached_layers([index.digest, plain.digest, unknown, "not-a-digest"])
    assert found == {index.digest: sized[index].layers, plain.digest: sized[plain].layers}


# -- TLS of each endpoint: certs.d, insecure ------------------------------------------------


def _ca_and_server(out: Path) -> tuple[Path, Path, Path]:
    """A CA certificate and a server certificate (127.0.0.1) with its key, as PEM files."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mirror-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mirror")]))
              .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    out.mkdir(parents=True)
    paths = out / "ca.crt", out / "server.crt", out / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@pytest_asyncio.fixture
async def https_registry(tmp_path) -> AsyncIterator[tuple[Pushed, Path]]:
    """app-a in a registry that serves HTTPS with a certificate of its own CA (pushed over
    plain HTTP first, then restarted with TLS on the same port and data)."""
    from tests.unit.test_registry_client import start_and_push
    ca, cert, key = _ca_and_server(tmp_path / "pki")
    pushed = await start_and_push(tmp_path / "registry", {"app-a": images.small_workload()["app-a"]})
    await asyncio.to_thread(pushed.registry.stop)
    pushed.registry.tls = (cert, key)
    await asyncio.to_thread(pushed.registry.start)
    yield pushed, ca
    pushed.registry.stop()


async def test_an_https_mirror_is_trusted_through_its_certs_d_ca_or_when_insecure(https_registry, tmp_path):
    pushed, ca = https_registry
    image = canonical(pushed, "app-a")
    mirror = f"{pushed.registry.host}/pinsvc-test"
    async with RegistryClient(platform=AMD64, backoff=ONCE, certs_dirs=[tmp_path / "none"]) as client:
        with pytest.raises(RegistryError, match=f"TLS certificate of {pushed.registry.host} is not trusted"):
            await client.layers(image, endpoints(str(image), mirror, insecure=False))
        assert (await client.sized(image, endpoints(str(image), mirror, insecure=True))).via == f"{mirror}/app-a"
    certs = tmp_path / "certs.d"
    (certs / pushed.registry.host).mkdir(parents=True)
    (certs / pushed.registry.host / "ca.crt").write_bytes(ca.read_bytes())
    async with RegistryClient(platform=AMD64, backoff=ONCE, certs_dirs=[certs]) as client:
        assert (await client.sized(image, endpoints(str(image), mirror, insecure=False))).via == f"{mirror}/app-a"
