"""The Jaeger test peer: a real Jaeger v2, spans sent with the OpenTelemetry SDK over
OTLP/gRPC and read back through the query API."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import psutil
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from devenv.jaeger import (
    Jaeger,
    JaegerError,
    _duration,
    format_span_id,
    format_trace_id,
    render_config,
    spans,
)
from devenv.paths import MissingBinary, bin_path

pytestmark = pytest.mark.timeout(30)

PORTS = {"otlp_grpc": 1, "otlp_http": 2, "query_http": 3, "query_grpc": 4}


def _require_binary() -> None:
    """Skip when the binary is not installed; under CI (CI=true) that is an error."""
    try:
        bin_path("jaeger")
    except MissingBinary as e:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    _require_binary()
    with Jaeger(tmp_path_factory.mktemp("jaeger")) as instance:
        yield instance


def _provider(jaeger: Jaeger, service: str) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=jaeger.otlp_endpoint, insecure=True, timeout=5)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=100))
    return provider


@pytest.fixture(scope="module")
def sent(jaeger: Jaeger) -> dict:
    """One trace across two services, the second joined through W3C trace context as a
    gRPC server would: coordinator rollout -> pool -> (agent) apply -> pull (error), verify."""
    suffix = secrets.token_hex(4)
    coordinator_name, agent_name = f"test-coordinator-{suffix}", f"test-agent-{suffix}"
    coordinator, agent = _provider(jaeger, coordinator_name), _provider(jaeger, agent_name)
    ids: dict = {"coordinator": coordinator_name, "agent": agent_name}
    ctracer, atracer = coordinator.get_tracer("test"), agent.get_tracer("test")
    with ctracer.start_as_current_span("rollout", attributes={"pinsvc.pools": 2}) as rollout:
        ids["rollout"] = rollout.get_span_context().span_id
        ids["trace"] = rollout.get_span_context().trace_id
        with ctracer.start_as_current_span("pool", attributes={"pinsvc.pool": "worker"}) as pool:
            ids["pool"] = pool.get_span_context().span_id
            carrier: dict[str, str] = {}
            inject(carrier)
    with atracer.start_as_current_span(
        "apply", context=extract(carrier), kind=SpanKind.SERVER, attributes={"pinsvc.node": "node-a"}
    ) as apply:
        ids["apply"] = apply.get_span_context().span_id
        with atracer.start_as_current_span(
            "pull",
            attributes={"pinsvc.image": "reg/x@sha256:" + "ab" * 32, "pinsvc.attempt": 3, "pinsvc.cached": False},
        ) as pull:
            ids["pull"] = pull.get_span_context().span_id
            pull.add_event("retry", {"pinsvc.backoff_s": 0.5})
            pull.set_status(Status(StatusCode.ERROR, "manifest unknown"))
        with atracer.start_as_current_span("verify") as verify:
            ids["verify"] = verify.get_span_context().span_id
    for provider in (coordinator, agent):
        assert provider.force_flush(5_000)
        provider.shutdown()
    return ids


@pytest.fixture(scope="module")
def received(jaeger: Jaeger, sent: dict) -> dict:
    return jaeger.wait_for_spans(sent["trace"], lambda t: len(t["spans"]) >= 5, timeout=10)


def test_config_listens_on_loopback_only_and_turns_off_own_telemetry() -> None:
    config = render_config(PORTS, ui_assets=Path("/ui"))
    text = json.dumps(config)
    assert "0.0.0.0" not in text and "localhost" not in text
    endpoints = [
        config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"],
        config["receivers"]["otlp"]["protocols"]["http"]["endpoint"],
        config["extensions"]["jaeger_query"]["http"]["endpoint"],
        config["extensions"]["jaeger_query"]["grpc"]["endpoint"],
    ]
    assert endpoints == ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"]
    assert config["service"]["telemetry"]["metrics"] == {"level": "none"}
    assert config["service"]["telemetry"]["traces"] == {"level": "none"}
    assert config["extensions"]["jaeger_query"]["ui"] == {"assets_path": "/ui"}
    assert "ui" not in render_config(PORTS)["extensions"]["jaeger_query"]


def test_ids_and_lookback_parsing() -> None:
    assert format_trace_id(0xABC) == "0" * 29 + "abc"
    assert format_trace_id("ABC") == "0" * 29 + "abc"
    assert format_span_id(255) == "00000000000000ff"
    assert _duration("90s") == timedelta(seconds=90)
    assert _duration("15m") == timedelta(minutes=15)
    assert _duration("2d") == timedelta(days=2)
    assert _duration(timedelta(hours=1)) == timedelta(hours=1)
    with pytest.raises(ValueError, match="bad lookback"):
        _duration("1 hour")


def test_endpoints_and_only_loopback_listeners(jaeger: Jaeger) -> None:
    ports = jaeger.ports
    assert jaeger.otlp_endpoint == f"http://127.0.0.1:{ports['otlp_grpc']}"
    assert jaeger.query_url == f"http://127.0.0.1:{ports['query_http']}"
    assert jaeger.ui_url == f"{jaeger.query_url}/search"
    listening = {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(jaeger.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }
    assert listening == {("127.0.0.1", port) for port in ports.values()}


def test_spans_read_back_with_services_names_parents_errors_and_attributes(
    jaeger: Jaeger, sent: dict, received: dict
) -> None:
    assert received["traceID"] == format_trace_id(sent["trace"])
    by_name = {s["name"]: s for s in spans(received)}
    assert sorted(by_name) == ["apply", "pool", "pull", "rollout", "verify"]
    assert {n: s["service"] for n, s in by_name.items()} == {
        "rollout": sent["coordinator"],
        "pool": sent["coordinator"],
        "apply": sent["agent"],
        "pull": sent["agent"],
        "verify": sent["agent"],
    }
    assert {n: s["id"] for n, s in by_name.items()} == {n: format_span_id(sent[n]) for n in by_name}
    parents = {n: s["parent_id"] for n, s in by_name.items()}
    assert parents == {
        "rollout": None,
        "pool": format_span_id(sent["rollout"]),
        "apply": format_span_id(sent["pool"]),
        "pull": format_span_id(sent["apply"]),
        "verify": format_span_id(sent["apply"]),
    }
    pull = by_name["pull"]
    assert pull["error"] is True
    assert pull["tags"]["otel.status_code"] == "ERROR"
    assert pull["tags"]["otel.status_description"] == "manifest unknown"
    assert pull["tags"]["pinsvc.attempt"] == 3
    assert pull["tags"]["pinsvc.cached"] is False
    assert pull["tags"]["pinsvc.image"].endswith("ab" * 32)
    assert [e["name"] for e in pull["events"]] == ["retry"]
    assert pull["events"][0]["fields"]["pinsvc.backoff_s"] == 0.5
    assert [n for n, s in by_name.items() if s["error"]] == ["pull"]
    assert by_name["apply"]["tags"]["span.kind"] == "server"
    assert by_name["rollout"]["tags"]["pinsvc.pools"] == 2
    assert all(s["duration_us"] >= 0 and s["start_us"] > 0 for s in by_name.values())


def test_services_and_search(jaeger: Jaeger, sent: dict, received: dict) -> None:
    assert {sent["coordinator"], sent["agent"]} <= set(jaeger.services())
    found = jaeger.traces(sent["agent"], lookback="5m", limit=10)
    assert [t["traceID"] for t in found] == [format_trace_id(sent["trace"])]
    assert jaeger.traces(sent["agent"], operation="pull", tags={"pinsvc.attempt": "3"})
    assert jaeger.traces(sent["agent"], tags={"pinsvc.attempt": "4"}) == []
    assert jaeger.traces(f"no-such-service-{secrets.token_hex(4)}") == []
    assert jaeger.trace(format_trace_id(sent["trace"]).upper())["traceID"] == received["traceID"]


def test_unknown_trace(jaeger: Jaeger) -> None:
    missing = secrets.randbits(128) | 1
    assert jaeger.find_trace(missing) is None
    with pytest.raises(JaegerError, match="not found"):
        jaeger.trace(missing)
    with pytest.raises(JaegerError, match="no such trace"):
        jaeger.wait_for_spans(missing, timeout=0.3)


def test_ui_is_served(jaeger: Jaeger) -> None:
    response = httpx.get(jaeger.query_url + "/", timeout=5)
    assert response.status_code == 200 and "<html" in response.text.lower()


def test_a_second_jaeger_on_taken_ports_fails_with_the_log_tail(
    jaeger: Jaeger, tmp_path: Path
) -> None:
    other = Jaeger(tmp_path / "other")
    other._ports = jaeger.ports  # the running instance holds them
    with pytest.raises(JaegerError, match=r"(?s)exited with status.*address already in use"):
        other.start()
    assert not other.running
    assert jaeger.services()  # the first one is unaffected


def test_ui_assets_directory_is_served_with_jaegers_substitutions(tmp_path: Path) -> None:
    """`ui_assets` maps to `jaeger_query.ui.assets_path`: Jaeger serves that directory and
    fills in the placeholders of its index.html (a stand-in here; see docs/jaeger.md)."""
    _require_binary()
    assets = tmp_path / "ui"
    (assets / "static").mkdir(parents=True)
    (assets / "index.html").write_text(
        "<html><script>JAEGER_STORAGE_CAPABILITIES = DEFAULT_STORAGE_CAPABILITIES;</script>"
        "stand-in UI</html>"
    )
    (assets / "static" / "app.js").write_text("console.log('ui');\n")
    with Jaeger(tmp_path / "jaeger", ui_assets=assets) as jaeger:
        index = httpx.get(jaeger.ui_url, timeout=5)  # a client-side route gets index.html
        assert index.status_code == 200 and "stand-in UI" in index.text
        assert "DEFAULT_STORAGE_CAPABILITIES" not in index.text
        assert httpx.get(jaeger.query_url + "/static/app.js", timeout=5).text == "console.log('ui');\n"
    with pytest.raises(JaegerError, match="no index.html"):
        Jaeger(tmp_path / "bad", ui_assets=tmp_path / "static-missing").start()
