"""The Jaeger UI's view of the demo's traced rollout, as a PNG (docs/jaeger-rollout.png).

    python -m devenv.screenshot --ui-assets DIR [--out PNG]    # from the repository root, as root

`scripts/jaeger-screenshot.sh CHECKOUT` builds the UI from a jaeger-ui checkout and runs
this. It starts the demo's environment (registry, 3 CRI-O nodes with their agents, Jaeger
serving the built UI from DIR), rolls the sets out with `pinctl` traced into Jaeger, waits for
the whole trace, opens its trace view in headless Chromium and saves what it shows. The
Chromium is driven over the DevTools protocol on loopback (a websocket of aiohttp): the
span name column is widened, everything is folded and one node's path is opened again:
pinctl -> agent -> CRI-O.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from devenv import cluster, demo
from devenv.environment import Environment
from devenv.paths import REPO
from devenv.process import terminate

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]
"""Headless, nothing fetched from the internet, DevTools on a free loopback port."""
WIDTH, HEIGHT = 1600, 1220
NAME_COLUMN = 0.42
"""The share of the width the span names get (the UI's default 0.25 cuts them off)."""
OPEN = [("pinctl", "rollout", 0), ("pinctl", "pool", 0), ("pinctl", "node", 0), ("pinctl", "PinService/Apply", 0),
        ("pinsvc-agent", "PinService/Apply", 0), ("pinsvc-agent", "apply", 0), ("pinsvc-agent", "pull", 0),
        ("pinsvc-agent", "attempt", 0), ("pinsvc-agent", "ImageService/PullImage", 0)]
"""(service, part of the operation, which of the rows showing them) to open, top to bottom,
after folding everything: one node's Apply down to CRI-O's pull; CRI-O's own spans below it
are all opened too."""
CRIO_DEPTH = 10
READY_TIMEOUT = 30.0

_OPEN = """(() => {
  const rows = [...document.querySelectorAll('.span-row')].filter(row =>
    (row.querySelector('.span-svc-name')?.textContent || '').includes(%(service)s)
    && (row.querySelector('.endpoint-name')?.textContent || '').includes(%(operation)s));
  const toggles = rows.map(row => row.querySelector('.SpanTreeOffset.is-parent[role=switch]'));
  // index -1: the first of them that is folded
  const toggle = %(index)d < 0 ? toggles.find(t => t?.getAttribute('aria-checked') === 'false') : toggles[%(index)d];
  if (!toggle || toggle.getAttribute('aria-checked') !== 'false') return false;
  toggle.click();
  return true;
})()"""
_FOLD_ALL = """(() => {
  const icon = document.querySelectorAll('.TimelineCollapser .TimelineCollapser--btn-size')[3];  // Collapse All
  if (icon) icon.dispatchEvent(new MouseEvent('click', {bubbles: true}));
  return Boolean(icon);
})()"""


class Cdp:
    """Commands over one DevTools websocket; events are skipped."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    async def __call__(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self._ids)
        await self.ws.send_json({"id": number, "method": method, "params": params})
        while True:
            message = json.loads((await self.ws.receive(timeout=READY_TIMEOUT)).data)
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        return (await self("Runtime.evaluate", expression=expression, returnByValue=True))["result"].get("value")


def _devtools_port(profile: Path, process: subprocess.Popen) -> int:
    """The port Chromium wrote to DevToolsActivePort in its profile."""
    deadline = time.monotonic() + READY_TIMEOUT
    marker = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with {process.returncode} before serving DevTools")
        if marker.exists() and marker.read_text().strip():
            return int(marker.read_text().split()[0])
        time.sleep(0.1)
    raise RuntimeError(f"chromium wrote no {marker} in {READY_TIMEOUT:g} s")


async def capture(url: str, out: Path, chromium: str = "/usr/bin/chromium") -> None:
    """Opens `url` (a trace view) in headless Chromium, folds all, opens OPEN and saves a PNG."""
    with tempfile.TemporaryDirectory(prefix="pinsvc-chromium-") as profile:
        process = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                    f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port = await asyncio.to_thread(_devtools_port, Path(profile), process)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                    page = next(t for t in await response.json() if t["type"] == "page")
                async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    await _shoot(Cdp(ws), url, out)
        finally:
            terminate(process, 5)


async def _shoot(cdp: Cdp, url: str, out: Path) -> None:
    await cdp("Page.enable")
    await cdp("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)
    await cdp("Page.addScriptToEvaluateOnNewDocument",
              source=f"localStorage.setItem('spanNameColumnWidth', '{NAME_COLUMN}')")
    await cdp("Page.navigate", url=url)
    deadline = time.monotonic() + READY_TIMEOUT
    while not await cdp.evaluate("document.querySelectorAll('.span-row').length > 0"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no span rows at {url} after {READY_TIMEOUT:g} s")
        await asyncio.sleep(0.2)
    if not await cdp.evaluate(_FOLD_ALL):
        raise RuntimeError(f"no Collapse All button at {url}")
    await asyncio.sleep(0.3)  # the list renders again after each click
    for service, operation, index in OPEN:
        if not await cdp.evaluate(_OPEN % {"service": json.dumps(service), "operation": json.dumps(operation),
                                           "index": index}):
            raise RuntimeError(f"no folded row {service} {operation} #{index} at {url}")
        await asyncio.sleep(0.3)
    for _ in range(CRIO_DEPTH):  # CRI-O's spans of the pull, level by level
        if not await cdp.evaluate(_OPEN % {"service": '"crio"', "operation": '"PullImage"', "index": -1}):
            break
        await asyncio.sleep(0.3)
    # as tall as the rows shown
    bottom = await cdp.evaluate("Math.max(...[...document.querySelectorAll('.span-row')]"
                                ".map(row => row.getBoundingClientRect().bottom))")
    await cdp("Emulation.setDeviceMetricsOverride", width=WIDTH, height=int(bottom) + 8, deviceScaleFactor=1,
              mobile=False)
    await asyncio.sleep(1.0)
    shot = await cdp("Page.captureScreenshot", format="png")
    out.write_bytes(base64.b64decode(shot["data"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devenv.screenshot", description=__doc__.splitlines()[0])
    parser.add_argument("--ui-assets", type=Path, required=True,
                        help="a built Jaeger UI: packages/jaeger-ui/build of a jaeger-ui checkout")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "jaeger-rollout.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)
    os.environ.setdefault("OTEL_BSP_SCHEDULE_DELAY", "200")  # agents and CRI-O export spans soon
    env = Environment(Path(tempfile.mkdtemp(prefix="pinsvc-screenshot-")), demo.NODES, jaeger=True,
                      jaeger_ui=args.ui_assets.resolve())
    try:
        asyncio.run(env.start())
        cluster_file = env.root / "cluster.yaml"
        cluster_file.write_text(cluster.render(demo.cluster_objects(env)))
        code, _ = demo.run_pinctl(demo.pinctl_command(cluster_file, env.root / "records", env.jaeger.otlp_endpoint))
        if code:
            print(f"pinctl rollout exited with {code}", file=sys.stderr)
            return 1
        trace = demo.rollout_trace(env.jaeger, list(env.nodes))
        url = f"{env.jaeger.query_url}/trace/{trace['traceID']}"
        asyncio.run(capture(url, args.out, args.chromium))
        print("\n".join(demo.trace_lines(env.jaeger, trace)))
        print(f"{args.out}: the trace view of {url}")
        return 0
    finally:
        env.stop()


if __name__ == "__main__":
    sys.exit(main())
