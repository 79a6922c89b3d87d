"""CRI ImageService client (grpc.aio over the runtime's unix socket).

The only module that speaks `runtime.v1`. It returns plain model types and converts gRPC
errors into pinsvc's error tree once, classifying pull failures by what the runtime says
(CRI-O reports registry failures as UNKNOWN with the cause in the message).

After the runtime restarts, the channel reconnects with a backoff (up to ~1.2 s): a call in
that window would fail at once although the runtime is back. So every call first waits,
for at most `connect_wait` seconds, until the channel is connected; when the runtime is
really gone the call then fails as unreachable, that much later.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re

import grpc

from pinsvc import errors, tracing
from pinsvc.config import Settings
from pinsvc.gen.runtime.v1 import api_pb2, api_pb2_grpc
from pinsvc.model import Credentials, FsUsage, RuntimeImage
from pinsvc.retry import Backoff, retry

log = logging.getLogger("pinsvc.cri")

_MAX_MESSAGE = 64 << 20  # ListImages on a busy node is large

# Phrases of runtime error messages (lower case). HTTP status codes are matched as whole
# numbers only, never inside a port or a digest (":43401" is not a 401).
_NO_SPACE = re.compile(r"no space left on device")
_NETWORK = re.compile(r"connection refused|connection reset|i/o timeout|timed out|timeout|no route to host|"
                      r"broken pipe|server misbehaving|tls handshake|\beof\b|temporar")
_NOT_FOUND = re.compile(r"manifest unknown|name unknown|not found|does not exist|(?<![\w:.])404(?!\w)")
_UNAUTHORIZED = re.compile(r"unauthorized|authentication required|denied|forbidden|(?<![\w:.])40[13](?!\w)")
_TRANSIENT = re.compile(r"too many requests|toomanyrequests|unavailable|(?<![\w:.])(?:429|50[0234])(?!\w)")


def target(endpoint: str) -> str:
    """gRPC target for a CRI endpoint. Unix sockets keep an explicit `unix:` scheme
    (`unix:///abs/path` or `unix:/abs/path`), so no DNS resolver is ever involved."""
    if endpoint.startswith("/"):
        return "unix:" + endpoint
    if endpoint.startswith("unix:"):
        return endpoint
    raise errors.InvalidArgument(f"CRI endpoint {endpoint!r} is not a unix socket (unix:///path)")


class CriClient:
    """ImageService calls with plain types in and out (core's `ImageRuntime` port)."""

    def __init__(self, endpoint: str, *, timeout: float = 10.0, connect_wait: float = 2.0,
                 fs_info_backoff: Backoff = Settings().cri_fs_info_backoff):
        self.endpoint = endpoint
        self.timeout = timeout or None
        self.connect_wait = connect_wait
        self.fs_info_backoff = fs_info_backoff
        self._channel = grpc.aio.insecure_channel(target(endpoint), interceptors=tracing.client_interceptors(target(endpoint)), options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            # Reconnect quickly after a runtime restart.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ])
        self._stub = api_pb2_grpc.ImageServiceStub(self._channel)
        self._runtime_stub = api_pb2_grpc.RuntimeServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def _ready(self) -> None:
        """Waits up to `connect_wait` seconds for a connected channel (a reconnect after a
        runtime restart). Never raises: if the runtime does not answer, the call that
        follows fails as unreachable."""
        if self.connect_wait <= 0 or self._channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY:
            return
        try:
            async with asyncio.timeout(self.connect_wait):
                await self._channel.channel_ready()
        except TimeoutError:
            log.debug("container runtime at %s: not connected after %gs", self.endpoint, self.connect_wait)

    async def version(self) -> str:
        """"<runtime name> <version>" ("cri-o 1.36.3"); "" from a runtime that serves no
        RuntimeService on this socket (it answered all the same)."""
        await self._ready()
        try:
            resp = await self._runtime_stub.Version(api_pb2.VersionRequest(), timeout=self.timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                return ""
            raise self._error(e, "Version") from e
        return f"{resp.runtime_name} {resp.runtime_version}".strip()

    async def image_status(self, image: str) -> RuntimeImage | None:
        """The image, or None when the runtime does not have it."""
        await self._ready()
        try:
            resp = await self._stub.ImageStatus(
                api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image)), timeout=self.timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise self._error(e, f"ImageStatus {image}") from e
        return _image(resp.image) if resp.HasField("image") and resp.image.id else None

    async def image_diff_ids(self, image: str) -> tuple[str, ...]:
        """The uncompressed layer digests of an image the runtime has (a reference or its
        id), from the image config that a verbose ImageStatus returns in `info["info"]`
        (`imageSpec.rootfs.diff_ids`; CRI-O and containerd both put it there); () when the
        runtime does not have the image or does not say."""
        await self._ready()
        request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image), verbose=True)
        try:
            resp = await self._stub.ImageStatus(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return ()
            raise self._error(e, f"ImageStatus {image}") from e
        try:
            diff_ids = json.loads(resp.info.get("info", "{}"))["imageSpec"]["rootfs"]["diff_ids"]
        except (ValueError, KeyError, TypeError):
            return ()
        return tuple(d for d in diff_ids if isinstance(d, str)) if isinstance(diff_ids, list) else ()

    async def list_images(self) -> list[RuntimeImage]:
        await self._ready()
        try:
            resp = await self._stub.ListImages(api_pb2.ListImagesRequest(), timeout=self.timeout)
        except grpc.aio.AioRpcError as e:
            raise self._error(e, "ListImages") from e
        return [_image(i) for i in resp.images]

    async def pull(self, image: str, credentials: Credentials | None = None,
                   timeout: float | None = None) -> str:
        """Pulls `image` by exactly this reference; returns the image id. `timeout` bounds
        the call (None = unbounded; the caller bounds attempts)."""
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image))
        if credentials is not None:
            request.auth.CopyFrom(_auth(credentials))
        await self._ready()
        try:
            resp = await self._stub.PullImage(request, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise pull_error(image, e) from e
        return resp.image_ref

    async def remove(self, image: str) -> None:
        await self._ready()
        try:
            await self._stub.RemoveImage(
                api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image)), timeout=self.timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise self._error(e, f"RemoveImage {image}") from e

    async def image_fs(self) -> list[FsUsage]:
        """The image filesystems: mountpoint and used bytes (never free bytes).

        CRI-O computes the used bytes by walking its image store, and fails the call when a
        temp file of a concurrent pull vanishes under the walk (UNKNOWN "lstat ...: no such
        file or directory"); that race is retried on `fs_info_backoff`."""
        async def attempt(_: int) -> api_pb2.ImageFsInfoResponse:
            await self._ready()
            try:
                return await self._stub.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=self.timeout)
            except grpc.aio.AioRpcError as e:
                raise self._error(e, "ImageFsInfo") from e

        # Only the race is retried here: an unreachable runtime was waited for already
        # (connect_wait), and the callers decide about every other failure.
        resp = await retry(attempt, self.fs_info_backoff, what="ImageFsInfo", logger=log, level=logging.DEBUG,
                           retryable=_walk_race)
        return [FsUsage(fs.fs_id.mountpoint, fs.used_bytes.value) for fs in resp.image_filesystems]

    def _error(self, e: grpc.aio.AioRpcError, what: str) -> errors.PinsvcError:
        code = e.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            return errors.RuntimeUnavailable(
                f"container runtime at {self.endpoint} is not reachable ({what}): {e.details()}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return errors.Timeout(f"container runtime at {self.endpoint}: {what} timed out")
        return errors.RuntimeError_(f"container runtime: {what} failed: {code.name}: {e.details()}",
                                    retryable=code in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                                       grpc.StatusCode.ABORTED))


def _walk_race(error: BaseException) -> bool:
    """ImageFsInfo failed because a file vanished while CRI-O walked its image store."""
    e = error.__cause__
    return (isinstance(e, grpc.aio.AioRpcError) and e.code() == grpc.StatusCode.UNKNOWN
            and "no such file or directory" in (e.details() or ""))


def pull_error(image: str, e: grpc.aio.AioRpcError) -> errors.PinsvcError:
    """Classifies a failed PullImage by its status code and the runtime's message."""
    code, details = e.code(), (e.details() or "").strip()
    text = details.lower()
    cause = f"pull {image}: {details or code.name}"
    if code == grpc.StatusCode.UNAVAILABLE and ("connect" in text or "socket" in text or not details):
        return errors.RuntimeUnavailable(f"pull {image}: container runtime is not reachable: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.Timeout(f"pull {image}: timed out in the runtime")
    if _NO_SPACE.search(text):
        return errors.NoSpaceLeft(f"pull {image}: no space left on device in the runtime's storage ({details})")
    if _NETWORK.search(text):
        return errors.RegistryError(cause, retryable=True)
    if code == grpc.StatusCode.NOT_FOUND or _NOT_FOUND.search(text):
        return errors.ImageNotFound(f"pull {image}: image not found in the registry ({details})")
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or _UNAUTHORIZED.search(text):
        return errors.Unauthorized(f"pull {image}: the registry refused access ({details})")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return errors.InvalidArgument(cause)
    if _TRANSIENT.search(text) or code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return errors.RegistryError(cause, retryable=True)
    # An unclassified runtime failure: retried within the attempt budget.
    return errors.RuntimeError_(cause, retryable=True)


def _image(img: api_pb2.Image) -> RuntimeImage:
    return RuntimeImage(id=img.id, repo_digests=tuple(img.repo_digests), repo_tags=tuple(img.repo_tags),
                        size=img.size, pinned=img.pinned)


def _auth(c: Credentials) -> api_pb2.AuthConfig:
    return api_pb2.AuthConfig(username=c.username or "", password=c.password or "",
                              server_address=c.server_address or "",
                              identity_token=c.identity_token or "",
                              registry_token=c.registry_token or "")
