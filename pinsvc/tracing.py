"""OpenTelemetry tracing, off by default at (almost) no cost.

Configured by the standard variables (`OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_SDK_DISABLED`) or the matching flags: tracing is on when an OTLP endpoint is known.
Export is OTLP/gRPC through a batch processor; sampling is parent-based (the SDK default,
or what OTEL_TRACES_SAMPLER says); `shutdown()` flushes. W3C trace context travels in gRPC
metadata through the OpenTelemetry gRPC interceptors (coordinator -> agent -> CRI runtime).

When off, nothing of the SDK is imported and `span()` is a shared no-op context manager.
Never put credentials in attributes: only image references, digests, hosts and numbers.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

log = logging.getLogger("pinsvc.tracing")

_tracer = None  # an SDK tracer when tracing is on
_provider = None
_NOOP = contextlib.nullcontext()


def enabled() -> bool:
    return _tracer is not None


def setup(service_name: str, *, endpoint: str = "", attributes: Mapping[str, str] | None = None) -> bool:
    """Turns tracing on when an OTLP endpoint is given (flag, or the OTEL_ variables) and the
    SDK is not disabled. Returns whether tracing is on."""
    global _tracer, _provider
    endpoint = (endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
    if not endpoint or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true" \
            or os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower() == "none":
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({**(attributes or {})})  # + OTEL_RESOURCE_ATTRIBUTES
    if not os.environ.get("OTEL_SERVICE_NAME"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    _provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER, default parent-based
    _use_level1_trace_context()
    insecure = endpoint.startswith("http://") or not endpoint.startswith("https://")
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure)))
    trace.set_tracer_provider(_provider)
    _tracer = trace.get_tracer("pinsvc")
    log.info("tracing on: OTLP/gRPC to %s as %s", endpoint, resource.attributes.get(SERVICE_NAME))
    return True


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


def set_attributes(**attributes: Any) -> None:
    s = current()
    if s is not None:
        s.set_attributes(_clean(attributes))


def add_event(name: str, **attributes: Any) -> None:
    s = current()
    if s is not None:
        s.add_event(name, _clean(attributes))


def set_error(error: BaseException | str) -> None:
    """Marks the current span as failed with a short description and the error class."""
    s = current()
    if s is None:
        return
    from opentelemetry.trace import Status, StatusCode
    s.set_status(Status(StatusCode.ERROR, str(error)[:500]))
    if isinstance(error, BaseException):
        s.set_attribute("error.type", type(error).__name__)


def client_interceptors() -> list:
    """gRPC aio client interceptors that make client spans and send the trace context."""
    if _tracer is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors
    return list(aio_client_interceptors())


def server_interceptors() -> list:
    if _tracer is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor
    return [aio_server_interceptor()]


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
