import pytest

from pinsvc.core.validate import validate_sets
from pinsvc.errors import InvalidArgument
from pinsvc.model import PinnedImageSet
from pinsvc.refs import parse_reference, parse_references, reference_problem, set_name_problem

HEX = "0123456789abcdef" * 4
GOOD = f"quay.io/openshift-release-dev/ocp-release@sha256:{HEX}"


@pytest.mark.parametrize("ref", [
    GOOD, f"127.0.0.1:5000/a/b/c@sha256:{HEX}", f"localhost/x@sha256:{HEX}",
    f"registry.example.com:443/a_b/c-d/e.f@sha256:{HEX}",
])
def test_digest_references_are_accepted(ref):
    assert reference_problem(ref) is None
    assert str(parse_reference(ref)) == ref


@pytest.mark.parametrize("ref, words", [
    ("quay.io/app:latest", "tag 'latest'"),
    (f"busybox@sha256:{HEX}", "not fully qualified"),
    (f"library/busybox@sha256:{HEX}", "'library' is not a registry host"),
    (f"quay.io/app@sha512:{HEX}{HEX}", "algorithm 'sha512'"),
    (f"quay.io/app@sha256:{HEX.upper()}", "64 lowercase hex"),
    (f"quay.io/app@sha256:{HEX[:-1]}", "64 lowercase hex"),
    (f"quay.io/app:1.0@sha256:{HEX}", "both a tag and a digest"),
    (f"quay.io/App@sha256:{HEX}", "malformed"),
    (f"quay.io/app@sha256:{HEX}\n", "whitespace"),
    ("quay.io/" + "a" * 440 + f"@sha256:{HEX}", "at most 447"),
    ("", "empty"),
])
def test_bad_references_are_named_with_the_reason(ref, words):
    problem = reference_problem(ref)
    assert problem is not None and words in problem
    if ref:
        assert repr(ref)[:60].rstrip("'") in problem or len(ref) > 100


# What CRI-O (containers/image v5.38 `docker/reference`) refuses: checked against its parser.
@pytest.mark.parametrize("ref, words", [
    (f"[::1]:5000/repo@sha256:{HEX}", "'[::1]:5000/repo@sha256:"),
    (f"[fd00::1]/repo@sha256:{HEX}", "by an IPv6 address"),
    (f"127.0.0.1:0/repo@sha256:{HEX}", "port '0', outside 1-65535"),
    (f"127.0.0.1:65536/repo@sha256:{HEX}", "port '65536', outside 1-65535"),
    (f"registry.example:999999/repo@sha256:{HEX}", "port '999999', outside 1-65535"),
    ("quay.io/" + "a" * 248 + f"@sha256:{HEX}", "repository name of 256 characters (at most 255"),
    ("quay.io:5000/" + "a/" * 121 + f"b@sha256:{HEX}", "repository name of 256 characters"),
    # Docker Hub names count as the runtime normalises them: docker.io/library/<name>.
    ("docker.io/" + "a" * 238 + f"@sha256:{HEX}", "repository name of 256 characters"),
    ("index.docker.io/" + "a" * 238 + f"@sha256:{HEX}", "repository name of 256 characters"),
])
def test_references_the_runtime_refuses_are_refused_naming_the_value(ref, words):
    problem = reference_problem(ref)
    assert problem is not None and words in problem, problem
    assert repr(ref)[:40] in problem


@pytest.mark.parametrize("ref", [
    "quay.io/" + "a" * 247 + f"@sha256:{HEX}",  # a name of exactly 255 characters
    "docker.io/" + "a" * 237 + f"@sha256:{HEX}",  # 255 once normalised to docker.io/library/
    "docker.io/library/" + "a" * 237 + f"@sha256:{HEX}",
    f"127.0.0.1:1/repo@sha256:{HEX}", f"127.0.0.1:65535/repo@sha256:{HEX}",
    f"LOCALHOST:5000/repo@sha256:{HEX}",
])
def test_references_at_the_runtime_limits_are_accepted(ref):
    assert reference_problem(ref) is None


@pytest.mark.parametrize("ref, normalized", [
    ("docker.io/busybox", "docker.io/library/busybox"),
    ("index.docker.io/busybox", "docker.io/library/busybox"),
    ("index.docker.io/org/app", "docker.io/org/app"),
    ("docker.io/library/busybox", "docker.io/library/busybox"),
    ("quay.io/busybox", "quay.io/busybox"),
    ("registry-1.docker.io/busybox", "registry-1.docker.io/busybox"),
])
def test_normalized_names_docker_hub_images_like_the_runtime(ref, normalized):
    parsed = parse_reference(f"{ref}@sha256:{HEX}")
    assert parsed.normalized().repository == normalized
    assert parsed.normalized().digest == parsed.digest and str(parsed) == f"{ref}@sha256:{HEX}"


def test_parse_references_collapses_duplicates_and_reports_every_problem():
    assert [str(r) for r in parse_references([GOOD, GOOD])] == [GOOD]
    with pytest.raises(InvalidArgument) as e:
        parse_references(["a:1", GOOD, "b:2"])
    assert len(e.value.problems) == 2 and "'a:1'" in str(e.value) and "'b:2'" in str(e.value)


@pytest.mark.parametrize("name, ok", [("worker-pinned-images", True), ("a.b-c", True), ("a", True),
                                      ("A", False), ("-a", False), ("a_b", False), ("a.", False),
                                      ("a" * 254, False), ("", False)])
def test_set_names_are_rfc1123_subdomains(name, ok):
    assert (set_name_problem(name) is None) == ok


def test_validate_sets_names_each_bad_value_at_once():
    sets = [PinnedImageSet("web", 0, ("quay.io/x:1",)), PinnedImageSet("web", 1, (GOOD,)),
            PinnedImageSet("big", 1, tuple(f"quay.io/x@sha256:{i:064x}" for i in range(501)))]
    with pytest.raises(InvalidArgument) as e:
        validate_sets(sets)
    text = str(e.value)
    assert "generation 0 must be >= 1" in text and "'quay.io/x:1'" in text
    assert "set name 'web' appears more than once" in text and "501 images (at most 500)" in text


def test_validate_sets_collapses_duplicate_images():
    (s,) = validate_sets([PinnedImageSet("web", 1, (GOOD, GOOD))])
    assert s.images == (GOOD,)
