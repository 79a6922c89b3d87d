"""Resolution over a loaded Cluster (pure): which sets go to which pool and node, which pool
rolls a node out, how many nodes of a pool may update at once, whether a node is skipped,
and where its agent listens.

The rules follow the Machine Config Operator (openshift/machine-config-operator):
- a pool selects nodes with `spec.nodeSelector`; a nil or empty one selects no node;
- a node in a custom pool (not `master`/`worker`) is rolled out by that pool and also gets
  `worker`'s sets when it matches `worker` (`GetPoolsForNode`); a node matching `master`
  follows `master` only; a node in two custom pools is refused (`load` reports it);
- a set goes to a pool when the pool names it in `spec.pinnedImageSets`, when its labels
  match the pool's (non-empty) `machineConfigSelector`, or when it has no labels at all
  ("without it the images go to every node of the cluster");
- `maxUnavailable` is an int or a percentage of the pool's nodes, rounded down, at least 1.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pinsvc.coordinator.loader import read_documents
from pinsvc.coordinator.objects import MASTER, WORKER, Cluster, Node, PinnedImageSet, Pool
from pinsvc.errors import InvalidArgument

ENDPOINT_ANNOTATION = "pinsvc.io/agent-endpoint"
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?))"
                        r":(?P<port>[0-9]{1,5})$")


def pool_sets(cluster: Cluster, pool: Pool) -> list[PinnedImageSet]:
    """The sets that go to `pool` (see `Pool.attaches`), sorted by name."""
    return sorted((s for s in cluster.sets.values() if pool.attaches(s)), key=lambda s: s.name)


def node_pools(cluster: Cluster, node: Node) -> list[Pool]:
    """Every pool whose nodeSelector selects the node, in input order (a nil or empty
    nodeSelector selects no node, as in MCO)."""
    return [p for p in cluster.pools.values() if p.selects_node(node)]


def effective_pools(cluster: Cluster, node: Node) -> list[Pool]:
    """The pools whose sets the node gets, the one that rolls it out first (MCO's
    GetPoolsForNode): [master] when it matches master; [custom, worker] or [custom] when it
    is in one custom pool; [worker]; or [] when it is in no pool. A node in two custom
    pools raises InvalidArgument (`load` already refuses such input)."""
    matched = node_pools(cluster, node)
    by_name = {p.name: p for p in matched}
    custom = [p for p in matched if p.custom]
    if len(custom) > 1:
        raise InvalidArgument(f"Node/{node.name} is in {len(custom)} custom pools "
                              f"({', '.join(p.name for p in custom)})")
    if MASTER in by_name:
        return [by_name[MASTER]]
    return custom + ([by_name[WORKER]] if WORKER in by_name else [])


def primary_pool(cluster: Cluster, node: Node) -> Pool | None:
    """The pool that rolls the node out: its custom pool if any, else master or worker;
    None when it is in no pool. A node in master and a custom pool follows master (MCO)."""
    pools = effective_pools(cluster, node)
    return pools[0] if pools else None


def pool_nodes(cluster: Cluster, pool: Pool) -> list[Node]:
    """The nodes `pool` rolls out (those whose primary pool it is), in input order."""
    return [n for n in cluster.nodes.values() if (p := primary_pool(cluster, n)) is not None and p.name == pool.name]


def node_sets(cluster: Cluster, node: Node) -> list[PinnedImageSet]:
    """The union of the sets of the node's effective pools (custom pool plus worker), sorted
    by name, each once."""
    sets = {s.name: s for pool in effective_pools(cluster, node) for s in pool_sets(cluster, pool)}
    return [sets[name] for name in sorted(sets)]


def skip_reason(node: Node) -> str | None:
    """"NotReady" when the Ready condition is not True (absent included), "DiskPressure"
    when that condition is True, None when the node can be rolled out to."""
    if node.ready is not True:
        return "NotReady"
    if node.disk_pressure is True:
        return "DiskPressure"
    return None


def max_unavailable(pool: Pool, machine_count: int) -> int:
    """How many of the pool's `machine_count` nodes may update at once: the int as given, or
    "N%" of the count rounded down; at least 1 either way (MCO's maxUnavailable)."""
    value = pool.max_unavailable
    if isinstance(value, str):
        value = int(value.rstrip("%")) * machine_count // 100
    return max(1, value)


def endpoint(node: Node, *, port: int, overrides: Mapping[str, str] = MappingProxyType({}),
             annotation: str = ENDPOINT_ANNOTATION) -> str:
    """The node's agent endpoint: `overrides[node.name]` first, then the node's
    `annotation`, then `InternalIP:port` (`[v6]:port` for IPv6). A `/path` value becomes
    `unix:///path`. Raises InvalidArgument naming the node when it has none or a bad one."""
    for value, origin in ((overrides.get(node.name), "the endpoint map"),
                          (node.annotations.get(annotation), f"annotation {annotation}")):
        if value is not None:
            if problem := endpoint_problem(value):
                raise InvalidArgument(f"Node/{node.name}: {origin}: {problem}")
            return "unix://" + value if value.startswith("/") else value
    if node.internal_ip is None:
        raise InvalidArgument(f"Node/{node.name}: no agent endpoint: not in the endpoint map, no "
                              f"{annotation} annotation and no InternalIP in status.addresses")
    if not 1 <= port <= 65535:
        raise InvalidArgument(f"agent port {port} is not in 1-65535")
    host = f"[{node.internal_ip}]" if ":" in node.internal_ip else node.internal_ip
    return f"{host}:{port}"


def endpoint_problem(value: Any) -> str | None:
    """Why `value` is not an agent endpoint (`host:port`, `[v6]:port`, `unix:///path`,
    `/path`), or None when it is one."""
    if not isinstance(value, str) or not value:
        return f"endpoint {value!r} is not a non-empty string"
    if any(c.isspace() or not c.isprintable() for c in value):
        return f"endpoint {value!r} contains whitespace or control characters"
    if value.startswith("unix:"):
        path = value.removeprefix("unix:")
        if not path.removeprefix("//").startswith("/"):
            return f"endpoint {value!r}: a unix socket needs an absolute path, e.g. unix:///run/pinsvc/pinsvc.sock"
        return None
    if value.startswith("/"):
        return None
    match = _HOST_PORT.match(value)
    if match is None:
        if value.count(":") > 1 and not value.startswith("["):
            return f"endpoint {value!r}: put an IPv6 address in brackets, e.g. [fd00::5]:9440"
        return f"endpoint {value!r} is not host:port, [IPv6]:port, unix:///path or /path"
    if not 1 <= int(match["port"]) <= 65535:
        return f"endpoint {value!r}: port {match['port']} is not in 1-65535"
    if match["v6"] is not None:
        try:
            ipaddress.IPv6Address(match["v6"])
        except ValueError:
            return f"endpoint {value!r}: {match['v6']!r} is not an IPv6 address"
    return None


def load_endpoint_map(path: str | Path) -> dict[str, str]:
    """Reads a YAML or JSON mapping of node name -> agent endpoint (see `endpoint_problem`),
    e.g. `worker-0: 10.0.0.5:9440`. Raises one InvalidArgument naming every bad entry."""
    name, documents, problem = read_documents(path)
    if problem:
        raise InvalidArgument(problem)
    documents = [d for d in documents if d is not None]
    if len(documents) > 1 or (documents and not isinstance(documents[0], Mapping)):
        raise InvalidArgument(f"{name}: want one mapping of node name to endpoint, e.g. 'worker-0: 10.0.0.5:9440'")
    problems, endpoints = [], {}
    for node, value in (documents[0] if documents else {}).items():
        if not isinstance(node, str) or not node:
            problems.append(f"{name}: {node!r}: a node name must be a non-empty string")
        elif problem := endpoint_problem(value):
            problems.append(f"{name}: node {node}: {problem}")
        else:
            endpoints[node] = value
    if problems:
        raise InvalidArgument(problems)
    return endpoints
