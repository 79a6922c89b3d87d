"""The status rules of core/state.py: pure methods of State, tested on plain values."""

from __future__ import annotations

import json

import pytest

from pinsvc import errors
from pinsvc.core.state import (DEGRADED, DRIFT_REPAIR_FAILED, PREFETCH_FAILED, PROGRESSING, Condition, DriftRepair,
                               ImageState, SetState, State, StateStore)
from pinsvc.model import ImageEvent, ImageEventKind as K, ImagePhase, PinnedImageSet, RuntimeImage

A, B, C = (f"r.io/{x}@sha256:" + x * 64 for x in "abc")
PATH = "/etc/crio/crio.conf.d/50-pinned-images"


def started(*sets: PinnedImageSet) -> State:
    state = State()
    state.start_apply(list(sets), "node-1")
    return state


def condition(state: State, type: str) -> tuple[str, str, str]:
    c = state.conditions[type]
    return c.status, c.reason, c.message


# ---- the desired sets ------------------------------------------------------------------------

def test_start_apply_records_the_desired_sets_and_forgets_the_others():
    state = State(sets={"old": SetState("old", 4, current_generation=4, images=[C], current_images=[C]),
                        "web": SetState("web", 1, current_generation=1, images=[A], current_images=[A])},
                  images={A: ImageState(ImagePhase.PINNED), C: ImageState(ImagePhase.PINNED)})
    state.start_apply([PinnedImageSet("web", 2, (B,))], "node-1")
    assert list(state.sets) == ["web"]
    web = state.sets["web"]
    assert (web.desired_generation, web.images, web.current_generation, web.current_images) == (2, [B], 1, [A])
    assert list(state.images) == [B, A], "the last good images stay while generation 2 is not through"
    assert state.images[A].phase is ImagePhase.PINNED and state.images[B].phase is ImagePhase.PENDING
    assert condition(state, PROGRESSING) == ("True", "ImagePrefetch", "node is prefetching images: node-1")


def test_an_older_generation_is_a_conflict_naming_the_set():
    state = started(PinnedImageSet("web", 3, (A,)))
    state.check_generations([PinnedImageSet("web", 3, (A,)), PinnedImageSet("new", 1, (B,))])
    with pytest.raises(errors.Conflict, match="set 'web': generation 2 is older than generation 3"):
        state.check_generations([PinnedImageSet("web", 2, (A,))])


def test_a_condition_keeps_its_transition_time_while_its_status_holds():
    state = State(conditions={DEGRADED: Condition(DEGRADED, "True", "PrefetchFailed", "x", "2020-01-01T00:00:00Z")})
    state.set_degraded(DRIFT_REPAIR_FAILED, "y")
    assert state.conditions[DEGRADED].last_transition_time == "2020-01-01T00:00:00Z"
    state.clear_degraded()
    assert condition(state, DEGRADED) == ("False", "AsExpected", "All is good")
    assert state.conditions[DEGRADED].last_transition_time != "2020-01-01T00:00:00Z"


# ---- image events ------------------------------------------------------------------------------

def test_an_apply_follows_a_pull_in_the_image_record():
    state = State()
    state.apply_image_event(ImageEvent(A, K.PULLING, attempt=1))
    assert (state.images[A].phase, state.images[A].attempts) == (ImagePhase.PULLING, 1)
    state.apply_image_event(ImageEvent(A, K.RETRYING, attempt=1, reason="503"))
    state.apply_image_event(ImageEvent(A, K.FAILED, attempt=2, reason="not found"))
    assert (state.images[A].phase, state.images[A].attempts, state.images[A].last_error) == \
        (ImagePhase.FAILED, 2, "not found")
    state.apply_image_event(ImageEvent(A, K.PULLED, attempt=3, bytes=1234))
    assert state.images[A] == ImageState(ImagePhase.PRESENT, 3, 1234, "")


def test_already_present_keeps_a_pin():
    state = State(images={A: ImageState(ImagePhase.PINNED, last_error="old"), B: ImageState(ImagePhase.FAILED)})
    for image in (A, B):
        state.apply_image_event(ImageEvent(image, K.ALREADY_PRESENT))
    assert (state.images[A].phase, state.images[A].last_error) == (ImagePhase.PINNED, "")
    assert state.images[B].phase is ImagePhase.PRESENT


def test_a_drift_repair_follows_recorded_images_only_and_keeps_their_size():
    state = State(images={A: ImageState(ImagePhase.PINNED, attempts=1, bytes=1234)})
    for event in (ImageEvent(A, K.PULLING, attempt=1), ImageEvent(A, K.PULLED, attempt=1),
                  ImageEvent(B, K.PULLING, attempt=1)):
        state.apply_image_event(event, new_record=False, keep_bytes=True)
    assert state.images == {A: ImageState(ImagePhase.PRESENT, 1, 1234, "")}


def test_mark_pinned_and_inherit():
    state = State()
    state.inherit([A, B])
    assert state.inherited == state.pinned == [A, B]
    assert {i: r.phase for i, r in state.images.items()} == {A: ImagePhase.PINNED, B: ImagePhase.PINNED}


# ---- the end of an Apply -------------------------------------------------------------------------

def test_a_full_success_moves_every_set_to_its_generation_and_drops_the_inherited_pins():
    state = started(PinnedImageSet("web", 2, (A,)))
    state.sets["web"].last_failed_generation, state.sets["web"].last_failed_generation_error = 1, "earlier"
    state.inherited = [C]
    assert state.finish_apply([PinnedImageSet("web", 2, (A,))], {}, None, PATH) == [C]
    web = state.sets["web"]
    assert (web.current_generation, web.current_images, web.last_failed_generation,
            web.last_failed_generation_error) == (2, [A], 0, "")
    assert state.inherited == [] and list(state.images) == [A]
    assert condition(state, DEGRADED) == ("False", "AsExpected", "All is good")
    assert condition(state, PROGRESSING) == ("False", "AsExpected", "All pinned image sets complete")


def test_a_failed_image_fails_its_set_only_and_keeps_its_last_good_generation():
    sets = [PinnedImageSet("web", 2, (A, B)), PinnedImageSet("db", 1, (C,))]
    state = started(*sets)
    state.sets["web"].current_generation, state.sets["web"].current_images = 1, [A]
    state.inherited = [C]
    dropped = state.finish_apply(sets, {B: errors.ImageNotFound("manifest unknown")}, None, PATH)
    web, db = state.sets["web"], state.sets["db"]
    assert dropped == [] and state.inherited == [C]
    assert (web.current_generation, web.current_images, web.last_failed_generation) == (1, [A], 2)
    assert web.last_failed_generation_error == f"{B}: manifest unknown"
    assert (db.current_generation, db.last_failed_generation) == (1, 0)
    status, reason, message = condition(state, DEGRADED)
    assert (status, reason) == ("True", PREFETCH_FAILED)
    assert message == (f"pinned image sets failed: web: {B}: manifest unknown (keeping the 1 pins inherited "
                       f"from {PATH} until an Apply succeeds for every set)")
    assert condition(state, PROGRESSING)[0] == "False"


def test_a_failed_apply_fails_the_sets_not_already_at_their_generation():
    sets = [PinnedImageSet("web", 2, (A,)), PinnedImageSet("db", 1, (C,))]
    state = started(*sets)
    state.sets["db"].current_generation = 1
    state.finish_apply(sets, {}, errors.InsufficientSpace("insufficient space"), PATH)
    assert state.sets["web"].last_failed_generation_error == "insufficient space"
    assert (state.sets["db"].current_generation, state.sets["db"].last_failed_generation) == (1, 0)
    assert condition(state, DEGRADED)[1:] == (PREFETCH_FAILED, "pinned image sets failed: web: insufficient space")


def test_an_error_without_a_failed_set_is_the_degraded_message():
    state = started()
    state.finish_apply([], {}, errors.Conflict("a foreign drop-in"), PATH)
    assert condition(state, DEGRADED) == ("True", PREFETCH_FAILED, "a foreign drop-in")


def test_set_errors_are_truncated():
    sets = [PinnedImageSet("web", 1, (A,))]
    state = started(*sets)
    state.finish_apply(sets, {A: errors.RegistryError("x" * 40000)}, None, PATH)
    assert len(state.sets["web"].last_failed_generation_error) == 32768
    assert state.sets["web"].last_failed_generation_error.endswith("...")


# ---- drift -------------------------------------------------------------------------------------

def failure(target: str = A) -> DriftRepair:
    return DriftRepair("image_removed", target, "2020-01-01T00:00:00Z", False, "gone")


def test_a_failed_repair_degrades_the_node_and_a_later_success_clears_it():
    state = State()
    assert state.drift_condition([failure()])
    assert condition(state, DEGRADED) == ("True", DRIFT_REPAIR_FAILED,
                                          f"the pins drifted and could not be repaired: image_removed {A}: gone")
    assert state.degraded_by_drift()
    assert state.drift_condition([])
    assert condition(state, DEGRADED)[:2] == ("False", "AsExpected") and not state.degraded_by_drift()
    assert not state.drift_condition([]), "nothing to clear"


def test_a_failed_apply_keeps_its_reason_over_a_failed_repair():
    state = State()
    state.set_degraded(PREFETCH_FAILED, "a set failed")
    assert not state.drift_condition([failure()])
    assert not state.drift_condition([])
    assert condition(state, DEGRADED) == ("True", PREFETCH_FAILED, "a set failed")


def test_repaired_images():
    state = State(images={A: ImageState(ImagePhase.FAILED, last_error="x"), B: ImageState(ImagePhase.PRESENT)})
    state.repaired_images([A, B, C], {B: "not present after the repair"})
    assert (state.images[A].phase, state.images[A].last_error) == (ImagePhase.PINNED, "")
    assert (state.images[B].phase, state.images[B].last_error) == \
        (ImagePhase.PRESENT, "drift repair: not present after the repair")
    assert C not in state.images


# ---- status ------------------------------------------------------------------------------------

def test_the_status_reads_presence_and_pins_from_the_runtime():
    state = started(PinnedImageSet("web", 1, (B, A)), PinnedImageSet("db", 1, (A,)))
    state.repairs = [failure()]
    listed = [RuntimeImage("1", repo_digests=(A.upper().replace("SHA256", "sha256"),), pinned=True)]
    status = state.status("node-1", PATH, listed)
    assert (status.node, status.dropin_path) == ("node-1", PATH)
    assert [s.name for s in status.sets] == ["db", "web"]
    assert [c.type for c in status.conditions] == [PROGRESSING]
    a, b = status.images
    assert (a.image, a.present, a.pinned, a.sets, a.phase) == (A, True, True, ("web", "db"), "pending")
    assert (b.image, b.present, b.pinned, b.sets) == (B, False, False, ("web",))
    assert [(r.kind, r.target, r.count) for r in status.drift_repairs] == [("image_removed", A, 1)]
    unknown = state.status("node-1", PATH, None)
    assert not any(i.present or i.pinned for i in unknown.images)


# ---- the file ------------------------------------------------------------------------------------

def test_phases_are_stored_as_their_strings(tmp_path):
    state = State(images={A: ImageState(ImagePhase.PINNED, 2, 10, "")})
    store = StateStore(tmp_path)
    store.save(state)
    assert json.loads(store.path.read_text())["images"][A]["phase"] == "pinned"
    assert store.load().images[A].phase is ImagePhase.PINNED


def test_an_unknown_phase_makes_the_file_unreadable(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"version": 1, "images": {A: {"phase": "lost"}}}))
    with pytest.raises(errors.StateError, match="unreadable.*'lost' is not a valid ImagePhase"):
        StateStore(tmp_path).load()
