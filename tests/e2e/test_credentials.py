"""Pull-secret credentials never leak (issue 5).

Pins with the kubelet pull secret (htpasswd user `puller`) from a registry that requires
basic auth, with JSON logs at debug level, tracing to a real Jaeger and metrics on, and with
failures (an image the registry does not have, sized by the agent itself and pulled by
CRI-O; a refused password). Then every output is searched together: the agent's logs, every
span (tags, events, process tags) Jaeger stored for the agent, /metrics, the error messages
and events of the API, GetStatus, the state file and the drop-in. None may hold the
password, `user:password` or its base64 form (the pull secret's `auth`).
"""

from __future__ import annotations

import asyncio
import base64
import json

import grpc
import httpx
import pytest

from pinsvc_client import SetSpec
from devenv import images as fixture_images
from devenv.jaeger import spans
from tests.e2e.conftest import AUTH_PASSWORD, AUTH_USER, apply
from tests.e2e.helpers import final_status, free_port, set_status

NODE = "credentials-node"
WRONG_PASSWORD = "wr0ng-Pa55-also-secret"


def secret_forms(user: str, password: str) -> list[str]:
    pair = f"{user}:{password}"
    return [password, pair, base64.b64encode(pair.encode()).decode()]


def write_secret(path, host: str, user: str, password: str) -> None:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))


def leaks(text: str) -> list[str]:
    return [form for form in secret_forms(AUTH_USER, AUTH_PASSWORD) + secret_forms(AUTH_USER, WRONG_PASSWORD)
            if form in text]


@pytest.fixture(scope="module")
def private_images(auth_registry) -> list[str]:
    images = [fixture_images.build_image(f"team/private-{n}", [fixture_images.make_layer(f"private-{n}", 64 << 10)])
              for n in ("a", "b")]
    return asyncio.run(fixture_images.push_many(auth_registry.host, images, auth=(AUTH_USER, AUTH_PASSWORD)))


@pytest.mark.timeout(180)
async def test_credentials_never_appear_in_logs_traces_metrics_errors_state_or_dropin(
        agent_factory, node, auth_registry, private_images, jaeger, tmp_path):
    private_image, other_image = private_images
    secret, wrong = tmp_path / "config.json", tmp_path / "wrong.json"
    write_secret(secret, auth_registry.host, AUTH_USER, AUTH_PASSWORD)
    write_secret(wrong, auth_registry.host, AUTH_USER, WRONG_PASSWORD)
    assert leaks(secret.read_text()) and leaks(wrong.read_text()), "the search finds what the secrets hold"
    missing = private_image.split("@")[0] + "@sha256:" + "ab" * 32
    metrics = f"127.0.0.1:{free_port()}"
    outputs: dict[str, str] = {}  # what was searched, by where it came from

    async def run(agent, spec: SetSpec, expect: grpc.StatusCode | None, label: str):
        events, error = await asyncio.wait_for(apply(agent, spec), 60)
        assert (error.code() if error else None) == expect, error
        outputs[f"{label}: events"] = "\n".join(str(e) for e in events)
        if error is not None:
            outputs[f"{label}: error"] = error.details()
        return events, error

    agent = agent_factory(**{
        "node-name": NODE, "registry-insecure": auth_registry.host,
        "registry-pull-secret": str(tmp_path / "none.json"),
        "log-format": "json", "log-level": "debug", "otlp-endpoint": jaeger.otlp_endpoint,
        "server-metrics": metrics})

    def restart(**flags) -> None:
        """The same agent (state, log) restarted with other flags."""
        agent.flags.update(flags)
        agent.start()

    async def collect(agent, label: str) -> None:
        async with agent.client() as client:
            outputs[f"{label}: GetStatus"] = str(await client.status())
            try:
                await client.check_space([private_image, missing])
            except grpc.aio.AioRpcError as e:
                outputs[f"{label}: CheckSpace error"] = e.details()
        async with httpx.AsyncClient() as http:
            outputs[f"{label}: /metrics"] = (await http.get(f"http://{metrics}/metrics")).text
        agent.stop()  # flushes its spans to Jaeger
        outputs[f"{label}: state file"] = (agent.workdir / "state" / "state.json").read_text()

    # 0. Without a pull secret the registry refuses, and the error names the image and registry.
    events, error = await run(agent, SetSpec("private", 1, (private_image,)), grpc.StatusCode.PERMISSION_DENIED,
                              "no pull secret")
    assert private_image in error.details() and auth_registry.host in error.details()
    await collect(agent, "no pull secret")

    # 1. With the space check: the agent reads manifests itself, with the credentials.
    restart(**{"registry-pull-secret": str(secret)})
    await run(agent, SetSpec("private", 1, (private_image,)), None, "pin")
    assert private_image in node.pinned_images()
    events, error = await run(agent, SetSpec("private", 2, (private_image, missing)), grpc.StatusCode.NOT_FOUND,
                              "missing, sized by the agent")
    assert missing in error.details() and "manifest unknown" in error.details()
    await collect(agent, "space check")

    # 2. Without it: CRI-O pulls the missing image with the credentials (CRI AuthConfig).
    restart(**{"space-enabled": False})
    events, error = await run(agent, SetSpec("private", 3, (private_image, missing)), grpc.StatusCode.NOT_FOUND,
                              "missing, pulled by CRI-O")
    assert "image not found in the registry" in error.details()
    assert "not found" in set_status(final_status(events), "private").last_failed_generation_error
    await collect(agent, "runtime pull")

    # 3. A password the registry refuses: in CRI-O's pull, then in the agent's manifest GET.
    restart(**{"registry-pull-secret": str(wrong)})
    events, error = await run(agent, SetSpec("private", 4, (private_image, other_image)),
                              grpc.StatusCode.PERMISSION_DENIED, "refused password, pulled by CRI-O")
    assert other_image in error.details() and "the registry refused access" in error.details()
    await collect(agent, "refused password, pull")
    restart(**{"space-enabled": True})
    events, error = await run(agent, SetSpec("private", 5, (private_image, other_image)),
                              grpc.StatusCode.PERMISSION_DENIED, "refused password, sized by the agent")
    assert other_image in error.details()
    print(f"refused password in the space check: {error.details()}")
    await collect(agent, "refused password, space check")

    outputs["agent log"] = agent.log()
    dropin = node.dropin_dir / "50-pinned-images"
    outputs["drop-in"] = dropin.read_text()
    assert private_image in outputs["drop-in"], "generation 1 stays pinned"

    # Every span the agents sent: all tags, events (span logs) and process tags.
    traces = jaeger.traces("pinsvc-agent", lookback="15m", limit=1000)
    ours = [t for t in traces if any({tag["key"]: tag["value"] for tag in p["tags"]}.get("host.name") == NODE
                                     for p in t["processes"].values())]
    assert ours, "the agents' traces reached Jaeger"
    all_spans = [s for t in ours for s in spans(t)]
    assert any(s["name"] == "GET /v2/{name}/manifests/{reference}" and s["tags"]["http.response.status_code"] == 401
               for s in all_spans), "the agent's manifest requests, challenged, then authenticated"
    assert any(s["name"] == "pull" and s["tags"]["pinsvc.image"] == missing and s["error"] for s in all_spans)
    assert any("refused access" in s["tags"].get("otel.status_description", "") for s in all_spans)
    outputs["Jaeger traces"] = json.dumps(ours)

    json_lines = [line for line in outputs["agent log"].splitlines() if line.startswith("{")]
    assert json_lines and all(json.loads(line)["message"] is not None for line in json_lines)
    assert missing in outputs["agent log"] and "refused access" in outputs["agent log"], "failures are logged"
    found = {label: leaks(text) for label, text in outputs.items() if leaks(text)}
    assert not found, f"credentials leaked: {found}"
    print(f"searched {len(outputs)} outputs ({sum(len(t) for t in outputs.values())} characters, "
          f"{len(all_spans)} spans in {len(ours)} traces): no credential")
