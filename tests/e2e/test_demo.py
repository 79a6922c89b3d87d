"""The one-command demo as a user runs it: `python -m devenv.demo --jaeger` starts its
own registry, Jaeger and 3 CRI-Os with their agents (not the session's peers: that is what it
shows), rolls two pools out with pinctl, prints what crictl reports and leaves nothing behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]  # devenv is not installed: it runs from here
EXPECTED = {"master-0": {"app-a", "three-layers"},
            "worker-0": {"app-a", "app-b", "oci", "multiarch"},
            "worker-1": {"app-a", "app-b", "oci", "multiarch"}}


def sections(output: str) -> dict[str, list[str]]:
    """`== Title` -> the lines under it."""
    out: dict[str, list[str]] = {}
    current: list[str] = []
    for line in output.splitlines():
        if line.startswith("== "):
            current = out.setdefault(line[3:], [])
        else:
            current.append(line)
    return out


def section(output: str, prefix: str) -> list[str]:
    (lines,) = [lines for title, lines in sections(output).items() if title.startswith(prefix)]
    return lines


def crictl_tables(lines: list[str]) -> dict[str, dict[str, str]]:
    """Per node the `crictl images --pinned` rows: image name (last path part) -> PINNED."""
    tables: dict[str, dict[str, str]] = {}
    node = None
    for line in lines:
        if match := re.match(r"-- (\S+): crictl --runtime-endpoint unix://\S+ images --pinned$", line):
            node = match[1]
            tables[node] = {}
        elif node and re.match(r"127\.0\.0\.1:\d+/", line):
            cells = line.split()
            tables[node][cells[0].rsplit("/", 1)[-1]] = cells[-1]
    return tables


def leftovers(base: Path) -> list[str]:
    found = [f"{p.pid} {' '.join(p.info['cmdline'] or [])}" for p in psutil.process_iter(["cmdline"])
             if any(str(base) in arg for arg in p.info["cmdline"] or [])]
    found += [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(base) in line]
    return found + [str(p) for p in base.iterdir()]


@pytest.fixture
def base():
    path = Path(tempfile.mkdtemp(prefix="pinsvc-dt-"))  # short: CRI-O's socket path must fit
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_demo_pins_every_node_and_leaves_nothing_behind(base):
    proc = subprocess.run([sys.executable, "-m", "devenv.demo", "--jaeger"], capture_output=True, cwd=REPO,
                          text=True, timeout=240, env={**os.environ, "TMPDIR": str(base)})
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert f"work directory {base}/pinsvc-demo-" in out

    # pinctl's live progress, as plain lines when not on a terminal
    for node in EXPECTED:
        pool = node.split("-")[0]
        assert f"{pool}/{node}: Updated: pinned and verified" in proc.stderr

    status = [line.split() for line in section(out, "Node status")]
    assert status[0][:5] == ["NODE", "POOL", "PINNEDIMAGESET", "DESIRED", "CURRENT"]
    assert {(row[0], row[1], row[2], row[3], row[4]) for row in status[1:] if row} == {
        ("master-0", "master", "master-pinned-images", "1", "1"),
        ("worker-0", "worker", "worker-pinned-images", "1", "1"),
        ("worker-1", "worker", "worker-pinned-images", "1", "1")}

    pools = {row[0]: row[1:7] for row in (line.split() for line in section(out, "Pool summary")) if row}
    assert pools["POOL"][:5] == ["MACHINES", "UPDATED", "READY", "AVAILABLE", "UNAVAILABLE"]
    assert pools["master"] == ["1", "1", "1", "1", "0", "False:"]
    assert pools["worker"] == ["2", "2", "2", "2", "0", "False:"]

    tables = crictl_tables(section(out, "crictl images --pinned"))
    assert tables == {node: {image: "true" for image in images} for node, images in EXPECTED.items()}

    (trace,) = [line for line in section(out, "Trace") if line.startswith("trace ")]
    match = re.match(r"trace ([0-9a-f]{32}): (\d+) spans: (.*)$", trace)
    assert match and int(match[2]) > 10, trace
    assert "crio " in match[3] and "pinctl " in match[3], trace
    assert "pinsvc-agent" in match[3] and "(master-0, worker-0, worker-1)" in match[3], trace
    assert any(re.fullmatch(rf"query: http://127\.0\.0\.1:\d+/api/traces/{match[1]}", line)
               for line in section(out, "Trace"))

    assert re.search(r"== OK: 3 of 3 nodes pin every image of their sets", out)
    assert "stopped and removed everything" in out
    assert leftovers(base) == [], "no process, mount or file of the demo is left"
