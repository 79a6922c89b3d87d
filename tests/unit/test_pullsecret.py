"""Pull secret parsing, kubelet-style key matching, redaction and bad files."""

from __future__ import annotations

import base64
import json
import os
import traceback
from pathlib import Path

import pytest

from pinsvc.adapters.pullsecret import (
    Credentials,
    PullSecret,
    PullSecretFile,
    load_pull_secret,
    parse_pull_secret,
)
from pinsvc.errors import StateError
from pinsvc.refs import ImageRef, parse_reference

SECRET = "s3cr3t-Pa55word"
DIGEST = "sha256:" + "ab" * 32


def ref(name: str) -> ImageRef:
    return parse_reference(f"{name}@{DIGEST}")


def auth(user: str, password: str = SECRET) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def secret(auths: dict[str, object]) -> PullSecret:
    return parse_pull_secret(json.dumps({"auths": auths}))


def user_for(pull_secret: PullSecret, name: str) -> str | None:
    credentials = pull_secret.lookup(ref(name))
    return credentials.username if credentials else None


def full_text(error: BaseException) -> str:
    """Everything a traceback of `error` would print, causes included."""
    return "".join(traceback.format_exception(error))


# -- redaction -------------------------------------------------------------------------


def test_repr_and_str_show_the_user_but_never_a_secret():
    credentials = Credentials(username="alice", password=SECRET, identity_token="id-" + SECRET,
                              registry_token="reg-" + SECRET, server_address="quay.io")
    for text in (repr(credentials), str(credentials), f"{credentials}", repr(secret({"quay.io": auth("a")}))):
        assert SECRET not in text
    assert repr(credentials) == ("Credentials(username='alice', server_address='quay.io', "
                                 "password=<redacted>, identity_token=<redacted>, registry_token=<redacted>)")


# -- entry formats ---------------------------------------------------------------------


def test_auth_field_decodes_to_user_and_password():
    credentials = secret({"quay.io": auth("alice")}).lookup(ref("quay.io/org/app"))
    assert credentials == Credentials(username="alice", password=SECRET, server_address="quay.io")


def test_password_may_contain_colons_and_trailing_nuls_are_dropped():
    pull_secret = secret({"quay.io": auth("alice", "a:b:c\x00\x00")})
    assert pull_secret.lookup(ref("quay.io/app")).password == "a:b:c"


def test_auth_without_padding_is_accepted():
    encoded = base64.b64encode(b"alice:pw1").decode().rstrip("=")
    assert secret({"quay.io": {"auth": encoded}}).lookup(ref("quay.io/app")).password == "pw1"


def test_username_password_and_tokens():
    pull_secret = secret({
        "a.example": {"username": "bob", "password": "pw"},
        "b.example": {"identitytoken": "idtok"},
        "c.example": {"registrytoken": "regtok"},
    })
    assert pull_secret.lookup(ref("a.example/x")) == Credentials("bob", "pw", server_address="a.example")
    assert pull_secret.lookup(ref("b.example/x")).identity_token == "idtok"
    assert pull_secret.lookup(ref("c.example/x")).registry_token == "regtok"


def test_auth_wins_over_username_and_password():
    pull_secret = secret({"quay.io": {**auth("alice"), "username": "bob", "password": "pw"}})
    assert pull_secret.lookup(ref("quay.io/app")).username == "alice"


def test_an_entry_without_credentials_falls_through_to_a_broader_key():
    pull_secret = secret({"quay.io": auth("broad"), "quay.io/org": {"email": "x@example.com"}})
    assert user_for(pull_secret, "quay.io/org/app") == "broad"


def test_a_file_without_auths_is_empty():
    assert parse_pull_secret('{"credsStore": "desktop"}') == PullSecret()


# -- key matching ----------------------------------------------------------------------


@pytest.mark.parametrize("key", [
    "quay.io", "https://quay.io", "https://quay.io/", "http://quay.io", "quay.io/",
    "https://quay.io/v1/", "quay.io/v2/", "QUAY.IO",
])
def test_scheme_trailing_slash_api_version_and_case_are_ignored(key):
    assert user_for(secret({key: auth("alice")}), "quay.io/org/app") == "alice"


def test_the_port_must_match_exactly():
    pull_secret = secret({"127.0.0.1:5000": auth("five"), "https://127.0.0.1:6000/": auth("six")})
    assert user_for(pull_secret, "127.0.0.1:5000/app") == "five"
    assert user_for(pull_secret, "127.0.0.1:6000/app") == "six"
    assert user_for(pull_secret, "127.0.0.1:7000/app") is None
    assert user_for(secret({"quay.io:443": auth("a")}), "quay.io/app") is None
    assert user_for(secret({"quay.io": auth("a")}), "quay.io:443/app") is None


def test_the_host_must_match_exactly():
    pull_secret = secret({"quay.io": auth("alice")})
    assert user_for(pull_secret, "quay.io.evil.example/app") is None
    assert user_for(pull_secret, "cdn.quay.io/app") is None
    assert user_for(pull_secret, "registry.example/quay.io") is None


def test_a_key_path_matches_on_segment_boundaries_only():
    pull_secret = secret({"quay.io/org": auth("org")})
    assert user_for(pull_secret, "quay.io/org") == "org"
    assert user_for(pull_secret, "quay.io/org/app") == "org"
    assert user_for(pull_secret, "quay.io/org/team/app") == "org"
    assert user_for(pull_secret, "quay.io/organization/app") is None
    assert user_for(pull_secret, "quay.io/other/app") is None


def test_the_longest_matching_key_wins_whatever_the_file_order():
    keys = {"quay.io/org/team": auth("team"), "https://quay.io/": auth("host"), "quay.io/org": auth("org")}
    pull_secret = secret(keys)
    assert user_for(pull_secret, "quay.io/org/team/app") == "team"
    assert user_for(pull_secret, "quay.io/org/app") == "org"
    assert user_for(pull_secret, "quay.io/elsewhere/app") == "host"
    assert user_for(secret(dict(reversed(keys.items()))), "quay.io/org/team/app") == "team"


@pytest.mark.parametrize("key", ["https://index.docker.io/v1/", "docker.io", "index.docker.io",
                                 "registry-1.docker.io"])
@pytest.mark.parametrize("host", ["docker.io", "index.docker.io", "registry-1.docker.io"])
def test_docker_hub_aliases_are_one_registry(key, host):
    pull_secret = secret({key: auth("hub")})
    credentials = pull_secret.lookup(ref(f"{host}/library/nginx"))
    assert credentials is not None and credentials.server_address == "docker.io"


def test_host_globs_match_one_label_like_kubelet():
    pull_secret = secret({"*.example.com": auth("glob"), "special.example.com": auth("exact")})
    assert user_for(pull_secret, "a.example.com/app") == "glob"
    assert user_for(pull_secret, "special.example.com/app") == "exact"
    assert user_for(pull_secret, "example.com/app") is None
    assert user_for(pull_secret, "a.b.example.com/app") is None


def test_server_address_names_the_registry_of_the_key():
    pull_secret = secret({"http://127.0.0.1:5000/org/": auth("a")})
    assert pull_secret.lookup(ref("127.0.0.1:5000/org/app")).server_address == "127.0.0.1:5000"


# -- bad files -------------------------------------------------------------------------


def test_a_missing_file_is_an_empty_secret(tmp_path):
    assert load_pull_secret(tmp_path / "config.json") == PullSecret()
    assert PullSecretFile(tmp_path / "config.json").lookup(ref("quay.io/app")) is None


@pytest.mark.parametrize(("content", "expected"), [
    ('{"auths": {"quay.io": {"auth": "' + SECRET + '!!"}}}', "key 'quay.io': 'auth' is not valid base64"),
    ('{"auths": {"quay.io": {"auth": "' + base64.b64encode(SECRET.encode()).decode() + '"}}}',
     "key 'quay.io': 'auth' must be base64 of 'username:password'"),
    ('{"auths": {"quay.io": {"auth": "' + base64.b64encode(b"u:\xff" + SECRET.encode()).decode() + '"}}}',
     "key 'quay.io': 'auth' does not decode to UTF-8 text"),
    ('{"auths": {"quay.io": {"password": 12345}}}', "key 'quay.io': 'password' is not a string"),
    ('{"auths": {"quay.io": "' + SECRET + '"}}', "key 'quay.io': the entry is not a JSON object"),
    ('{"auths": {"quay.io:port": {"password": "' + SECRET + '"}}}', "key 'quay.io:port': not a registry address"),
    ('{"auths": {"quay.io": {"password": "' + SECRET + '"}}', "not valid JSON"),
    ('{"auths": ["' + SECRET + '"]}', "'auths' is not a JSON object"),
    ('["' + SECRET + '"]', "the top level is not a JSON object"),
])
def test_a_bad_file_names_the_file_and_key_but_never_the_secret(tmp_path, content, expected):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(StateError) as raised:
        load_pull_secret(path)
    assert str(raised.value).startswith(f"pull secret {path}: ")
    assert expected in str(raised.value)
    assert SECRET not in full_text(raised.value)


def test_an_unreadable_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "config.json"
    path.mkdir()
    with pytest.raises(StateError, match=f"pull secret {path}: cannot read it"):
        load_pull_secret(path)


def test_a_file_that_is_not_utf8_is_an_error_without_its_bytes(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'{"auths": {"quay.io": {"password": "\xff' + SECRET.encode() + b'"}}}')
    with pytest.raises(StateError, match="not UTF-8 text") as raised:
        load_pull_secret(path)
    assert "0xff" not in full_text(raised.value) and SECRET not in full_text(raised.value)


# -- rotation --------------------------------------------------------------------------


def write_secret(path: Path, auths: dict[str, object], *, mtime_ns: int) -> None:
    path.write_text(json.dumps({"auths": auths}))
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_the_file_is_reread_when_it_changes(tmp_path):
    path = tmp_path / "config.json"
    secret_file = PullSecretFile(path)
    image = ref("quay.io/org/app")
    assert secret_file.lookup(image) is None

    write_secret(path, {"quay.io": auth("alice", "old")}, mtime_ns=1_000_000_000)
    assert secret_file.lookup(image).password == "old"

    write_secret(path, {"quay.io": auth("alice", "new")}, mtime_ns=2_000_000_000)
    assert secret_file.lookup(image).password == "new"

    path.write_text("{not json")
    with pytest.raises(StateError, match="not valid JSON"):
        secret_file.current()
    with pytest.raises(StateError):  # still broken: not cached as good
        secret_file.current()

    write_secret(path, {"quay.io": auth("alice", "fixed")}, mtime_ns=3_000_000_000)
    assert secret_file.lookup(image).password == "fixed"

    path.unlink()
    assert secret_file.lookup(image) is None


def test_an_unchanged_file_is_not_reparsed(tmp_path):
    path = tmp_path / "config.json"
    write_secret(path, {"quay.io": auth("alice")}, mtime_ns=1_000_000_000)
    secret_file = PullSecretFile(path)
    assert secret_file.current() is secret_file.current()


# -- per endpoint, as containers/image reads an auth file ------------------------------
# Cases from containers/image's TestGetAuth (refpath.json, full.json, abnormal.json), and
# checked against containers/image v5.38 (CRI-O 1.36.3's `pkg/docker/config`).

ENDPOINT_SECRET = {
    "example.org/repo": auth("example"), "example.org": auth("local"),
    "docker.io/vendor": auth("first"), "docker.io": auth("top"),
    "docker.io/library/busybox": auth("library-busybox"), "docker.io/library": auth("library-other"),
    "localhost": auth("local-host"), "localhost:5000": auth("localhost-5000"),
    "10.10.30.45:5000": auth("ip-5000"),
    "https://normalize.example.org/v1": auth("normalize"),
    "https://reg2.example.com/org": auth("scheme-path"),
    "quay.io": auth("canonical"), "quay.io/openshift-release-dev": auth("canonical-ns"),
    "127.0.0.1:5000": auth("mirror"), "127.0.0.1:5000/openshift-release-dev/ocp-release": auth("mirror-repo"),
    "*.wild.example": auth("glob"),
    "up.example.com": {"username": "u", "password": SECRET},
    "tok.example.com": {"identitytoken": "id-" + SECRET},
    "empty.example.com": auth("host-below-empty"), "empty.example.com/ns": {"email": "x@example.com"},
    "Upper.Example.com": auth("upper"),
}


@pytest.mark.parametrize("host, path, user", [
    ("example.org", "repo/image", "example"), ("example.org", "repo", "example"), ("example.org", "image", "local"),
    ("docker.io", "library/busybox", "library-busybox"), ("docker.io", "library/notbusybox", "library-other"),
    ("docker.io", "vendor/product", "first"), ("docker.io", "other-vendor/other-product", "top"),
    ("localhost", "x", "local-host"), ("localhost:5000", "x", "localhost-5000"), ("10.10.30.45:5000", "x", "ip-5000"),
    ("10.10.30.45", "x", None),  # the port is part of the key
    ("normalize.example.org", "a/b", "normalize"),  # a key with a scheme names its host, path ignored
    ("reg2.example.com", "other", "scheme-path"),
    ("quay.io", "openshift-release-dev/ocp-release", "canonical-ns"), ("quay.io", "other/app", "canonical"),
    ("127.0.0.1:5000", "openshift-release-dev/ocp-release", "mirror-repo"),
    ("127.0.0.1:5000", "openshift-release-dev/other", "mirror"), ("127.0.0.1:5001", "x", None),
    ("a.wild.example", "x", None),  # no globs
    ("up.example.com", "x", None),  # username/password fields are not read
    ("tok.example.com", "x", None),  # an identity token alone is not read
    ("empty.example.com", "ns/x", None),  # the first key present decides, even when empty
    ("upper.example.com", "x", None), ("Upper.Example.com", "x", "upper"),  # keys are case sensitive
])
def test_lookup_endpoint_picks_the_key_containers_image_picks(host, path, user):
    credentials = secret(ENDPOINT_SECRET).lookup_endpoint(host, path)
    assert (credentials.username if credentials else None) == user
    if credentials:
        assert credentials.server_address == host and credentials.password == SECRET


def test_lookup_endpoint_reads_the_identity_token_beside_an_auth():
    entry = auth("00000000-0000-0000-0000-000000000000", "") | {"identitytoken": "id-" + SECRET}
    credentials = secret({"example.org": entry}).lookup_endpoint("example.org", "x")
    assert (credentials.username, credentials.password, credentials.identity_token) == (
        "00000000-0000-0000-0000-000000000000", "", "id-" + SECRET)


def test_lookup_endpoint_names_docker_hub_index_docker_io_in_its_fallback():
    for key in ("https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"):
        assert secret({key: auth("hub")}).lookup_endpoint("docker.io", "library/busybox").username == "hub", key


@pytest.mark.parametrize("endpoint, user", [
    ("quay.io/openshift-release-dev/ocp-release", "canonical-ns"),  # the AuthConfig pinsvc sends
    ("quay.io/mirror-org/ocp-release", "canonical-ns"),  # same host: CRI-O sends the AuthConfig there too
    ("127.0.0.1:5000/openshift-release-dev/ocp-release", "mirror-repo"),  # another host: its own key
    ("127.0.0.1:5000/other/ocp-release", "mirror"),
    ("mirror.example.net/ocp-release", None),  # never the canonical registry's credentials
])
def test_for_endpoint_gives_what_crio_sends_to_each_endpoint(endpoint, user):
    image = ref("quay.io/openshift-release-dev/ocp-release")
    credentials = secret(ENDPOINT_SECRET).for_endpoint(image, ref(endpoint))
    assert (credentials.username if credentials else None) == user


def test_for_endpoint_uses_only_user_and_password_of_the_auth_config():
    """CRI-O reads the user and password of the CRI AuthConfig and nothing else: a
    token-only entry leaves the endpoint to the auth file's own entry."""
    image = ref("tok.example.com/app")
    pull_secret = secret({"tok.example.com/app": {"identitytoken": "id-" + SECRET},
                          "tok.example.com": auth("file-user")})
    assert pull_secret.lookup(image).identity_token == "id-" + SECRET
    assert pull_secret.for_endpoint(image, image) is None, "the auth file's first key present decides"
    with_user = secret({"quay.io": auth("alice") | {"identitytoken": "id-" + SECRET}})
    credentials = with_user.for_endpoint(ref("quay.io/app"), ref("quay.io/app"))
    assert (credentials.username, credentials.password, credentials.identity_token) == ("alice", SECRET, "")


def test_endpoint_lookups_follow_the_file(tmp_path):
    path = tmp_path / "config.json"
    secret_file = PullSecretFile(path)
    write_secret(path, {"127.0.0.1:5000": auth("mirror")}, mtime_ns=1_000_000_000)
    assert secret_file.lookup_endpoint("127.0.0.1:5000", "x").username == "mirror"
    assert secret_file.for_endpoint(ref("quay.io/x"), ref("127.0.0.1:5000/x")).username == "mirror"
    write_secret(path, {}, mtime_ns=2_000_000_000)
    assert secret_file.lookup_endpoint("127.0.0.1:5000", "x") is None


def test_endpoint_credentials_never_show_a_secret():
    credentials = secret(ENDPOINT_SECRET).lookup_endpoint("quay.io", "x")
    assert SECRET not in repr(credentials) and SECRET not in repr(secret(ENDPOINT_SECRET))
