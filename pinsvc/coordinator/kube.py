"""Kubernetes mode of `pinctl`: PinnedImageSets, MachineConfigPools and Nodes read from a live
API server with the official `kubernetes` client (the optional `kube` extra, imported only
here and only when asked for), then validated by `loader.load_documents` exactly like the
files `-f` reads: the same model and the same code path after loading.

Credentials: `--kubeconfig`/`--context` when given; in a pod (KUBERNETES_SERVICE_HOST set)
the pod's service account; otherwise the default kubeconfig (KUBECONFIG, ~/.kube/config).
Reading needs get/list on nodes, and on machineconfigpools and pinnedimagesets of
machineconfiguration.openshift.io (deploy/kubernetes/coordinator.yaml has the ClusterRole).
Lists are read in pages of `PAGE_SIZE`. Tokens and certificates are never logged.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pinsvc.coordinator.loader import load_documents
from pinsvc.coordinator.objects import MCO_GROUP, Cluster
from pinsvc.errors import InvalidArgument, PinsvcError

log = logging.getLogger("pinsvc.coordinator.kube")

PAGE_SIZE = 500
REQUEST_TIMEOUT_SECONDS = 30.0
SET_VERSIONS = ("v1", "v1alpha1")  # PinnedImageSet went GA in v1; older clusters serve v1alpha1
MISSING = ("Kubernetes mode needs the `kubernetes` package: pip install 'pinsvc[kube]' "
           "(or pip install kubernetes==37.0.2)")


@dataclass(frozen=True)
class KubeSource:
    """Where to read from: a kubeconfig file and context ('' = the defaults described above)."""

    kubeconfig: str = ""
    context: str = ""


class KubeError(PinsvcError):
    """The API server could not be read; the message names the server and the resource."""


def _import():
    try:
        import kubernetes  # noqa: F401
        from kubernetes import client, config
    except ImportError as e:
        raise InvalidArgument(MISSING) from e
    return client, config


def api_client(source: KubeSource):
    """An ApiClient of its own (the library's global configuration is left alone)."""
    client, config = _import()
    try:
        if not source.kubeconfig and not source.context and os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        if source.kubeconfig and not os.path.isfile(source.kubeconfig):
            raise InvalidArgument(f"--kubeconfig {source.kubeconfig}: no such file")
        return config.new_client_from_config(config_file=source.kubeconfig or None,
                                             context=source.context or None, persist_config=False)
    except config.ConfigException as e:
        where = source.kubeconfig or os.environ.get("KUBECONFIG") or "the default kubeconfig (~/.kube/config)"
        context = f", context {source.context!r}" if source.context else ""
        raise InvalidArgument(f"Kubernetes configuration ({where}{context}): {e}") from e


def _paged(list_page: Callable[..., dict], what: str, server: str) -> dict:
    """All pages of one list call merged into the first page's document."""
    client, _ = _import()
    document: dict | None = None
    token = None
    while True:
        kwargs = {"limit": PAGE_SIZE, "_request_timeout": REQUEST_TIMEOUT_SECONDS}
        if token:
            kwargs["_continue"] = token
        try:
            page = list_page(**kwargs)
        except client.ApiException as e:
            raise KubeError(_api_problem(e, what, server)) from e
        except Exception as e:  # urllib3 connection and TLS errors: one boundary, one message
            if isinstance(e, PinsvcError):
                raise
            raise KubeError(f"cannot list {what} from {server}: {type(e).__name__}: {e}") from e
        if document is None:
            document = page
        else:
            document["items"].extend(page.get("items") or [])
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return document


def _api_problem(e: Any, what: str, server: str) -> str:
    hint = {401: "the credentials were refused",
            403: f"the account may not list {what}: it needs get/list on them (see deploy/kubernetes/coordinator.yaml)",
            404: f"the server does not serve {what}"}.get(e.status, "")
    return f"cannot list {what} from {server}: HTTP {e.status} {e.reason}" + (f": {hint}" if hint else "")


def read(source: KubeSource = KubeSource()) -> list[tuple[str, dict]]:
    """(name for messages, List document) for nodes, pools and sets, as the API server
    returns them (typed lists such as NodeList, the same JSON `oc get -o json` prints)."""
    client, _ = _import()
    api = api_client(source)
    server = api.configuration.host
    try:
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)

        def nodes(**kwargs) -> dict:
            # the raw JSON, not the client's typed models: those reject nodes whose fields
            # they do not know or miss (seen: V1NodeSystemInfo validation errors)
            return json.loads(core.list_node(_preload_content=False, **kwargs).data)

        def custom_list(version: str, plural: str) -> Callable[..., dict]:
            return lambda **kwargs: custom.list_cluster_custom_object(MCO_GROUP, version, plural, **kwargs)

        documents = [(f"{server} nodes", _paged(nodes, "nodes", server)),
                     (f"{server} machineconfigpools",
                      _paged(custom_list("v1", "machineconfigpools"), f"machineconfigpools.{MCO_GROUP}", server))]
        for version in SET_VERSIONS:
            what = f"pinnedimagesets.{MCO_GROUP}/{version}"
            try:
                documents.append((f"{server} pinnedimagesets", _paged(custom_list(version, "pinnedimagesets"), what, server)))
                break
            except KubeError as e:
                if not isinstance(e.__cause__, client.ApiException) or e.__cause__.status != 404 \
                        or version == SET_VERSIONS[-1]:
                    raise
                log.info("%s: not served, trying %s", what, SET_VERSIONS[-1])
    finally:
        api.close()
    for name, document in documents:
        log.info("read %s: %d item(s)", name, len(document.get("items") or []))
    return documents


def load(source: KubeSource = KubeSource()) -> Cluster:
    """The Cluster the API server describes, validated like files (InvalidArgument lists
    every problem, each naming the server, the list and the object)."""
    return load_documents(read(source))
