"""Failures to write pinsvc's own files become errors naming the file (a full disk:
NoSpaceLeft), never a bare OSError that the API could only report as internal."""

import errno
import os

import pytest

from pinsvc import errors
from pinsvc.core import state as state_module
from pinsvc.adapters.dropin import Dropin
from pinsvc.core.pins import dropin_references
from pinsvc.core.state import DEGRADED, State, StateStore
from pinsvc.model import PinnedImageSet
from tests.unit.test_pins import A, apply, make_agent  # noqa: F401  (make_agent is a fixture)


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
    monkeypatch.setattr(os, "fsync", failing(errno.ENOSPC))  # the temp file's bytes do not fit
    with pytest.raises(errors.NoSpaceLeft, match="50-pinned-images: no space left on device"):
        await dropin.write(["registry.example/app@sha256:" + "a" * 64])
    assert not any(directory.iterdir())  # no drop-in, no temp file beside it
    assert not list(tmp_path.glob(".pinsvc-*.tmp"))  # and the temp file is gone


async def test_a_state_file_that_cannot_be_written_after_the_pins_fails_the_apply_with_its_status(
        make_agent, monkeypatch):
    """The pins are in place, but the status could not be saved: the Apply returns (with its
    final status) the error naming the state file, and the status in memory says so."""
    make, runtime = make_agent
    agent = make()
    saves = []

    def save(state):
        saves.append(state)
        if len(saves) > 1:  # the first, before anything is pulled, works
            raise errors.NoSpaceLeft(f"cannot write the state file {agent.store.path}: no space left on device")

    monkeypatch.setattr(agent.store, "save", save)
    outcome = await apply(agent, PinnedImageSet("web", 1, (A,)))
    assert isinstance(outcome.error, errors.NoSpaceLeft) and "state file" in str(outcome.error)
    assert dropin_references(agent.dropin.read())[0] == [A] and runtime.loaded == {A}
    conditions = {c.type: c for c in outcome.status.conditions}
    assert conditions[DEGRADED].status == "True" and "state file" in conditions[DEGRADED].message
    assert conditions["PinnedImageSetsProgressing"].status == "False"
