"""The benchmark suite's smoke run: `python -m bench.suite --quick` on the small W500 slice
(40 images) against its own real registry and CRI-O writes the results, the plots and the
report a user reads. Performance itself is measured by the suite, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_quick_suite_writes_results_plots_and_report(tmp_path):
    docs = tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.suite", "--quick", "--only", "W500", "--out", str(tmp_path),
         "--docs", str(docs)],
        cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["meta"]["quick"] is True
    assert results["meta"]["machine"]["storage_driver"] == "vfs"
    w500 = results["workloads"]["W500"]
    assert w500["facts"]["images"] == 40
    assert set(w500["methods"]) == {"PAR-5", "pinsvc"}
    pinsvc = w500["methods"]["pinsvc"]["summary"]
    assert pinsvc["median"] > 0 and pinsvc["noop_seconds"] > 0
    assert set(pinsvc["phases"]) >= {"space_check", "pulls", "dropin_reload", "verify"}
    assert pinsvc["agent_peak_rss_bytes"] > 10 << 20
    space = w500["space_check"]["summary"]
    assert space["pinsvc_compressed_bytes"] == space["serial_compressed_bytes"] > 0

    for png in ("time_vs_k_W500.png", "phases.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    report = docs.read_text()
    assert "| W500 space check <= 0.6 s |" in report
    assert "![phases](phases.png)" in report
