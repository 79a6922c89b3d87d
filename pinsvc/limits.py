"""Limits on what one request may ask of the agent, in one place.

The agent runs as root and its API is its only input, so every size and number a request
carries is bounded. A request over a limit is refused as a whole, before anything is
touched, with INVALID_ARGUMENT naming the limit and the value; a message over
MAX_MESSAGE_BYTES is refused by gRPC itself with RESOURCE_EXHAUSTED before it is parsed.
Malformed protobuf bytes get INVALID_ARGUMENT (pinsvc.api.guard).

Pure: no I/O, no gRPC.
"""

from __future__ import annotations

import math

from pinsvc.errors import InvalidArgument

MAX_MESSAGE_BYTES = 4 << 20
"""Largest request message the agent accepts (server option
`grpc.max_receive_message_length`; gRPC's own default). The largest request of distinct
references, 5,000 of 447 characters, is ~2.3 MB."""

MAX_SETS_PER_REQUEST = 200
"""Pinned image sets in one Apply (the node's whole desired state). The MCO caps a pool at
100 (`MachineConfigPoolSpec.pinnedImageSets` MaxItems) and a node gets the union of its
pools' sets (a custom pool plus worker), so two pools' worth."""

MAX_IMAGES_PER_SET = 500
"""References in one set (OpenShift's `PinnedImageSetSpec.pinnedImages` MaxItems)."""

MAX_IMAGES_PER_APPLY = 5000
"""Distinct references across all the sets of one Apply."""

MAX_IMAGES_PER_REQUEST = 5000
"""References in the list of a CheckSpace, PullImages or WriteDropin request, and in each
list (pinned, unpinned) of a VerifyPins request, duplicates included."""

MAX_SET_NAME_LENGTH = 253
"""Characters of a set name (an RFC 1123 subdomain, like a Kubernetes object name)."""

MAX_REFERENCE_LENGTH = 447
"""Characters of one digest reference (OpenShift's `PinnedImageRef.name` MaxLength)."""

MAX_PULL_PARALLELISM = 64
"""Largest `PullOptions.parallelism` (pulls in flight for one request); 0 takes the agent's
default, and the node-wide limit (`--pull-max-parallelism`) applies on top."""

MAX_ATTEMPT_TIMEOUT_SECONDS = 86400.0
"""Largest `PullOptions.attempt_timeout_seconds` (one day); 0 means no timeout, unset the
agent's default. Negative, NaN and infinite values are refused."""

MAX_VERIFY_TIMEOUT_SECONDS = 3600.0
"""Largest `VerifyPinsRequest.timeout_seconds`; 0 takes the agent's default. Negative, NaN
and infinite values are refused (NaN or infinity would poll for ever)."""

MAX_STATUS_MESSAGE_BYTES = 3072
"""Bound of the status message of an error answer, as sent (gRPC percent-encodes every
byte outside printable ASCII, so one character may take up to 12 bytes). A longer message
is cut and says how much was left out: gRPC clients refuse trailers larger than 8 KiB by
default, and would then see RESOURCE_EXHAUSTED instead of the error. The message is sent
twice, as grpc-message and in the status details (base64, 4/3 of its UTF-8 bytes, which
are at most its sent bytes): 3 KiB keeps both within 7.5 KiB."""


def count_problem(count: int, limit: int, what: str) -> str | None:
    """`what` names the counted things, e.g. 'image references in the request'."""
    if count > limit:
        return f"{count} {what} (at most {limit})"
    return None


def _seconds_problem(value: float, name: str, limit: float) -> str | None:
    if math.isnan(value) or math.isinf(value):
        return f"{name} {value} is not a finite number of seconds"
    if value < 0:
        return f"{name} {value:g} is negative"
    if value > limit:
        return f"{name} {value:g} is over the limit ({limit:g} seconds at most)"
    return None


def pull_options_problems(parallelism: int, attempt_timeout: float | None) -> list[str]:
    """Why the pull options of a request are unacceptable ([] when they are fine)."""
    problems = []
    if parallelism < 0 or parallelism > MAX_PULL_PARALLELISM:
        problems.append(f"pull parallelism {parallelism} is out of range "
                        f"(0 = the agent's default, at most {MAX_PULL_PARALLELISM})")
    if attempt_timeout is not None:
        problem = _seconds_problem(attempt_timeout, "pull attempt timeout", MAX_ATTEMPT_TIMEOUT_SECONDS)
        if problem:
            problems.append(problem)
    return problems


def check_pull_options(parallelism: int, attempt_timeout: float | None) -> None:
    problems = pull_options_problems(parallelism, attempt_timeout)
    if problems:
        raise InvalidArgument(problems)


def check_verify_timeout(timeout: float) -> None:
    problem = _seconds_problem(timeout, "verify timeout", MAX_VERIFY_TIMEOUT_SECONDS)
    if problem:
        raise InvalidArgument(problem)


_PLAIN = bytes(b for b in range(0x20, 0x7F) if b != 0x25)
"""Bytes gRPC sends as they are in a status message; every other byte becomes %XX."""


def sent_bytes(text: str) -> int:
    """Bytes of `text` in a grpc-message trailer (percent-encoded UTF-8)."""
    data = text.encode("utf-8", "replace")
    return len(data) + 2 * len(data.translate(None, _PLAIN))


def status_message(text: str, limit: int = MAX_STATUS_MESSAGE_BYTES) -> str:
    """`text`, cut to at most `limit` bytes as sent in a gRPC status, saying so when cut.
    Lone surrogates (which cannot be sent) are replaced. Linear in `limit`, not in `text`."""
    head = text[:limit + 1]  # every character takes at least one byte
    if len(head) == len(text) and sent_bytes(text) <= limit:
        return text.encode("utf-8", "replace").decode("utf-8")
    budget, low, high = limit - 64, 0, min(len(head), limit - 64)  # 64: room for the note
    while low < high:  # the longest prefix within the budget
        middle = (low + high + 1) // 2
        if sent_bytes(head[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    kept = head[:low].encode("utf-8", "replace").decode("utf-8")
    return f"{kept} ... ({len(text) - low} more characters left out)"
