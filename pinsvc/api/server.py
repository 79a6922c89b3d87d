"""The gRPC layer: a thin servicer (protobuf in, plain types to the Agent, protobuf out),
error mapping at one boundary, health checking and reflection, unix socket and optional TCP.

gRPC health (grpc.health.v1) tells two things apart. The whole server ("", what grpcurl,
grpc_health_probe, the kubelet's grpc probe and `pinsvc health` ask by default) and
`pinsvc.v1.PinService` are SERVING only while the container runtime answers (the agent's
runtime watcher, core/health.py): an agent that can neither pull, pin nor verify is not
ready, and the status names why (PinnedImageSetsDegraded, reason RuntimeUnreachable).
`liveness` is SERVING while the agent serves at all, whatever the runtime does: the
liveness and startup probes ask it, so a CRI-O restart never gets the agent restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pinsvc_client import pb, pb_grpc
from pinsvc_client.errors import DETAILS_KEY, DOMAIN

from pinsvc import errors, limits, tracing
from pinsvc.api import convert, reflection
from pinsvc.api.guard import MalformedRequestInterceptor
from pinsvc.config import Settings
from pinsvc.core.agent import Agent
from pinsvc.core.health import RuntimeHealth
from pinsvc.wiring import build_agent

log = logging.getLogger("pinsvc.api")
SERVICE = "pinsvc.v1.PinService"
LIVENESS = "liveness"
"""The health name that is SERVING while the agent serves, whether the runtime answers or not."""
_DONE = object()


async def _abort(context: grpc.aio.ServicerContext, e: Exception) -> None:
    """Maps an error to its gRPC status, once, with its kind as the `ErrorInfo` reason (see
    `_details`). Unknown exceptions become INTERNAL without internals in the message."""
    if not isinstance(e, errors.PinsvcError):
        log.exception("internal error", exc_info=e)
        e = errors.PinsvcError(f"internal error: {type(e).__name__}")
    message = limits.status_message(str(e))
    await context.abort(e.code, message, trailing_metadata=_details(e, message))


def _details(e: errors.PinsvcError, message: str) -> tuple[tuple[str, bytes], ...]:
    """The status details of an error: a `google.rpc.ErrorInfo` whose reason is the error's
    class in capitals (REGISTRY, NOT_FOUND, ...; domain pinsvc.io). It tells the caller that
    the agent answered: an UNAVAILABLE with a reason is a peer of the agent (registry,
    runtime) that failed, not the agent, and is not worth calling again at once."""
    info = error_details_pb2.ErrorInfo(reason=e.error_class.upper(), domain=DOMAIN)
    status = status_pb2.Status(code=e.code.value[0], message=message)
    status.details.add().Pack(info)
    return ((DETAILS_KEY, status.SerializeToString()),)


class PinServicer(pb_grpc.PinServiceServicer):
    def __init__(self, agent: Agent):
        self.agent = agent

    async def _unary(self, context, call: Awaitable):
        try:
            return await call
        except Exception as e:  # noqa: BLE001 - the one boundary
            await _abort(context, e)

    async def _stream(self, context, run: Callable[[Callable], Awaitable], convert_event) -> AsyncIterator:
        """Runs `run(emit)` as a task and yields its events as they come. The task's result,
        if any, is yielded last (converted by convert_event)."""
        queue: asyncio.Queue = asyncio.Queue()

        async def body():
            try:
                return await run(queue.put_nowait)
            finally:
                queue.put_nowait(_DONE)

        task = asyncio.create_task(body())
        try:
            while (item := await queue.get()) is not _DONE:
                yield convert_event(item)
            try:
                result = await task
            except asyncio.CancelledError:
                if context.cancelled():
                    raise
                await context.abort(grpc.StatusCode.ABORTED, "superseded by a newer Apply")
            except Exception as e:  # noqa: BLE001 - the one boundary
                await _abort(context, e)
            else:
                if result is not None:
                    yield result
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait([task])

    async def CheckSpace(self, request, context):
        plan = await self._unary(context, self.agent.check_space(list(request.images)))
        return convert.space_plan_pb(plan)

    async def Apply(self, request, context):
        error: list[errors.PinsvcError] = []

        async def run(emit):
            outcome = await self.agent.apply(
                convert.sets_from_pb(request), emit=emit, parallelism=request.pull.parallelism,
                attempt_timeout=convert.attempt_timeout(request.pull))
            if outcome.error is not None:
                error.append(outcome.error)
            return convert.event_pb(outcome.status)

        async for event in self._stream(context, run, convert.event_pb):
            yield event
        if error:
            await _abort(context, error[0])

    async def GetStatus(self, request, context):
        return convert.status_pb(await self._unary(context, self.agent.status()))

    async def PullImages(self, request, context):
        async def run(emit):
            await self.agent.pull_images(list(request.images), emit=emit,
                                         parallelism=request.options.parallelism,
                                         attempt_timeout=convert.attempt_timeout(request.options))

        async for event in self._stream(context, run, convert.image_event_pb):
            yield event

    async def WriteDropin(self, request, context):
        result = await self._unary(context, self.agent.write_dropin(list(request.images)))
        return pb.WriteDropinResponse(path=str(self.agent.dropin.path), changed=result.changed,
                                      removed=result.removed, sha256=result.sha256)

    async def ReloadRuntime(self, request, context):
        result = await self._unary(context, self.agent.reload_runtime())
        return pb.ReloadRuntimeResponse(strategy=result.strategy, duration_seconds=result.duration_seconds,
                                        detail=result.detail)

    async def VerifyPins(self, request, context):
        report = await self._unary(context, self.agent.verify(list(request.pinned), list(request.unpinned),
                                                              request.timeout_seconds))
        return pb.VerifyPinsResponse(
            ok=report.ok, message=report.message(), duration_seconds=report.duration_seconds,
            images=[pb.PinCheck(image=c.image, present=c.present, pinned=c.pinned, want_pinned=c.want_pinned)
                    for c in report.checks])


def _follow_runtime(health_servicer: health.aio.HealthServicer) -> Callable[[RuntimeHealth], Awaitable[None]]:
    """Sets the health of "" and the PinService from what the runtime watcher sees."""
    async def follow(runtime: RuntimeHealth) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if runtime.reachable
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE):
            await health_servicer.set(name, status)
    return follow


def _bind_unix(server: grpc.aio.Server, path: Path, mode: int, group: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    old = os.umask(0o777 & ~mode)  # the socket is born with the right mode: no window
    try:
        server.add_insecure_port(f"unix:{path}")
    finally:
        os.umask(old)


def _socket_gid(group: str) -> int:
    """The gid of server.socket_group (a name or a number); -1 = leave the group alone."""
    if not group:
        return -1
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise errors.InvalidArgument(f"server.socket_group {group!r}: no such group") from None


def _read_pem(setting: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise errors.InvalidArgument(f"{setting} {path}: cannot read: {e.strerror or e}") from e
    if b"-----BEGIN " not in data:
        raise errors.InvalidArgument(f"{setting} {path}: not a PEM file")
    return data


def tls_server_credentials(settings: Settings) -> grpc.ServerCredentials:
    """mTLS for the TCP listener, from files read once (at start): the agent presents
    tls_cert, and a client must present a certificate that chains to tls_client_ca."""
    s = settings.server
    key = _read_pem("server.tls_key", s.tls_key)
    cert = _read_pem("server.tls_cert", s.tls_cert)
    ca = _read_pem("server.tls_client_ca", s.tls_client_ca)
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


async def serve(settings: Settings, *, ready: Callable[[], None] | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Serves until `stop` is set (or forever), then shuts down gracefully."""
    # checked before anything is opened: a bad group or TLS file names itself and stops the start
    socket_gid = _socket_gid(settings.server.socket_group)
    tcp_credentials = None
    if settings.server.tcp and not settings.server.insecure:
        tcp_credentials = tls_server_credentials(settings)
    metrics = metrics_server = None
    if settings.server.metrics:  # imported only when asked for: no prometheus_client otherwise
        from pinsvc.metrics import Metrics, MetricsServer
        metrics = Metrics()
        metrics_server = MetricsServer(metrics, settings.server.metrics)
    agent = build_agent(settings, metrics)
    server = grpc.aio.server(interceptors=[*tracing.server_interceptors(), MalformedRequestInterceptor()],
                             options=[("grpc.max_receive_message_length", limits.MAX_MESSAGE_BYTES)])
    pb_grpc.add_PinServiceServicer_to_server(PinServicer(agent), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable(server, (pb.DESCRIPTOR.services_by_name["PinService"].full_name, health.SERVICE_NAME))
    sock = settings.server.socket
    mode = int(settings.server.socket_mode, 8)
    if str(sock) not in ("", "."):
        _bind_unix(server, sock, mode, settings.server.socket_group)
    if tcp_credentials is not None:
        server.add_secure_port(settings.server.tcp, tcp_credentials)
    elif settings.server.tcp:
        log.warning("serving plaintext TCP on %s without TLS or client authentication (--server-insecure): "
                    "anyone who can reach it can change this node's pinned images", settings.server.tcp)
        server.add_insecure_port(settings.server.tcp)
    watched = settings.cri_health_interval_seconds > 0
    for name in ("", SERVICE):  # not ready until the runtime has answered
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if watched:
        agent.runtime_health.subscribe(_follow_runtime(health_servicer))
        if metrics is not None:
            agent.runtime_health.subscribe(lambda runtime: metrics.observe_runtime(runtime.reachable))
    if metrics_server:
        metrics.observe_status(await agent.status())  # pins and generations from the start (restarts)
        await metrics_server.start()
    await server.start()
    if str(sock) not in ("", "."):
        os.chmod(sock, mode)
        if socket_gid >= 0:
            os.chown(sock, -1, socket_gid)
    await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    if watched:
        await agent.runtime_health.check()
    else:  # the runtime is not watched: health says only that the agent serves
        for name in ("", SERVICE):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    tcp = settings.server.tcp and f"{settings.server.tcp} ({'mTLS' if tcp_credentials else 'plaintext'})"
    log.info("pinsvc agent serving on %s", ", ".join(filter(None, [
        f"unix:{sock}" if str(sock) not in ("", ".") else "", tcp])))
    agent.start_drift_checks()  # both stopped by agent.close()
    agent.runtime_health.start()
    if ready:
        ready()
    try:
        if stop is None:
            await server.wait_for_termination()
        else:
            await stop.wait()
    finally:
        await health_servicer.enter_graceful_shutdown()
        await server.stop(grace=5)
        if metrics_server:
            await metrics_server.stop()
        await agent.close()
