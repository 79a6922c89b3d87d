"""buf lint and the breaking-change check of proto/ against the released API image
(proto/released/pinsvc-v1.binpb), with the buf that scripts/install-peers.sh builds."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from devenv.paths import MissingBinary, bin_path

ROOT = Path(__file__).resolve().parents[2]
RELEASED = ROOT / "proto" / "released" / "pinsvc-v1.binpb"


@pytest.fixture(scope="module")
def buf() -> Path:
    try:
        return bin_path("buf")
    except MissingBinary as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(e))


def run(buf: Path, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(buf), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def copy_of_proto(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    return tmp_path / "proto" / "pinsvc" / "v1" / "pinsvc.proto"


def test_lint_passes(buf):
    done = run(buf, "lint", "proto")
    assert done.returncode == 0, done.stdout + done.stderr


def test_lint_still_checks_our_proto(buf, tmp_path):
    proto = copy_of_proto(tmp_path)
    proto.write_text(proto.read_text() + "\nmessage node_info {}\n")
    done = run(buf, "lint", "proto", cwd=tmp_path)
    assert done.returncode != 0
    assert 'Message name "node_info" should be PascalCase' in done.stdout, done.stdout + done.stderr


def test_no_breaking_change_against_the_released_api(buf):
    done = run(buf, "breaking", "proto", "--against", str(RELEASED))
    assert done.returncode == 0, done.stdout + done.stderr


def test_breaking_check_catches_a_renumbered_field(buf, tmp_path):
    proto = copy_of_proto(tmp_path)
    text = proto.read_text()
    assert "  string node = 1;\n" in text
    proto.write_text(text.replace("  string node = 1;\n", "  string node = 9;\n", 1))
    done = run(buf, "breaking", "proto", "--against", str(RELEASED), cwd=tmp_path)
    assert done.returncode != 0
    assert 'Previously present field "1" with name "node" on message "NodeStatus" was deleted' in done.stdout, \
        done.stdout + done.stderr


def test_released_image_holds_the_v1_api():
    image = descriptor_pb2.FileDescriptorSet.FromString(RELEASED.read_bytes())  # a buf image is one
    files = {f.name: f for f in image.file}
    assert {"pinsvc/v1/pinsvc.proto", "runtime/v1/api.proto"} <= set(files)
    services = files["pinsvc/v1/pinsvc.proto"].service
    assert [s.name for s in services] == ["PinService"]
    assert {"CheckSpace", "Apply", "GetStatus"} <= {m.name for m in services[0].method}
