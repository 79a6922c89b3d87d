"""The terminal contract both commands share (pinsvc/console.py): pure pieces."""

from __future__ import annotations

import io
import json
import os
import sys

import pytest
import yaml
from pinsvc_client import pb

from pinsvc import console

A, B, C = ("r.io/x@sha256:" + c * 64 for c in "abc")


def test_pins_of_names_each_set_with_its_images_and_loose_pins():
    status = pb.NodeStatus(
        pinned_image_sets=[pb.PinnedImageSetStatus(name="web", desired_generation=2),
                           pb.PinnedImageSetStatus(name="db", desired_generation=1)],
        images=[pb.ImageDetail(image=B, sets=["web"], pinned=True), pb.ImageDetail(image=A, sets=["web", "db"]),
                pb.ImageDetail(image=C, pinned=True)])
    assert console.pins_of(status) == (f"db (generation 1: {A}); web (generation 2: {A}, {B}); "
                                       f"1 pins of no set ({C})")
    assert console.pins_of(pb.NodeStatus()) == "nothing (no set, no pin)"


def test_degraded_is_the_reason_and_message_of_a_true_condition():
    condition = pb.Condition(type="PinnedImageSetsDegraded", status="True", reason="PrefetchFailed", message="boom")
    assert console.degraded(pb.NodeStatus(conditions=[condition])) == "PrefetchFailed: boom"
    condition.status = "False"
    assert console.degraded(pb.NodeStatus(conditions=[condition])) is None


def test_render_gives_yaml_or_json_as_asked():
    doc = {"requiredBytes": 1 << 40, "fits": False, "items": [{"name": "a"}]}
    assert json.loads(console.render(doc, "json")) == doc
    text = console.render(doc, "yaml")
    assert not text.lstrip().startswith("{") and yaml.safe_load(text) == doc
    assert text.splitlines()[0] == "requiredBytes: 1099511627776", "keys in their order"


def test_camel():
    assert [console.camel(n) for n in ("required_bytes", "fits", "images_done")] == [
        "requiredBytes", "fits", "imagesDone"]


def test_an_unknown_flag_shows_the_subcommands_usage(capsys):
    p = console.Parser(prog="tool")
    sub = p.add_subparsers(dest="command", required=True)
    leaf = sub.add_parser("leaf").add_subparsers(dest="inner", required=True).add_parser("deep")
    leaf.add_argument("--known", default=3, help="a flag")
    with pytest.raises(SystemExit) as exit:
        p.parse_args(["leaf", "deep", "--bogus"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: tool leaf deep") and "unrecognized arguments: --bogus" in err
    assert "(default: 3)" in leaf.format_help()


def test_a_closed_stdout_ends_quietly_with_141(monkeypatch):
    read, write = os.pipe()
    os.close(read)
    stdout = io.TextIOWrapper(os.fdopen(write, "wb"), write_through=False)
    monkeypatch.setattr(sys, "stdout", stdout)

    def body() -> int:
        print("x" * 100_000)
        return 0

    assert console.run(body) == console.CLOSED_PIPE
