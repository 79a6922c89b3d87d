"""A real Jaeger v2 (`jaeger`, built by `scripts/install-peers.sh`) run as a test peer.

Jaeger v2 is an OpenTelemetry Collector distribution; `Jaeger` writes its collector config
(see `render_config`): an OTLP receiver (gRPC and HTTP), the batch processor, the
`jaeger_storage_exporter` into an in-memory store, and the `jaeger_query` extension serving
the HTTP query API and the UI. Every listener binds 127.0.0.1 on a free port; the collector's
own telemetry (Prometheus metrics on :8888 by default, internal traces) is turned off, so
nothing else listens and two instances never collide.

    with Jaeger(tmp_path) as jaeger:
        exporter = OTLPSpanExporter(endpoint=jaeger.otlp_endpoint, insecure=True)
        ...
        trace = jaeger.wait_for_spans(trace_id, lambda t: len(t["spans"]) >= 3)

Reading traces back uses the HTTP JSON API that Jaeger's own UI uses (`/api/services`,
`/api/traces?service=...`, `/api/traces/{id}`). It returns the Jaeger trace model: a trace is
`{"traceID", "spans": [...], "processes": {processID: {"serviceName", "tags"}}}`, a span has
`spanID`, `operationName`, `references` (`CHILD_OF` the parent), `startTime`/`duration` (µs),
`tags` (`[{key, type, value}]`; an OTel error status shows as `error=true` and
`otel.status_code=ERROR`, its description as `otel.status_description`), `logs` (span events)
and `processID`. `spans(trace)` flattens that into one plain dict per span. The OTLP-shaped
`/api/v3/traces` API exists too; we use the older one because its JSON is simpler to assert
on and is what the UI shows.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import psutil

from devenv.paths import bin_path
from devenv.process import tail, terminate

START_TIMEOUT = 20.0
"""Seconds `start()` waits for the query API to answer."""
STOP_TIMEOUT = 5.0
"""Seconds `stop()` waits after SIGTERM before it sends SIGKILL."""
LOG_TAIL_LINES = 30
MAX_TRACES = 100_000
"""Traces the in-memory store keeps (oldest evicted first)."""
DEFAULT_LIMIT = 100


class JaegerError(RuntimeError):
    """Jaeger could not be started, is used in the wrong state, or a query failed."""


class Jaeger:
    """One `jaeger --config` process with its config and log under `root`.

    `ui_assets` is a directory holding a built Jaeger UI (`index.html` and `static/`); the
    binary built from the Go module embeds only a placeholder page, so without it `ui_url`
    serves that placeholder (the query API works either way).
    """

    def __init__(
        self,
        root: Path,
        *,
        ui_assets: Path | None = None,
        binary: Path | None = None,
        log_level: str = "info",
    ) -> None:
        self.root = Path(root)
        self.ui_assets = Path(ui_assets) if ui_assets is not None else None
        self._binary = binary
        self.log_level = log_level
        self._ports: dict[str, int] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None

    # -- where things are -------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        """The collector config Jaeger runs with (JSON, which is valid YAML)."""
        return self.root / "config.yaml"

    @property
    def log_path(self) -> Path:
        """Jaeger's stdout and stderr."""
        return self.root / "jaeger.log"

    @property
    def ports(self) -> dict[str, int]:
        """The loopback ports, fixed at the first `start()`: `otlp_grpc`, `otlp_http`,
        `query_http`, `query_grpc`."""
        if self._ports is None:
            raise JaegerError(f"jaeger under {self.root} was never started; no ports yet")
        return dict(self._ports)

    @property
    def otlp_endpoint(self) -> str:
        """`http://127.0.0.1:PORT`, the OTLP/gRPC receiver (an `OTEL_EXPORTER_OTLP_ENDPOINT`)."""
        return f"http://127.0.0.1:{self.ports['otlp_grpc']}"

    @property
    def otlp_http_endpoint(self) -> str:
        """`http://127.0.0.1:PORT`, the OTLP/HTTP receiver (traces at `/v1/traces`)."""
        return f"http://127.0.0.1:{self.ports['otlp_http']}"

    @property
    def query_url(self) -> str:
        """`http://127.0.0.1:PORT`, the query service: HTTP API under `/api`, UI at `/`."""
        return f"http://127.0.0.1:{self.ports['query_http']}"

    @property
    def ui_url(self) -> str:
        """The UI's search page."""
        return f"{self.query_url}/search"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise JaegerError("jaeger is not running")
        return self._process.pid

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Write the config, start Jaeger and wait until `GET /api/services` answers 200.

        The first call picks free ports; later calls (after `stop()`) reuse them (the
        in-memory store starts empty again). Raises `MissingBinary` when the binary is not
        installed, and `JaegerError` with the log tail when Jaeger exits or is not ready in
        time.
        """
        if self.running:
            raise JaegerError(f"jaeger at {self.query_url} is already running")
        binary = self._binary or bin_path("jaeger")
        if self.ui_assets is not None and not (self.ui_assets / "index.html").is_file():
            raise JaegerError(f"no index.html in the UI assets directory {self.ui_assets}")
        if self._ports is None:
            self._ports = dict(zip(("otlp_grpc", "otlp_http", "query_http", "query_grpc"), _free_ports(4)))
        self.root.mkdir(parents=True, exist_ok=True)
        config = render_config(self._ports, ui_assets=self.ui_assets, log_level=self.log_level)
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(binary), "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C meant for the caller must not reach it
                cwd=self.root,
            )
        self._client = httpx.Client(base_url=self.query_url, timeout=5.0)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop Jaeger: SIGTERM, then SIGKILL after `STOP_TIMEOUT`. Idempotent."""
        process, self._process = self._process, None
        client, self._client = self._client, None
        if client is not None:
            client.close()
        if process is None or process.poll() is not None:
            return
        terminate(process, STOP_TIMEOUT)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last `lines` lines of the Jaeger log ("" when there is none)."""
        return tail(self.log_path, lines)

    def __enter__(self) -> Jaeger:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the query API ----------------------------------------------------------------

    def services(self) -> list[str]:
        """The service names Jaeger has spans from, sorted."""
        return sorted(self._get("/api/services").get("data") or [])

    def traces(
        self,
        service: str,
        *,
        lookback: str | timedelta = "1h",
        limit: int = DEFAULT_LIMIT,
        operation: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Traces with a span of `service` that started within `lookback` (`"90s"`,
        `"15m"`, `"1h"`, `"2d"` or a timedelta), newest first, at most `limit`; optionally
        only those with a span named `operation` and spans carrying all `tags`."""
        end = time.time_ns() // 1000
        start = end - int(_duration(lookback).total_seconds() * 1_000_000)
        params: dict[str, Any] = {"service": service, "start": start, "end": end, "limit": limit}
        if operation is not None:
            params["operation"] = operation
        if tags:
            params["tags"] = json.dumps(tags)
        data = self._get("/api/traces", params=params).get("data") or []
        return sorted(data, key=_trace_start, reverse=True)

    def trace(self, trace_id: str | int) -> dict[str, Any]:
        """The trace `trace_id` (32 hex digits, or the OTel SDK's int). Raises
        `JaegerError` when Jaeger does not have it (yet)."""
        data = self._get(f"/api/traces/{format_trace_id(trace_id)}").get("data") or []
        if not data:
            raise JaegerError(f"trace {format_trace_id(trace_id)} not found")
        return data[0]

    def find_trace(self, trace_id: str | int) -> dict[str, Any] | None:
        """Like `trace`, but None when Jaeger does not have it."""
        response = self._request(f"/api/traces/{format_trace_id(trace_id)}")
        if response.status_code == 404:
            return None
        data = self._json(response).get("data") or []
        return data[0] if data else None

    def wait_for_spans(
        self,
        trace_id: str | int,
        predicate: Callable[[dict[str, Any]], bool] = lambda trace: True,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Poll the trace until `predicate(trace)` holds and return it.

        Spans of one trace reach Jaeger in batches (per exporter and per batch processor),
        so a test waits for what it needs, e.g. `lambda t: len(t["spans"]) >= 5`. Raises
        `JaegerError` after `timeout` seconds, saying how many spans were there.
        """
        deadline = time.monotonic() + timeout
        trace: dict[str, Any] | None = None
        while True:
            trace = self.find_trace(trace_id)
            if trace is not None and predicate(trace):
                return trace
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        have = "no such trace" if trace is None else f"{len(trace['spans'])} spans: " + ", ".join(
            sorted(f"{s['service']}/{s['name']}" for s in spans(trace))
        )
        raise JaegerError(
            f"trace {format_trace_id(trace_id)} did not satisfy the predicate within "
            f"{timeout:g} s ({have})"
        )

    # -- internals --------------------------------------------------------------------

    def _request(self, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
        if self._client is None:
            raise JaegerError(f"jaeger under {self.root} is not running")
        try:
            return self._client.get(path, params=params)
        except httpx.TransportError as e:
            raise JaegerError(f"GET {self.query_url}{path}: {e!r}") from e

    def _get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._json(self._request(path, params))

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code != 200:
            raise JaegerError(
                f"GET {response.request.url}: HTTP {response.status_code}: {response.text[:500]}"
            )
        return response.json()

    def _listens_on(self, port: int) -> bool:
        return self._process is not None and port in _listening_ports(self._process.pid)

    def _wait_ready(self) -> None:
        assert self._process is not None and self._client is not None
        deadline = time.monotonic() + START_TIMEOUT
        last = "no answer"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise JaegerError(
                    f"jaeger exited with status {self._process.returncode} during start; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                status = self._client.get("/api/services", timeout=1.0).status_code
            except httpx.TransportError as e:
                last = repr(e)
            else:
                # Answered by *this* process, not by another Jaeger already on the port.
                if status == 200 and self._listens_on(self._ports["query_http"]):
                    return
                last = f"HTTP {status}"
            time.sleep(0.05)
        raise JaegerError(
            f"jaeger query API at {self.query_url} not ready after {START_TIMEOUT:g} s ({last}); "
            f"log {self.log_path}:\n{self.log_tail()}"
        )


def _listening_ports(pid: int) -> set[int]:
    try:
        return {c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN}
    except psutil.Error:
        return set()


def render_config(
    ports: dict[str, int], *, ui_assets: Path | None = None, log_level: str = "info"
) -> dict[str, Any]:
    """The Jaeger v2 (OpenTelemetry Collector) config as a dict.

    Keys as in Jaeger v1.76's `cmd/jaeger/internal/all-in-one.yaml` and `config.yaml`, and
    the collector's `service.telemetry` (otelconftelemetry, collector v0.140): a metrics or
    traces level of `none` makes no Prometheus listener and no exporter.
    """
    loopback = "127.0.0.1"
    query: dict[str, Any] = {
        "storage": {"traces": "memstore"},
        "enable_tracing": False,  # on by default in v2: the query service would trace itself
        "http": {"endpoint": f"{loopback}:{ports['query_http']}"},
        "grpc": {"endpoint": f"{loopback}:{ports['query_grpc']}"},
    }
    if ui_assets is not None:
        query["ui"] = {"assets_path": str(ui_assets)}
    return {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query"],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["batch"],
                    "exporters": ["jaeger_storage_exporter"],
                }
            },
            "telemetry": {
                "resource": {"service.name": "jaeger"},
                "metrics": {"level": "none"},
                "traces": {"level": "none"},
                "logs": {"level": log_level},
            },
        },
        "extensions": {
            "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": MAX_TRACES}}}},
            "jaeger_query": query,
        },
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": f"{loopback}:{ports['otlp_grpc']}"},
                    "http": {"endpoint": f"{loopback}:{ports['otlp_http']}"},
                }
            }
        },
        # Spans are queryable once a batch is written: a short timeout keeps tests quick.
        "processors": {"batch": {"timeout": "100ms"}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
    }


def format_trace_id(trace_id: str | int) -> str:
    """32 lowercase hex digits, as Jaeger's API writes trace ids."""
    if isinstance(trace_id, int):
        return format(trace_id, "032x")
    return trace_id.lower().rjust(32, "0")


def format_span_id(span_id: str | int) -> str:
    """16 lowercase hex digits, as Jaeger's API writes span ids."""
    if isinstance(span_id, int):
        return format(span_id, "016x")
    return span_id.lower().rjust(16, "0")


def spans(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """The spans of a trace from the query API as plain dicts, in start order:
    `id`, `parent_id` (None for a root), `name`, `service`, `start_us`, `duration_us`,
    `tags` (key -> value), `error` (bool), `events` (name and fields per span event)."""
    processes = trace.get("processes") or {}
    out = []
    for span in sorted(trace.get("spans") or [], key=lambda s: s.get("startTime", 0)):
        parent = next(
            (r["spanID"] for r in span.get("references") or [] if r.get("refType") == "CHILD_OF"),
            None,
        )
        tags = {t["key"]: t["value"] for t in span.get("tags") or []}
        events = []
        for log in span.get("logs") or []:
            fields = {f["key"]: f["value"] for f in log.get("fields") or []}
            events.append({"name": fields.get("event"), "fields": fields})
        out.append(
            {
                "id": span["spanID"],
                "parent_id": parent,
                "name": span["operationName"],
                "service": processes.get(span.get("processID"), {}).get("serviceName"),
                "start_us": span.get("startTime"),
                "duration_us": span.get("duration"),
                "tags": tags,
                "error": tags.get("error") is True or tags.get("otel.status_code") == "ERROR",
                "events": events,
            }
        )
    return out


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: str | timedelta) -> timedelta:
    if isinstance(value, timedelta):
        return value
    match = _DURATION.match(value.strip())
    if not match:
        raise ValueError(f"bad lookback {value!r}: expected e.g. '90s', '15m', '1h', '2d'")
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def _trace_start(trace: dict[str, Any]) -> int:
    return min((s.get("startTime", 0) for s in trace.get("spans") or []), default=0)


def _free_ports(count: int) -> list[int]:
    """`count` distinct ports on 127.0.0.1 that the kernel reports free (bound to port 0
    together, then released)."""
    with contextlib.ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
