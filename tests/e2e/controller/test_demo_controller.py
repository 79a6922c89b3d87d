"""The README's controller demo, as a user runs it (scripts/demo-controller.sh runs exactly
this module after installing what is missing): exit 0, the MachineConfigNode status it
prints, every node's CRI-O pinning its set, nothing left behind."""

from __future__ import annotations

import subprocess
import sys

from devenv.paths import REPO


def test_controller_demo_pins_through_kubectl_apply():
    done = subprocess.run([sys.executable, "-m", "devenv.demo_controller"], cwd=REPO, capture_output=True,
                          text=True, timeout=240)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "pinnedimageset.machineconfiguration.openshift.io/worker-pinned-images created" in out
    assert "worker-1   worker   worker-pinned-images   1         1" in out, out
    assert "Current Generation:  1" in out and "Type:                  PinnedImageSetsDegraded" in out
    for line in ("master-0: 2 of 2 images", "worker-0: 4 of 4 images", "worker-1: 4 of 4 images"):
        assert line in out, out
    assert "== OK" in out and "stopped and removed everything" in out
