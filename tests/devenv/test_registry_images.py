"""The dev-env registry peer and the synthetic images, against a real `docker-registry`."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import socket
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devenv import images
from devenv.images import Image, Index, PushError, RegistryAuth, push
from devenv.registry import Registry, RegistryError

ACCEPT = ", ".join(
    [images.DOCKER_MANIFEST, images.DOCKER_MANIFEST_LIST, images.OCI_MANIFEST, images.OCI_INDEX]
)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with Registry(tmp_path_factory.mktemp("registry")) as registry:
        yield registry


@pytest.fixture(scope="module")
def small() -> dict[str, Image | Index]:
    return images.small_workload()


@pytest.fixture(scope="module")
def pushed(registry: Registry, small: dict[str, Image | Index]) -> dict[str, str]:
    """The small workload pushed concurrently; name -> reference."""
    out = registry.root / "refs.json"
    assert images.main(["push", "--registry", registry.host, "--workload", "small", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def get_manifest(registry: Registry, repo: str, reference: str) -> httpx.Response:
    return httpx.get(f"{registry.url}/v2/{repo}/manifests/{reference}", headers={"Accept": ACCEPT})


def all_manifests(items: dict[str, Image | Index]) -> list[Image | Index]:
    """Every manifest of a workload, index children included."""
    out: list[Image | Index] = []
    for item in items.values():
        out.append(item)
        if isinstance(item, Index):
            out.extend(item.images)
    return out


def test_cli_prints_the_digest_reference_of_every_item(
    registry: Registry, small: dict[str, Image | Index], pushed: dict[str, str]
) -> None:
    assert pushed == {name: item.ref(registry.host) for name, item in small.items()}


def test_every_manifest_is_served_byte_for_byte_with_its_media_type(
    registry: Registry, small: dict[str, Image | Index], pushed: dict[str, str]
) -> None:
    manifests = all_manifests(small)
    assert len(manifests) == 7  # six images and the index
    for item in manifests:
        response = get_manifest(registry, item.repo, item.digest)
        assert response.status_code == 200, (item.repo, response.text)
        assert response.content == item.manifest
        assert response.headers["Content-Type"] == item.media_type
        assert response.headers["Docker-Content-Digest"] == item.digest


def test_shared_base_layer_is_readable_from_both_repositories(
    registry: Registry, small: dict[str, Image | Index], pushed: dict[str, str]
) -> None:
    app_a, app_b = small["app-a"], small["app-b"]
    assert isinstance(app_a, Image) and isinstance(app_b, Image)
    base = app_a.layers[0]
    assert app_b.layers[0].digest == base.digest
    for repo in (app_a.repo, app_b.repo):
        response = httpx.get(f"{registry.url}/v2/{repo}/blobs/{base.digest}", follow_redirects=True)
        assert response.status_code == 200
        assert hashlib.sha256(response.content).hexdigest() == base.digest.removeprefix("sha256:")


def test_index_resolves_to_distinct_platform_children(
    registry: Registry, small: dict[str, Image | Index], pushed: dict[str, str]
) -> None:
    index = small["multiarch"]
    assert isinstance(index, Index)
    body = get_manifest(registry, index.repo, index.digest).json()
    platforms = {m["platform"]["architecture"]: m["digest"] for m in body["manifests"]}
    assert set(platforms) == {"amd64", "arm64"}
    for digest in platforms.values():
        child = get_manifest(registry, index.repo, digest)
        assert child.status_code == 200
        assert child.headers["Content-Type"] == images.DOCKER_MANIFEST
    other_digests = {item.digest for name, item in small.items() if name != "multiarch"}
    assert platforms["amd64"] not in other_digests


def test_missing_ref_is_unknown_to_the_registry(registry: Registry, pushed: dict[str, str]) -> None:
    ref = images.missing_ref(registry.host, repo="pinsvc-test/app-a")
    repo, digest = ref.removeprefix(registry.host + "/").split("@")
    response = get_manifest(registry, repo, digest)
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_building_twice_gives_identical_digests() -> None:
    first, second = images.small_workload(), images.small_workload()
    assert [m.digest for m in all_manifests(first)] == [m.digest for m in all_manifests(second)]
    assert images.make_layer("a", 1000) == images.make_layer("a", 1000)
    assert images.make_layer("a", 1000).digest != images.make_layer("b", 1000).digest


def test_layer_is_a_tar_whose_digest_is_the_config_diff_id() -> None:
    layer = images.make_layer("tar-check", 4096)
    tar = gzip.decompress(layer.data)
    assert layer.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        (member,) = archive.getmembers()
        assert (member.size, member.mtime, member.uid, member.gid) == (4096, 0, 0, 0)
    image = images.build_image("pinsvc-test/x", [layer], oci=True, arch="arm64")
    config = json.loads(image.config.data)
    assert config["rootfs"] == {"type": "layers", "diff_ids": [layer.diff_id]}
    assert (config["architecture"], config["os"]) == ("arm64", "linux")
    assert json.loads(image.manifest)["layers"][0]["mediaType"] == images.OCI_LAYER


def test_bench_workload_shares_bases_and_has_unique_images() -> None:
    bench = images.bench_workload(6, bases=2, base_size=1024, unique_size=512)
    assert len({image.digest for image in bench}) == 6
    assert {image.layers[0].digest for image in bench} == {bench[0].layers[0].digest, bench[1].layers[0].digest}
    assert len({image.layers[1].digest for image in bench}) == 6


def test_auth_registry_refuses_anonymous_and_wrong_credentials(tmp_path: Path) -> None:
    image = images.build_image("pinsvc-test/private", [images.make_layer("auth/private", 1024)])
    with Registry(tmp_path, htpasswd={"alice": "s3cret"}) as registry:
        with pytest.raises(PushError, match=r"HTTP 401 Unauthorized.*anonymous") as anonymous:
            push(registry.host, image)
        with pytest.raises(PushError, match=r"HTTP 401 Unauthorized.*user 'alice' refused") as wrong:
            push(registry.host, image, auth=("alice", "wrong"))
        assert anonymous.value.status == wrong.value.status == 401
        assert "wrong" not in str(wrong.value)

        assert push(registry.url, image, auth=("alice", "s3cret")) == image.ref(registry.host)
        response = httpx.get(
            f"{registry.url}/v2/{image.repo}/manifests/{image.digest}",
            headers={"Accept": ACCEPT}, auth=("alice", "s3cret"),
        )
        assert response.content == image.manifest


def test_bearer_challenge_is_answered_with_a_token_from_its_realm() -> None:
    token_requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            token_requests.append(request)
            return httpx.Response(200, json={"token": "t0k"})
        if request.headers.get("Authorization") == "Bearer t0k":
            return httpx.Response(200)
        challenge = 'Bearer realm="https://auth.test/token",service="reg",scope="repository:a/b:pull,push"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    auth = RegistryAuth(("alice", "s3cret"))
    with httpx.Client(transport=httpx.MockTransport(handler), auth=auth, base_url="https://reg.test") as client:
        assert client.head("/v2/a/b/blobs/sha256:00").status_code == 200
        assert client.head("/v2/a/b/blobs/sha256:01").status_code == 200  # cached token
    (token_request,) = token_requests
    assert token_request.url.params.multi_items() == [("service", "reg"), ("scope", "repository:a/b:pull,push")]
    assert token_request.headers["Authorization"] == httpx.BasicAuth("alice", "s3cret")._auth_header


def test_registry_restarts_on_the_same_port_with_its_data(tmp_path: Path) -> None:
    image = images.build_image("pinsvc-test/restart", [images.make_layer("restart", 1024)])
    with Registry(tmp_path) as registry:
        host = registry.host
        push(registry.host, image)
        registry.stop()
        assert not registry.running
        registry.start()
        assert registry.host == host
        assert get_manifest(registry, image.repo, image.digest).content == image.manifest


def test_paused_registry_does_not_answer_until_resumed(tmp_path: Path) -> None:
    with Registry(tmp_path) as registry:
        registry.pause()
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(f"{registry.url}/v2/", timeout=0.3)
        registry.resume()
        assert httpx.get(f"{registry.url}/v2/", timeout=2).status_code == 200


def test_restart_on_a_taken_port_fails_with_the_log_tail(tmp_path: Path) -> None:
    with Registry(tmp_path) as registry:
        registry.stop()
        with socket.create_server(("127.0.0.1", registry.port)):
            with pytest.raises(RegistryError, match="(?s)exited with status.*address already in use"):
                registry.start()
        assert not registry.running


def test_host_before_start_names_the_root(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=str(tmp_path)):
        Registry(tmp_path).host
