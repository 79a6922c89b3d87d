"""Endpoint resolution of digest references, as containers/image does it.

Cases come from containers-registries.conf(5) and from sysregistriesv2's own tests
(TestFindRegistry, TestRefMatchingPrefix, TestRefMatchingSubdomainPrefix,
TestRewriteReference*, TestPullSourcesFromReference); `RESOLVE_CASES` was also checked
against containers/image v5.38 itself (the library CRI-O 1.36.3 is built with).
"""

from __future__ import annotations

import pytest

from pinsvc.errors import StateError
from pinsvc.mirrors.config import load
from pinsvc.mirrors.resolve import match_length, resolve
from pinsvc.refs import parse_reference

DIGEST = "sha256:" + "a" * 64

MIRRORS = """
[[registry]]
prefix = "quay.io/openshift-release-dev"
location = "quay.io/openshift-release-dev"
[[registry.mirror]]
location = "127.0.0.1:5000/openshift-release-dev"
insecure = true
[[registry.mirror]]
location = "mirror.example.com/ocp"
"""

LONGEST = """
[[registry]]
prefix = "example.com"
location = "a.example.net"
[[registry]]
prefix = "example.com/foo"
location = "b.example.net/foo"
[[registry]]
prefix = "complex-prefix.com:4000/with/path"
location = "another-registry.com:5000"
"""

WILDCARDS = """
[[registry]]
prefix = "*.example.com"
insecure = true
[[registry]]
prefix = "a.example.com"
location = "a.example.com"
[[registry]]
prefix = "*.bar.io"
location = "omg.bbq.com/roflmao"
[[registry]]
prefix = "*.sub.example.io"
location = "example.org"
[[registry]]
prefix = "*.docker.io"
location = "subdomain-prefix-2.com"
[[registry]]
prefix = "*.bar.docker.io"
location = "subdomain-prefix-4.com"
[[registry]]
prefix = "foo.bar.example.org:5000"
location = "subdomain-prefix-5.com"
[[registry]]
prefix = "*.bar.example.org"
location = "subdomain-prefix-3.com"
"""

PULL_FROM_MIRROR = """
[[registry]]
prefix = "registry-g.com/baz"
location = "registry-g.com/bar"
[[registry.mirror]]
location = "mirror-1.registry-g.com"
pull-from-mirror = "digest-only"
[[registry.mirror]]
location = "mirror-2.registry-g.com"
pull-from-mirror = "tag-only"
[[registry.mirror]]
location = "mirror-3.registry-g.com"
[[registry.mirror]]
location = "mirror-4.registry-g.com"
pull-from-mirror = "all"

[[registry]]
prefix = "registry-d.com/baz"
location = "registry-d.com/bar"
mirror-by-digest-only = true
[[registry.mirror]]
location = "mirror-1.registry-d.com"
[[registry.mirror]]
location = "mirror-2.registry-d.com"

[[registry]]
prefix = "registry-e.com/baz"
location = "registry-e.com/bar"
[[registry.mirror]]
location = "mirror-1.registry-e.com"
pull-from-mirror = "tag-only"
"""

BLOCKED = """
[[registry]]
prefix = "quay.io/openshift-release-dev"
location = "quay.io/openshift-release-dev"
blocked = true
[[registry.mirror]]
location = "127.0.0.1:5000/openshift-release-dev"
[[registry.mirror]]
location = "quay.io/mirror"

[[registry]]
location = "blocked.example.com"
blocked = true
[[registry.mirror]]
location = "blocked.example.com/mirror"
[[registry.mirror]]
location = "open.example.com:99999/mirror"

[[registry]]
prefix = "rewritten.example.com/foo"
location = "elsewhere.example.com/foo"
blocked = true

[[registry]]
prefix = "*.internal.example.com"
blocked = true
"""

INSECURE = """
[[registry]]
location = "registry.example.com"
insecure = true
[[registry.mirror]]
location = "secure-mirror.example.com"
[[registry.mirror]]
location = "insecure-mirror.example.com"
insecure = true

[[registry]]
location = "secure-mirror.example.com"
insecure = true
"""

DOCKER_HUB = """
[[registry]]
prefix = "docker.io/library"
location = "hub-mirror.example.com/library-copy"
"""

# (config, reference without digest, [(endpoint without digest, flags)]); flags: "m" a
# mirror, "i" insecure, "R" refused.
RESOLVE_CASES = [
    ("", "quay.io/openshift-release-dev/ocp-release", [("quay.io/openshift-release-dev/ocp-release", "")]),
    (MIRRORS, "quay.io/openshift-release-dev/ocp-release", [
        ("127.0.0.1:5000/openshift-release-dev/ocp-release", "mi"),
        ("mirror.example.com/ocp/ocp-release", "m"),
        ("quay.io/openshift-release-dev/ocp-release", "")]),
    (MIRRORS, "quay.io/openshift-release-dev-2/x", [("quay.io/openshift-release-dev-2/x", "")]),
    (MIRRORS, "quay.io/other/x", [("quay.io/other/x", "")]),
    # the longest prefix, at path-component boundaries
    (LONGEST, "example.com/foo/x", [("b.example.net/foo/x", "")]),
    (LONGEST, "example.com/foobar/x", [("a.example.net/foobar/x", "")]),
    (LONGEST, "example.com/bar", [("a.example.net/bar", "")]),
    (LONGEST, "example.comx/bar", [("example.comx/bar", "")]),
    (LONGEST, "complex-prefix.com:4000/with/path/and/beyond", [("another-registry.com:5000/and/beyond", "")]),
    # upstream quirk: prefix "example.com" also matches "example.com:5000"
    (LONGEST, "example.com:5000/x", [("a.example.net:5000/x", "")]),
    # wildcards: subdomains only; a wildcard's length counts as written
    (WILDCARDS, "sub.example.com/x", [("sub.example.com/x", "i")]),
    (WILDCARDS, "a.b.example.com:5000/x", [("a.b.example.com:5000/x", "i")]),
    (WILDCARDS, "example.com/x", [("example.com/x", "")]),
    (WILDCARDS, "a.example.com/x", [("a.example.com/x", "i")]),  # a tie: "*." sorts first and wins
    (WILDCARDS, "foo.bar.io/ns1/ns2/ns3/ns4", [("omg.bbq.com/roflmao/ns1/ns2/ns3/ns4", "")]),
    (WILDCARDS, "another.sub.example.io:5000/library/prefix/image", [("example.org:5000/library/prefix/image", "")]),
    (WILDCARDS, "foo.bar.docker.io:5000/omg/wtf/bbq", [("subdomain-prefix-4.com:5000/omg/wtf/bbq", "")]),
    (WILDCARDS, "foo.docker.io:5000/omg", [("subdomain-prefix-2.com:5000/omg", "")]),
    (WILDCARDS, "foo.bar.example.org:5000/omg", [("subdomain-prefix-5.com/omg", "")]),
    (WILDCARDS, "baz.bar.example.org:5000/omg", [("subdomain-prefix-3.com:5000/omg", "")]),
    (WILDCARDS, "example.net/namespace-ends-in.example.com/x", [("example.net/namespace-ends-in.example.com/x", "")]),
    # a digest reference takes digest-only and all mirrors, never tag-only ones
    (PULL_FROM_MIRROR, "registry-g.com/baz/image", [
        ("mirror-1.registry-g.com/image", "m"), ("mirror-3.registry-g.com/image", "m"),
        ("mirror-4.registry-g.com/image", "m"), ("registry-g.com/bar/image", "")]),
    (PULL_FROM_MIRROR, "registry-d.com/baz/image", [
        ("mirror-1.registry-d.com/image", "m"), ("mirror-2.registry-d.com/image", "m"),
        ("registry-d.com/bar/image", "")]),
    (PULL_FROM_MIRROR, "registry-e.com/baz/image", [("registry-e.com/bar/image", "")]),
    # blocked: the runtime checks the [[registry]] of each endpoint's rewritten name
    (BLOCKED, "quay.io/openshift-release-dev/ocp-release", [
        ("127.0.0.1:5000/openshift-release-dev/ocp-release", "m"),
        ("quay.io/mirror/ocp-release", "m"),
        ("quay.io/openshift-release-dev/ocp-release", "R")]),
    (BLOCKED, "blocked.example.com/app", [
        ("blocked.example.com/mirror/app", "mR"),  # a mirror under a blocked prefix
        ("open.example.com:99999/mirror/app", "mR"),  # a port the runtime cannot connect to
        ("blocked.example.com/app", "R")]),
    (BLOCKED, "rewritten.example.com/foo/app", [("elsewhere.example.com/foo/app", "")]),
    (BLOCKED, "x.internal.example.com/app", [("x.internal.example.com/app", "R")]),
    # insecure is each endpoint's own flag
    (INSECURE, "registry.example.com/app", [
        ("secure-mirror.example.com/app", "m"), ("insecure-mirror.example.com/app", "mi"),
        ("registry.example.com/app", "i")]),
    # Docker Hub names are matched as the runtime normalises them
    (DOCKER_HUB, "docker.io/busybox", [("hub-mirror.example.com/library-copy/busybox", "")]),
    (DOCKER_HUB, "index.docker.io/busybox", [("hub-mirror.example.com/library-copy/busybox", "")]),
    (DOCKER_HUB, "docker.io/org/app", [("docker.io/org/app", "")]),
]


def endpoints(conf: str, name: str) -> list[tuple[str, str]]:
    config = load(("registries.conf", conf))
    found = resolve(config, parse_reference(f"{name}@{DIGEST}"))
    assert all(e.ref.digest == DIGEST for e in found)
    return [(str(e), "m" * e.mirror + "i" * e.insecure + "R" * bool(e.refused)) for e in found]


@pytest.mark.parametrize("conf, name, expected", RESOLVE_CASES)
def test_resolve(conf, name, expected):
    assert endpoints(conf, name) == expected


def test_refused_endpoints_say_why_naming_the_table_and_file():
    config = load(("/etc/containers/registries.conf", BLOCKED))
    found = resolve(config, parse_reference(f"blocked.example.com/app@{DIGEST}"))
    assert [e.refused for e in found] == [
        "blocked by [[registry]] 'blocked.example.com' in /etc/containers/registries.conf",
        f"image reference 'open.example.com:99999/mirror/app@{DIGEST}' has port '99999', outside 1-65535 "
        f"(location 'open.example.com:99999/mirror' of [[registry]] 'blocked.example.com' in "
        f"/etc/containers/registries.conf)",
        "blocked by [[registry]] 'blocked.example.com' in /etc/containers/registries.conf"]


def test_the_endpoint_names_the_table_of_a_later_drop_in():
    config = load(("registries.conf", MIRRORS), [("99-blocked.conf", BLOCKED)])
    (_, _, primary) = resolve(config, parse_reference(f"quay.io/openshift-release-dev/x@{DIGEST}"))
    assert primary.refused == "blocked by [[registry]] 'quay.io/openshift-release-dev' in 99-blocked.conf"


@pytest.mark.parametrize("prefix, location, name, words", [
    # the whole repository as prefix, a bare host as location: "example.com@sha256:..."
    ("example.com/foo", "example.com", "example.com/foo", "'example.com@sha256:"),
    # a host without dot or port: the runtime reads it as a Docker Hub path
    ("quay.io/foo", "mirror", "quay.io/foo/x", "'mirror/x@sha256:"),
    # rewriting to a name the runtime normalises differently
    ("quay.io/foo", "docker.io", "quay.io/foo/x", "reads it as docker.io/library/x@sha256"),
    ("example.com", "example.com:5000", "example.com:5000/image", "'example.com:5000:5000/image@"),
])
def test_a_rewrite_the_runtime_cannot_parse_fails_naming_the_table(prefix, location, name, words):
    conf = f'[[registry]]\nprefix = "{prefix}"\nlocation = "{location}"\n'
    config = load(("/etc/containers/registries.conf.d/10-x.conf", conf))
    with pytest.raises(StateError) as e:
        resolve(config, parse_reference(f"{name}@{DIGEST}"))
    message = str(e.value)
    assert f"[[registry]] {prefix!r}" in message and "/etc/containers/registries.conf.d/10-x.conf" in message
    assert words in message and f"location {location!r}" in message, message


def test_a_port_quirk_rewrite_fails_the_whole_resolution_like_the_runtime():
    """Prefix "example.org" matches "example.org:5000/x"; the mirror's path then lands
    after the port ("m.example.org/x:5000/x"), and the runtime fails the pull."""
    conf = '[[registry]]\nlocation = "example.org"\n[[registry.mirror]]\nlocation = "m.example.org/x"\n'
    with pytest.raises(StateError, match="'m.example.org/x:5000/x@sha256:"):
        resolve(load(("r.conf", conf)), parse_reference(f"example.org:5000/x@{DIGEST}"))


# containers/image TestRefMatchingPrefix and TestRefMatchingSubdomainPrefix
@pytest.mark.parametrize("ref, prefix, expected", [
    ("docker.io", "docker.io", 9), ("docker.io", "example.com", -1),
    ("example.com:5000", "example.com:5000", 16), ("example.com:50000", "example.com:5000", -1),
    ("example.com:5000", "example.com", 11), ("example.com/foo/bar:baz", "example.com", 11),
    ("docker.io", "docker.io/library", -1), ("docker.io/libraryy", "docker.io/library", -1),
    ("docker.io/library/busybox", "docker.io/library", 17),
    (f"example.com/foo@{DIGEST}", f"example.com/foo@{DIGEST}", len(f"example.com/foo@{DIGEST}")),
    ("example.com/foo", f"example.com/foo@{DIGEST}", -1), ("example.com/foo", "*", -1),
    ("docker.io", "*.io", 9), ("docker.io/foo", "*.com", -1), ("example.com/foo", "*.co", -1),
    ("example.com/foo", "*.example.com", -1), ("example.com/foo/bar:baz", "*.com", 11),
    ("yet.another.example.com/foo", "**.example.com", -1),
    ("another.example.com/namespace.com/foo/bar/bbq:baz", "*.example.com", 19),
    ("example.net/namespace-ends-in.com/foo/bar/bbq:baz", "*.com", -1),
    ("another.example.com/namespace.com/foo/bar/bbq:baz", "*.namespace.com", -1),
    ("another.sub.example.com/foo/bar/bbq:baz", "*.sub.example.com", 23),
    (f"yet.another.example.com/foo/bar@{DIGEST}", "*.example.com", 23),
    ("a.example.com.example.com/x", "*.example.com", -1),  # the first occurrence decides
])
def test_match_length(ref, prefix, expected):
    assert match_length(ref, prefix) == expected
