"""The controller's one boundary to the Kubernetes API, on `kubernetes_asyncio` (the
`controller` extra; see docs/controller.md for why this library).

- `connect()`: an ApiClient from a kubeconfig or, in a pod, the service account (the
  library's loaders; tokens are re-read when they rotate). Its aiohttp session does not
  look at the environment on every request (the library's `trust_env=True` makes aiohttp
  read ~/.netrc and the proxy variables in a thread, twice per request): the proxy the
  environment names for the API server is looked up once, here.
- `Informer`: list, then watch from the list's resourceVersion, keeping every object of
  one resource by name as the API server returns it (plain JSON, no models). The library's
  `Watch` follows the stream's resourceVersion and bookmarks; what it leaves to callers,
  this adds: a relist when the version is gone (410) and backoff on any other failure, so
  a restarted API server costs a relist, nothing else.
- `Kube`: the writes: server-side apply (field manager `pinsvc-controller`) of the
  MachineConfigNodes the controller owns and of their status; a merge patch of a pool's
  status with a resourceVersion precondition (the pool belongs to others); events.

Errors are converted once, here: `KubeApiError` names the request and carries the HTTP
status. Nothing here logs a token or a certificate.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import random
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from pinsvc.coordinator.objects import MCO_GROUP
from pinsvc.errors import InvalidArgument, PinsvcError
from pinsvc.retry import Backoff

log = logging.getLogger("pinsvc.controller.kube")

FIELD_MANAGER = "pinsvc-controller"
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
PAGE_SIZE = 500
REQUEST_TIMEOUT_SECONDS = 30.0
WATCH_SECONDS = (240, 300)
"""Each watch asks the server to end it after a random time in this range (as client-go
does), then resumes from its resourceVersion; a stream silent for longer than that plus
REQUEST_TIMEOUT_SECONDS is taken as broken."""
WATCH_BACKOFF = Backoff(initial_seconds=0.5, factor=2.0, max_seconds=30.0, jitter=0.2, attempts=1)
NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
READ_BUFSIZE = 2**21  # as the library's own session: a watch event of a large object fits


class KubeApiError(PinsvcError):
    """A request to the API server failed: `status` is the HTTP status (0 when the server
    could not be reached), the message names the request."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Resource:
    """A cluster-scoped resource the controller reads or writes."""

    kind: str
    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, name: str = "", subresource: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return "/".join(p for p in (f"{base}/{self.plural}", name, subresource) if p)


NODES = Resource("Node", "", "v1", "nodes")
POOLS = Resource("MachineConfigPool", MCO_GROUP, "v1", "machineconfigpools")
MCNS = Resource("MachineConfigNode", MCO_GROUP, "v1", "machineconfignodes")
SET_VERSIONS = ("v1", "v1alpha1")  # PinnedImageSet is GA in v1; older clusters serve v1alpha1


def sets(version: str) -> Resource:
    return Resource("PinnedImageSet", MCO_GROUP, version, "pinnedimagesets")


async def connect(kubeconfig: str = "", context: str = "") -> client.ApiClient:
    """An ApiClient: `kubeconfig`/`context` when given; in a pod (KUBERNETES_SERVICE_HOST)
    its service account; else the default kubeconfig (KUBECONFIG, ~/.kube/config)."""
    try:
        if not kubeconfig and not context and os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return _quiet(client.ApiClient(configuration))
        if kubeconfig and not os.path.isfile(kubeconfig):
            raise InvalidArgument(f"--kubeconfig {kubeconfig}: no such file")
        return _quiet(await config.new_client_from_config(config_file=kubeconfig or None, context=context or None,
                                                          persist_config=False))
    except config.ConfigException as e:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "the default kubeconfig (~/.kube/config)"
        raise InvalidArgument(f"Kubernetes configuration ({where}): {e}") from e


def _quiet(api: client.ApiClient) -> client.ApiClient:
    """`api` on a session with trust_env off (same connector, same TLS), and the proxy of the
    environment for its server, unless the kubeconfig named one (`proxy-url`)."""
    rest = api.rest_client
    old = rest.pool_manager
    rest.pool_manager = aiohttp.ClientSession(connector=old.connector, trust_env=False, read_bufsize=READ_BUFSIZE)
    old.detach()
    host = urllib.parse.urlsplit(api.configuration.host)
    proxy = urllib.request.getproxies().get(host.scheme or "https")
    if proxy and not rest.proxy and not urllib.request.proxy_bypass(host.hostname or ""):
        rest.proxy = proxy
    return api


class Kube:
    """Requests to one API server over one ApiClient (one connection pool)."""

    def __init__(self, api: client.ApiClient):
        self.api = api
        self.server = api.configuration.host
        self.requests = 0  # requests sent (watches counted once each), for logs and benchmarks

    async def request(self, method: str, path: str, *, query: dict | None = None, body: Any = None,
                      content_type: str = "application/json", timeout: float = REQUEST_TIMEOUT_SECONDS) -> dict:
        """One request; the response's JSON. Raises KubeApiError naming it."""
        self.requests += 1
        what = f"{method} {path}"
        try:
            response = await self.api.call_api(
                path, method, query_params=list((query or {}).items()), body=body,
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                auth_settings=["BearerToken"], _preload_content=False, _request_timeout=timeout)
            data = await response.read()
            response.release()
        except NETWORK_ERRORS as e:
            raise KubeApiError(f"{what}: {self.server} unreachable: {type(e).__name__}: {e}") from e
        if not 200 <= response.status <= 299:
            raise KubeApiError(f"{what}: HTTP {response.status}: {_message(data) or response.reason}", response.status)
        return json.loads(data) if data else {}

    async def served(self, resource: Resource) -> bool:
        """Whether the API server serves `resource` (its group version lists it)."""
        try:
            doc = await self.request("GET", resource.path().rsplit("/", 1)[0])
        except KubeApiError as e:
            if e.status == 404:
                return False
            raise
        return any(r.get("name") == resource.plural for r in doc.get("resources", []))

    async def list_page(self, resource: Resource, token: str = "") -> dict:
        query = {"limit": PAGE_SIZE}
        if token:
            query["continue"] = token
        return await self.request("GET", resource.path(), query=query)

    def watch_call(self, resource: Resource) -> Callable:
        """The generated list function `Watch.stream` drives (it adds watch=True)."""
        if resource is NODES:
            return client.CoreV1Api(self.api).list_node
        custom = client.CustomObjectsApi(self.api)
        return lambda **kw: custom.list_cluster_custom_object(resource.group, resource.version, resource.plural, **kw)

    async def apply(self, resource: Resource, body: dict, *, subresource: str = "") -> dict:
        """Server-side apply of `body` (only the fields the controller owns) with our field
        manager; `force` takes back fields a person edited (the controller owns them)."""
        return await self.request("PATCH", resource.path(body["metadata"]["name"], subresource),
                                  query={"fieldManager": FIELD_MANAGER, "force": "true"},
                                  body=body, content_type=APPLY_PATCH)

    async def merge_patch(self, resource: Resource, name: str, body: dict, *, subresource: str = "") -> dict:
        return await self.request("PATCH", resource.path(name, subresource), query={"fieldManager": FIELD_MANAGER},
                                  body=body, content_type=MERGE_PATCH)

    async def delete(self, resource: Resource, name: str, *, uid: str = "") -> None:
        """Deletes `name`, only if it is still the object with `uid` (when given)."""
        body = {"preconditions": {"uid": uid}} if uid else None
        try:
            await self.request("DELETE", resource.path(name), body=body)
        except KubeApiError as e:
            if e.status not in (404, 409):
                raise

    async def event(self, body: dict, namespace: str = "default") -> None:
        """Creates an events.k8s.io/v1 Event (cluster-scoped objects' events live in `default`)."""
        await self.request("POST", f"/apis/events.k8s.io/v1/namespaces/{namespace}/events", body=body)


def _message(data: bytes) -> str:
    """The `message` of a metav1.Status body, else the body's start."""
    try:
        return str(json.loads(data).get("message") or "")
    except (ValueError, AttributeError):
        return data[:200].decode(errors="replace")


async def discover_sets(kube: Kube) -> Resource:
    """The PinnedImageSet version served (v1, else v1alpha1). An API server that cannot
    answer yet (just restarted, its authorizer still loading) is asked again, with backoff;
    one serving neither raises InvalidArgument."""
    for failures in itertools.count(1):
        try:
            for version in SET_VERSIONS:
                if await kube.served(sets(version)):
                    return sets(version)
            raise InvalidArgument(f"the API server serves no pinnedimagesets.{MCO_GROUP} "
                                  f"({' or '.join(SET_VERSIONS)}): install the CRDs (deploy/kubernetes/crds)")
        except KubeApiError as e:
            wait = WATCH_BACKOFF.delay(failures)
            log.warning("cannot read the API's resources: %s; again in %.1fs", e, wait)
            await asyncio.sleep(wait)


class Informer:
    """Every object of `resource` by name, kept current by list + watch. `on_event(type,
    object)` is called for each change (ADDED, MODIFIED, DELETED), also for what a relist
    finds changed; `synced` is set once the first list is in."""

    def __init__(self, kube: Kube, resource: Resource, on_event: Callable[[str, dict], None]):
        self.kube = kube
        self.resource = resource
        self.on_event = on_event
        self.objects: dict[str, dict] = {}
        self.synced = asyncio.Event()
        self.relists = 0

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                version = await self._list()
                failures = 0
                await self._watch(version)
            except (KubeApiError, ApiException, *NETWORK_ERRORS) as e:
                gone = getattr(e, "status", 0) == 410
                failures = 0 if gone else failures + 1
                wait = 0.0 if gone else WATCH_BACKOFF.delay(failures)
                log.log(logging.INFO if gone else logging.WARNING, "%s: %s; listing again in %.1fs",
                        self.resource.plural, "resourceVersion gone (410)" if gone else _describe(e), wait)
                await asyncio.sleep(wait)

    async def _list(self) -> str:
        items, token, version = {}, "", ""
        while True:
            page = await self.kube.list_page(self.resource, token)
            for item in page.get("items") or []:
                # a typed list (NodeList) leaves kind and apiVersion off its items; watch events have them
                item.setdefault("kind", self.resource.kind)
                item.setdefault("apiVersion", self.resource.api_version)
                items[item["metadata"]["name"]] = item
            version = page["metadata"].get("resourceVersion", version)
            token = page["metadata"].get("continue") or ""
            if not token:
                break
        self.relists += 1
        for name in [n for n in self.objects if n not in items]:
            self.on_event("DELETED", self.objects.pop(name))
        for name, item in items.items():
            old = self.objects.get(name)
            self.objects[name] = item
            if old is None or old["metadata"].get("resourceVersion") != item["metadata"].get("resourceVersion"):
                self.on_event("MODIFIED" if old else "ADDED", item)
        self.synced.set()
        return version

    async def _watch(self, version: str) -> None:
        """Watches from `version` until an error; a stream the server ends is resumed from
        the last version seen (by the library's Watch)."""
        while True:
            seconds = random.randint(*WATCH_SECONDS)
            stream = watch.Watch(return_type="object")
            self.kube.requests += 1
            try:
                async for event in stream.stream(self.kube.watch_call(self.resource), resource_version=version,
                                                 allow_watch_bookmarks=True, timeout_seconds=seconds,
                                                 _request_timeout=(REQUEST_TIMEOUT_SECONDS,
                                                                   seconds + REQUEST_TIMEOUT_SECONDS)):
                    kind, item = event["type"], event["raw_object"]
                    if kind == "BOOKMARK":
                        continue
                    name = item["metadata"]["name"]
                    if kind == "DELETED":
                        self.objects.pop(name, None)
                    else:
                        self.objects[name] = item
                    self.on_event(kind, item)
            finally:
                await stream.close()
            version = stream.resource_version or version


def _describe(e: BaseException) -> str:
    if isinstance(e, ApiException):
        return f"HTTP {e.status}: {e.reason}"
    return f"{type(e).__name__}: {e}"


def now_rfc3339() -> str:
    """metav1.Time: seconds, UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def micro_time() -> str:
    """metav1.MicroTime (events' eventTime)."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"
