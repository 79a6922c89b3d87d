"""Property-based tests (hypothesis) of the input boundary.

- The API: the real agent (`pinsvc.api.server.serve`, so the real server options, servicer,
  interceptors and `build_agent`) in-process on a unix socket in a temp dir, with a
  CRI endpoint that does not exist, the drop-in and state in the temp dir, no crio binary
  and reload strategy none. Over 10,000 generated requests (random and hostile strings,
  huge lists, bad numbers, raw bytes) each get a well-formed answer, the one an oracle of
  the limits expects: INVALID_ARGUMENT for bad input with nothing touched, UNAVAILABLE (the
  runtime is unreachable) or OK for good input; never INTERNAL, UNKNOWN or a hang. Every
  file operation is recorded (audit hook): only the drop-in, its temp files and the state
  are ever written, no subprocess is started and no network socket is opened.
- The drop-in renderer and `Dropin.write`: the file parses as TOML and holds exactly the
  sorted unique references; nothing is written outside the drop-in and temp directories.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import re
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from pinsvc import config, limits
from pinsvc.api.server import serve
from pinsvc.adapters.dropin import Dropin
from pinsvc.dropin_format import render_dropin
from pinsvc_client import pb, pb_grpc
from pinsvc.refs import reference_problem, set_name_problem

MIN_REQUESTS = 10_000
MIXED_EXAMPLES, EXPANDED_EXAMPLES, EXPANDED_BATCH, RAW_EXAMPLES = 60, 150, 64, 200
DEADLINE = 20.0  # seconds per call: a hang fails the test, it never blocks the suite
WELL_FORMED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
               grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND}
_FAST = settings(deadline=None, database=None, print_blob=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.large_base_example, HealthCheck.filter_too_much,
                                        HealthCheck.function_scoped_fixture])


def fast(max_examples: int, *, shrink: bool = True) -> settings:
    """No per-example deadline (the per-call gRPC deadline catches hangs), no example
    database in the work tree. Without `shrink`, a failure is reported as found (a batch
    built from a seed shrinks poorly and slowly)."""
    phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if shrink else [])
    return settings(_FAST, max_examples=max_examples, phases=phases)

# Necessary conditions, independent of the validators' regular expressions: whatever they
# accept is plain ASCII of these shapes (no newline, quote, backslash, space or control).
STRICT_REFERENCE = re.compile(r"[A-Za-z0-9.\-\[\]:]+/[a-z0-9._\-/]+@sha256:[0-9a-f]{64}")
STRICT_SET_NAME = re.compile(r"[a-z0-9]([a-z0-9.\-]*[a-z0-9])?")


# ---- strategies ------------------------------------------------------------------------------

NASTY = [
    "", " ", "\n", "\r\n", "\t", "\x00", "\x7f", "\x1b[31m", "\u2028", "\u200d", "\ufeff", "\U0001f600",
    '"', "'", "\\", '\\"', '"""', "'''", "#", "=", "[", "]", "{", "}", ",", "@", ":", "/", "//",
    ".", "..", "../", "/..", "../../etc/passwd", "/etc/crio/crio.conf.d/99-evil", "C:\\x", "%2e%2e%2f",
    '"]\n[crio]\n', '"]\n[crio.image]\npinned_images = ["x"]\n', "pinned_images = []", "[crio.runtime]",
    "sha256:", "@sha256:", "latest", ":latest", "０１２", "аbc",  # fullwidth digits, Cyrillic a
    "a" * 300, "-" * 64, "0" * 64, "A" * 64,
]


def _component():
    return st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


def hosts():
    port = st.integers(1, 65535).map(lambda p: f":{p}")
    dotted = st.lists(_component(), min_size=2, max_size=4).map(".".join)
    return st.one_of(
        st.tuples(dotted, st.one_of(st.just(""), port)).map("".join),
        st.tuples(_component(), port).map("".join),
        st.tuples(st.just("localhost"), st.one_of(st.just(""), port)).map("".join),
        st.tuples(st.lists(st.integers(0, 255).map(str), min_size=4, max_size=4).map(".".join),
                  st.one_of(st.just(""), port)).map("".join),
        st.sampled_from(["[::1]:5000", "[fd00::1]", "Registry.Example.COM", "quay.io", "docker.io"]),
    )


def paths():
    component = st.from_regex(r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+){0,2}", fullmatch=True)
    return st.lists(component, min_size=1, max_size=4).map("/".join)


digests = st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex())


def valid_refs():
    return st.builds(lambda h, p, d: f"{h}/{p}@{d}", hosts(), paths(), digests).filter(
        lambda r: len(r) <= limits.MAX_REFERENCE_LENGTH)


def _mutate(ref: str, fragment: str, where: int, kind: int) -> str:
    at = where % (len(ref) + 1)
    if kind == 0:  # insert
        return ref[:at] + fragment + ref[at:]
    if kind == 1:  # replace one character
        return ref[:at] + fragment + ref[at + 1:]
    if kind == 2:  # cut
        return ref[:at]
    if kind == 3:  # upper-case the digest, or another algorithm
        return ref.upper() if where % 2 else ref.replace("sha256:", "sha512:")
    if kind == 4:  # a tag too
        return ref.replace("@", ":latest@")
    return ref + fragment  # trailing junk, e.g. "\n"


def near_refs():
    """References one edit away from valid (mostly invalid, sometimes still valid)."""
    return st.builds(_mutate, valid_refs(), st.sampled_from(NASTY) | st.text(max_size=3),
                     st.integers(0, 500), st.integers(0, 5))


def image_texts():
    return st.one_of(valid_refs(), valid_refs(), near_refs(), st.sampled_from(NASTY), st.text(max_size=40),
                     st.text(st.characters(codec="utf-8"), max_size=500))


def _distinct(count: int, salt: int) -> list[str]:
    return [f"registry.example.com/p{salt % 97}/img@sha256:{i:064x}" for i in range(count)]


def image_lists():
    """Mostly short lists; sometimes lists around or over the request limit (built, not
    drawn element by element)."""
    at_limit = st.integers(-2, 3).map(lambda d: limits.MAX_IMAGES_PER_REQUEST + d)
    return st.one_of(
        st.lists(image_texts(), max_size=12),
        st.lists(valid_refs(), max_size=12),
        st.builds(lambda n, s, bad: _distinct(n, s) + bad, at_limit, st.integers(0, 1000),
                  st.lists(image_texts(), max_size=1)),
        st.builds(lambda r, n: [r] * n, image_texts(), st.integers(1, 3 * limits.MAX_IMAGES_PER_REQUEST)),
    )


def set_names():
    valid = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,30}[a-z0-9])?", fullmatch=True)
    return st.one_of(valid, valid, st.sampled_from(["web", "worker-pinned-images", "a" * 253, "a" * 254]),
                     st.builds(lambda v, f: v + f, valid, st.sampled_from(NASTY)),
                     st.sampled_from(NASTY), st.text(max_size=20))


generations = st.one_of(st.integers(1, 5), st.integers(-(2 ** 63), 2 ** 63 - 1),
                        st.sampled_from([0, -1, 2 ** 63 - 1, -(2 ** 63)]))
seconds = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 5),
                    st.sampled_from([0.0, -0.0, -1.0, math.nan, math.inf, -math.inf, 1e308, 5e-324,
                                     limits.MAX_ATTEMPT_TIMEOUT_SECONDS, limits.MAX_VERIFY_TIMEOUT_SECONDS,
                                     limits.MAX_VERIFY_TIMEOUT_SECONDS + 1]))
parallelisms = st.one_of(st.integers(0, limits.MAX_PULL_PARALLELISM + 1), st.integers(0, 2 ** 32 - 1),
                         st.sampled_from([0, 1, limits.MAX_PULL_PARALLELISM, 2 ** 32 - 1]))


@st.composite
def pull_options(draw) -> pb.PullOptions:
    options = pb.PullOptions(parallelism=draw(parallelisms))
    if draw(st.booleans()):
        options.attempt_timeout_seconds = draw(seconds)
    return options


@st.composite
def apply_requests(draw) -> pb.ApplyRequest:
    shape = draw(st.integers(0, 9))
    if shape == 0:  # around the set count limit
        n = limits.MAX_SETS_PER_REQUEST + draw(st.integers(-1, 50))
        sets = [pb.PinnedImageSet(name=f"s{i}", generation=1, images=_distinct(1, i)) for i in range(n)]
    elif shape == 1:  # around the distinct image limit: sets of at most 500
        total = limits.MAX_IMAGES_PER_APPLY + draw(st.integers(-1, 2))
        images = _distinct(total, draw(st.integers(0, 9)))
        per = limits.MAX_IMAGES_PER_SET
        sets = [pb.PinnedImageSet(name=f"big{i}", generation=draw(generations), images=images[i:i + per])
                for i in range(0, total, per)]
    elif shape == 2:  # around the per-set limit
        n = limits.MAX_IMAGES_PER_SET + draw(st.integers(-1, 2))
        sets = [pb.PinnedImageSet(name=draw(set_names()), generation=draw(generations),
                                  images=_distinct(n, draw(st.integers(0, 9))))]
    else:
        sets = [pb.PinnedImageSet(name=draw(set_names()), generation=draw(generations),
                                  images=draw(st.lists(image_texts(), max_size=8)))
                for _ in range(draw(st.integers(0, 4)))]
    request = pb.ApplyRequest(sets=sets)
    if draw(st.booleans()):
        request.pull.CopyFrom(draw(pull_options()))
    return request


def requests():
    return st.one_of(
        st.builds(lambda i: ("CheckSpace", pb.CheckSpaceRequest(images=i)), image_lists()),
        st.builds(lambda i, o: ("PullImages", pb.PullImagesRequest(images=i, options=o)),
                  st.lists(image_texts(), max_size=6), pull_options()),
        st.builds(lambda i: ("PullImages", pb.PullImagesRequest(images=i)),
                  image_lists().filter(lambda i: any(reference_problem(x) for x in i[:50]) or len(i) <= 50)),
        st.builds(lambda i: ("WriteDropin", pb.WriteDropinRequest(images=i)), image_lists()),
        st.builds(lambda p, u, t: ("VerifyPins", pb.VerifyPinsRequest(pinned=p, unpinned=u, timeout_seconds=t)),
                  image_lists(), st.lists(image_texts(), max_size=4), seconds),
        apply_requests().map(lambda r: ("Apply", r)),
    )


# ---- expansion: many requests from one drawn recipe ------------------------------------------
# Drawing every character through hypothesis costs ~5 ms a string; to send >10,000 requests
# in seconds, most requests are built by a seeded generator from a drawn recipe (a seed and
# a pool of drawn hostile strings). A failure still reproduces from hypothesis' output.

_HOST_PARTS = ["quay.io", "registry.example.com", "localhost", "127.0.0.1", "[::1]", "a.b", "x-1.y-2.z",
               "Registry.Example.COM", "my-registry", "10.0.0.1"]
_PATH_PARTS = ["a", "openshift-release-dev", "ocp-v4.0-art-dev", "x_y", "a__b", "a.b", "a--b", "0", "z9"]
_CODEPOINTS = [(0x00, 0x20), (0x20, 0x7F), (0x7F, 0xA0), (0xA0, 0x250), (0x2000, 0x2070), (0x4E00, 0x4E40),
               (0xFEFF, 0xFF00), (0xFFF0, 0x10000), (0x1F600, 0x1F650), (0x10FFF0, 0x110000)]


def fast_valid_ref(rnd) -> str:
    host = rnd.choice(_HOST_PARTS)
    if rnd.random() < 0.4 or host in ("my-registry", "[::1]"):
        host += f":{rnd.randint(1, 65535)}"
    path = "/".join(rnd.choice(_PATH_PARTS) for _ in range(rnd.randint(1, 4)))
    return f"{host}/{path}@sha256:{rnd.getrandbits(256):064x}"


def fast_unicode(rnd, size: int) -> str:
    low, high = rnd.choice(_CODEPOINTS)
    return "".join(chr(rnd.randrange(low, high)) for _ in range(size))


def fast_text(rnd, pool: list[str]) -> str:
    kind = rnd.randrange(10)
    if kind < 3:
        return fast_valid_ref(rnd)
    if kind < 6:
        fragment = rnd.choice([rnd.choice(NASTY), rnd.choice(pool), fast_unicode(rnd, rnd.randint(1, 4))])
        return _mutate(fast_valid_ref(rnd), fragment, rnd.randrange(500), rnd.randrange(6))
    if kind == 6:
        return rnd.choice(pool)
    if kind == 7:
        return rnd.choice(NASTY) + rnd.choice(pool)
    if kind == 8:
        return fast_unicode(rnd, rnd.choice([1, 5, 40, 448, 2000]))
    return rnd.choice(NASTY)


def fast_list(rnd, pool: list[str], small: int = 8) -> list[str]:
    shape = rnd.randrange(600)
    if shape == 0:  # around the request limit, valid except maybe one
        images = _distinct(limits.MAX_IMAGES_PER_REQUEST + rnd.randint(-2, 2), rnd.randrange(1000))
        if rnd.random() < 0.5:
            images[rnd.randrange(len(images))] = fast_text(rnd, pool)
        return images
    if shape == 1:  # long lists of one value
        return [fast_text(rnd, pool)] * rnd.choice([100, limits.MAX_IMAGES_PER_REQUEST + 1, 20_000])
    if shape < 300:
        return [fast_valid_ref(rnd) for _ in range(rnd.randint(0, small))]
    return [fast_text(rnd, pool) for _ in range(rnd.randint(0, small))]


def fast_seconds(rnd) -> float:
    return rnd.choice([0.0, -0.0, 0.5, 2.0, -1.0, -1e-9, math.nan, -math.nan, math.inf, -math.inf, 1e308, 5e-324,
                       limits.MAX_VERIFY_TIMEOUT_SECONDS, limits.MAX_VERIFY_TIMEOUT_SECONDS + 1e-6,
                       limits.MAX_ATTEMPT_TIMEOUT_SECONDS, limits.MAX_ATTEMPT_TIMEOUT_SECONDS * 2,
                       rnd.uniform(-10, 10), rnd.uniform(0, 4000), rnd.uniform(0, 1e5)])


def fast_options(rnd) -> pb.PullOptions:
    options = pb.PullOptions(parallelism=rnd.choice([0, 1, 5, limits.MAX_PULL_PARALLELISM,
                                                     limits.MAX_PULL_PARALLELISM + 1, rnd.randrange(2 ** 32)]))
    if rnd.random() < 0.5:
        options.attempt_timeout_seconds = fast_seconds(rnd)
    return options


def fast_name(rnd, pool: list[str]) -> str:
    base = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789-.") for _ in range(rnd.randint(1, 20)))
    return rnd.choice([f"set-{rnd.randrange(6)}", f"set-{rnd.randrange(6)}", base, base.strip("-.") or "a",
                       "a" * rnd.choice([253, 254]), f"set-{rnd.randrange(6)}" + rnd.choice(NASTY),
                       f"set-{rnd.randrange(6)}" + rnd.choice(["\n", "\r\n", " ", "\x00", "/..", '"]\n[crio]']),
                       rnd.choice(pool), rnd.choice(NASTY), fast_unicode(rnd, 5)])


def fast_request(rnd, pool: list[str]) -> tuple[str, object]:
    method = rnd.choice(["CheckSpace", "PullImages", "WriteDropin", "VerifyPins", "Apply", "Apply"])
    if method == "CheckSpace":
        return method, pb.CheckSpaceRequest(images=fast_list(rnd, pool))
    if method == "WriteDropin":
        return method, pb.WriteDropinRequest(images=fast_list(rnd, pool))
    if method == "VerifyPins":
        return method, pb.VerifyPinsRequest(pinned=fast_list(rnd, pool), unpinned=fast_list(rnd, pool, 3),
                                            timeout_seconds=fast_seconds(rnd) if rnd.random() < 0.5 else 0.0)
    if method == "PullImages":
        images = fast_list(rnd, pool, 4)
        if len(images) > 50 and all(reference_problem(i) is None for i in images):
            images = images[:50]  # the runtime answers each pull: keep valid pulls short
        return method, pb.PullImagesRequest(images=images, options=fast_options(rnd))
    count = (rnd.choice([limits.MAX_SETS_PER_REQUEST, limits.MAX_SETS_PER_REQUEST + 1]) if rnd.random() < 0.03
             else rnd.choice([0, 1, 1, 1, 2, 3]))
    sets = []
    for index in range(count):
        shape = rnd.randrange(10) if count < 10 else 9
        if shape < 8:
            images = fast_list(rnd, pool, 6)
        elif shape == 8 and rnd.random() < 0.3:  # around the per-set limit
            images = _distinct(limits.MAX_IMAGES_PER_SET + rnd.randint(-1, 1), rnd.randrange(99))
        else:
            images = [fast_valid_ref(rnd)]
        sets.append(pb.PinnedImageSet(
            name=fast_name(rnd, pool) if count < 10 else f"many-{index}",
            generation=rnd.choice([1, 1, 2, 3, 0, -1, 2 ** 63 - 1, -(2 ** 63), rnd.randint(1, 10)]), images=images))
    request = pb.ApplyRequest(sets=sets)
    if rnd.random() < 0.5:
        request.pull.CopyFrom(fast_options(rnd))
    return method, request


def ref_lists(max_size: int):
    """Lists of valid references, some with duplicates: drawn one by one, or built from a
    drawn seed (cheaper)."""
    def build(seed: int, size: int, repeat: int) -> list[str]:
        rnd = random.Random(seed)
        refs = [fast_valid_ref(rnd) for _ in range(size)]
        return refs + refs[:repeat]
    return st.one_of(st.lists(valid_refs(), max_size=3),
                     st.builds(build, st.integers(0, 2 ** 64), st.integers(0, max_size), st.integers(0, 3)))


# ---- oracle ----------------------------------------------------------------------------------

def _ref_ok(text: str) -> bool:
    """The validator's verdict, and the independent necessary condition: a validator that
    let through a newline or a quote would make the agent's answer differ from this."""
    return reference_problem(text) is None and STRICT_REFERENCE.fullmatch(text) is not None


def _name_ok(name: str) -> bool:
    return set_name_problem(name) is None and STRICT_SET_NAME.fullmatch(name) is not None and len(name) <= 253


def _refs_ok(images) -> bool:
    return len(images) <= limits.MAX_IMAGES_PER_REQUEST and all(map(_ref_ok, images))


def _seconds_ok(value: float, limit: float) -> bool:
    return math.isfinite(value) and 0 <= value <= limit


def _options_ok(options: pb.PullOptions) -> bool:
    return (options.parallelism <= limits.MAX_PULL_PARALLELISM
            and (not options.HasField("attempt_timeout_seconds")
                 or _seconds_ok(options.attempt_timeout_seconds, limits.MAX_ATTEMPT_TIMEOUT_SECONDS)))


def _sets_ok(sets) -> bool:
    if len(sets) > limits.MAX_SETS_PER_REQUEST:
        return False
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        return False
    for s in sets:
        if not _name_ok(s.name) or s.generation < 1 or not s.images:
            return False
        if len(s.images) > limits.MAX_IMAGES_PER_SET or not all(map(_ref_ok, s.images)):
            return False
    return len({i for s in sets for i in s.images}) <= limits.MAX_IMAGES_PER_APPLY


def valid(method: str, request) -> bool:
    if method in ("CheckSpace", "WriteDropin"):
        return _refs_ok(request.images)
    if method == "PullImages":
        return _options_ok(request.options) and _refs_ok(request.images)
    if method == "VerifyPins":
        return (_seconds_ok(request.timeout_seconds, limits.MAX_VERIFY_TIMEOUT_SECONDS)
                and _refs_ok(request.pinned) and _refs_ok(request.unpinned))
    return _options_ok(request.pull) and _sets_ok(request.sets)


# ---- audit: every file written, process started and socket opened ---------------------------

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_AUDITED = {"open", "os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.chmod", "os.chown", "os.symlink",
            "os.link", "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.move",
            "tempfile.mkdtemp", "tempfile.mkstemp", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn",
            "os.fork", "socket.connect", "socket.getaddrinfo", "socket.bind"}


@dataclass
class _Audit:
    recording: bool = False
    skip_main_thread: bool = False  # the test and hypothesis itself (its cache), not the agent
    events: list[tuple[str, tuple]] = field(default_factory=list)

    def hook(self, event: str, args: tuple) -> None:
        if event not in _AUDITED or not self.recording:
            return
        if self.skip_main_thread and threading.current_thread() is threading.main_thread():
            return
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                     (isinstance(flags, int) and flags & _WRITE_FLAGS)
            if not writes or isinstance(path, int):
                return
        if event in ("os.chmod", "os.chown", "os.utime", "os.truncate") and isinstance(args[0], int):
            return  # on an open descriptor, whose open was recorded
        self.events.append((event, args))

    @contextlib.contextmanager
    def record(self, *, skip_main_thread: bool = False):
        self.events.clear()
        self.recording, self.skip_main_thread = True, skip_main_thread
        try:
            yield self.events
        finally:
            self.recording = False


AUDIT = _Audit()
sys.addaudithook(AUDIT.hook)  # cannot be removed; records only inside AUDIT.record()


def _paths(event: str, args: tuple) -> list[Path]:
    if event in ("os.rename", "os.symlink", "os.link", "shutil.copyfile", "shutil.move"):
        raw = args[:2]
    else:
        raw = args[:1]
    return [Path(os.fsdecode(p)) for p in raw if isinstance(p, (str, bytes, os.PathLike))]


def check_writes(events, allowed: list[Path], temp_dir: Path, dropin_name: str = "50-pinned-images") -> None:
    """Every recorded event is a file operation on or under one of `allowed`, or on a temp
    file of the drop-in (`.pinsvc-<name>-*`) directly in `temp_dir`; no process was started
    and no network socket used."""
    for event, args in events:
        assert not event.startswith(("subprocess", "os.system", "os.exec", "os.posix_spawn", "os.fork")), \
            f"a process was started: {event} {args!r:.200}"
        assert not event.startswith("socket."), f"network access: {event} {args!r:.200}"
        for path in _paths(event, args):
            p = Path(os.path.abspath(path))
            temp_file = p.parent == temp_dir and p.name.startswith(f".pinsvc-{dropin_name}-")
            assert temp_file or any(p == a or p.is_relative_to(a) for a in allowed), \
                f"{event} outside the allowed places: {path}"


def snapshot(root: Path, *, skip: tuple[Path, ...] = ()) -> dict[str, bytes | str]:
    """Every entry under `root` (relative path -> bytes of a file, or its kind)."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if any(d == s or d.is_relative_to(s) for s in skip):
            dirnames.clear()
            continue
        for name in dirnames:
            out[str((d / name).relative_to(root))] = "dir"
        for name in filenames:
            p = d / name
            if any(p == s for s in skip):
                continue
            out[str(p.relative_to(root))] = p.read_bytes() if p.is_file() and not p.is_symlink() else "other"
    return out


# ---- the agent -------------------------------------------------------------------------------

@dataclass
class Node:
    root: Path
    dropin_dir: Path
    temp_dir: Path
    state_dir: Path
    socket: Path
    loop: asyncio.AbstractEventLoop
    stub: pb_grpc.PinServiceStub
    channel: grpc.aio.Channel
    sent: int = 0
    by_method: dict[str, int] = field(default_factory=dict)
    by_code: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # time in calls, by method
    desired: dict[str, int] = field(default_factory=dict)  # the oracle's model of requested generations

    @property
    def dropin(self) -> Path:
        return self.dropin_dir / "50-pinned-images"

    def run(self, coro, timeout: float = 4 * DEADLINE):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def touched(self) -> tuple:
        """What a rejected request must leave as it was."""
        state = self.state_dir / "state.json"
        return (snapshot(self.dropin_dir), snapshot(self.temp_dir, skip=(self.dropin_dir,)),
                state.read_bytes() if state.exists() else None)

    async def call(self, method: str, request) -> tuple[grpc.StatusCode, str, list]:
        """(code, details, responses) of one call; a streaming call is read to its end."""
        self.sent += 1
        self.by_method[method] = self.by_method.get(method, 0) + 1
        rpc = getattr(self.stub, method)
        start = time.monotonic()
        try:
            if method in ("Apply", "PullImages"):
                responses = [r async for r in rpc(request, timeout=DEADLINE)]
            else:
                responses = [await rpc(request, timeout=DEADLINE)]
            code, details = grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as e:
            code, details, responses = e.code(), e.details() or "", []
        self.seconds[method] = self.seconds.get(method, 0.0) + time.monotonic() - start
        self.by_code[code.name] = self.by_code.get(code.name, 0) + 1
        return code, details, responses

    async def call_raw(self, method: str, data: bytes) -> tuple[grpc.StatusCode, str]:
        self.sent += 1
        self.by_method["raw " + method] = self.by_method.get("raw " + method, 0) + 1
        path = f"/pinsvc.v1.PinService/{method}"
        try:
            if method in ("Apply", "PullImages"):
                call = self.channel.unary_stream(path, request_serializer=None, response_deserializer=None)
                [r async for r in call(data, timeout=DEADLINE)]
            else:
                call = self.channel.unary_unary(path, request_serializer=None, response_deserializer=None)
                await call(data, timeout=DEADLINE)
            code, details = grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as e:
            code, details = e.code(), e.details() or ""
        self.by_code[code.name] = self.by_code.get(code.name, 0) + 1
        return code, details


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """The real agent serving on a unix socket in a temp dir; the loop runs in a thread."""
    root = tmp_path_factory.mktemp("node")
    dropin_dir, temp_dir, state_dir = root / "etc/crio/crio.conf.d", root / "etc/crio", root / "var/lib/pinsvc"
    dropin_dir.mkdir(parents=True)
    state_dir.mkdir(parents=True)
    (temp_dir / "crio.conf").write_text("# main config: never touched\n")
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")  # a target for path tricks
    sock = root / "run/pinsvc.sock"
    settings_ = config.build({
        (None, "node_name"): "fuzz", (None, "cri_endpoint"): f"unix://{root}/run/no-crio.sock",
        (None, "cri_timeout_seconds"): 2.0, (None, "cri_connect_wait_seconds"): 0, (None, "state_dir"): str(state_dir),
        ("server", "socket"): str(sock), ("dropin", "directory"): str(dropin_dir),
        ("dropin", "temp_dir"): str(temp_dir), ("dropin", "crio_binary"): "",
        ("dropin", "crio_config"): str(temp_dir / "crio.conf"), ("reload", "strategy"): "none",
        ("registry", "pull_secret"): str(root / "no-pull-secret.json"), ("registry", "timeout_seconds"): 2.0,
        ("pull", "max_attempts"): 1, ("pull", "attempt_timeout_seconds"): 5.0,
    })
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="agent-loop", daemon=True)
    thread.start()
    ready, stop = threading.Event(), asyncio.Event()
    server = asyncio.run_coroutine_threadsafe(serve(settings_, ready=ready.set, stop=stop), loop)
    assert ready.wait(30), "the agent did not start"

    async def connect():
        channel = grpc.aio.insecure_channel(f"unix:{sock}")
        return channel, pb_grpc.PinServiceStub(channel)

    channel, stub = asyncio.run_coroutine_threadsafe(connect(), loop).result(10)
    n = Node(root, dropin_dir, temp_dir, state_dir, sock, loop, stub, channel)
    before = snapshot(root, skip=(dropin_dir, state_dir, sock))
    yield n
    asyncio.run_coroutine_threadsafe(channel.close(), loop).result(10)
    loop.call_soon_threadsafe(stop.set)
    server.result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    assert snapshot(root, skip=(dropin_dir, state_dir, sock)) == before, "files outside the drop-in and state changed"


# ---- API properties --------------------------------------------------------------------------

def _expect(node: Node, method: str, request, ok: bool) -> set[grpc.StatusCode]:
    """The answers the oracle allows for `request`, `valid` or not (and it updates the
    model of requested generations)."""
    if request.ByteSize() > limits.MAX_MESSAGE_BYTES:
        return {grpc.StatusCode.RESOURCE_EXHAUSTED}
    if not ok:
        return {grpc.StatusCode.INVALID_ARGUMENT}
    if method in ("PullImages", "WriteDropin"):
        return {grpc.StatusCode.OK}
    if method == "Apply":
        if any(s.name in node.desired and s.generation < node.desired[s.name] for s in request.sets):
            return {grpc.StatusCode.FAILED_PRECONDITION}
        node.desired = {s.name: s.generation for s in request.sets}
    return {grpc.StatusCode.UNAVAILABLE}


def _check_answer(node: Node, method: str, request, ok: bool, code, details, responses) -> None:
    assert code == grpc.StatusCode.OK or code in WELL_FORMED, f"{method}: {code.name}: {details!r:.300}"
    assert code == grpc.StatusCode.OK or details.strip(), f"{method}: {code.name} without a message"
    expected = _expect(node, method, request, ok)
    assert code in expected, f"{method}: {code.name} ({details!r:.500}), expected {[c.name for c in expected]}"
    assert limits.sent_bytes(details) <= limits.MAX_STATUS_MESSAGE_BYTES
    if code == grpc.StatusCode.OK and method == "WriteDropin":
        refs = sorted(set(request.images))
        if refs:
            assert tomllib.loads(node.dropin.read_text())["crio"]["image"]["pinned_images"] == refs
        else:
            assert not node.dropin.exists()
    if code == grpc.StatusCode.OK and method == "PullImages":  # the runtime is unreachable
        assert {e.image for e in responses if e.kind == pb.ImageEvent.Kind.FAILED} == set(request.images)


def _send(node: Node, batch) -> None:
    """Sends the requests that must change nothing (bad ones, and good CheckSpace,
    VerifyPins and PullImages) at once and checks that nothing changed; then the good
    Applies and WriteDropins one by one, in order."""
    judged = [(method, request, valid(method, request)) for method, request in batch]
    quiet = [j for j in judged if not (j[2] and j[0] in ("Apply", "WriteDropin"))]
    loud = [j for j in judged if j[2] and j[0] in ("Apply", "WriteDropin")]

    async def go():
        before = node.touched()
        answers = await asyncio.gather(*(node.call(method, request) for method, request, _ in quiet))
        assert node.touched() == before, "a refused or read-only request changed the drop-in or the state"
        for (method, request, ok), answer in zip(quiet, answers):
            _check_answer(node, method, request, ok, *answer)
        for method, request, ok in loud:
            _check_answer(node, method, request, ok, *await node.call(method, request))
    node.run(go())


def test_api_boundary_answers_every_request_well(node: Node) -> None:
    """>= 10,000 generated requests across Apply, CheckSpace, PullImages, WriteDropin and
    VerifyPins (and raw bytes): each gets the expected well-formed answer, nothing outside
    the drop-in, its temp files and the state is written, and the agent keeps serving."""
    start = time.monotonic()

    @fast(MIXED_EXAMPLES)
    @given(st.lists(requests(), min_size=1, max_size=8))
    def mixed(batch):
        """Every part of every request drawn by hypothesis."""
        _send(node, batch)

    @fast(EXPANDED_EXAMPLES, shrink=False)
    @given(seed=st.integers(0, 2 ** 64), pool=st.lists(st.one_of(image_texts(), set_names()), min_size=1, max_size=6))
    def expanded(seed, pool):
        """EXPANDED_BATCH requests built from a drawn seed and pool of drawn strings."""
        rnd = random.Random(seed)
        _send(node, [fast_request(rnd, pool) for _ in range(EXPANDED_BATCH)])

    @fast(RAW_EXAMPLES, shrink=False)
    @given(st.lists(st.tuples(st.sampled_from(["Apply", "CheckSpace", "PullImages", "WriteDropin", "VerifyPins",
                                               "GetStatus", "ReloadRuntime"]),
                              st.binary(max_size=64) | st.binary(max_size=8).map(lambda b: b"\x0a\x04\xff\xfe" + b)),
                    min_size=5, max_size=10))
    def raw(batch):
        async def go():
            for method, data in batch:
                code, details = await node.call_raw(method, data)
                assert code == grpc.StatusCode.OK or code in WELL_FORMED, f"raw {method}: {code.name}: {details!r:.300}"
                assert code == grpc.StatusCode.OK or details.strip()
                request_type = {"GetStatus": pb.GetStatusRequest, "ReloadRuntime": pb.ReloadRuntimeRequest}.get(
                    method) or getattr(pb, f"{method}Request")
                try:
                    request_type.FromString(data)
                except Exception:  # noqa: BLE001 - does not parse: must be refused as such
                    assert code == grpc.StatusCode.INVALID_ARGUMENT and "malformed request" in details, details
            node.desired = {}  # raw Applies change the sets in ways the model does not follow
        node.run(go())
        node.run(node.call("Apply", pb.ApplyRequest()))  # an empty desired state resets the generations

    with AUDIT.record(skip_main_thread=True) as events:  # the agent runs in other threads
        mixed()
        expanded()
        raw()
        sent = node.sent
        # still serving: a status, and a good write
        code, details, _ = node.run(node.call("GetStatus", pb.GetStatusRequest()))
        assert code == grpc.StatusCode.OK, details
        good = "quay.io/ok/image@sha256:" + "0" * 64
        code, details, _ = node.run(node.call("WriteDropin", pb.WriteDropinRequest(images=[good])))
        assert code == grpc.StatusCode.OK, details
    check_writes(events, [node.dropin_dir, node.state_dir], node.temp_dir)
    written = {p.parent for event, args in events for p in _paths(event, args)}
    assert {node.dropin_dir, node.state_dir, node.temp_dir} <= written, "the audit hook saw no write of the agent"
    elapsed = time.monotonic() - start
    leftovers = [p.name for p in node.temp_dir.iterdir() if p.name.startswith(".pinsvc-")]
    assert not leftovers, f"temp files left in {node.temp_dir}: {leftovers}"
    assert sorted(p.name for p in node.dropin_dir.iterdir()) == ["50-pinned-images"]
    print(f"\n{sent} generated requests in {elapsed:.1f}s; by method {node.by_method}; by code {node.by_code}; "
          f"seconds in calls, overlapping {({m: round(t, 1) for m, t in node.seconds.items()})}")
    assert sent >= MIN_REQUESTS, f"only {sent} requests were generated"


def test_message_over_the_limit_is_refused_by_grpc(node: Node) -> None:
    images = ["quay.io/a/b@sha256:" + "0" * 64] * (limits.MAX_MESSAGE_BYTES // 80 + 10)
    request = pb.CheckSpaceRequest(images=images)
    assert request.ByteSize() > limits.MAX_MESSAGE_BYTES
    before = node.touched()
    code, details, _ = node.run(node.call("CheckSpace", request))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and str(limits.MAX_MESSAGE_BYTES) in details, details
    code, details, _ = node.run(node.call("WriteDropin", pb.WriteDropinRequest(images=images)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert node.touched() == before
    assert node.run(node.call("GetStatus", pb.GetStatusRequest()))[0] == grpc.StatusCode.OK


@pytest.mark.parametrize("method, request_, words", [
    ("CheckSpace", pb.CheckSpaceRequest(images=["x"] * 5001), "5001 image references in the request (at most 5000)"),
    ("VerifyPins", pb.VerifyPinsRequest(unpinned=["x"] * 5001), "unpinned: 5001 image references"),
    ("VerifyPins", pb.VerifyPinsRequest(timeout_seconds=math.nan), "verify timeout nan is not a finite"),
    ("VerifyPins", pb.VerifyPinsRequest(timeout_seconds=-1), "verify timeout -1 is negative"),
    ("VerifyPins", pb.VerifyPinsRequest(timeout_seconds=1e9), "verify timeout 1e+09 is over the limit (3600"),
    ("PullImages", pb.PullImagesRequest(options=pb.PullOptions(parallelism=65)), "pull parallelism 65 is out of range"),
    ("PullImages", pb.PullImagesRequest(options=pb.PullOptions(attempt_timeout_seconds=-2)),
     "pull attempt timeout -2 is negative"),
    ("Apply", pb.ApplyRequest(sets=[pb.PinnedImageSet(name=f"s{i}") for i in range(201)]),
     "201 sets in the request (at most 200)"),
    ("Apply", pb.ApplyRequest(sets=[pb.PinnedImageSet(name="web\n", generation=1,
                                                      images=["quay.io/a/b@sha256:" + "0" * 64])]),
     "not an RFC 1123 subdomain"),
    ("Apply", pb.ApplyRequest(sets=[pb.PinnedImageSet(name=f"s{i}", generation=1, images=_distinct(500, i))
                                    for i in range(11)]), "5500 distinct images across the sets (at most 5000)"),
    ("Apply", pb.ApplyRequest(sets=[pb.PinnedImageSet(name="s", generation=1, images=["x"] * 100_000)]),
     "set 's': 100000 images (at most 500)"),
])
def test_each_limit_is_named_with_the_value(node: Node, method, request_, words) -> None:
    before = node.touched()
    code, details, _ = node.run(node.call(method, request_))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and words in details, details
    assert node.touched() == before


def test_a_long_list_of_bad_values_still_reaches_the_client_as_invalid_argument(node: Node) -> None:
    """Every bad value is named, but the status message is cut to what gRPC clients accept
    (before, 5,000 bad references gave RESOURCE_EXHAUSTED 'metadata size exceeds limit')."""
    images = ["\u4e00bad\u00e9" * 30 + str(i) for i in range(limits.MAX_IMAGES_PER_REQUEST)]
    code, details, _ = node.run(node.call("CheckSpace", pb.CheckSpaceRequest(images=images)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith("image reference ") and details.endswith("more characters left out)"), details


@fast(100)
@given(refs=ref_lists(20), bad=st.lists(near_refs() | st.sampled_from(NASTY), max_size=2))
def test_write_dropin_through_the_api_holds_exactly_the_validated_references(node: Node, refs, bad) -> None:
    requested = refs + bad
    before = node.dropin.read_bytes() if node.dropin.exists() else None
    code, details, _ = node.run(node.call("WriteDropin", pb.WriteDropinRequest(images=requested)))
    if any(reference_problem(r) for r in requested):
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert (node.dropin.read_bytes() if node.dropin.exists() else None) == before
    else:
        assert code == grpc.StatusCode.OK, details
        if requested:
            doc = tomllib.loads(node.dropin.read_text())
            assert doc == {"crio": {"image": {"pinned_images": sorted(set(requested))}}}
        else:
            assert not node.dropin.exists()


# ---- the validators alone --------------------------------------------------------------------

@fast(250)
@given(text=st.one_of(image_texts(), near_refs()), seed=st.integers(0, 2 ** 64),
       pool=st.lists(image_texts(), min_size=1, max_size=3))
def test_accepted_references_are_plain_digest_references(text, seed, pool) -> None:
    """The drawn text, and 50 more built from the seed and the drawn pool."""
    rnd = random.Random(seed)
    for candidate in [text] + [fast_text(rnd, pool) for _ in range(50)]:
        problem = reference_problem(candidate)
        if problem is None:
            assert len(candidate) <= limits.MAX_REFERENCE_LENGTH and candidate.isascii()
            assert STRICT_REFERENCE.fullmatch(candidate), candidate
        else:
            assert len(problem) < 400  # the value is shown shortened


@fast(600)
@given(set_names())
def test_accepted_set_names_are_rfc1123_subdomains(name) -> None:
    if set_name_problem(name) is None:
        assert len(name) <= limits.MAX_SET_NAME_LENGTH and STRICT_SET_NAME.fullmatch(name), repr(name)


@fast(300)
@given(st.text(max_size=3000))
def test_status_message_is_bounded(text) -> None:
    def sent(t: str) -> int:  # percent-encoding of the grpc-message trailer, counted naively
        return sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in t.encode())

    out = limits.status_message(text, limit=600)
    assert sent(out) <= 600
    assert out == text if sent(text) <= 600 else out.endswith("more characters left out)")


# ---- the drop-in renderer and writer ---------------------------------------------------------

@fast(200)
@given(st.one_of(ref_lists(40), st.lists(image_texts().filter(lambda t: reference_problem(t) is None), max_size=5)))
def test_rendered_dropin_parses_and_holds_the_sorted_unique_references(refs) -> None:
    doc = tomllib.loads(render_dropin(refs))
    assert doc == {"crio": {"image": {"pinned_images": sorted(set(refs))}}}


@fast(300)
@given(st.lists(st.text(st.characters(codec="utf-8"), max_size=30), max_size=10))
def test_rendered_dropin_parses_for_any_strings(texts) -> None:
    """Defense in depth: even values validation would refuse render to TOML that parses back
    to the same list (quotes, newlines, control characters, TOML syntax)."""
    assert tomllib.loads(render_dropin(texts))["crio"]["image"]["pinned_images"] == sorted(set(texts))


@pytest.fixture(scope="module")
def dropin_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dropin")
    (root / "etc/crio/crio.conf.d").mkdir(parents=True)
    (root / "etc/crio/crio.conf.d/10-other.conf").write_text("[crio.runtime]\nlog_level = 'info'\n")
    (root / "etc/crio/crio.conf").write_text("# main\n")
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    return root


@fast(150)
@given(ref_lists(15))
def test_dropin_write_touches_only_its_file_and_temp_dir(dropin_root: Path, refs) -> None:
    directory, temp = dropin_root / "etc/crio/crio.conf.d", dropin_root / "etc/crio"
    path = directory / "50-pinned-images"
    before = snapshot(dropin_root, skip=(path,))
    with AUDIT.record() as events:
        result = asyncio.run(Dropin(path, temp, crio_binary="").write(refs))
    check_writes(events, [path], temp)
    assert snapshot(dropin_root, skip=(path,)) == before
    if refs:
        assert tomllib.loads(path.read_text()) == {"crio": {"image": {"pinned_images": sorted(set(refs))}}}
        assert result.sha256
    else:
        assert not path.exists()
