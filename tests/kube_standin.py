"""A STAND-IN for the Kubernetes API server, for tests of `pinctl --kube`: an HTTP server on
loopback serving the three list endpoints the coordinator reads (nodes, machineconfigpools,
pinnedimagesets) with the JSON a real API server returns (typed lists whose items carry no
kind, paging with limit/continue, `Status` errors). It is not Kubernetes: it checks what
the real `kubernetes` client sends and decodes, nothing about a live cluster."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

MCO = "machineconfiguration.openshift.io"
TOKEN = "stand-in-token"


class StandIn:
    """The stand-in API server: `items` by path, pages of `limit`, `errors` by path
    (status code), every request recorded as (path, query dict, Authorization header)."""

    def __init__(self, nodes: list[dict], pools: list[dict], sets: list[dict]) -> None:
        """`nodes` as a NodeList holds them (no kind/apiVersion); pools and sets whole."""
        self.items = {"/api/v1/nodes": ("v1", "NodeList", nodes),
                      f"/apis/{MCO}/v1/machineconfigpools": (f"{MCO}/v1", "MachineConfigPoolList", pools),
                      f"/apis/{MCO}/v1/pinnedimagesets": (f"{MCO}/v1", "PinnedImageSetList", sets)}
        self.errors: dict[str, int] = {}
        self.requests: list[tuple[str, dict, str]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                stand_in.requests.append((url.path, query, self.headers.get("Authorization", "")))
                status, body = stand_in.answer(url.path, query)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path: str, query: dict) -> tuple[int, dict]:
        if path in self.errors or path not in self.items:
            code = self.errors.get(path, 404)
            reason = {403: "Forbidden", 404: "NotFound", 401: "Unauthorized"}.get(code, "InternalError")
            return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                          "message": f"{path} {reason.lower()}", "code": code}
        api_version, kind, items = self.items[path]
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or len(items) or 1)
        page = items[start:start + limit]
        more = start + limit < len(items)
        return 200, {"apiVersion": api_version, "kind": kind, "items": page,
                     "metadata": {"resourceVersion": "42", **({"continue": str(start + limit)} if more else {})}}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def kubeconfig(path: Path, server: str, *, current: str = "stand-in") -> Path:
    """Two contexts: `stand-in` (the stand-in server, a bearer token) and `nowhere`."""
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": current,
           "clusters": [{"name": "stand-in", "cluster": {"server": server}},
                        {"name": "nowhere", "cluster": {"server": "http://127.0.0.1:9"}}],
           "users": [{"name": "reader", "user": {"token": TOKEN}}],
           "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "reader"}},
                        {"name": "nowhere", "context": {"cluster": "nowhere", "user": "reader"}}]}
    path.write_text(yaml.safe_dump(doc))
    return path
