"""The pins an Apply writes, and the pins an agent started without state inherits from a
drop-in of ours (core/pins.py); the agent part against the fake runtime (tests/unit/fakes.py;
the real CRI-O is in tests/e2e/test_lost_state.py)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from pinsvc import errors
from pinsvc.core.agent import Agent
from pinsvc.core.pins import choose_pins, dropin_references
from pinsvc.core.state import DEGRADED, SetState, StateStore
from pinsvc.dropin_format import render_dropin
from pinsvc.model import PinnedImageSet
from tests.unit.fakes import FakeRuntime, agent_settings, fake_agent

A, B, C, D = (f"r.io/{x}@sha256:" + x * 64 for x in "abcd")


# ---- the pure decision -------------------------------------------------------------------

def test_a_failed_set_keeps_its_last_good_images_and_the_inherited_pins():
    sets = [PinnedImageSet("good", 1, (A,)), PinnedImageSet("bad", 2, (B,))]
    recorded = {"bad": SetState("bad", 2, current_generation=1, current_images=[C])}
    assert choose_pins(sets, {B}, recorded, inherited=[D, A]) == [A, C, D]


def test_without_state_a_failure_keeps_the_inherited_pins():
    sets = [PinnedImageSet("new", 1, (A, B))]
    recorded = {"new": SetState("new", 1)}  # no last good generation
    assert choose_pins(sets, {B}, recorded, inherited=[C, D]) == [C, D]
    assert choose_pins(sets, {B}, recorded) == [], "what happened before inherited pins"


def test_a_full_success_pins_exactly_the_sets():
    sets = [PinnedImageSet("a", 1, (A,)), PinnedImageSet("b", 1, (B, A))]
    assert choose_pins(sets, set(), {}, inherited=[C, D]) == [A, B]
    assert choose_pins([], set(), {}, inherited=[C]) == [], "an empty Apply pins nothing"


def test_dropin_references_of_our_file_only():
    ours = render_dropin([B, A]).encode()
    assert dropin_references(ours) == ([A, B], [])
    foreign = ours.split(b"\n", 1)[1]  # the same list without pinsvc's header
    assert dropin_references(foreign) == ([], [])
    assert dropin_references(None) == ([], [])
    assert dropin_references(ours.replace(b"[crio.image]", b"[crio.image")) == ([], []), "not TOML"


def test_dropin_references_leave_out_what_pinsvc_never_pins():
    content = render_dropin([A, "quay.io/x:latest"]).encode()
    assert dropin_references(content) == ([A], ["'quay.io/x:latest'"])


def test_a_state_file_of_an_older_agent_loads(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"version": 1, "pinned": [A], "sets": {}}))
    state = StateStore(tmp_path).load()
    assert state.inherited == [] and state.pinned == [A]


# ---- the agent ----------------------------------------------------------------------------

@pytest.fixture
def make_agent(tmp_path):
    settings = agent_settings(tmp_path)
    runtime = FakeRuntime(settings.dropin_path)

    def make() -> Agent:
        return fake_agent(settings, runtime)

    return make, runtime


async def apply(agent: Agent, *sets: PinnedImageSet):
    return await asyncio.create_task(agent.apply(list(sets), emit=lambda e: None))


async def lost_state(make_agent) -> tuple[Agent, FakeRuntime]:
    """A node whose drop-in of ours pins A and B, and an agent whose state was wiped."""
    make, runtime = make_agent
    first = make()
    assert (await apply(first, PinnedImageSet("old", 1, (A, B)))).error is None
    for path in first.store.directory.iterdir():
        path.unlink()
    return make(), runtime


async def test_an_agent_without_state_keeps_the_dropins_pins_through_failures(make_agent, caplog):
    with caplog.at_level(logging.WARNING, "pinsvc.agent"):
        agent, runtime = await lost_state(make_agent)
    assert agent.state.inherited == [A, B] and agent.state.pinned == [A, B]
    assert [r.getMessage() for r in caplog.records] == [
        f"state missing; keeping 2 pins from {agent.dropin.path} until an Apply succeeds"]
    assert StateStore(agent.store.directory).load().inherited == [A, B], "recorded at once"
    assert await agent.check_drift() == [], "the drop-in is what the state says is pinned"

    runtime.missing.add(D)
    outcome = await apply(agent, PinnedImageSet("new", 1, (C, D)))
    assert isinstance(outcome.error, errors.ImageNotFound)
    assert dropin_references(agent.dropin.read())[0] == [A, B] and runtime.loaded == {A, B}
    assert "keeping the 2 pins inherited" in agent.state.conditions[DEGRADED].message
    status = agent.status_snapshot(await runtime.list_images())
    kept = {i.image: i for i in status.images}
    assert kept[A].pinned and kept[A].sets == () and kept[C].present and not kept[C].pinned

    again = make_agent[0]()  # restarted: the set is recorded now, the inherited pins too
    assert again.state.inherited == [A, B]
    assert (await apply(again, PinnedImageSet("new", 2, (C, D)))).error is not None
    assert dropin_references(again.dropin.read())[0] == [A, B] and runtime.loaded == {A, B}

    assert (await apply(again, PinnedImageSet("new", 3, (C,)))).error is None
    assert dropin_references(again.dropin.read())[0] == [C] and runtime.loaded == {C}
    assert again.state.inherited == [] and again.state.pinned == [C]
    assert set(again.state.images) == {C}
    assert StateStore(again.store.directory).load().inherited == []


async def test_a_failed_set_next_to_a_good_one_keeps_the_inherited_pins(make_agent):
    agent, runtime = await lost_state(make_agent)
    runtime.missing.add(D)
    outcome = await apply(agent, PinnedImageSet("good", 1, (C,)), PinnedImageSet("bad", 1, (D,)))
    assert outcome.error is not None
    assert dropin_references(agent.dropin.read())[0] == [A, B, C] and runtime.loaded == {A, B, C}


async def test_a_foreign_dropin_is_not_inherited(make_agent):
    make, runtime = make_agent
    agent = make()
    agent.dropin.path.write_text(f'[crio.image]\npinned_images = ["{A}"]\n')
    assert make().state.inherited == []


async def test_an_agent_with_state_inherits_nothing(make_agent):
    make, runtime = make_agent
    first = make()
    assert (await apply(first, PinnedImageSet("old", 1, (A,)))).error is None
    assert make().state.inherited == []
