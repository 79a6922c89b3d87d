"""registries.conf parsing, validation and the registries.conf.d merge.

Cases follow containers-registries.conf(5), containers-registries.conf.d(5) and
sysregistriesv2's tests (TestInvalidV2Configs, TestV1BackwardsCompatibility,
TestMixingV1andV2, TestInvalidMirrorConfig, TestRegistriesConfDirectory); `INVALID` and
`VALID` were also checked against containers/image v5.38 (error or not).
"""

from __future__ import annotations

import pytest

from pinsvc.errors import StateError
from pinsvc.mirrors.config import MirrorEntry, RegistryEntry, load, parse_file


def test_prefix_defaults_to_the_location_trailing_slashes_go_and_tables_sort_by_prefix():
    config = parse_file("""
[[registry]]
location = "registry.com/"
[[registry.mirror]]
location = "mirror-1.registry.com//"
[[registry.mirror]]
location = "mirror-2.registry.com"
insecure = true
pull-from-mirror = "digest-only"

[[registry]]
prefix = "*.internal.example.com"

[[registry]]
location = "blocked.registry.com"
blocked = true
mirror-by-digest-only = true
""", "registries.conf")
    assert config.registries == (
        RegistryEntry("*.internal.example.com", "", source="registries.conf"),
        RegistryEntry("blocked.registry.com", "blocked.registry.com", blocked=True, mirror_by_digest_only=True,
                      source="registries.conf"),
        RegistryEntry("registry.com", "registry.com", mirrors=(
            MirrorEntry("mirror-1.registry.com"), MirrorEntry("mirror-2.registry.com", True, "digest-only")),
            source="registries.conf"),
    )
    assert config.sources == ("registries.conf",)


def test_of_two_tables_with_one_prefix_in_a_file_the_first_counts():
    config = parse_file('[[registry]]\nprefix = "example.com"\nlocation = "a.com"\n'
                        '[[registry]]\nprefix = "example.com"\nlocation = "b.com"\n', "r.conf")
    assert [r.location for r in config.registries] == ["a.com"]


def test_unknown_keys_are_ignored_and_a_wildcard_prefix_may_have_a_location():
    config = parse_file('future-setting = 1\n[[registry]]\nprefix = "*.example.com"\nlocation = "m.example.net"\n'
                        'color = "blue"\n[[registry.mirror]]\nlocation = "m.com"\nblocked = true\n', "r.conf")
    assert config.registries[0].location == "m.example.net" and config.registries[0].mirrors == (MirrorEntry("m.com"),)


def test_drop_ins_replace_tables_by_prefix_and_add_the_others():
    """TestRegistriesConfDirectory: base.com goes from insecure to blocked (the whole
    table is replaced, not merged field by field); a .conf without tables changes nothing."""
    base = 'unqualified-search-registries = ["example.com"]\n[[registry]]\nlocation = "base.com"\ninsecure = true\n'
    config = load(("registries.conf", base), [
        ("config-1.conf", 'unqualified-search-registries = ["example-overwrite.com"]\n'
                          '[[registry]]\nlocation = "1.com"\n'),
        ("config-2.conf", 'short-name-mode = "permissive"\n[[registry]]\nlocation = "1.com"\n'
                          '[[registry]]\nlocation = "2.com"\n[[registry]]\nlocation = "base.com"\nblocked = true\n'),
        ("config-3.conf", ""),
    ])
    assert [(r.location, r.insecure, r.blocked, r.source) for r in config.registries] == [
        ("1.com", False, False, "config-2.conf"), ("2.com", False, False, "config-2.conf"),
        ("base.com", False, True, "config-2.conf")]
    assert config.sources == ("registries.conf", "config-1.conf", "config-2.conf", "config-3.conf")


def test_a_wildcard_table_of_a_drop_in_replaces_the_same_wildcard_only():
    main = ('[[registry]]\nprefix = "*.not.quite.simple-prefix.com"\nlocation = "subdomain-prefix-1.com"\n'
            '[[registry]]\nprefix = "*.docker.io"\nlocation = "subdomain-prefix-2.com"\n')
    config = load(("r.conf", main), [
        ("subdomain-override-1.conf", '[[registry]]\nprefix = "*.not.quite.simple-prefix.com"\n'
                                      'location = "subdomain-prefix-1-overridden-by-dropin-location.com"\n'),
        ("subdomain-override-2.conf", '[[registry]]\nprefix = "*.docker.com"\n'
                                      'location = "subdomain-prefix-2-overridden-by-dropin-location.com"\n')])
    assert {r.prefix: r.location for r in config.registries} == {
        "*.docker.com": "subdomain-prefix-2-overridden-by-dropin-location.com",
        "*.docker.io": "subdomain-prefix-2.com",
        "*.not.quite.simple-prefix.com": "subdomain-prefix-1-overridden-by-dropin-location.com"}


def test_a_missing_main_file_is_an_empty_one():
    config = load(None, [("10-mirrors.conf", '[[registry]]\nlocation = "quay.io"\n')])
    assert [r.prefix for r in config.registries] == ["quay.io"] and config.sources == ("10-mirrors.conf",)
    assert load(None).registries == ()


def test_the_version_1_format_is_converted_in_the_main_file():
    """TestV1BackwardsCompatibility: one table per location, trailing slashes dropped."""
    config = parse_file("""
[registries.search]
registries = ["registry-a.com////", "registry-c.com", "registry-d.com"]
[registries.block]
registries = ["registry-b.com"]
[registries.insecure]
registries = ["registry-b.com////", "registry-d.com", "registry-e.com", "registry-a.com"]
""", "registries.conf")
    assert [(r.prefix, r.location, r.insecure, r.blocked) for r in config.registries] == [
        ("registry-a.com", "registry-a.com", True, False), ("registry-b.com", "registry-b.com", True, True),
        ("registry-d.com", "registry-d.com", True, False), ("registry-e.com", "registry-e.com", True, False)]


@pytest.mark.parametrize("text, drop_in, words", [
    ('[registries.block]\nregistries = ["a.com"]\n', True, "a drop-in must use the version 2 format"),
    ('unqualified-search-registries = []\n[registries.search]\nregistries = []\n', False, "mixes the version 1"),
    ('[[registry]]\nlocation = "a.com"\n[registries.insecure]\nregistries = ["b.com"]\n', False, "mixes the version 1"),
    ('[registries.block]\nregistries = ["registry-b.com", "http://schema-is-invalid.com"]\n', False,
     "'http://schema-is-invalid.com' has a URI scheme"),
    ('[registries.search]\nregistries = ["registry-a.com", "http://schema-is-invalid.com"]\n', False,
     "'http://schema-is-invalid.com' has a URI scheme"),
])
def test_version_1_problems(text, drop_in, words):
    with pytest.raises(StateError) as e:
        parse_file(text, "/etc/containers/registries.conf", drop_in=drop_in)
    assert words in str(e.value) and "registries configuration /etc/containers/registries.conf: " in str(e.value)


# (text, words the message must hold): every one of these the runtime refuses too.
INVALID = [
    ('[[registry]]\nlocation = "a.com"\n[[registry\n', "not valid TOML: Expected ']]' at the end of an array "
                                                       "declaration (at line 3, column 11)"),
    ('[[registry]]\nlocation = "a.com"\nlocation = "b.com"\n', "not valid TOML: Cannot overwrite a value (at line 3"),
    ('[registry]\nlocation = "a.com"\n', "'registry' must be an array of tables ([[registry]]), not a table"),
    ('[[registry]]\nlocation = "a.com"\ninsecure = "yes"\n', "[[registry]] 'a.com': 'insecure' must be true or "
                                                             "false, not 'yes'"),
    ('[[registry]]\nlocation = 5\n', "[[registry]] #1: 'location' must be a string, not 5"),
    ('[[registry]]\nlocation = "a.com"\nmirror = "m.com"\n', "[[registry]] 'a.com': 'mirror' must be an array "
                                                             "of tables"),
    ('[[registry]]\nlocation = "registry.com"\n[[registry.mirror]]\ninsecure = true\n',
     "[[registry]] 'registry.com' mirror #1: the mirror has no location"),
    ('[[registry]]\nlocation = "registry.com:5000"\nprefix = "http://schema-is-invalid.com"\n',
     "'http://schema-is-invalid.com' has a URI scheme"),
    ('[[registry]]\nlocation = "https://a.com"\n', "'https://a.com' has a URI scheme"),
    ('[[registry]]\nprefix = ""\nlocation = ""\n', "[[registry]] #1: neither location nor prefix is set"),
    ('[[registry]]\nprefix = "example.com"\n', "prefix 'example.com' has no location (only a wildcard prefix"),
    ('[[registry]]\nprefix = "*.example.com/foo"\n', "wildcard prefix '*.example.com/foo' must be of the form"),
    ('[[registry]]\nprefix = "*.example.com:5000"\nlocation = "a.com"\n', "wildcard prefix '*.example.com:5000'"),
    ('[[registry]]\nprefix = "registry-a.com/foo"\nlocation = "registry-a.com/bar"\npull-from-mirror = "digest-only"\n',
     "[[registry]] 'registry-a.com/foo': pull-from-mirror may only be set on a [[registry.mirror]]"),
    ('[[registry]]\nprefix = "registry-a.com/foo"\nlocation = "registry-a.com/bar"\nmirror-by-digest-only = true\n'
     '[[registry.mirror]]\nlocation = "mirror-1.registry-a.com"\npull-from-mirror = "digest-only"\n',
     "[[registry]] 'registry-a.com/foo' mirror 'mirror-1.registry-a.com': pull-from-mirror cannot be set when "
     "the registry sets mirror-by-digest-only"),
    ('[[registry]]\nlocation = "registry-a.com"\n[[registry.mirror]]\nlocation = "mirror-1.registry-a.com"\n'
     'pull-from-mirror = "notvalid"\n', "pull-from-mirror 'notvalid' is not one of all, digest-only, tag-only"),
    ('[[registry]]\nlocation = "registry.com"\n[[registry]]\nlocation = "registry.com"\ninsecure = true\n',
     "registry 'registry.com' is defined more than once with different 'insecure' values"),
    ('[[registry]]\nlocation = "registry.com"\n[[registry]]\nlocation = "registry.com"\nblocked = true\n',
     "registry 'registry.com' is defined more than once with different 'blocked' values"),
    ('[[registry]]\nprefix = "x.example.com"\nlocation = "a.com"\ninsecure = true\n'
     '[[registry]]\nprefix = "y.example.com"\nlocation = "a.com"\n', "registry 'a.com' is defined more than once"),
    ('unqualified-search-registries = ["registry-a.com/path"]\n', "unqualified-search-registries entry "
                                                                  "'registry-a.com/path' is not a host[:port]"),
    ('unqualified-search-registries = "registry-a.com"\n', "'unqualified-search-registries' must be an array of "
                                                           "strings"),
    ('short-name-mode = "xxx"\n', "short-name-mode 'xxx' is not one of disabled, enforcing, permissive"),
    ('credential-helpers = "pass"\n', "'credential-helpers' must be an array of strings"),
]


@pytest.mark.parametrize("text, words", INVALID)
def test_invalid_files_are_refused_naming_the_file_and_value(text, words):
    with pytest.raises(StateError) as e:
        parse_file(text, "/etc/containers/registries.conf.d/99-mirrors.conf", drop_in=True)
    message = str(e.value)
    assert message.startswith("registries configuration /etc/containers/registries.conf.d/99-mirrors.conf: ")
    assert words in message, message


VALID = [
    "", "# only a comment\n", 'unqualified-search-registries = []\n', 'short-name-mode = ""\n',
    '[aliases]\n"busybox" = "docker.io/library/busybox"\n',
    '[[registry]]\nprefix = "*.example.com"\nlocation = "m.com"\n',
    '[[registry]]\nlocation = "a.com"\n[[registry]]\nlocation = "a.com"\n',  # no conflict: both secure
    '[[registry]]\nlocation = "a.com"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = "m.com"\n',
    '[[registry]]\nprefix = "example.*.com"\nlocation = "a.com"\n',  # never matches, but accepted
]


@pytest.mark.parametrize("text", VALID)
def test_valid_files(text):
    parse_file(text, "r.conf", drop_in=True)


def test_every_problem_of_a_file_is_reported_at_once():
    with pytest.raises(StateError) as e:
        parse_file('[[registry]]\nlocation = "https://a.com"\ninsecure = "yes"\n'
                   '[[registry]]\nprefix = "b.com"\n[[registry.mirror]]\n', "r.conf")
    message = str(e.value)
    for words in ("URI scheme", "'insecure' must be true or false", "prefix 'b.com' has no location",
                  "the mirror has no location"):
        assert words in message, words


def test_an_error_in_a_drop_in_names_that_file():
    with pytest.raises(StateError, match=r"registries configuration 50-bad.conf: not valid TOML"):
        load(("registries.conf", ""), [("10-good.conf", ""), ("50-bad.conf", "[[registry]\n")])
