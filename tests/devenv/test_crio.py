"""The CRI-O test peer: a real CRI-O, started as root from a temp directory."""

from __future__ import annotations

import os
import shutil
import signal
import time

import grpc
import pytest

from devenv.crio import RELOAD_COMPLETED, RELOAD_FAILED, Crio, CrioError, mounts_under
from devenv.paths import MissingBinary, bin_path
from pinsvc.gen.runtime.v1 import api_pb2, api_pb2_grpc


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "CRI-O runs as root only"
    try:
        for name in ("crio", "crictl", "pinns"):
            bin_path(name)
    except MissingBinary as e:
        return str(e)
    for name in ("crun", "conmon"):
        if not shutil.which(name):
            return f"{name} is not installed: run `bash scripts/install-peers.sh`"
    return None


pytestmark = [
    pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or ""),
    pytest.mark.timeout(30),
    pytest.mark.e2e,
]

PIN = "127.0.0.1:1/x@sha256:" + "ab" * 32


@pytest.fixture
def crio(tmp_path):
    instance = Crio(tmp_path / "crio")
    instance.start()
    yield instance
    instance.stop()
    assert mounts_under(instance.root) == []


def test_everything_lives_under_root(crio):
    assert crio.socket.is_socket() and crio.socket.parent == crio.root
    assert crio.endpoint == f"unix://{crio.socket}"
    assert crio.dropin_dir.is_dir() and list(crio.dropin_dir.iterdir()) == []
    assert int(crio.pidfile.read_text()) == crio.pid
    assert crio.storage_driver in ("overlay", "vfs")
    assert (crio.storage_root / f"{crio.storage_driver}-images").is_dir()


def test_list_images_through_crictl(crio):
    assert crio.images_json()["images"] == []
    assert crio.pinned_images() == set()


async def test_image_fs_info_reports_a_mountpoint_under_root(crio):
    async with grpc.aio.insecure_channel(crio.endpoint) as channel:
        stub = api_pb2_grpc.ImageServiceStub(channel)
        reply = await stub.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=5)
    mountpoints = [fs.fs_id.mountpoint for fs in reply.image_filesystems]
    assert mountpoints and all(m.startswith(f"{crio.storage_root}/") for m in mountpoints)


def test_reload_applies_a_dropin(crio):
    (crio.dropin_dir / "50-pinned-images.conf").write_text(
        f'[crio.image]\npinned_images = ["{PIN}"]\n'
    )
    lines = crio.reload()
    assert any(RELOAD_COMPLETED in line for line in lines)
    assert any("Set config pinned_images" in line and PIN in line for line in lines)
    assert any(RELOAD_COMPLETED in line for line in crio.reload_log_lines())


def test_a_bad_dropin_fails_the_reload_but_not_crio(crio):
    (crio.dropin_dir / "50-bad.conf").write_text("[crio.image]\npinned_images = 7\n")
    lines = crio.reload()
    assert any(RELOAD_FAILED in line for line in lines)
    assert not any(RELOAD_COMPLETED in line for line in lines)
    assert crio.running and crio.images_json()["images"] == []


def test_sighup_through_the_pidfile_reloads(crio):
    before = len(crio.reload_log_lines())
    os.kill(int(crio.pidfile.read_text()), signal.SIGHUP)
    deadline = time.monotonic() + 5
    while not any(RELOAD_COMPLETED in l for l in crio.reload_log_lines()[before:]):
        assert time.monotonic() < deadline, "no reload after SIGHUP to the pid in the pidfile"
        time.sleep(0.01)
    assert crio.running


def test_stop_is_clean_and_the_root_starts_again(crio):
    assert crio.stop() == 0
    assert not crio.running and crio.pid is None and not crio.pidfile.exists()
    assert (crio.root / "lib" / "clean.shutdown").exists()
    (crio.dropin_dir / "50-pinned-images.conf").write_text(
        f'[crio.image]\npinned_images = ["{PIN}"]\n'
    )
    crio.start()
    assert crio.images_json()["images"] == []
    again = Crio(crio.root)  # a new instance over the same directory, as after a reboot
    crio.stop()
    with again:
        assert again.images_json()["images"] == []
        assert (again.dropin_dir / "50-pinned-images.conf").exists()


def test_start_after_kill(crio):
    old_pid = crio.pid
    crio.kill()
    assert not crio.running and not crio.pidfile.exists()
    crio.restart()
    assert crio.pid != old_pid and crio.images_json()["images"] == []


def test_three_instances_at_once_one_on_vfs(tmp_path):
    instances = [
        Crio(tmp_path / "c0"),
        Crio(tmp_path / "c1"),
        Crio(tmp_path / "c2", storage_driver="vfs"),
    ]
    try:
        for instance in instances:
            instance.start()
        assert len({i.pid for i in instances}) == 3
        assert all(i.images_json()["images"] == [] for i in instances)
        assert (instances[2].storage_root / "vfs-images").is_dir()
    finally:
        for instance in instances:
            instance.stop()


def test_a_failed_start_says_why(tmp_path):
    broken = Crio(tmp_path / "crio", extra_config='[crio.runtime]\ncgroup_manager = "nope"\n')
    with pytest.raises(CrioError, match=r"(?s)exited with 1.*invalid cgroup manager: nope"):
        broken.start()
    assert not broken.running and not broken.pidfile.exists()
    assert mounts_under(broken.root) == []


def test_crictl_errors_carry_stderr(crio):
    with pytest.raises(CrioError, match="no-such-image"):
        crio.crictl("inspecti", "127.0.0.1:1/no-such-image:v1")
