"""`pinsvc health`: asks the agent's grpc.health.v1 service on its unix socket whether it is
serving. Made for exec probes (the kubelet's own gRPC probe reaches only a pod's TCP port
and cannot present the client certificate the agent's TCP listener requires).

The whole server ("", the default) is SERVING only while the container runtime answers
(readiness); `--service liveness` is SERVING while the agent serves at all (liveness and
startup probes: a CRI-O restart must not get the agent restarted). NOT_SERVING comes with
the reason the agent's status gives (its PinnedImageSetsDegraded condition).

Exit status: 0 when the service is SERVING, 1 otherwise (not serving, no answer, no socket).
"""

from __future__ import annotations

import argparse
import asyncio

import pinsvc_client

DEFAULT_TIMEOUT_SECONDS = 5.0


class HealthError(Exception):
    """The agent could not be asked, or did not answer; the message says why."""


def unix_target(endpoint: str) -> str:
    """`unix:///path` or `/path` -> a gRPC target. Anything else raises ValueError: the check
    talks to the local unix socket only (TCP needs mTLS; use `pinctl node status`)."""
    where = pinsvc_client.parse_endpoint(endpoint)  # a ConfigError is a ValueError
    if not where.unix:
        raise ValueError(f"endpoint {endpoint!r}: want the agent's unix socket, unix:///path or /path")
    return where.target


async def check(endpoint: str, service: str = "", timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> str:
    """The serving status name (SERVING, NOT_SERVING, SERVICE_UNKNOWN...) the agent reports
    for `service` ("" = the whole server), and after NOT_SERVING why, when the agent's status
    says ("NOT_SERVING: RuntimeUnreachable: container runtime at ... is not reachable...").
    Raises HealthError when there is no answer within `timeout_seconds`."""
    target = unix_target(endpoint)
    async with pinsvc_client.connect(target) as client:
        try:
            status = await client.health(service, timeout=timeout_seconds)
        except pinsvc_client.NotFound:
            return "SERVICE_UNKNOWN"
        except pinsvc_client.PinError as e:
            raise HealthError(f"{target}: {e}") from e
        if status != "NOT_SERVING":
            return status
        try:
            node = await client.status(timeout=timeout_seconds)
        except pinsvc_client.PinError:
            return status  # shutting down, or too slow: the status name is the answer
        why = [f"{c.reason}: {c.message}" for c in node.conditions
               if c.type == "PinnedImageSetsDegraded" and c.status == "True"]
        return ": ".join([status, *why])


def add_arguments(parser: argparse.ArgumentParser, default_endpoint: str) -> None:
    parser.add_argument("--endpoint", default=default_endpoint, help="the agent's unix socket (unix:///path)")
    parser.add_argument("--service", default="", help="service to ask about: '' = the whole server, SERVING while "
                        "the container runtime answers (readiness); liveness = SERVING while the agent serves")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, help="seconds to wait for the answer")


def run(args: argparse.Namespace) -> tuple[int, str]:
    """(exit status, the line to print) for `pinsvc health`."""
    try:
        status = asyncio.run(check(args.endpoint, args.service, args.timeout))
    except (ValueError, HealthError) as e:
        return 1, f"pinsvc health: {e}"
    return (0 if status == "SERVING" else 1), status
