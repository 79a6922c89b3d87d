"""OpenTelemetry tracing, off by default at (almost) no cost, configured as the OpenTelemetry
specification says.

Tracing is on when an OTLP endpoint is known (the `--otlp-endpoint` flag, else
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`) and not turned off
(`OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none`). The protocol is
`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` (the default,
as in every earlier pinsvc) or `http/protobuf` (the flag's or OTEL_EXPORTER_OTLP_ENDPOINT's
URL is then a base: spans go to its `/v1/traces`; the TRACES variable is used as it is); any
other value stops the program with an error naming it, never silently ignored. The resource
holds the program's defaults (`service.name`, `service.version`, and what the caller adds,
e.g. the agent's `host.name` and `k8s.node.name`) under what `OTEL_RESOURCE_ATTRIBUTES` and
`OTEL_SERVICE_NAME` say: the environment wins, OTEL_SERVICE_NAME over both. Export goes
through a batch processor; sampling is parent-based (the SDK default, or what
OTEL_TRACES_SAMPLER says); `shutdown()` flushes. W3C trace context travels in gRPC metadata
through the OpenTelemetry gRPC interceptors (coordinator -> agent -> CRI runtime).

Attribute names follow the semantic conventions where one exists (`container.image.name`,
`oci.manifest.digest`, `k8s.node.name`, `file.path`, `error.type`; on CLIENT spans
`server.address`/`server.port`, and for HTTP `http.request.method`, `url.full`,
`http.response.status_code`); pinsvc's own are under `pinsvc.`.

When off, nothing of the SDK is imported and `span()` is a shared no-op context manager.
Never put credentials in attributes: only image references, digests, hosts and numbers
(`url.full` loses any user info, and the values of signed-URL query parameters).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pinsvc import version
from pinsvc.errors import InvalidArgument

log = logging.getLogger("pinsvc.tracing")

PROTOCOLS = ("grpc", "http/protobuf")
"""The OTLP protocols pinsvc exports with (http/json has no Python exporter)."""
_SIGNED = frozenset({"awsaccesskeyid", "signature", "sig", "x-goog-signature", "x-amz-signature",
                     "x-amz-credential", "x-amz-security-token", "token", "access_token"})
"""Query parameters whose values are secrets (signed blob URLs, tokens): REDACTED in url.full."""
_REGISTRY_PATH = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/[^/]+$")

_tracer = None  # an SDK tracer when tracing is on
_provider = None
_NOOP = contextlib.nullcontext()


def enabled() -> bool:
    return _tracer is not None


def setup(service_name: str, *, endpoint: str = "", attributes: Mapping[str, str] | None = None) -> bool:
    """Turns tracing on when an OTLP endpoint is given (flag, or the OTEL_ variables) and the
    SDK is not disabled; `service_name` and `attributes` are the resource's defaults (the
    environment wins). Returns whether tracing is on; raises InvalidArgument naming a
    protocol it cannot speak."""
    global _tracer, _provider
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true" \
            or os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    protocol = _protocol()
    url, base = endpoint, True
    if not url and (url := os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()):
        base = False
    url = url or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not url:
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    defaults = {SERVICE_NAME: service_name, SERVICE_VERSION: version(), **(attributes or {})}
    # Resource.create puts its arguments over the environment; the environment must win.
    resource = Resource.create(defaults).merge(OTELResourceDetector().detect())
    _provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER, default parent-based
    _use_level1_trace_context()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        insecure = not url.startswith("https://")
        exporter = OTLPSpanExporter(endpoint=url, insecure=insecure)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        url = url.rstrip("/") + "/v1/traces" if base else url
        exporter = OTLPSpanExporter(endpoint=url)
    _provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(_provider)
    _tracer = trace.get_tracer("pinsvc", version())
    log.info("tracing on: OTLP %s to %s as %s", protocol, url, resource.attributes.get(SERVICE_NAME))
    return True


def _protocol() -> str:
    """The OTLP protocol the environment asks for (grpc when it says nothing)."""
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        if value := os.environ.get(variable, "").strip():
            if value not in PROTOCOLS:
                raise InvalidArgument(f"{variable}={value!r}: traces are exported over OTLP {' or '.join(PROTOCOLS)} "
                                      f"only; set one of those (or unset it: grpc)")
            return value
    return "grpc"


def _use_level1_trace_context() -> None:
    """Send `traceparent` with only the `sampled` flag. OpenTelemetry Python sets the W3C
    level-2 `random-trace-id` bit (flags 03), and OpenTelemetry Go, which CRI-O uses, rejects
    a version-00 traceparent with flags above 02: CRI-O's spans would start traces of their
    own instead of joining ours (seen with CRI-O 1.36.3)."""
    from opentelemetry import propagate, trace
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    class Level1TraceContext(TraceContextTextMapPropagator):
        def inject(self, carrier, context=None, setter=None, **kwargs):
            sc = trace.get_current_span(context).get_span_context()
            if sc.is_valid and sc.trace_flags & ~trace.TraceFlags.SAMPLED:
                masked = trace.SpanContext(sc.trace_id, sc.span_id, sc.is_remote,
                                           trace.TraceFlags(sc.trace_flags & trace.TraceFlags.SAMPLED),
                                           sc.trace_state)
                context = trace.set_span_in_context(trace.NonRecordingSpan(masked), context)
            if setter is None:
                return super().inject(carrier, context, **kwargs)
            return super().inject(carrier, context, setter, **kwargs)

    propagate.set_global_textmap(CompositePropagator([Level1TraceContext(), W3CBaggagePropagator()]))


def shutdown() -> None:
    """Flushes and stops the exporter (call on exit)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def span(name: str, attributes: Mapping[str, Any] | None = None):
    """A span as a context manager (exceptions are recorded and mark it as an error), or a
    no-op when tracing is off."""
    if _tracer is None:
        return _NOOP
    return _tracer.start_as_current_span(name, attributes=_clean(attributes))


def current():
    """The current span (for attributes and events), or None when tracing is off."""
    if _tracer is None:
        return None
    from opentelemetry import trace
    return trace.get_current_span()


def set_attributes(attributes: Mapping[str, Any] | None = None, /, **more: Any) -> None:
    """Attributes of the current span: a mapping (dotted names) and/or keywords."""
    s = current()
    if s is not None:
        s.set_attributes(_clean({**(attributes or {}), **more}) or {})


def add_event(name: str, attributes: Mapping[str, Any] | None = None, /, **more: Any) -> None:
    s = current()
    if s is not None:
        s.add_event(name, _clean({**(attributes or {}), **more}))


def set_error(error: BaseException | str) -> None:
    """Marks the current span as failed with a short description and the error class."""
    s = current()
    if s is None:
        return
    from opentelemetry.trace import Status, StatusCode
    s.set_status(Status(StatusCode.ERROR, str(error)[:500]))
    if isinstance(error, BaseException):
        s.set_attribute("error.type", type(error).__name__)


def image_attributes(image: str) -> dict[str, str]:
    """The attributes of an image reference `host/path@sha256:...`: `container.image.name`
    (without the digest), `oci.manifest.digest` and, whole, `pinsvc.image`."""
    name, _, digest = image.rpartition("@")
    return {"container.image.name": name or image, "oci.manifest.digest": digest or None, "pinsvc.image": image}


def server_attributes(target: str) -> dict[str, Any]:
    """`server.address` and `server.port` of a gRPC target (`host:port`, `[v6]:port`), or the
    socket path and `network.transport` unix of `unix:/path` / `unix:///path`."""
    if target.startswith("unix:"):
        return {"server.address": "/" + target.removeprefix("unix:").lstrip("/"), "network.transport": "unix"}
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return {"server.address": target}
    return {"server.address": host.removeprefix("[").removesuffix("]"), "server.port": int(port)}


def client_interceptors(target: str = "") -> list:
    """gRPC aio client interceptors that make CLIENT spans, with the server's address when
    `target` is given, and send the trace context."""
    if _tracer is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors
    where = server_attributes(target) if target else {}
    return list(aio_client_interceptors(request_hook=(lambda span, _: span.set_attributes(where)) if where else None))


def server_interceptors() -> list:
    if _tracer is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor
    return [aio_server_interceptor()]


def http_trace_configs() -> list:
    """aiohttp trace configs that make a CLIENT span of each HTTP request (registries and
    their token servers), named and described as the HTTP semantic conventions say; [] when
    tracing is off."""
    if _tracer is None:
        return []
    import aiohttp
    from opentelemetry.trace import SpanKind, Status, StatusCode

    async def started(session, context, params) -> None:
        url = params.url
        template = url_template(url.path)
        context.span = _tracer.start_span(
            f"{params.method} {template}" if template else params.method, kind=SpanKind.CLIENT,
            attributes=_clean({"http.request.method": params.method, "url.full": url_full(str(url)),
                               "url.template": template, "server.address": url.host, "server.port": url.port}))

    async def ended(session, context, params) -> None:
        status = params.response.status
        context.span.set_attribute("http.response.status_code", status)
        if status >= 400:
            context.span.set_attribute("error.type", str(status))
            context.span.set_status(Status(StatusCode.ERROR))
        context.span.end()

    async def failed(session, context, params) -> None:
        context.span.set_attribute("error.type", type(params.exception).__qualname__)
        context.span.set_status(Status(StatusCode.ERROR, str(params.exception)[:500]))
        context.span.end()

    config = aiohttp.TraceConfig()
    config.on_request_start.append(started)
    config.on_request_end.append(ended)
    config.on_request_exception.append(failed)
    return [config]


def url_template(path: str) -> str | None:
    """The low-cardinality form of a registry API path (`/v2/{name}/manifests/{reference}`,
    `/v2/{name}/blobs/{digest}`), None for any other path."""
    match = _REGISTRY_PATH.match(path)
    if match is None:
        return None
    return "/v2/{name}/manifests/{reference}" if match["kind"] == "manifests" else "/v2/{name}/blobs/{digest}"


def url_full(url: str) -> str:
    """`url` without user info, with the values of secret query parameters REDACTED."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = parts.query
    if query:
        query = urlencode([(k, "REDACTED" if k.lower() in _SIGNED else v)
                           for k, v in parse_qsl(query, keep_blank_values=True)], safe=":/")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def trace_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span in hex, or None."""
    s = current()
    if s is None:
        return None
    ctx = s.get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def _clean(attributes: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not attributes:
        return None
    return {k: v for k, v in attributes.items() if v is not None}


@contextlib.contextmanager
def configured(service_name: str, endpoint: str = "", attributes: Mapping[str, str] | None = None) -> Iterator[bool]:
    on = setup(service_name, endpoint=endpoint, attributes=attributes)
    try:
        yield on
    finally:
        if on:
            shutdown()
