"""mTLS settings of the agent and the --tls-* flags of the clients (no network)."""

import argparse

import pytest
from pinsvc_client import TlsFiles

from pinsvc import config
from pinsvc.client import add_tls_arguments, connect, tls_from_args
from pinsvc.errors import InvalidArgument


def parse(argv):
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.load(parser.parse_args(argv), env={})


def test_tcp_requires_all_three_tls_files():
    with pytest.raises(InvalidArgument) as e:
        parse(["--server-tcp", "127.0.0.1:9440"])
    assert ("server.tcp '127.0.0.1:9440' requires mutual TLS: missing server.tls_cert, server.tls_key, "
            "server.tls_client_ca (--server-tls-cert FILE --server-tls-key FILE --server-tls-client-ca FILE); "
            "or --server-insecure") in str(e.value)
    with pytest.raises(InvalidArgument, match=r"missing server.tls_key \(--server-tls-key FILE\)"):
        parse(["--server-tcp", "127.0.0.1:9440", "--server-tls-cert", "c", "--server-tls-client-ca", "ca"])
    s = parse(["--server-tcp", "127.0.0.1:9440", "--server-tls-cert", "c", "--server-tls-key", "k",
               "--server-tls-client-ca", "ca"])
    assert (s.server.tls_cert, s.server.tls_key, s.server.tls_client_ca, s.server.insecure) == ("c", "k", "ca", False)


def test_insecure_allows_plaintext_tcp_but_not_with_tls_files():
    assert parse(["--server-tcp", "127.0.0.1:9440", "--server-insecure"]).server.insecure
    with pytest.raises(InvalidArgument, match="server.insecure .* contradicts server.tls_cert"):
        parse(["--server-tcp", "127.0.0.1:9440", "--server-insecure", "--server-tls-cert", "c"])


def test_no_tcp_needs_no_tls_but_an_incomplete_set_is_named():
    assert parse([]).server.tcp == ""
    with pytest.raises(InvalidArgument, match="mutual TLS is incomplete: missing server.tls_cert, server.tls_client_ca"):
        parse(["--server-tls-key", "k"])


def tls_args(*argv):
    parser = argparse.ArgumentParser()
    add_tls_arguments(parser)
    return parser.parse_args(argv)


def test_tls_flags(tmp_path):
    assert tls_from_args(tls_args()) is None
    with pytest.raises(InvalidArgument, match="missing --tls-key, --tls-ca"):
        tls_from_args(tls_args("--tls-cert", "c"))
    with pytest.raises(InvalidArgument, match="--tls-server-name needs"):
        tls_from_args(tls_args("--tls-server-name", "node-a"))
    with pytest.raises(InvalidArgument, match=f"TLS CA {tmp_path}/ca.pem: cannot read"):
        tls_from_args(tls_args("--tls-cert", "c", "--tls-key", "k", "--tls-ca", str(tmp_path / "ca.pem")))
    (tmp_path / "ca.pem").write_text("not pem")
    with pytest.raises(InvalidArgument, match="ca.pem: not a PEM file"):
        tls_from_args(tls_args("--tls-cert", "c", "--tls-key", "k", "--tls-ca", str(tmp_path / "ca.pem")))


def test_options_override_the_target_name_only_when_asked():
    assert TlsFiles("c", "k", "ca").options() == []
    assert TlsFiles("c", "k", "ca", "node-a").options() == [("grpc.ssl_target_name_override", "node-a")]


async def test_unix_endpoints_never_use_tls(tmp_path):
    tls = TlsFiles(str(tmp_path / "missing.crt"), str(tmp_path / "missing.key"), str(tmp_path / "missing-ca.crt"))
    async with connect(f"unix://{tmp_path}/agent.sock", tls=tls):  # the files are not even read
        pass
    with pytest.raises(InvalidArgument, match="missing-ca.crt: cannot read"):
        connect("127.0.0.1:9440", tls=tls)
