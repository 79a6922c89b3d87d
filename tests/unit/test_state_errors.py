"""Failures to write pinsvc's own files become errors naming the file (a full disk:
NoSpaceLeft), never a bare OSError that the API could only report as internal."""

import errno

import pytest

from pinsvc import errors
from pinsvc.core import state as state_module
from pinsvc.core.dropin import Dropin
from pinsvc.core.state import State, StateStore


def failing(code: int):
    def write(*args, **kwargs):
        raise OSError(code, "boom")
    return write


@pytest.mark.parametrize("code, kind, words", [
    (errno.ENOSPC, errors.NoSpaceLeft, "no space left on device"),
    (errno.EDQUOT, errors.NoSpaceLeft, "disk quota exceeded"),
    (errno.EROFS, errors.StateError, "boom"),
])
def test_state_save_names_the_file_and_the_cause(tmp_path, monkeypatch, code, kind, words):
    store = StateStore(tmp_path)
    monkeypatch.setattr(state_module, "write_atomic", failing(code))
    with pytest.raises(kind) as raised:
        store.save(State())
    assert str(store.path) in str(raised.value) and words in str(raised.value)
    assert isinstance(raised.value.__cause__, OSError)


async def test_dropin_write_on_a_full_disk_is_no_space_left_naming_the_file(tmp_path, monkeypatch):
    directory = tmp_path / "crio.conf.d"
    directory.mkdir()
    dropin = Dropin(directory / "50-pinned-images", tmp_path, crio_binary="")
    monkeypatch.setattr(Dropin, "_install", lambda self, *a, **k: failing(errno.ENOSPC)())
    with pytest.raises(errors.NoSpaceLeft, match="50-pinned-images: no space left on device"):
        await dropin.write(["registry.example/app@sha256:" + "a" * 64])
    assert not any(directory.iterdir())
