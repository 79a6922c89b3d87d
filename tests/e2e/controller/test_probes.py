"""The controller's /healthz, /readyz and /metrics, asked over HTTP as the kubelet and
Prometheus ask them, on a real leader and standby against the real API server (with the
ServiceAccount's permissions), and on a controller whose API server does not answer."""

from __future__ import annotations

import re

import httpx

from devenv import cluster
from devenv.controller import TEST_LEASE, ControllerProcess
from tests.e2e.controller.conftest import NODES, node_objects, wait_for
from tests.e2e.controller.test_controller import all_current, documented_set


def get(controller, path: str) -> httpx.Response | None:
    try:
        return httpx.get(controller.http + path, timeout=5)
    except httpx.TransportError:
        return None


def samples(controller) -> dict[str, float]:
    """The controller's /metrics as {'name{labels}': value}, parsed as Prometheus text."""
    text = get(controller, "/metrics").text
    return {name: float(value) for name, value in re.findall(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", text, re.M)}


def test_leader_and_standby_are_ready_and_the_metrics_follow_a_rollout(kube, nodes, controllers, tmp_path):
    workers = NODES[:3]
    kube.apply(node_objects(nodes, workers) + [cluster.pool("worker", max_unavailable=1)])
    leader = controllers("probe-a")
    assert leader.wait_for_log("caches synced"), leader.log()
    wait_for("the leader ready", lambda: (r := get(leader, "/readyz")) is not None and r.status_code == 200)
    assert get(leader, "/readyz").text == "ok: leading; caches synced\n"
    assert get(leader, "/healthz").status_code == 200
    standby = controllers("probe-b")
    assert standby.wait_for_log("campaigns for the Lease"), standby.log()
    ready = wait_for("the standby ready", lambda: (r := get(standby, "/readyz")) is not None and r.status_code == 200
                     and r.text)
    assert ready == "ok: standby; the API server answers\n"
    before = samples(leader)
    assert before["pinsvc_controller_leader"] == 1 and before["pinsvc_controller_caches_synced"] == 1
    assert samples(standby)["pinsvc_controller_leader"] == 0
    assert samples(standby)["pinsvc_controller_caches_synced"] == 0
    assert any(k.startswith("pinsvc_build_info{") for k in before)
    assert not any(k.endswith("_created") for k in before)  # no stray gauges

    path = tmp_path / "probe-set.yaml"
    path.write_text(documented_set("probe-pinned-images", [nodes.images["app-a"]]))
    kube.kubectl("apply", "-f", str(path))
    wait_for("every worker pinned", lambda: all_current(kube, workers, "probe-pinned-images", 1))
    after = wait_for("the attempts counted", lambda: (m := samples(leader))
                     and m['pinsvc_controller_applies_total{result="updated"}'] + m[
                         'pinsvc_controller_applies_total{result="already_current"}'] >= 3 and m)
    # maxUnavailable 1: the others queued behind the first; all done now
    assert after['pinsvc_controller_applies_total{result="updated"}'] == 3, after
    assert after['pinsvc_controller_applies_total{result="failed"}'] == 0
    assert after["pinsvc_controller_queue_depth"] == 0 and after["pinsvc_controller_nodes_applying"] == 0
    passes = sum(v for k, v in after.items() if k.startswith("pinsvc_controller_reconciles_total"))
    assert passes > sum(v for k, v in before.items() if k.startswith("pinsvc_controller_reconciles_total"))
    assert after["pinsvc_controller_reconcile_duration_seconds_count"] >= passes

    leader.stop()  # released: the standby leads, lists and is ready as the leader
    wait_for("the standby leading", lambda: samples(standby)["pinsvc_controller_leader"] == 1, timeout=30)
    wait_for("the new leader ready", lambda: get(standby, "/readyz").text == "ok: leading; caches synced\n")


def test_not_ready_while_the_api_server_does_not_answer(kube, tmp_path):
    """Alive (a restart would not help), not ready, saying why."""
    dead = tmp_path / "dead.kubeconfig"
    dead.write_text(kube.kubeconfig.read_text().replace(kube.server, "https://127.0.0.1:1"))
    controller = ControllerProcess(tmp_path, dead, *TEST_LEASE, identity="probe-dead").start()
    try:
        assert controller.wait_for_log("campaigns for the Lease"), controller.log()
        wait_for("/healthz answering", lambda: (r := get(controller, "/healthz")) is not None and r.status_code == 200)
        ready = wait_for("a Lease attempt failed", lambda: "unreachable" in get(controller, "/readyz").text
                         and get(controller, "/readyz"))
        assert ready.status_code == 503, ready.text
        assert ready.text.startswith("not ready: standby; Lease pinsvc/pinsvc-controller not read: API server "
                                     "unreachable"), ready.text
        assert samples(controller)["pinsvc_controller_leader"] == 0
    finally:
        controller.stop()
