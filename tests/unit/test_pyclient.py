"""The client library's own parts (pinsvc_client): endpoints, TLS settings, error mapping,
health decoding, and its calls against an in-process gRPC server on a unix socket (message
size, error conversion, Apply as awaitable and as iterator, early stop). The same and the
sync wrapper against the real agent: tests/e2e/test_pyclient.py."""

import asyncio
import threading

import grpc
import pytest
from pinsvc_client import (
    MAX_RECEIVE_MESSAGE_BYTES, ConfigError, InvalidArgument, NotFound, PinError, ResourceExhausted, SetSpec,
    SyncPinClient, TlsFiles, Unavailable, apply_request, connect, parse_endpoint, pb, pb_grpc, to_dict)
from pinsvc_client.client import health_status
from pinsvc_client.connection import channel_options
from pinsvc_client.errors import from_rpc_error

REF = "registry.test/app@sha256:" + "a" * 64


def test_endpoints():
    assert parse_endpoint("unix:///run/pinsvc.sock") == parse_endpoint("/run/pinsvc.sock")
    assert parse_endpoint("unix:/run/pinsvc.sock").target == "unix:/run/pinsvc.sock"
    assert parse_endpoint("10.0.0.5:9440").unix is False
    assert parse_endpoint("node-a.example.com:9440").target == "node-a.example.com:9440"
    assert parse_endpoint("[::1]:9440").target == "[::1]:9440"
    for bad in ("", "node-a", "unix://relative.sock", "10.0.0.5:0", "10.0.0.5:70000", "http://x:1", "a b:1"):
        with pytest.raises(ConfigError) as e:
            parse_endpoint(bad)
        assert repr(bad) in str(e.value)


async def test_tcp_needs_tls_or_an_explicit_insecure(tmp_path):
    with pytest.raises(ConfigError, match="TCP needs tls=TlsFiles"):
        connect("127.0.0.1:9440")
    tls = TlsFiles(str(tmp_path / "c"), str(tmp_path / "k"), str(tmp_path / "missing-ca.pem"))
    with pytest.raises(ConfigError, match="contradict"):
        connect("127.0.0.1:9440", tls=tls, insecure=True)
    with pytest.raises(ConfigError, match=f"TLS CA {tmp_path}/missing-ca.pem: cannot read"):
        connect("127.0.0.1:9440", tls=tls)
    with pytest.raises(ConfigError, match="server_name 'node-a' needs tls"):
        connect("127.0.0.1:9440", insecure=True, server_name="node-a")
    async with connect(f"unix://{tmp_path}/agent.sock", tls=tls):  # unix: no TLS, the files are not read
        pass
    async with connect("127.0.0.1:9440", insecure=True):  # nothing is sent until a call
        pass


def test_the_sync_client_stops_its_thread_when_the_settings_are_bad():
    threads = threading.active_count()
    with pytest.raises(ConfigError, match="TCP needs tls"):
        SyncPinClient("127.0.0.1:9440")
    assert threading.active_count() == threads


def test_channel_options_raise_the_receive_limit_and_name_the_server():
    assert MAX_RECEIVE_MESSAGE_BYTES > 4 << 20
    assert channel_options() == [("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES)]
    assert ("grpc.ssl_target_name_override", "node-a") in channel_options(tls=TlsFiles("c", "k", "ca", "node-a"))


def test_errors_by_code_keep_the_details():
    e = from_rpc_error(grpc.aio.AioRpcError(grpc.StatusCode.INVALID_ARGUMENT, None, None, "bad ref 'x'"))
    assert isinstance(e, InvalidArgument) and isinstance(e, grpc.aio.AioRpcError)
    assert (e.code(), e.details(), str(e)) == (grpc.StatusCode.INVALID_ARGUMENT, "bad ref 'x'",
                                              "INVALID_ARGUMENT: bad ref 'x'")
    other = from_rpc_error(grpc.aio.AioRpcError(grpc.StatusCode.ABORTED, None, None, "superseded"))
    assert type(other) is PinError and other.code() == grpc.StatusCode.ABORTED and not other.retryable
    assert from_rpc_error(grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "down")).retryable


def test_to_dict_keeps_zero_values_and_64_bit_numbers():
    """Every field present, 64-bit integers as numbers, nested and repeated ones too."""
    plan = to_dict(pb.SpacePlan(images=[pb.ImagePlan(image=REF, compressed_bytes=1 << 40)], free_bytes=5))
    assert plan["requiredBytes"] == 0 and plan["fits"] is False and plan["verdict"] == ""
    assert plan["freeBytes"] == 5 and plan["images"][0]["compressedBytes"] == 1 << 40
    assert plan["images"][0]["present"] is False and plan["images"][0]["layers"] == 0
    status = to_dict(pb.NodeStatus(pinned_image_sets=[pb.PinnedImageSetStatus(name="s", desired_generation=2)]))
    assert status["pinnedImageSets"] == [{"name": "s", "desiredGeneration": 2, "currentGeneration": 0,
                                          "lastFailedGeneration": 0, "lastFailedGenerationError": ""}]
    event = to_dict(pb.ApplyEvent(image=pb.ImageEvent(image=REF, kind=pb.ImageEvent.PULLED)))
    assert "stage" not in event and event["image"]["kind"] == "PULLED", "only the oneof member that is set"


def test_requests():
    request = apply_request([SetSpec("web", 2, (REF, REF))], parallelism=3, attempt_timeout=0)
    assert to_dict(request) == {"sets": [{"name": "web", "generation": 2, "images": [REF, REF]}],
                                "pull": {"parallelism": 3, "attemptTimeoutSeconds": 0.0}}
    assert not apply_request([]).pull.HasField("attempt_timeout_seconds")  # the agent's default
    with pytest.raises(TypeError, match="not one string"):
        SetSpec("web", 1, REF).to_proto()  # type: ignore[arg-type]


def test_health_status_decoding():
    assert health_status(b"") == "UNKNOWN"
    assert health_status(b"\x08\x01") == "SERVING"
    assert health_status(b"\x08\x02") == "NOT_SERVING"
    assert health_status(b"\x08\x07") == "UNKNOWN(7)"
    with pytest.raises(ValueError, match="truncated"):
        health_status(b"\x08")


# ---- against an in-process gRPC server ---------------------------------------------------

class Service(pb_grpc.PinServiceServicer):
    def __init__(self):
        self.status_bytes = 0
        self.cancelled = asyncio.Event()

    async def GetStatus(self, request, context):
        return pb.NodeStatus(node="n" * self.status_bytes)

    async def CheckSpace(self, request, context):
        bad = [i for i in request.images if "@sha256:" not in i]
        if bad:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a digest reference: {bad[0]!r}")
        return pb.SpacePlan(fits=True, verdict="fits")

    async def Apply(self, request, context):
        try:
            for s in request.sets:
                for image in s.images:
                    yield pb.ApplyEvent(image=pb.ImageEvent(image=image, kind=pb.ImageEvent.PULLED))
                    await asyncio.sleep(0.01)
            yield pb.ApplyEvent(status=pb.NodeStatus(node="n"))
            if any(s.name == "fails" for s in request.sets):
                await context.abort(grpc.StatusCode.NOT_FOUND, "image missing")
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@pytest.fixture
async def served(tmp_path):
    service = Service()
    server = grpc.aio.server()
    pb_grpc.add_PinServiceServicer_to_server(service, server)
    endpoint = f"unix://{tmp_path}/s.sock"
    server.add_insecure_port(endpoint)
    await server.start()
    yield service, endpoint
    await server.stop(None)


async def test_a_status_over_4_mib_is_received_and_the_limit_is_a_setting(served):
    service, endpoint = served
    service.status_bytes = 6 << 20
    async with connect(endpoint) as client:
        assert len((await client.status()).node) == 6 << 20
    async with connect(endpoint, max_receive_message_bytes=4 << 20) as client:
        with pytest.raises(ResourceExhausted):
            await client.status()


async def test_errors_carry_the_code_and_the_value(served):
    _, endpoint = served
    async with connect(endpoint) as client:
        assert (await client.check_space([REF])).fits
        with pytest.raises(InvalidArgument) as e:
            await client.check_space(["nginx:latest"])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'nginx:latest'" in e.value.details()
    async with connect(f"unix://{endpoint[7:]}.gone", timeout=2) as client:
        with pytest.raises(Unavailable):
            await client.status()


async def test_apply_awaited_with_sync_and_async_callbacks(served):
    _, endpoint = served
    seen, seen_async = [], []

    async def record(event):
        seen_async.append(event.WhichOneof("event"))

    async with connect(endpoint) as client:
        status = await client.apply([SetSpec("web", 1, (REF, REF))], on_event=lambda e: seen.append(e))
        assert status.node == "n"
        assert [e.WhichOneof("event") for e in seen] == ["image", "image", "status"]
        await client.apply([SetSpec("web", 1, (REF,))], on_event=record)
        assert seen_async == ["image", "status"]
        call = client.apply([SetSpec("fails", 1, (REF,))])
        with pytest.raises(NotFound) as e:
            await call
    assert e.value.status.node == "n" and call.status == e.value.status  # the final status came first


async def test_apply_as_iterator_and_an_early_stop_cancels_the_stream(served):
    service, endpoint = served
    async with connect(endpoint) as client:
        call = client.apply([SetSpec("web", 1, (REF,))])
        kinds = [e.WhichOneof("event") async for e in call]
        assert kinds == ["image", "status"] and call.status.node == "n"
        with pytest.raises(RuntimeError, match="once"):
            call.__aiter__()
        events = client.apply([SetSpec("web", 1, tuple(f"{REF[:-1]}{i}" for i in range(9)))]).__aiter__()
        await anext(events)
        await events.aclose()  # what `break` does once the iterator is collected
        await asyncio.wait_for(service.cancelled.wait(), 5)

