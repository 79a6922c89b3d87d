"""What pinsvc's two commands (`pinsvc`, `pinctl`) share on the terminal, so that they behave
as kubectl and oc users expect:
- help that shows every default, and a subcommand's own usage for its unknown flags;
- `--version`;
- one output contract: documents in YAML by default and with `-o yaml`, JSON with `-o json`,
  the API's camelCase keys, numbers as numbers;
- exit codes: 0 done and healthy, 1 degraded or failed (the reason on stderr), 2 usage
  (bad flags or input), 141 when stdout is closed early (`| head`), without a traceback;
- what pinning nothing would remove, said before `--prune-all` does it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

import yaml

import pinsvc

OK, FAILED, USAGE, CLOSED_PIPE = 0, 1, 2, 141
OUTPUTS = ("yaml", "json")


def with_default(help: str, default: object) -> str:
    """`help` ending in "(default: X)" unless it already names its default or there is none
    worth showing (None, False, empty)."""
    if (default is None or default is False or default is argparse.SUPPRESS or "(default" in help
            or (isinstance(default, (str, tuple, list)) and not default)):
        return help
    shown = str(default).lower() if isinstance(default, bool) else default
    return f"{help} (default: {shown})"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; every option's default in its help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        if not action.option_strings or "%(default)" in help:
            return help
        return with_default(help, action.default)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser with the defaults-showing help whose subcommands are Parsers too,
    and refuse an unknown flag with their own usage (argparse leaves unknown flags to the
    top parser, which shows the program's usage instead)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_subparsers(self, **kwargs):
        kwargs.setdefault("parser_class", Parser)
        return super().add_subparsers(**kwargs)

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def add_version(parser: argparse.ArgumentParser, prog: str) -> None:
    parser.add_argument("--version", action="version", version=f"{prog} {version()}")


def version() -> str:
    return pinsvc.version()


def add_output(parser: argparse.ArgumentParser, default: str = "yaml", what: str = "") -> None:
    parser.add_argument("-o", "--output", choices=OUTPUTS, default=None,
                        help=f"output format (default: {default}{what})")


def render(doc: object, output: str) -> str:
    """A document as YAML (keys in their order, as `oc get -o yaml`) or JSON."""
    if output == "json":
        return json.dumps(doc, indent=2)
    return yaml.safe_dump(doc, sort_keys=False, width=120).rstrip("\n")


def camel(name: str) -> str:
    """snake_case -> camelCase, the API's casing of every key."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def run(main: Callable[[], int]) -> int:
    """Runs a command's body: its exit code, or 141 without a traceback when stdout was
    closed before everything was written (`pinctl ... | head`)."""
    try:
        code = main()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at /dev/null so that does not fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return CLOSED_PIPE


def degraded(status) -> str | None:
    """`Reason: message` of a NodeStatus's PinnedImageSetsDegraded condition when True."""
    for c in status.conditions:
        if c.type == "PinnedImageSetsDegraded" and c.status == "True":
            return f"{c.reason}: {c.message}"
    return None


def pins_of(status) -> str:
    """What a node pins, by set, as its agent reports it (a NodeStatus): named before
    everything is unpinned."""
    members: dict[str, list[str]] = {}
    loose = []
    for detail in status.images:
        for name in detail.sets:
            members.setdefault(name, []).append(detail.image)
        if not detail.sets and detail.pinned:
            loose.append(detail.image)
    parts = [f"{s.name} (generation {s.desired_generation}: {', '.join(sorted(members.get(s.name, [])))})"
             for s in sorted(status.pinned_image_sets, key=lambda s: s.name)]
    if loose:
        parts.append(f"{len(loose)} pins of no set ({', '.join(sorted(loose))})")
    return "; ".join(parts) or "nothing (no set, no pin)"
