"""The agent's durable state: per set generations and failures, per image progress, and
what the drop-in holds. One JSON file, written atomically (temp file in the same directory,
fsync, rename, fsync the directory), so a restarted agent reports the same status and
resumes without re-pulling what is present. Never holds credentials.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pinsvc import errors
from pinsvc.files import write_atomic

log = logging.getLogger("pinsvc.state")

VERSION = 1
MAX_ERROR = 32768


@dataclass
class SetState:
    name: str
    desired_generation: int
    current_generation: int = 0
    last_failed_generation: int = 0
    last_failed_generation_error: str = ""
    images: list[str] = field(default_factory=list)          # at desired_generation
    current_images: list[str] = field(default_factory=list)  # at current_generation


@dataclass
class ImageState:
    phase: str = "pending"  # pending, pulling, present, pinned, failed
    attempts: int = 0
    bytes: int = 0
    last_error: str = ""


@dataclass
class Condition:
    type: str
    status: str
    reason: str
    message: str
    last_transition_time: str = ""


@dataclass
class DriftRepair:
    """A difference between the node and its last verified pins that a drift check found,
    and how its repair went (see core/drift.py)."""

    kind: str     # image_removed, image_unpinned, dropin_changed, dropin_removed
    target: str   # the image, or the drop-in path
    time: str     # of the last check that found it
    repaired: bool
    error: str = ""
    count: int = 1  # consecutive checks that found it and failed the same way


@dataclass
class State:
    sets: dict[str, SetState] = field(default_factory=dict)
    images: dict[str, ImageState] = field(default_factory=dict)
    conditions: dict[str, Condition] = field(default_factory=dict)
    pinned: list[str] = field(default_factory=list)  # what the drop-in pins now
    repairs: list[DriftRepair] = field(default_factory=list)  # most recent last
    # Pins of a drop-in of ours found with no state (core/pins.py), kept through failed
    # Applies until one succeeds for every set. Absent from files of older agents.
    inherited: list[str] = field(default_factory=list)

    def set_condition(self, type: str, status: str, reason: str, message: str) -> None:
        old = self.conditions.get(type)
        when = old.last_transition_time if old and old.status == status else now()
        self.conditions[type] = Condition(type, status, reason, message, when)


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def truncate_error(message: str) -> str:
    return message if len(message) <= MAX_ERROR else message[: MAX_ERROR - 3] + "..."


class StateStore:
    def __init__(self, directory: Path):
        self.directory = directory
        self.path = directory / "state.json"

    def load(self) -> State:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return State()
        except (OSError, ValueError) as e:
            raise errors.StateError(f"state file {self.path} is unreadable: {e}; move it aside to start afresh") from e
        if doc.get("version") != VERSION:
            raise errors.StateError(f"state file {self.path} has version {doc.get('version')!r}, expected {VERSION}")
        return State(
            sets={k: SetState(**v) for k, v in doc.get("sets", {}).items()},
            images={k: ImageState(**v) for k, v in doc.get("images", {}).items()},
            conditions={k: Condition(**v) for k, v in doc.get("conditions", {}).items()},
            pinned=list(doc.get("pinned", [])),
            repairs=[DriftRepair(**r) for r in doc.get("repairs", [])],
            inherited=list(doc.get("inherited", [])),
        )

    def save(self, state: State) -> None:
        """Atomic and durable; blocking (call through asyncio.to_thread)."""
        doc = {"version": VERSION, **asdict(state)}
        data = json.dumps(doc, indent=1, sort_keys=True).encode()
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(self.path, data)
        except OSError as e:
            raise errors.from_os_error(f"the state file {self.path}", e) from e
