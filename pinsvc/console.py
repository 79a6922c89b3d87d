"""What pinsvc's two commands (`pinsvc`, `pinctl`) share on the terminal: help that shows
every default, as kubectl and oc do."""

from __future__ import annotations

import argparse


def with_default(help: str, default: object) -> str:
    """`help` ending in "(default: X)" unless it already names its default or there is none
    worth showing (None, False, empty)."""
    if (default is None or default is False or default is argparse.SUPPRESS or "(default" in help
            or (isinstance(default, (str, tuple, list)) and not default)):
        return help
    shown = str(default).lower() if isinstance(default, bool) else default
    return f"{help} (default: {shown})"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; every option's default in its help. Give it to
    each parser and subparser (`formatter_class`): subparsers do not inherit it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        if not action.option_strings or "%(default)" in help:
            return help
        return with_default(help, action.default)
