"""The agent's TCP listener requires mutual TLS; the unix socket is private (mode, group).

Certificates are made with `cryptography` (tests/pki.py): a CA, a server certificate for
127.0.0.1/localhost, a good client certificate, one signed by another CA, an expired one,
and a server certificate that names only the node (reached by IP with --tls-server-name).
"""

from __future__ import annotations

import asyncio
import grp
import stat
import subprocess
import sys
from dataclasses import dataclass

import grpc
import pytest
import yaml
from pinsvc_client import SetSpec, TlsFiles, connect, pb, pb_grpc
from tests.e2e.helpers import free_port
from tests.pki import DAY, NOW, Issued, issue


# ---- a small PKI --------------------------------------------------------------------------

@dataclass
class Pki:
    ca: Issued
    server: Issued          # 127.0.0.1 and localhost
    node_server: Issued     # only the node's name, node-a.pinsvc.test
    client: Issued
    other_ca_client: Issued
    expired_client: Issued

    def server_flags(self, server: Issued | None = None) -> dict[str, str]:
        server = server or self.server
        return {"server-tls-cert": str(server.cert), "server-tls-key": str(server.key),
                "server-tls-client-ca": str(self.ca.cert)}

    def tls(self, client: Issued | None = None, server_name: str = "") -> TlsFiles:
        client = client or self.client
        return TlsFiles(str(client.cert), str(client.key), str(self.ca.cert), server_name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    out = tmp_path_factory.mktemp("pki")
    ca = issue(out, "pinsvc-ca", ca=True)
    other_ca = issue(out / "other", "other-ca", ca=True)
    return Pki(
        ca=ca,
        server=issue(out, "agent", issuer=ca, server=True, dns=("localhost",), ips=("127.0.0.1",)),
        node_server=issue(out, "node-a", issuer=ca, server=True, dns=("node-a.pinsvc.test",)),
        client=issue(out, "pinctl", issuer=ca),
        other_ca_client=issue(out / "other", "pinctl", issuer=other_ca),
        expired_client=issue(out, "pinctl-expired", issuer=ca, not_before=NOW - 30 * DAY, not_after=NOW - DAY),
    )


def tcp_agent(agent_factory, pki: Pki, **flags):
    port = free_port()
    agent = agent_factory(**{"server-tcp": f"127.0.0.1:{port}", **pki.server_flags(), **flags})
    return agent, f"127.0.0.1:{port}"


async def status_with(channel: grpc.aio.Channel) -> pb.NodeStatus:
    async with channel:
        return await pb_grpc.PinServiceStub(channel).GetStatus(pb.GetStatusRequest(), timeout=10)


# ---- the agent's TCP listener ---------------------------------------------------------------

async def test_tcp_serves_only_clients_with_a_certificate_of_the_ca(agent_factory, node, workload, pki):
    agent, endpoint = tcp_agent(agent_factory, pki)
    assert f"{endpoint} (mTLS)" in agent.log()
    ca = pki.ca.cert.read_bytes()

    refused = {
        "plaintext": grpc.aio.insecure_channel(endpoint),
        "TLS without a client certificate": grpc.aio.secure_channel(
            endpoint, grpc.ssl_channel_credentials(root_certificates=ca)),
    }
    for what, channel in refused.items():
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await status_with(channel)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, what
    for what, client in (("signed by another CA", pki.other_ca_client), ("expired", pki.expired_client)):
        async with connect(endpoint, tls=pki.tls(client)) as c:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await asyncio.wait_for(c.status(), 10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, what

    image = workload["app-a"]
    async with connect(endpoint, tls=pki.tls()) as c:
        assert (await c.status()).node == "e2e-node"
        events = [event async for event in c.apply([SetSpec("over-mtls", 1, (image,))])]
    assert events[-1].status.pinned_image_sets[0].current_generation == 1
    assert image in node.pinned_images()


async def test_the_agent_names_the_server_certificate_it_expects_by_node_name(agent_factory, pki):
    agent, endpoint = tcp_agent(agent_factory, pki, **pki.server_flags(pki.node_server))
    async with connect(endpoint, tls=pki.tls()) as c:  # the certificate does not name 127.0.0.1
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await asyncio.wait_for(c.status(), 10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    async with connect(endpoint, tls=pki.tls(server_name="node-a.pinsvc.test")) as c:
        assert (await c.status()).node == "e2e-node"


async def test_tcp_without_tls_files_is_refused_unless_insecure(agent_factory, pki):
    port = free_port()
    with pytest.raises(RuntimeError) as e:
        agent_factory(**{"server-tcp": f"127.0.0.1:{port}"})
    message = str(e.value)
    assert "exited with 2" in message
    assert "requires mutual TLS: missing server.tls_cert, server.tls_key, server.tls_client_ca" in message
    assert "--server-insecure" in message

    with pytest.raises(RuntimeError) as e:  # an incomplete set names what is missing
        agent_factory(**{"server-tcp": f"127.0.0.1:{port}", "server-tls-cert": str(pki.server.cert),
                         "server-tls-key": str(pki.server.key)})
    assert "missing server.tls_client_ca (--server-tls-client-ca FILE)" in str(e.value)

    missing = pki.ca.cert.parent / "nowhere.pem"
    with pytest.raises(RuntimeError) as e:  # an unreadable file is named, and nothing serves
        agent_factory(**{"server-tcp": f"127.0.0.1:{port}", **pki.server_flags(), "server-tls-client-ca": str(missing)})
    assert "exited with 1" in str(e.value) and f"server.tls_client_ca {missing}: cannot read" in str(e.value)

    agent = agent_factory(**{"server-tcp": f"127.0.0.1:{port}", "server-insecure": True})
    warnings = [line for line in agent.log().splitlines() if " WARNING " in line]
    assert any(f"serving plaintext TCP on 127.0.0.1:{port}" in line for line in warnings), agent.log()

    async with connect(f"127.0.0.1:{port}", insecure=True) as c:
        assert (await c.status()).node == "e2e-node"


# ---- pinctl and pinsvc over mTLS --------------------------------------------------------------

def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=120)


def tls_flags(pki: Pki, client=None) -> list[str]:
    tls = pki.tls(client)
    return ["--tls-cert", tls.cert, "--tls-key", tls.key, "--tls-ca", tls.ca]


def test_pinctl_and_pinsvc_reach_an_agent_over_mtls(agent_factory, pki):
    agent, endpoint = tcp_agent(agent_factory, pki)
    ok = run("pinsvc.coordinator.cli", "node", "status", "--endpoint", endpoint, *tls_flags(pki))
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load(ok.stdout)["status"]

    bare = run("pinsvc.coordinator.cli", "node", "status", "--endpoint", endpoint)
    assert bare.returncode == 2 and "mutual TLS" in bare.stderr, "no silent plaintext to a TCP agent"
    plaintext = run("pinsvc.coordinator.cli", "node", "status", "--endpoint", endpoint, "--insecure")
    assert plaintext.returncode == 1 and "UNAVAILABLE" in plaintext.stderr, "the mTLS listener refuses it"
    expired = run("pinsvc.coordinator.cli", "node", "status", "--endpoint", endpoint,
                  *tls_flags(pki, pki.expired_client))
    assert expired.returncode == 1 and "UNAVAILABLE" in expired.stderr
    partial = run("pinsvc.coordinator.cli", "node", "status", "--endpoint", endpoint, "--tls-cert", str(pki.client.cert))
    assert partial.returncode == 2 and "missing --tls-key, --tls-ca" in partial.stderr

    # global flags before the command work too; and `pinsvc status`
    before = run("pinsvc.coordinator.cli", *tls_flags(pki), "node", "status", "--endpoint", endpoint)
    assert before.returncode == 0, before.stderr
    direct = run("pinsvc", "status", "--endpoint", endpoint, "-o", "json", *tls_flags(pki))
    assert direct.returncode == 0 and '"node": "e2e-node"' in direct.stdout, direct.stderr
    assert run("pinsvc", "status", "--endpoint", endpoint).returncode == 2


def test_pinctl_rollout_over_mtls(agent_factory, node, workload, pki, tmp_path):
    agent, endpoint = tcp_agent(agent_factory, pki)
    port = endpoint.rpartition(":")[2]
    image = workload["oci"]
    role = {"machineconfiguration.openshift.io/role": "worker"}
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump_all([
        {"apiVersion": "machineconfiguration.openshift.io/v1", "kind": "PinnedImageSet",
         "metadata": {"name": "worker-set", "labels": role, "generation": 1},
         "spec": {"pinnedImages": [{"name": image}]}},
        {"apiVersion": "machineconfiguration.openshift.io/v1", "kind": "MachineConfigPool",
         "metadata": {"name": "worker"},
         "spec": {"machineConfigSelector": {"matchLabels": role},
                  "nodeSelector": {"matchLabels": {"node-role.kubernetes.io/worker": ""}}, "maxUnavailable": 1}},
        {"apiVersion": "v1", "kind": "Node",
         "metadata": {"name": "e2e-node", "labels": {"node-role.kubernetes.io/worker": ""}},
         "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                    "conditions": [{"type": "Ready", "status": "True"}]}},
    ]))
    common = ["-f", str(cluster), "--port", port, "-o", "json"]
    refused = run("pinsvc.coordinator.cli", "rollout", *common, "--retries", "1",
                  "--record-dir", str(tmp_path / "refused"))
    assert refused.returncode == 2 and "mutual TLS" in refused.stderr, "no plaintext without --insecure"
    plaintext = run("pinsvc.coordinator.cli", "rollout", *common, "--retries", "1", "--insecure",
                    "--record-dir", str(tmp_path / "plaintext"))
    assert plaintext.returncode == 1 and image not in node.pinned_images(), "the mTLS listener refuses it"

    done = run("pinsvc.coordinator.cli", "rollout", *common, *tls_flags(pki), "--record-dir", str(tmp_path / "ok"))
    assert done.returncode == 0, done.stderr
    assert image in node.pinned_images()
    status = run("pinsvc.coordinator.cli", "status", *common, *tls_flags(pki))
    assert status.returncode == 0, status.stderr


# ---- the unix socket --------------------------------------------------------------------------

def _some_group() -> grp.struct_group:
    for name in ("nogroup", "daemon", "nobody"):
        try:
            return grp.getgrnam(name)
        except KeyError:
            continue
    pytest.skip("no nogroup/daemon/nobody group on this host")


def test_unix_socket_mode_and_group(agent_factory, pki):
    group = _some_group()
    agent = agent_factory(**{"server-socket-group": group.gr_name, "server-socket-mode": "0660"})
    st = agent.socket.stat()
    assert (st.st_gid, stat.S_IMODE(st.st_mode), st.st_uid) == (group.gr_gid, 0o660, 0)

    by_gid = agent_factory(**{"server-socket-group": str(group.gr_gid)})
    st = by_gid.socket.stat()
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (group.gr_gid, 0o600)

    with pytest.raises(RuntimeError) as e:
        agent_factory(**{"server-socket-group": "no-such-group-pinsvc"})
    assert "server.socket_group 'no-such-group-pinsvc': no such group" in str(e.value)
