"""A small async client for the agent, used by the CLI, the demo and the tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import grpc
from google.protobuf import json_format

from pinsvc import tracing
from pinsvc.gen.pinsvc.v1 import pinsvc_pb2 as pb
from pinsvc.gen.pinsvc.v1 import pinsvc_pb2_grpc


def channel_target(endpoint: str) -> str:
    """`unix:///path`, `/path` or `host:port`."""
    if endpoint.startswith("/"):
        return "unix:" + endpoint
    return endpoint


@dataclass(frozen=True)
class SetSpec:
    name: str
    generation: int
    images: tuple[str, ...]


NODE_METADATA = "x-pinsvc-node"


class PinClient:
    """`node` (optional) is sent as `x-pinsvc-node` metadata on every call, so an agent's
    logs (and simulated agents) know which node the caller means."""

    def __init__(self, endpoint: str, node: str = ""):
        self.channel = grpc.aio.insecure_channel(channel_target(endpoint), interceptors=tracing.client_interceptors())
        self.stub = pinsvc_pb2_grpc.PinServiceStub(self.channel)
        self.metadata = ((NODE_METADATA, node),) if node else None

    async def __aenter__(self) -> "PinClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    def apply(self, sets: Iterable[SetSpec], *, parallelism: int = 0,
              attempt_timeout: float | None = None) -> AsyncIterator[pb.ApplyEvent]:
        options = pb.PullOptions(parallelism=parallelism)
        if attempt_timeout is not None:
            options.attempt_timeout_seconds = attempt_timeout
        return self.stub.Apply(pb.ApplyRequest(
            sets=[pb.PinnedImageSet(name=s.name, generation=s.generation, images=list(s.images)) for s in sets],
            pull=options), metadata=self.metadata)

    async def status(self) -> pb.NodeStatus:
        return await self.stub.GetStatus(pb.GetStatusRequest(), metadata=self.metadata)

    async def check_space(self, images: Iterable[str]) -> pb.SpacePlan:
        return await self.stub.CheckSpace(pb.CheckSpaceRequest(images=list(images)), metadata=self.metadata)


def to_dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=False)
