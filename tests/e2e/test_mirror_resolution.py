"""The resolver (pinsvc.mirrors) against the real CRI-O: the endpoints CRI-O tries for a
digest reference, in its order, are the ones `RegistriesConfFiles.resolve` returns.

CRI-O logs each endpoint it tries ("Trying to access ..."), at info level; the canonical
registry of these references, quay.io, is blocked, so it is never contacted.
"""

from __future__ import annotations

import re

import pytest

from pinsvc.adapters.registries_conf import RegistriesConfFiles
from devenv.crio import CrioError
from pinsvc.refs import parse_reference
from tests.e2e.helpers import free_port

TRYING = re.compile(r'Trying to access \\"([^"\\]+)\\"')
CANONICAL = "quay.io/openshift-release-dev"


@pytest.fixture
def mirrored(node, registry):
    """A registries.conf.d drop-in: quay.io/openshift-release-dev blocked, mirrored first
    to a port nobody listens on, then to the test registry; CRI-O reloaded."""
    dropin = node.root / "registries.conf.d" / "50-pinsvc-e2e-mirror.conf"
    dropin.write_text(f"""
[[registry]]
prefix = "{CANONICAL}"
location = "{CANONICAL}"
blocked = true
[[registry.mirror]]
location = "127.0.0.1:{free_port()}/dead"
insecure = true
[[registry.mirror]]
location = "{registry.host}/pinsvc-test"
insecure = true
""")
    node.reload()
    yield RegistriesConfFiles(node.registries_conf, [node.root / "registries.conf.d"])
    dropin.unlink()
    node.reload()


def tried(node, offset: int, digest: str) -> list[str]:
    with open(node.log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return [t for t in TRYING.findall(text) if t.endswith(digest)]


def test_crio_tries_the_resolved_endpoints_in_order_and_records_the_canonical_name(node, workload, mirrored):
    digest = workload["app-a"].split("@")[1]
    image = parse_reference(f"{CANONICAL}/app-a@{digest}")
    endpoints = mirrored.resolve(image)
    assert [(e.mirror, bool(e.refused)) for e in endpoints] == [(True, False), (True, False), (False, True)]

    offset = node.log_path.stat().st_size
    node.crictl("pull", str(image), timeout=60)
    assert tried(node, offset, digest) == [str(e.ref) for e in endpoints[:2]], "the dead mirror, then the live one"
    (pulled,) = node.images_json()["images"]
    assert pulled["repoDigests"] == [str(image)], "recorded under the canonical name, not the mirror's"


def test_when_no_mirror_has_the_image_crio_tries_every_endpoint_and_refuses_the_blocked_one(node, mirrored):
    digest = "sha256:" + "ab" * 32
    image = parse_reference(f"{CANONICAL}/app-a@{digest}")
    endpoints = mirrored.resolve(image)

    offset = node.log_path.stat().st_size
    with pytest.raises(CrioError) as e:
        node.crictl("pull", str(image), timeout=60)
    attempts = tried(node, offset, digest)
    expected = [str(e.ref) for e in endpoints]
    # CRI-O 1.36 goes through the list twice before it gives up (each pass in this order)
    assert attempts and attempts == expected * (len(attempts) // len(expected)), attempts
    assert f"registry {CANONICAL} is blocked" in str(e.value)
    assert endpoints[-1].refused.startswith(f"blocked by [[registry]] '{CANONICAL}' in ")
    assert endpoints[-1].refused.endswith("50-pinsvc-e2e-mirror.conf")
