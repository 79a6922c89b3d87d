"""A blocking client for plain synchronous code: the async PinClient run on an event loop
in a thread of its own (one per SyncPinClient), so that the channel is made and used on
one loop. Each method blocks until the call is done; errors are the same PinErrors.

    with SyncPinClient("unix:///run/pinsvc/pinsvc.sock") as client:
        status = client.apply([SetSpec("worker", 1, (ref,))], on_event=print)

Do not call it from a coroutine (it would block that loop): use the async client there.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, TypeVar

from pinsvc_client._gen.pinsvc.v1 import pinsvc_pb2 as pb
from pinsvc_client.client import PinClient, SetSpec, Timeout, connect

T = TypeVar("T")
_END = object()


class SyncPinClient:
    """Takes the arguments of `connect()`. Call `close()` (or use `with`) to stop the
    channel and the loop thread."""

    def __init__(self, endpoint: str, **connect_args: Any):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pinsvc-client", daemon=True)
        self._thread.start()
        try:
            self._client: PinClient = self._run(self._connect(endpoint, connect_args))
        except BaseException:
            self._stop()
            raise

    @staticmethod
    async def _connect(endpoint: str, connect_args: dict[str, Any]) -> PinClient:
        return connect(endpoint, **connect_args)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("the SyncPinClient is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:  # KeyboardInterrupt in the caller: stop the call too
            future.cancel()
            raise

    def __enter__(self) -> SyncPinClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if not self._loop.is_closed():
            try:
                self._run(self._client.close())
            finally:  # e.g. Ctrl-C while closing: the loop thread must not outlive the client
                self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def check_space(self, images: Iterable[str], *, timeout: Timeout = ...) -> pb.SpacePlan:
        return self._run(self._client.check_space(list(images), timeout=timeout))

    def status(self, *, timeout: Timeout = ...) -> pb.NodeStatus:
        return self._run(self._client.status(timeout=timeout))

    def health(self, service: str = "", *, timeout: Timeout = ...) -> str:
        return self._run(self._client.health(service, timeout=timeout))

    def write_dropin(self, images: Iterable[str], *, timeout: Timeout = ...) -> pb.WriteDropinResponse:
        return self._run(self._client.write_dropin(list(images), timeout=timeout))

    def reload_runtime(self, *, timeout: Timeout = ...) -> pb.ReloadRuntimeResponse:
        return self._run(self._client.reload_runtime(timeout=timeout))

    def verify_pins(self, pinned: Iterable[str] = (), unpinned: Iterable[str] = (), *, wait_seconds: float = 0,
                    timeout: Timeout = ...) -> pb.VerifyPinsResponse:
        return self._run(self._client.verify_pins(list(pinned), list(unpinned), wait_seconds=wait_seconds,
                                                  timeout=timeout))

    def apply(self, sets: Iterable[SetSpec], *, on_event: Callable[[pb.ApplyEvent], None] | None = None,
              **options: Any) -> pb.NodeStatus:
        """Runs an Apply to its end and returns the final status; `on_event` is called in
        the calling thread for each event. Options as for PinClient.apply."""
        status = None
        for event in self.apply_events(sets, **options):
            if on_event is not None:
                on_event(event)
            if event.HasField("status"):
                status = event.status
        if status is None:
            raise RuntimeError("the Apply stream ended without a status event")
        return status

    def apply_events(self, sets: Iterable[SetSpec], **options: Any) -> Iterator[pb.ApplyEvent]:
        """The events of an Apply as they come. Leaving the loop early cancels the Apply's
        stream (the agent decides what happens to work in flight)."""
        return self._stream(lambda: self._client.apply(list(sets), **options))

    def pull_images(self, images: Iterable[str], **options: Any) -> Iterator[pb.ImageEvent]:
        return self._stream(lambda: self._client.pull_images(list(images), **options))

    def _stream(self, open_stream: Callable[[], Any]) -> Iterator[Any]:
        events: queue.Queue = queue.Queue()

        async def pump() -> None:
            try:
                async for event in open_stream():
                    events.put(event)
            except BaseException as e:  # handed to the caller, cancellation included
                events.put(e)
                if isinstance(e, asyncio.CancelledError):
                    raise
            else:
                events.put(_END)

        future = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        try:
            while (item := events.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            future.cancel()
