"""Tracing set up as the OpenTelemetry specification says (what a real receiver sees, over
both protocols, is in tests/e2e/test_otel.py): the environment's resource attributes over
the built-in defaults, the protocol honoured or refused, attribute names and URLs."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.util._once import Once

from pinsvc import tracing, version
from pinsvc.errors import InvalidArgument

OTEL = ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SDK_DISABLED",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_TRACES_EXPORTER")


@pytest.fixture(autouse=True)
def otel_env(monkeypatch):
    """No OTEL_ variable from outside; the global tracer provider reset after each test."""
    for name in OTEL:
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    tracing.shutdown()
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


def resource() -> dict:
    return dict(tracing._provider.resource.attributes)


def exporter():
    (processor,) = tracing._provider._active_span_processor._span_processors
    return processor.span_exporter


def test_built_in_defaults_when_the_environment_says_nothing():
    assert tracing.setup("pinsvc-agent", endpoint="http://127.0.0.1:4317",
                         attributes={"host.name": "node-1", "k8s.node.name": "node-1"})
    attributes = resource()
    assert (attributes["service.name"], attributes["service.version"], attributes["host.name"],
            attributes["k8s.node.name"]) == ("pinsvc-agent", version(), "node-1", "node-1")


def test_the_environment_wins_over_the_defaults_and_otel_service_name_over_both(otel_env):
    otel_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "host.name=from-env,service.name=from-attributes,"
                                                "k8s.cluster.name=lab,deployment.environment.name=test")
    assert tracing.setup("pinsvc-agent", endpoint="http://127.0.0.1:4317", attributes={"host.name": "node-1"})
    attributes = resource()
    assert (attributes["host.name"], attributes["service.name"], attributes["k8s.cluster.name"]) == (
        "from-env", "from-attributes", "lab")
    tracing.shutdown()
    otel_env.setenv("OTEL_SERVICE_NAME", "agent-of-lab")
    assert tracing.setup("pinsvc-agent", endpoint="http://127.0.0.1:4317")
    assert resource()["service.name"] == "agent-of-lab"


def test_grpc_is_the_default_protocol_and_http_protobuf_posts_to_v1_traces(otel_env):
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    assert tracing.setup("x", endpoint="http://127.0.0.1:4317")
    assert isinstance(exporter(), Grpc)
    tracing.shutdown()
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    assert tracing.setup("x")
    assert isinstance(exporter(), Http) and exporter()._endpoint == "http://collector:4318/v1/traces"
    tracing.shutdown()
    otel_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4318/custom/traces")
    assert tracing.setup("x")
    assert exporter()._endpoint == "http://collector:4318/custom/traces"  # a signal's endpoint is used as it is
    tracing.shutdown()
    otel_env.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")  # the signal's protocol wins
    assert tracing.setup("x", endpoint="http://127.0.0.1:4317")
    assert isinstance(exporter(), Grpc)


@pytest.mark.parametrize("variable, value", [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                                             ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift")])
def test_a_protocol_it_cannot_speak_is_refused_naming_it(otel_env, variable, value):
    otel_env.setenv(variable, value)
    with pytest.raises(InvalidArgument, match=f"{variable}='{value}': .*grpc or http/protobuf"):
        tracing.setup("x", endpoint="http://127.0.0.1:4317")
    with pytest.raises(InvalidArgument):
        tracing.setup("x")  # refused even when no endpoint would turn tracing on
    otel_env.setenv("OTEL_SDK_DISABLED", "true")
    assert not tracing.setup("x", endpoint="http://127.0.0.1:4317")  # off: nothing is exported


def test_attribute_helpers_follow_the_semantic_conventions():
    image = "registry.example:5000/team/app@sha256:" + "a" * 64
    assert tracing.image_attributes(image) == {"container.image.name": "registry.example:5000/team/app",
                                               "oci.manifest.digest": "sha256:" + "a" * 64, "pinsvc.image": image}
    assert tracing.server_attributes("unix:///run/crio/crio.sock") == {"server.address": "/run/crio/crio.sock",
                                                                       "network.transport": "unix"}
    assert tracing.server_attributes("unix:/run/x.sock")["server.address"] == "/run/x.sock"
    assert tracing.server_attributes("10.0.0.5:9440") == {"server.address": "10.0.0.5", "server.port": 9440}
    assert tracing.server_attributes("[fd00::1]:9440") == {"server.address": "fd00::1", "server.port": 9440}
    assert tracing.url_template("/v2/team/app/manifests/sha256:abc") == "/v2/{name}/manifests/{reference}"
    assert tracing.url_template("/v2/a/b/c/blobs/sha256:abc") == "/v2/{name}/blobs/{digest}"
    assert tracing.url_template("/token") is None


def test_url_full_never_carries_credentials():
    assert tracing.url_full("https://user:s3cret@r.example/v2/a/manifests/x") == "https://r.example/v2/a/manifests/x"
    signed = tracing.url_full("https://blobs.example/b?X-Amz-Signature=abc&X-Amz-Credential=k&part=1")
    assert "abc" not in signed and "k&" not in signed and "part=1" in signed and "REDACTED" in signed
    assert tracing.url_full("https://auth.example/token?scope=repository:a:pull&service=r") == \
        "https://auth.example/token?scope=repository:a:pull&service=r"
