"""Live progress of an Apply in a terminal (rich), or plain lines when not a terminal."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pinsvc_client import pb

_K = pb.ImageEvent.Kind


class ApplyProgress:
    """Feeds on ApplyEvents; keeps the final status."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.status: pb.NodeStatus | None = None
        self.live = self.console.is_terminal
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=self.console,
                                  disable=not self.live)
        self._task = self._progress.add_task("images", total=None)
        self._images: set[str] = set()
        self._done: set[str] = set()

    def __enter__(self) -> "ApplyProgress":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def _say(self, text: str) -> None:
        self._progress.console.print(text, markup=False, highlight=False) if self.live else print(text, file=sys.stderr)

    def update(self, event: pb.ApplyEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "status":
            self.status = event.status
        elif kind == "stage":
            self._say(f"{pb.StageEvent.Stage.Name(event.stage.stage).lower()}: {event.stage.message}")
        elif kind == "image":
            e = event.image
            self._images.add(e.image)
            if e.kind in (_K.PULLED, _K.ALREADY_PRESENT, _K.FAILED, _K.CANCELLED):
                self._done.add(e.image)
                self._progress.update(self._task, total=len(self._images), completed=len(self._done))
            if e.kind == _K.PULLED:
                via = f" via {e.via}" if e.via and not e.image.startswith(e.via + "@") else ""
                self._say(f"pulled {e.image}{via} in {e.duration_seconds:.2f}s (attempt {e.attempt})")
            elif e.kind == _K.FAILED:
                self._say(f"FAILED {e.image} after {e.attempt} attempts: {e.reason}")
            elif e.kind == _K.RETRYING:
                self._say(f"retrying {e.image} in {e.retry_in_seconds:.1f}s: {e.reason}")
            elif e.kind == _K.ALREADY_PRESENT and not self.live:
                self._say(f"present {e.image}")
