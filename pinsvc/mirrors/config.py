"""`registries.conf` and its drop-ins: parsing, validation and merging (pure).

`load(main, drop_ins)` takes the text of `registries.conf` and of each
`registries.conf.d/*.conf` file, in the order the runtime reads them, and returns the
merged `[[registry]]` tables. The rules are containers/image's (`sysregistriesv2`):

- Version 2 format (`[[registry]]`). The main file may still be in the version 1 format
  (`[registries.search]`, `[registries.insecure]`, `[registries.block]`): it is converted
  as the runtime converts it; a drop-in must be version 2, and a file may not mix both.
- `prefix` defaults to `location`; trailing `/` are dropped from both; a URI scheme is an
  error; only a wildcard prefix (`*.example.com`, no `/`, `:` or `@`) may go without a
  location (no rewrite then). A wildcard prefix with a location is valid: the matched host
  is rewritten to the location.
- A mirror needs a location; `pull-from-mirror` is `all`, `digest-only` or `tag-only`, only
  on mirrors, and not together with the registry's `mirror-by-digest-only`.
- Within one file, tables naming the same location must agree on `insecure` and
  `blocked`, and of tables with the same prefix the first one counts.
- Across files, a later file's table replaces the one with the same prefix; others add up.
- Tables are kept sorted by prefix: it decides ties in `resolve.find_registry`.
- Unknown keys are ignored; a value of the wrong type is an error (the runtime's TOML
  decoder refuses it too).

Short-name settings (`unqualified-search-registries`, `short-name-mode`, `aliases`) only
matter for short names, which pinsvc never pulls: they are type-checked, and the first two
validated, but not kept. Alias values are not parsed as references, so a file the runtime
refuses for a bad alias alone is accepted here.

Every error is a `StateError` naming the file and the value (the TOML parser's message
gives the line and column of a syntax error); all problems of a file are reported at once.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, replace

from pinsvc.errors import StateError

PULL_FROM_MIRROR = ("all", "digest-only", "tag-only")
SHORT_NAME_MODES = ("disabled", "enforcing", "permissive")
# containers/image `reference.DomainRegexp`, anchored: the entries of
# unqualified-search-registries.
_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"{_COMPONENT}(?:\.{_COMPONENT})*(?::[0-9]+)?")
_V1_LISTS = ("search", "insecure", "block")


@dataclass(frozen=True)
class MirrorEntry:
    """One `[[registry.mirror]]` table."""

    location: str
    insecure: bool = False
    pull_from_mirror: str = ""
    """"" (the same as "all"), "all", "digest-only" or "tag-only"."""


@dataclass(frozen=True)
class RegistryEntry:
    """One `[[registry]]` table, normalised (prefix set, trailing `/` dropped)."""

    prefix: str
    location: str
    """"" only with a wildcard prefix: references are used as they are."""
    insecure: bool = False
    blocked: bool = False
    mirror_by_digest_only: bool = False
    mirrors: tuple[MirrorEntry, ...] = ()
    source: str = ""
    """The file that defined this table, for messages."""


@dataclass(frozen=True)
class RegistriesConfig:
    """The merged configuration: one table per prefix, sorted by prefix."""

    registries: tuple[RegistryEntry, ...] = ()
    sources: tuple[str, ...] = ()
    """The files read, in order."""


def load(main: tuple[str, str] | None, drop_ins: Iterable[tuple[str, str]] = ()) -> RegistriesConfig:
    """Parses `main` (name, text; None when the file does not exist) and merges each
    drop-in (name, text) over it, in the order given."""
    config = parse_file(main[1], main[0]) if main else RegistriesConfig()
    for name, text in drop_ins:
        config = merge(config, parse_file(text, name, drop_in=True))
    return config


def merge(base: RegistriesConfig, update: RegistriesConfig) -> RegistriesConfig:
    """`update`'s tables replace `base`'s with the same prefix; the others add up."""
    by_prefix = {r.prefix: r for r in base.registries} | {r.prefix: r for r in update.registries}
    return RegistriesConfig(tuple(by_prefix[p] for p in sorted(by_prefix)), base.sources + update.sources)


def parse_file(text: str, source: str, *, drop_in: bool = False) -> RegistriesConfig:
    """One file's tables. Raises `StateError` naming `source` with every problem found."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise StateError(f"registries configuration {source}: not valid TOML: {e}") from None
    problems: list[str] = []
    tables = _registry_tables(document, problems)
    v1 = _v1_lists(document, problems)
    if v1 is not None:
        if drop_in:
            raise StateError(f"registries configuration {source}: a drop-in must use the version 2 format "
                             f"([[registry]] tables), not [registries.search/insecure/block]")
        if tables is not None or any(_v2_setting_present(document, key) for key in _V2_SETTINGS):
            raise StateError(f"registries configuration {source}: mixes the version 1 format "
                             f"([registries.search/insecure/block]) with version 2 settings; use version 2 only")
        tables, search = _convert_v1(v1, problems)
    else:
        search = _string_list(document, "unqualified-search-registries", "", problems)
    _check_settings(document, search, problems)
    registries = _post_process(tables or [], problems)
    if problems:
        raise StateError(f"registries configuration {source}: " + "; ".join(problems))
    return RegistriesConfig(tuple(replace(r, source=source) for r in registries), (source,))


_V2_SETTINGS = ("unqualified-search-registries", "credential-helpers", "short-name-mode", "aliases",
                "additional-layer-store-auth-helper")


def _v2_setting_present(document: dict, key: str) -> bool:
    """As the runtime decides "version 2 is used": an array or table present (even
    empty), a string not empty."""
    value = document.get(key)
    return bool(value) if isinstance(value, str) else value is not None


def _registry_tables(document: dict, problems: list[str]) -> list[dict] | None:
    """The raw `[[registry]]` tables, or None when there is no `registry` key."""
    tables = document.get("registry")
    if tables is None:
        return None
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        problems.append("'registry' must be an array of tables ([[registry]]), not "
                        f"{_type_name(tables)}")
        return []
    return tables


def _v1_lists(document: dict, problems: list[str]) -> dict[str, list[str]] | None:
    """`[registries.<search|insecure|block>] registries = [...]`, or None when no such
    list is set (version 2)."""
    section = document.get("registries")
    if section is None:
        return None
    if not isinstance(section, dict):
        problems.append(f"'registries' must be a table, not {_type_name(section)}")
        return None
    lists: dict[str, list[str]] = {}
    for name in _V1_LISTS:
        table = section.get(name)
        if table is None:
            continue
        if not isinstance(table, dict):
            problems.append(f"'registries.{name}' must be a table, not {_type_name(table)}")
        elif "registries" in table:
            lists[name] = _string_list(table, "registries", f"registries.{name}.", problems)
    return lists or None


def _convert_v1(lists: dict[str, list[str]], problems: list[str]) -> tuple[list[dict], list[str]]:
    """Version 1 -> version 2 tables, as the runtime converts them: one table per location
    (blocked first, then insecure, in order of appearance); search -> unqualified-search."""
    tables: dict[str, dict] = {}
    for kind, flag in (("block", "blocked"), ("insecure", "insecure")):
        for value in lists.get(kind, []):
            location = _location(value, f"registries.{kind}", problems)
            tables.setdefault(location, {"location": location})[flag] = True
    return list(tables.values()), lists.get("search", [])


def _check_settings(document: dict, search: list[str], problems: list[str]) -> None:
    """The top-level settings the runtime validates."""
    for value in search:
        entry = _location(value, "unqualified-search-registries", problems)
        if not _DOMAIN.fullmatch(entry):
            problems.append(f"unqualified-search-registries entry {value!r} is not a host[:port]")
    _string_list(document, "credential-helpers", "", problems)
    mode = _typed(document, "short-name-mode", str, "", "", problems)
    if mode and mode not in SHORT_NAME_MODES:
        problems.append(f"short-name-mode {mode!r} is not one of {', '.join(SHORT_NAME_MODES)}")
    _typed(document, "additional-layer-store-auth-helper", str, "", "", problems)
    aliases = document.get("aliases", {})
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        problems.append("'aliases' must be a table of strings")


def _post_process(tables: list[dict], problems: list[str]) -> list[RegistryEntry]:
    """Raw tables -> validated entries: defaults, conflicts, first of a prefix, sorted."""
    entries: list[RegistryEntry] = []
    for number, table in enumerate(tables, 1):
        where = f"[[registry]] #{number}"
        location = _location(_typed(table, "location", str, "", where, problems), where, problems)
        prefix = _typed(table, "prefix", str, "", where, problems)
        if prefix:
            prefix = _location(prefix, where, problems)
            if not prefix.startswith("*.") and not location:
                problems.append(f"{where}: prefix {prefix!r} has no location (only a wildcard prefix, "
                                f"'*.example.com', may go without one)")
            elif prefix.startswith("*.") and any(c in prefix for c in "/@:"):
                problems.append(f"{where}: wildcard prefix {prefix!r} must be of the form '*.example.com' "
                                f"(no '/', ':' or '@')")
        elif not location:
            problems.append(f"{where}: neither location nor prefix is set")
        prefix = prefix or location
        where = f"[[registry]] {prefix!r}" if prefix else where
        if _typed(table, "pull-from-mirror", str, "", where, problems):
            problems.append(f"{where}: pull-from-mirror may only be set on a [[registry.mirror]]")
        by_digest = _typed(table, "mirror-by-digest-only", bool, False, where, problems)
        entries.append(RegistryEntry(
            prefix=prefix, location=location,
            insecure=_typed(table, "insecure", bool, False, where, problems),
            blocked=_typed(table, "blocked", bool, False, where, problems),
            mirror_by_digest_only=by_digest,
            mirrors=tuple(_mirrors(table, where, by_digest, problems))))
    _check_conflicts(entries, problems)
    first: dict[str, RegistryEntry] = {}
    for entry in entries:
        first.setdefault(entry.prefix, entry)
    return [first[p] for p in sorted(first)]


def _mirrors(table: dict, where: str, by_digest: bool, problems: list[str]) -> Iterable[MirrorEntry]:
    mirrors = table.get("mirror", [])
    if not isinstance(mirrors, list) or not all(isinstance(m, dict) for m in mirrors):
        problems.append(f"{where}: 'mirror' must be an array of tables ([[registry.mirror]])")
        return
    for number, mirror in enumerate(mirrors, 1):
        at = f"{where} mirror #{number}"
        location = _location(_typed(mirror, "location", str, "", at, problems), at, problems)
        if not location:
            problems.append(f"{at}: the mirror has no location")
        at = f"{where} mirror {location!r}" if location else at
        pull_from = _typed(mirror, "pull-from-mirror", str, "", at, problems)
        if pull_from and by_digest:
            problems.append(f"{at}: pull-from-mirror cannot be set when the registry sets "
                            f"mirror-by-digest-only")
        elif pull_from and pull_from not in PULL_FROM_MIRROR:
            problems.append(f"{at}: pull-from-mirror {pull_from!r} is not one of {', '.join(PULL_FROM_MIRROR)}")
        yield MirrorEntry(location, _typed(mirror, "insecure", bool, False, at, problems), pull_from)


def _check_conflicts(entries: list[RegistryEntry], problems: list[str]) -> None:
    """Tables of one location (of one wildcard prefix without location) must agree on
    `insecure` and `blocked`."""
    seen: dict[str, RegistryEntry] = {}
    reported: set[tuple[str, str]] = set()
    for entry in entries:
        key = entry.location or entry.prefix
        other = seen.setdefault(key, entry)
        for name, mine, theirs in (("insecure", entry.insecure, other.insecure),
                                   ("blocked", entry.blocked, other.blocked)):
            if mine != theirs and (key, name) not in reported:
                reported.add((key, name))
                problems.append(f"registry {key!r} is defined more than once with different '{name}' values")


def _location(value: str, where: str, problems: list[str]) -> str:
    """A location or prefix without its trailing '/'; a URI scheme is a problem."""
    if value.startswith(("http://", "https://")):
        problems.append(f"{where}: {value!r} has a URI scheme; give host[:port][/path] only")
    return value.rstrip("/")


def _typed(table: dict, key: str, kind: type, default, where: str, problems: list[str]):
    value = table.get(key, default)
    if type(value) is not kind:  # bool is an int: compare types exactly
        wanted = "true or false" if kind is bool else "a string"
        problems.append(f"{where + ': ' if where else ''}{key!r} must be {wanted}, not {value!r}")
        return default
    return value


def _string_list(table: dict, key: str, path: str, problems: list[str]) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"'{path}{key}' must be an array of strings, not {value!r}")
        return []
    return value


def _type_name(value: object) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean"}.get(type(value), repr(value))
