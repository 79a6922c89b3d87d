"""gRPC server reflection, `grpc.reflection.v1` (what grpcurl and current tools ask first)
and `grpc.reflection.v1alpha`, describing the API as the shipped protoset does: every field
with its `json_name` (so a client's JSON uses the API's camelCase names) and the proto's
comments (`source_code_info`, so `grpcurl describe` shows them).

grpcio-reflection serves v1alpha only and re-serializes descriptors from its pool, which
drops comments. Here one servicer answers both versions (their messages are the same on the
wire, only the package differs): the pool finds the file, and the file is sent as
`scripts/gen-protos.py` wrote it (`pinsvc/gen/pinsvc_v1.binpb`, protoc's descriptor set
with source info) or, for the health and reflection protos, with the JSON names filled in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from importlib import resources

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1 = "grpc.reflection.v1.ServerReflection"
DESCRIPTORS = "pinsvc_v1.binpb"
"""The API's descriptor set in `pinsvc.gen`, written by scripts/gen-protos.py."""


def _json_names(message: descriptor_pb2.DescriptorProto, descriptor) -> None:
    for proto, field in zip(message.field, descriptor.fields):
        proto.json_name = field.json_name
    for proto, nested in zip(message.nested_type, descriptor.nested_types):
        _json_names(proto, nested)


def _file(descriptor) -> descriptor_pb2.FileDescriptorProto:
    """A generated file's descriptor as a proto, with every field's JSON name."""
    proto = descriptor_pb2.FileDescriptorProto()
    descriptor.CopyToProto(proto)
    for message in proto.message_type:
        _json_names(message, descriptor.message_types_by_name[message.name])
    return proto


def _v1(v1alpha: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto: v1alpha's file under the v1 package."""
    v1 = descriptor_pb2.FileDescriptorProto()
    v1.CopyFrom(v1alpha)
    v1.name, v1.package = "grpc/reflection/v1/reflection.proto", "grpc.reflection.v1"
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    for message in v1.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # proto2: assigning "" would set it
                field.type_name = field.type_name.replace(old, new)
    for service in v1.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    return v1


def files() -> list[descriptor_pb2.FileDescriptorProto]:
    """Every file reflection describes: the API (with its comments), health, reflection."""
    api = descriptor_pb2.FileDescriptorSet.FromString(
        resources.files("pinsvc.gen").joinpath(DESCRIPTORS).read_bytes())
    v1alpha = _file(reflection_pb2.DESCRIPTOR)
    return [*api.file, _file(health_pb2.DESCRIPTOR), v1alpha, _v1(v1alpha)]


class _Servicer(reflection.aio.ReflectionServicer):
    """grpcio-reflection's servicer, sending each file as stored here."""

    def __init__(self, service_names: Iterable[str], protos: list[descriptor_pb2.FileDescriptorProto]):
        pool = descriptor_pool.DescriptorPool()
        for proto in protos:
            pool.AddSerializedFile(proto.SerializeToString())
        super().__init__(service_names, pool=pool)
        self._stored = {proto.name: proto.SerializeToString() for proto in protos}

    async def ServerReflectionInfo(self, request_iterator, context) -> AsyncIterator:
        async for response in super().ServerReflectionInfo(request_iterator, context):
            if response.HasField("file_descriptor_response"):
                found = response.file_descriptor_response.file_descriptor_proto
                sent = [self._stored.get(descriptor_pb2.FileDescriptorProto.FromString(b).name, b) for b in found]
                del found[:]
                found.extend(sent)
            yield response


def enable(server: grpc.aio.Server, services: Iterable[str]) -> None:
    """Serves reflection v1 and v1alpha on `server`, listing `services` and themselves."""
    servicer = _Servicer((*services, reflection.SERVICE_NAME, V1), files())
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)}),))
