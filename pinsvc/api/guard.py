"""Malformed requests get INVALID_ARGUMENT.

grpc.aio answers a request whose bytes do not parse as the method's protobuf message
(corrupt wire format, bad UTF-8 in a string field) with UNKNOWN "Unexpected DecodeError".
This interceptor wraps the request deserializer of every unary-request method: a message
that does not parse becomes a marker, and the wrapped handler answers it with
INVALID_ARGUMENT naming the message type, before the servicer runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import grpc
from google.protobuf.message import DecodeError


class _Malformed:
    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message


def _deserializer(deserialize: Callable[[bytes], object]) -> Callable[[bytes], object]:
    name = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    what = name.full_name if name is not None else "request"

    def parse(data: bytes) -> object:
        try:
            return deserialize(data)
        except DecodeError as e:
            return _Malformed(f"malformed request: cannot parse {what} ({len(data)} bytes): {e}")

    return parse


def _unary_behavior(behavior):
    async def guarded(request, context):
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behavior(request, context)
    return guarded


def _stream_behavior(behavior):
    async def guarded(request, context):
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        async for response in behavior(request, context):
            yield response
    return guarded


def guard_handler(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
    """`handler` with its request deserializer and behavior guarded; unchanged when it takes
    a request stream, has no deserializer, or a behavior that is not async."""
    if handler is None or handler.request_streaming or handler.request_deserializer is None:
        return handler
    if not handler.response_streaming:
        behavior = handler.unary_unary
        if not inspect.iscoroutinefunction(behavior):
            return handler
        return handler._replace(request_deserializer=_deserializer(handler.request_deserializer),
                                unary_unary=_unary_behavior(behavior))
    behavior = handler.unary_stream
    if inspect.isasyncgenfunction(behavior):
        wrapped = _stream_behavior(behavior)
    elif inspect.iscoroutinefunction(behavior):  # writes with context.write()
        wrapped = _unary_behavior(behavior)
    else:
        return handler
    return handler._replace(request_deserializer=_deserializer(handler.request_deserializer),
                            unary_stream=wrapped)


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        return guard_handler(await continuation(handler_call_details))
