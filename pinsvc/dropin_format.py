"""The text of the CRI-O drop-in that lists the pinned images (`[crio.image] pinned_images`):
how pinsvc renders it, how its own files are told apart, and what a drop-in's bytes set.

Pure and shared: the drop-in adapter (adapters/dropin.py) writes these bytes, and core
compares them (core/drift.py) and inherits their pins (core/pins.py).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable

import tomlkit

from pinsvc.errors import InvalidArgument

HEADER = "# Managed by pinsvc. Do not edit: changes are overwritten."
"""First line of every drop-in pinsvc writes; `is_managed` looks for it."""
HEADER_HINT = "# To pin images, send them to pinsvc (PinService.Apply) instead of editing this file."


def render_dropin(images: Iterable[str]) -> str:
    """The drop-in text for `images`: header comment, `[crio.image]`, and `pinned_images` as
    a multi-line array of the sorted unique references. Raises InvalidArgument for a value
    that is not a string or cannot be written as UTF-8."""
    refs = sorted_unique(images)
    doc = tomlkit.document()
    doc.add(tomlkit.comment(HEADER.removeprefix("# ")))
    doc.add(tomlkit.comment(HEADER_HINT.removeprefix("# ")))
    doc.add(tomlkit.nl())
    # Built at once: Array.append re-indexes the whole array each time (5,000 refs: 3.5 s).
    array = tomlkit.items.Array([tomlkit.item(ref) for ref in refs], tomlkit.items.Trivia(), multiline=True)
    image = tomlkit.table()
    image.add("pinned_images", array)
    crio = tomlkit.table(is_super_table=True)
    crio.add("image", image)
    doc.add("crio", crio)
    return tomlkit.dumps(doc)


def is_managed(content: bytes) -> bool:
    """Whether `content` is a drop-in pinsvc wrote (it starts with the header line)."""
    header = HEADER.encode()
    return content == header or content.startswith(header + b"\n")


def sorted_unique(images: Iterable[str]) -> list[str]:
    """The references sorted and unique; InvalidArgument naming each value that is not a
    string or not valid Unicode."""
    refs = list(images)
    problems = []
    for ref in refs:
        if not isinstance(ref, str):
            problems.append(f"image reference {ref!r} is not a string")
            continue
        try:
            ref.encode("utf-8")
        except UnicodeEncodeError:
            problems.append(f"image reference {ref!r} is not valid Unicode")
    if problems:
        raise InvalidArgument(problems)
    return sorted(set(refs))


def inspect_dropin(data: bytes) -> tuple[bool, str | None]:
    """(sets `crio.image.pinned_images`, why CRI-O would fail to load it or None) of the
    bytes of one file of the drop-in directory."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        return False, f"is not UTF-8: {e}"
    except tomllib.TOMLDecodeError as e:
        return False, f"is not valid TOML: {e}"
    crio = doc.get("crio")
    if crio is None:
        return False, None
    if not isinstance(crio, dict):
        return False, "sets `crio` to a value that is not a table"
    image = crio.get("image")
    if image is None:
        return False, None
    if not isinstance(image, dict):
        return False, "sets `crio.image` to a value that is not a table"
    if "pinned_images" not in image:
        return False, None
    value = image["pinned_images"]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return True, f"sets crio.image.pinned_images to {type(value).__name__} {value!r:.80}, not a list of strings"
    return True, None
