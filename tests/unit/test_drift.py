"""The pure part of drift checks: what counts as drift, and the bounded repair records."""

import pytest

from pinsvc import config
from pinsvc.core.drift import (DROPIN_CHANGED, DROPIN_REMOVED, IMAGE_REMOVED, IMAGE_UNPINNED, Drift,
                               expected_dropin, find_drift, record)
from pinsvc.dropin_format import HEADER, render_dropin
from pinsvc.core.state import DriftRepair, State, StateStore
from pinsvc.errors import InvalidArgument
from pinsvc.model import RuntimeImage

A, B, C = ("r.io/a@sha256:" + "a" * 64, "r.io/b@sha256:" + "b" * 64, "r.io/c@sha256:" + "c" * 64)
PAUSE = "r.io/pause@sha256:" + "f" * 64
PATH = "/etc/crio/crio.conf.d/50-pinned-images"


def image(ref, pinned=True):
    return RuntimeImage(id=ref[-12:], repo_digests=(ref,), pinned=pinned)


def test_no_drift_when_everything_pinned_matches_and_the_dropin_is_ours():
    drift = find_drift([A, B], [image(A), image(B), image(PAUSE)], render_dropin([B, A]).encode())
    assert not drift and drift == Drift()
    assert drift.findings(PATH) == []


def test_nothing_pinned_and_no_file_or_a_foreign_file_is_no_drift():
    assert not find_drift([], [image(PAUSE)], None)
    assert not find_drift([], [], b"[crio.image]\npinned_images = ['x']\n")


def test_other_pins_and_unrelated_images_are_not_drift():
    drift = find_drift([A], [image(A), image(B, pinned=True), image(C, pinned=False)], expected_dropin([A]))
    assert not drift


def test_removed_image():
    drift = find_drift([A, B], [image(A)], expected_dropin([A, B]))
    assert drift.removed == (B,) and not drift.unpinned and not drift.dropin
    assert drift.findings(PATH) == [(IMAGE_REMOVED, B)]


def test_present_but_unpinned_image():
    drift = find_drift([A, B], [image(A), image(B, pinned=False)], expected_dropin([A, B]))
    assert drift.unpinned == (B,) and not drift.removed
    assert drift.findings(PATH) == [(IMAGE_UNPINNED, B)]


def test_digest_match_is_case_insensitive_like_verification():
    upper = A.replace("a" * 64, "A" * 64)
    assert not find_drift([A], [image(upper)], expected_dropin([A]))


def test_dropin_edited_by_hand_keeping_the_header():
    edited = render_dropin([A]).encode()  # B dropped from the list
    drift = find_drift([A, B], [image(A), image(B)], edited)
    assert drift.dropin == DROPIN_CHANGED
    assert drift.findings(PATH) == [(DROPIN_CHANGED, PATH)]


def test_dropin_whitespace_or_comment_edit_is_drift_too():
    content = expected_dropin([A]) + b"# looked at it\n"
    assert find_drift([A], [image(A)], content).dropin == DROPIN_CHANGED


def test_dropin_replaced_by_a_foreign_file_is_drift_when_something_is_pinned():
    drift = find_drift([A], [image(A)], b"[crio.image]\npinned_images = []\n")
    assert drift.dropin == DROPIN_CHANGED


def test_dropin_removed():
    drift = find_drift([A], [image(A, pinned=False)], None)
    assert drift.dropin == DROPIN_REMOVED and drift.unpinned == (A,)
    assert drift.findings(PATH) == [(DROPIN_REMOVED, PATH), (IMAGE_UNPINNED, A)]


def test_our_dropin_left_behind_when_nothing_is_pinned():
    assert find_drift([], [], render_dropin([A]).encode()).dropin == DROPIN_CHANGED
    assert find_drift([], [], HEADER.encode()).dropin == DROPIN_CHANGED


def test_both_kinds_at_once():
    drift = find_drift([A, B, C], [image(A), image(C, pinned=False)], render_dropin([A, B]).encode())
    assert drift.findings(PATH) == [(DROPIN_CHANGED, PATH), (IMAGE_REMOVED, B), (IMAGE_UNPINNED, C)]


def test_expected_dropin_is_what_the_writer_renders():
    assert expected_dropin([]) is None
    assert expected_dropin([B, A, A]) == render_dropin([A, B]).encode()


def repair(kind=IMAGE_REMOVED, target=A, when="t1", repaired=True, error=""):
    return DriftRepair(kind, target, when, repaired, error)


def test_successful_repairs_are_each_recorded():
    repairs = record(record([], repair(when="t1")), repair(when="t2"))
    assert [(r.time, r.count) for r in repairs] == [("t1", 1), ("t2", 1)]


def test_a_repeated_identical_failure_counts_instead_of_flooding():
    failing = dict(kind=DROPIN_CHANGED, target=PATH, repaired=False, error="foreign file")
    repairs = record([], repair(**failing, when="t1"))
    repairs = record(repairs, repair(target=B, when="t1"))  # another finding of the same check
    repairs = record(repairs, repair(**failing, when="t2"))
    assert [(r.target, r.time, r.count) for r in repairs] == [(B, "t1", 1), (PATH, "t2", 2)]
    # A different error, or a success in between, starts a new record.
    repairs = record(repairs, repair(**{**failing, "error": "other"}, when="t3"))
    assert [(r.target, r.error, r.count) for r in repairs][-1] == (PATH, "other", 1)
    repairs = record(repairs, repair(kind=DROPIN_CHANGED, target=PATH, when="t4"))
    repairs = record(repairs, repair(**failing, when="t5"))
    assert repairs[-1].count == 1 and len(repairs) == 5


def test_records_are_bounded_oldest_dropped():
    repairs = []
    for n in range(60):
        repairs = record(repairs, repair(when=f"t{n}"), limit=50)
    assert len(repairs) == 50 and repairs[0].time == "t10" and repairs[-1].time == "t59"


def test_repairs_survive_a_restart(tmp_path):
    store = StateStore(tmp_path)
    state = State(pinned=[A], repairs=[repair(), repair(kind=DROPIN_CHANGED, target=PATH, repaired=False,
                                                       error="why")])
    store.save(state)
    assert store.load().repairs == state.repairs


def test_state_without_repairs_still_loads(tmp_path):
    (tmp_path / "state.json").write_text('{"version": 1, "pinned": []}')
    assert StateStore(tmp_path).load().repairs == []


def test_drift_interval_setting():
    assert config.build({}).verify.drift_interval_seconds == 300.0
    assert config.build({("verify", "drift_interval_seconds"): "0.5"}).verify.drift_interval_seconds == 0.5
    assert config.build({("verify", "drift_interval_seconds"): "0"}).verify.drift_interval_seconds == 0
    with pytest.raises(InvalidArgument, match="drift_interval_seconds"):
        config.build({("verify", "drift_interval_seconds"): "-1"})
