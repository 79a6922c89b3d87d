"""The async client: `connect()` and `PinClient`, one method per RPC of the agent.

Results are the API's protobuf messages (typed by the generated `.pyi`); `to_dict` turns
one into plain data (camelCase, zero values present, 64-bit integers as numbers). Every failed call raises a PinError subclass (pinsvc_client.errors).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable
from dataclasses import dataclass
from types import EllipsisType
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from pinsvc_client._gen.pinsvc.v1 import pinsvc_pb2 as pb
from pinsvc_client._gen.pinsvc.v1 import pinsvc_pb2_grpc
from pinsvc_client.connection import MAX_RECEIVE_MESSAGE_BYTES, TlsFiles, open_channel
from pinsvc_client.errors import ConfigError, from_rpc_error

NODE_METADATA = "x-pinsvc-node"
"""Metadata key of the node name a caller means (logs, simulated agents)."""

Timeout = float | None | EllipsisType
"""Seconds, None for no timeout, or `...` for the client's default."""

EventCallback = Callable[[pb.ApplyEvent], "Awaitable[None] | None"]


@dataclass(frozen=True)
class SetSpec:
    """One pinned image set as the agent takes it: a name (RFC 1123), its generation
    (>= 1) and digest references. The agent validates; nothing is checked here."""

    name: str
    generation: int
    images: tuple[str, ...]

    def to_proto(self) -> pb.PinnedImageSet:
        return pb.PinnedImageSet(name=self.name, generation=self.generation, images=_refs(self.images))


def _refs(images: Iterable[str]) -> list[str]:
    if isinstance(images, (str, bytes)):  # list("ref") would send one reference per character
        raise TypeError(f"images must be a list of references, not one string: {images!r}")
    return list(images)


def pull_options(parallelism: int = 0, attempt_timeout: float | None = None) -> pb.PullOptions:
    """PullOptions: parallelism 0 = the agent's default; attempt_timeout None = the agent's
    default, 0 = none."""
    options = pb.PullOptions(parallelism=parallelism)
    if attempt_timeout is not None:
        options.attempt_timeout_seconds = attempt_timeout
    return options


def apply_request(sets: Iterable[SetSpec], *, parallelism: int = 0,
                  attempt_timeout: float | None = None) -> pb.ApplyRequest:
    return pb.ApplyRequest(sets=[s.to_proto() for s in sets], pull=pull_options(parallelism, attempt_timeout))


_INT64 = frozenset((FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                    FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64))


def to_dict(message: Message) -> dict[str, Any]:
    """A message as plain data for JSON or YAML: camelCase keys (the API's JSON names),
    enums by name, every field present, zero values included (a field without presence is
    never "missing"), and 64-bit integers as numbers, not the strings of the proto3 JSON
    mapping."""
    return _numbers(message.DESCRIPTOR, json_format.MessageToDict(message, always_print_fields_with_no_presence=True))


def _numbers(descriptor, data: dict[str, Any]) -> dict[str, Any]:
    """`data` (of a message of `descriptor`) with its 64-bit integer strings as ints."""
    for field in descriptor.fields:
        if field.json_name not in data:
            continue
        value = data[field.json_name]
        repeated = isinstance(value, list)
        if field.message_type is not None and not field.message_type.GetOptions().map_entry:
            convert = lambda item, d=field.message_type: _numbers(d, item)  # noqa: E731
        elif field.type in _INT64:
            convert = int
        else:
            continue
        data[field.json_name] = [convert(v) for v in value] if repeated else convert(value)
    return data


def health_status(data: bytes) -> str:
    """SERVING, NOT_SERVING, UNKNOWN or SERVICE_UNKNOWN from the bytes of a
    grpc.health.v1.HealthCheckResponse (field 1, a varint enum; absent = UNKNOWN). Decoded
    here so that the library needs no second copy of the health stubs."""
    names = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
    value, i = 0, 0
    while i < len(data):
        tag, i = _varint(data, i)
        if tag & 7 != 0:  # only varint fields are known here
            raise ValueError(f"health response: unexpected wire type {tag & 7}")
        number, i = _varint(data, i)
        if tag >> 3 == 1:
            value = number
    return names.get(value, f"UNKNOWN({value})")


def _varint(data: bytes, i: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("health response: truncated varint")
        byte = data[i]
        result |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return result, i


class ApplyCall:
    """A running Apply: `await` it for the final NodeStatus, or `async for` its events.
    `on_event` (sync or async) sees every event either way. Starts on first use; errors
    raise PinError (with `.status` when the final status came before the error)."""

    def __init__(self, start: Callable[[], grpc.aio.UnaryStreamCall], on_event: EventCallback | None):
        self._start = start
        self._on_event = on_event
        self._call: grpc.aio.UnaryStreamCall | None = None
        self.status: pb.NodeStatus | None = None

    def __aiter__(self) -> AsyncIterator[pb.ApplyEvent]:
        if self._call is not None:
            raise RuntimeError("an ApplyCall can be iterated or awaited once")
        self._call = self._start()
        return self._events(self._call)

    async def _events(self, call: grpc.aio.UnaryStreamCall) -> AsyncIterator[pb.ApplyEvent]:
        try:
            # read() rather than `async for`: grpc's own iterator is an async generator that,
            # abandoned by an early stop, would be closed later by a stray finalizer task
            while (event := await call.read()) is not grpc.aio.EOF:
                if event.HasField("status"):
                    self.status = event.status
                if self._on_event is not None:
                    result = self._on_event(event)
                    if inspect.isawaitable(result):
                        await result
                yield event
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e, status=self.status) from e
        finally:
            call.cancel()  # a no-op when done; stops the stream when the caller stops early

    async def wait(self) -> pb.NodeStatus:
        """Runs the Apply to its end; the final status."""
        async for _ in self:
            pass
        if self.status is None:
            raise RuntimeError("the Apply stream ended without a status event")
        return self.status

    def __await__(self) -> Generator[Any, None, pb.NodeStatus]:
        return self.wait().__await__()

    def cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()


class PinClient:
    """An agent's PinService over one channel. Use as `async with connect(...) as client`
    (or call `close()`). `node` is sent as `x-pinsvc-node` metadata on every call;
    `timeout` (seconds, None = none) bounds each unary call unless a call gives its own
    (`...`, the default of the methods, means the client's)."""

    def __init__(self, channel: grpc.aio.Channel, *, node: str = "", timeout: float | None = None):
        self.channel = channel
        self.stub = pinsvc_pb2_grpc.PinServiceStub(channel)
        self.metadata = ((NODE_METADATA, node),) if node else None
        self.timeout = timeout
        self._health = channel.unary_unary("/grpc.health.v1.Health/Check",
                                           request_serializer=_health_request,
                                           response_deserializer=health_status)

    async def __aenter__(self) -> PinClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    def _timeout(self, timeout: Timeout) -> float | None:
        return self.timeout if timeout is ... else timeout

    async def _unary(self, method, request, timeout):
        try:
            return await method(request, timeout=self._timeout(timeout), metadata=self.metadata)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from e

    async def check_space(self, images: Iterable[str], *, timeout: Timeout = ...) -> pb.SpacePlan:
        """What pulling `images` would take and whether it fits. Touches nothing."""
        return await self._unary(self.stub.CheckSpace, pb.CheckSpaceRequest(images=_refs(images)), timeout)

    def apply(self, sets: Iterable[SetSpec], *, on_event: EventCallback | None = None, parallelism: int = 0,
              attempt_timeout: float | None = None, timeout: float | None = None) -> ApplyCall:
        """Makes the node pin exactly `sets` (its whole desired state). Returns an ApplyCall:
        `status = await client.apply(sets, on_event=print)` or
        `async for event in client.apply(sets): ...`. `timeout` bounds the whole Apply."""
        request = apply_request(sets, parallelism=parallelism, attempt_timeout=attempt_timeout)
        return ApplyCall(lambda: self.stub.Apply(request, timeout=timeout, metadata=self.metadata), on_event)

    async def status(self, *, timeout: Timeout = ...) -> pb.NodeStatus:
        """The node's status (MachineConfigNode-shaped), pins read live from the runtime."""
        return await self._unary(self.stub.GetStatus, pb.GetStatusRequest(), timeout)

    async def health(self, service: str = "", *, timeout: Timeout = ...) -> str:
        """gRPC health of the agent: SERVING, NOT_SERVING, ..."""
        return await self._unary(self._health, service, timeout)

    async def pull_images(self, images: Iterable[str], *, parallelism: int = 0,
                          attempt_timeout: float | None = None,
                          timeout: float | None = None) -> AsyncIterator[pb.ImageEvent]:
        """Stage: pulls the images, one event per image state change. No drop-in, no state."""
        request = pb.PullImagesRequest(images=_refs(images), options=pull_options(parallelism, attempt_timeout))
        call = self.stub.PullImages(request, timeout=timeout, metadata=self.metadata)
        try:
            while (event := await call.read()) is not grpc.aio.EOF:
                yield event
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from e
        finally:
            call.cancel()

    async def write_dropin(self, images: Iterable[str], *, timeout: Timeout = ...) -> pb.WriteDropinResponse:
        """Stage: the drop-in pins exactly `images` (empty removes it). Does not reload."""
        return await self._unary(self.stub.WriteDropin, pb.WriteDropinRequest(images=_refs(images)), timeout)

    async def reload_runtime(self, *, timeout: Timeout = ...) -> pb.ReloadRuntimeResponse:
        """Stage: the runtime reloads its configuration (the agent's strategy)."""
        return await self._unary(self.stub.ReloadRuntime, pb.ReloadRuntimeRequest(), timeout)

    async def verify_pins(self, pinned: Iterable[str] = (), unpinned: Iterable[str] = (), *,
                          wait_seconds: float = 0, timeout: Timeout = ...) -> pb.VerifyPinsResponse:
        """Stage: polls the runtime until `pinned` report pinned and `unpinned` do not, for
        up to `wait_seconds` (0 = the agent's default)."""
        request = pb.VerifyPinsRequest(pinned=_refs(pinned), unpinned=_refs(unpinned), timeout_seconds=wait_seconds)
        return await self._unary(self.stub.VerifyPins, request, timeout)


def _health_request(service: str) -> bytes:
    data = service.encode()
    if not data:
        return b""
    if len(data) > 127:
        raise ValueError(f"health service name longer than 127 bytes: {service!r}")
    return b"\x0a" + bytes([len(data)]) + data  # field 1, length-delimited


def connect(endpoint: str, *, tls: TlsFiles | None = None, server_name: str = "", insecure: bool = False,
            node: str = "", timeout: float | None = None,
            max_receive_message_bytes: int = MAX_RECEIVE_MESSAGE_BYTES, interceptors=None) -> PinClient:
    """A PinClient for the agent at `endpoint`: `unix:///path` (never TLS), or `host:port`
    with `tls` (mutual TLS; `server_name` overrides the name checked in the agent's
    certificate) or `insecure=True` (plaintext). Nothing is sent until the first call; bad
    settings raise ConfigError. `interceptors` are grpc.aio client interceptors (tracing)."""
    if server_name:
        if tls is None:
            raise ConfigError(f"server_name {server_name!r} needs tls")
        tls = TlsFiles(tls.cert, tls.key, tls.ca, server_name)
    channel = open_channel(endpoint, tls=tls, insecure=insecure, interceptors=interceptors,
                           max_receive_message_bytes=max_receive_message_bytes)
    return PinClient(channel, node=node, timeout=timeout)

