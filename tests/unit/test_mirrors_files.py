"""Reading registries.conf(.d) from disk with change detection, and certs.d TLS files."""

from __future__ import annotations

import datetime
import os
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pinsvc.adapters.registries_conf import RegistriesConfFiles, find_tls_files, ssl_context
from pinsvc.errors import StateError
from pinsvc.mirrors.certs import TlsFiles, tls_files
from pinsvc.refs import parse_reference

DIGEST = "sha256:" + "c" * 64


def table(location: str, **fields: object) -> str:
    extra = "".join(f"{k.replace('_', '-')} = {str(v).lower() if isinstance(v, bool) else repr(v)}\n"
                    for k, v in fields.items())
    return f'[[registry]]\nlocation = "{location}"\n{extra}'


def locations(files: RegistriesConfFiles) -> dict[str, str]:
    return {r.prefix: Path(r.source).name for r in files.current().registries}


@pytest.fixture
def conf(tmp_path) -> tuple[Path, Path]:
    main, drop_ins = tmp_path / "registries.conf", tmp_path / "registries.conf.d"
    drop_ins.mkdir()
    return main, drop_ins


def test_reads_the_main_file_then_every_conf_drop_in_in_byte_order(conf):
    main, drop_ins = conf
    main.write_text(table("a.com") + table("b.com"))
    (drop_ins / "20-b.conf").write_text(table("b.com", blocked=True))
    (drop_ins / "10-c.conf").write_text(table("c.com") + table("b.com", insecure=True))
    (drop_ins / "B.conf").write_text(table("d.com"))  # "B" sorts before "a" in byte order
    (drop_ins / "a.conf").write_text(table("d.com", insecure=True))
    (drop_ins / "30-ignored.conf.bak").write_text(table("ignored.com"))
    (drop_ins / "ignored").write_text("not toml at all [")
    (drop_ins / "sub.conf").mkdir()  # a directory, even named *.conf, is skipped
    files = RegistriesConfFiles(main, [drop_ins])
    assert locations(files) == {"a.com": "registries.conf", "b.com": "20-b.conf", "c.com": "10-c.conf",
                                "d.com": "a.conf"}
    assert files.current().registries[1].blocked and not files.current().registries[1].insecure
    assert [Path(s).name for s in files.current().sources] == [
        "registries.conf", "10-c.conf", "20-b.conf", "B.conf", "a.conf"]


def test_missing_files_and_directories_are_empty(tmp_path):
    files = RegistriesConfFiles(tmp_path / "none.conf", [tmp_path / "none.d"])
    assert files.current().registries == ()
    ref = parse_reference(f"quay.io/app@{DIGEST}")
    assert [str(e) for e in files.resolve(ref)] == ["quay.io/app"]


def test_directories_are_read_in_the_order_given(conf, tmp_path):
    main, first = conf
    second = tmp_path / "user.d"
    second.mkdir()
    (first / "50.conf").write_text(table("a.com", insecure=True))
    (second / "10.conf").write_text(table("a.com", blocked=True))
    assert RegistriesConfFiles(main, [first, second]).current().registries[0].blocked


def test_changes_are_picked_up_and_nothing_is_re_read_otherwise(conf):
    main, drop_ins = conf
    main.write_text(table("quay.io"))
    files = RegistriesConfFiles(main, [drop_ins])
    first = files.current()
    assert files.current() is first, "unchanged files are not parsed again"

    mirror = drop_ins / "99-mirror.conf"
    mirror.write_text(table("quay.io") + '[[registry.mirror]]\nlocation = "127.0.0.1:5000"\n')
    ref = parse_reference(f"quay.io/app@{DIGEST}")
    assert [str(e) for e in files.resolve(ref)] == ["127.0.0.1:5000/app", "quay.io/app"]

    os.utime(mirror, ns=(1, 1))  # same size, other mtime: a rewrite in place
    mirror.write_text(table("quay.io") + '[[registry.mirror]]\nlocation = "127.0.0.1:5001"\n')
    os.utime(mirror, ns=(2, 2))
    assert [str(e) for e in files.resolve(ref)] == ["127.0.0.1:5001/app", "quay.io/app"]

    replacement = drop_ins / "tmp"
    replacement.write_text(table("quay.io", blocked=True))
    replacement.rename(mirror)  # atomic replace: a new inode
    assert files.resolve(ref)[0].refused

    mirror.unlink()
    assert files.resolve(ref)[0].refused == ""
    main.unlink()
    assert files.current().registries == ()


def test_a_malformed_file_is_an_error_naming_it_until_it_is_fixed(conf):
    main, drop_ins = conf
    bad = drop_ins / "50-bad.conf"
    bad.write_text(table("a.com") + "[[registry.mirror]\n")
    files = RegistriesConfFiles(main, [drop_ins])
    with pytest.raises(StateError) as e:
        files.current()
    assert f"registries configuration {bad}: not valid TOML" in str(e.value)
    assert "(at line 3, column 18)" in str(e.value)
    with pytest.raises(StateError):
        files.current()  # still broken: still an error, never a stale or empty config
    bad.write_text(table("a.com"))
    assert locations(files) == {"a.com": "50-bad.conf"}


def test_unreadable_files_are_errors_naming_them(conf):
    main, drop_ins = conf
    main.write_bytes(b'[[registry]]\nlocation = "\xff"\n')
    with pytest.raises(StateError, match=f"registries configuration {main}: not UTF-8 text"):
        RegistriesConfFiles(main, [drop_ins]).current()
    main.unlink()
    main.mkdir()
    with pytest.raises(StateError, match=f"registries configuration {main}: cannot read it"):
        RegistriesConfFiles(main, [drop_ins]).current()


# -- certs.d ---------------------------------------------------------------------------


def test_tls_files_take_every_crt_and_each_cert_with_its_key():
    d = Path("/etc/containers/certs.d/registry.example:5000")
    assert tls_files(d, ["ca.crt", "client.cert", "client.key", "b.crt", "other.txt"]) == TlsFiles(
        d, (d / "b.crt", d / "ca.crt"), ((d / "client.cert", d / "client.key"),))
    with pytest.raises(StateError, match=r"client certificate client.cert has no key client.key \(CA certificates "
                                         r"take the extension .crt\)"):
        tls_files(d, ["client.cert"])
    with pytest.raises(StateError, match="key client.key has no client certificate client.cert"):
        tls_files(d, ["ca.crt", "client.key"])


def test_the_first_certs_dir_with_an_entry_for_the_host_is_the_only_one_used(tmp_path):
    user, system, docker = tmp_path / "user", tmp_path / "containers", tmp_path / "docker"
    (system / "registry.example:5000").mkdir(parents=True)
    (system / "registry.example:5000" / "ca.crt").write_text("x")
    (docker / "registry.example:5000").mkdir(parents=True)
    (docker / "registry.example:5000" / "other.crt").write_text("x")
    (docker / "only-docker.example").mkdir(parents=True)
    (user / "empty.example").mkdir(parents=True)
    (system / "empty.example").mkdir(parents=True)
    (system / "empty.example" / "ca.crt").write_text("x")
    dirs = [user, system, docker]
    assert find_tls_files("registry.example:5000", dirs).ca_files == (system / "registry.example:5000" / "ca.crt",)
    assert find_tls_files("only-docker.example", dirs) == TlsFiles(docker / "only-docker.example")
    assert find_tls_files("empty.example", dirs) == TlsFiles(user / "empty.example")
    assert find_tls_files("registry.example", dirs) is None, "the port is part of the directory name"


def _pem_pair(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_ssl_context_trusts_the_crt_files_and_presents_the_client_pair(tmp_path):
    ca, _ = _pem_pair(tmp_path, "mirror-ca")
    cert, key = _pem_pair(tmp_path, "client")
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate")
    context = ssl_context(TlsFiles(tmp_path, (garbage, ca), ((cert, key),)))
    assert "mirror-ca" in str(context.get_ca_certs()), "the .crt is trusted; the garbage one is skipped"
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    insecure = ssl_context(None, insecure=True)
    assert insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname


def test_ssl_context_names_a_client_pair_that_does_not_load(tmp_path):
    cert, _ = _pem_pair(tmp_path, "client")
    _, other_key = _pem_pair(tmp_path, "other")
    with pytest.raises(StateError, match=f"certs.d {tmp_path}: cannot load client certificate client.pem "
                                         f"with key other.key.pem"):
        ssl_context(TlsFiles(tmp_path, (), ((cert, other_key),)))
