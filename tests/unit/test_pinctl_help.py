"""`pinctl --help`, `pinsvc --help`, `pinsvc-controller --help` and every subcommand's help show
the defaults (issue 13)."""

from __future__ import annotations

import argparse
import re

import pytest

from pinsvc import cli, config
from pinsvc.controller import cli as controller_cli
from pinsvc.coordinator.cli import parser


def _parsers(p: argparse.ArgumentParser, path=("pinctl",)):
    yield path, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


PARSERS = (dict(_parsers(parser())) | dict(_parsers(cli.parser(), ("pinsvc",)))
           | dict(_parsers(controller_cli.parser(), ("pinsvc-controller",))))


def _entries(p: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's help entry as printed, on one line, by its longest flag."""
    return {max(a.option_strings, key=len): re.sub(r"\s+", " ", p._get_formatter()._format_action(a))
            for a in p._actions if a.option_strings}


@pytest.mark.parametrize("path", [" ".join(p) for p in PARSERS])
def test_every_option_with_a_default_shows_it(path):
    p = PARSERS[tuple(path.split())]
    for action in p._actions:
        if not action.option_strings or action.default in (None, False, "", argparse.SUPPRESS):
            continue
        assert action.help, f"{path}: {max(action.option_strings, key=len)} has a default but no help to show it"
        entry = re.sub(r"\s+", " ", p._get_formatter()._format_action(action))
        assert re.search(r"\(default:? [^)]+\)", entry), f"{path}: {entry}"


def test_the_documented_defaults_are_shown():
    entries = _entries(PARSERS[("pinctl", "rollout")])
    for flag, default in (("--abort-after", "1"), ("--retries", "3"), ("--node-deadline", "3600"),
                          ("--port", "9440"), ("--concurrency", "100")):
        assert f"(default: {default}" in entries[flag], entries[flag]
    agent = _entries(PARSERS[("pinsvc", "agent")])
    assert "(default: 17179869184 = 16 GiB)" in agent["--space-min-free-bytes"]
    assert "(default: true)" in agent["--no-space-enabled"]
    assert "(default: 5)" in agent["--pull-parallelism"]


def test_every_agent_setting_shows_its_built_in_default():
    """The agent's flags default to None (not given: the file or the environment decide),
    so the help names the built-in default itself."""
    entries = _entries(PARSERS[("pinsvc", "agent")])
    for leaf in config._leaves():
        flag = "--" + (f"{leaf.section}-{leaf.name}" if leaf.section else leaf.name).replace("_", "-")
        entry = entries.get(flag) or entries[flag.replace("--", "--no-", 1)]
        if config._shown(config.default_of(leaf)) not in ("", "."):  # an empty path reads "."
            assert "(default: " in entry, entry
