"""The layering contract (`.importlinter`, checked by import-linter's `lint-imports`): it holds
for the tree as it is, and it breaks, naming the import, when a module imports against it
(the same contract run on a copy of the tree with one import added)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` as the test command runs it: from `root`, whose packages it analyses
    (it puts the working directory first on the path; devenv is importable only from there)."""
    assert LINT_IMPORTS.exists(), "lint-imports is missing: pip install -e '.[dev]' (import-linter)"
    return subprocess.run([str(LINT_IMPORTS), str(root / ".importlinter"), "--no-cache"],
                          cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1"})


def test_contract_holds():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


BREAKS = {
    # (module, the import added to it, what lint-imports must name)
    "adapter imports core": ("pinsvc/adapters/cri.py", "from pinsvc.core import state",
                             "pinsvc.adapters.cri -> pinsvc.core.state"),
    "core imports the API layer": ("pinsvc/core/space.py", "from pinsvc.api import convert",
                                   "pinsvc.core.space -> pinsvc.api.convert"),
    "plain type imports settings": ("pinsvc/model.py", "from pinsvc import config", "pinsvc.model -> pinsvc.config"),
    "pure mirror resolver imports an adapter": ("pinsvc/mirrors/resolve.py", "from pinsvc.adapters import cri",
                                                "pinsvc.mirrors.resolve -> pinsvc.adapters.cri"),
    "core imports CRI stubs": ("pinsvc/core/pull.py", "from pinsvc.gen.runtime.v1 import api_pb2",
                               "pinsvc.core.pull -> pinsvc.gen.runtime.v1.api_pb2"),
    "core imports an adapter instead of its port": ("pinsvc/core/space.py", "from pinsvc.adapters import cri",
                                                    "pinsvc.core.space -> pinsvc.adapters.cri"),
    "core imports the client package": ("pinsvc/core/verify.py", "import pinsvc_client",
                                        "pinsvc.core.verify -> pinsvc_client"),
    "product imports the dev environment": ("pinsvc/tracing.py", "from devenv import paths",
                                            "pinsvc.tracing -> devenv.paths"),
    "coordinator imports core": ("pinsvc/coordinator/rollout.py", "from pinsvc.core.state import State",
                                 "pinsvc.coordinator.rollout -> pinsvc.core.state"),
    "controller imports an adapter": ("pinsvc/controller/agents.py", "from pinsvc.adapters import cri",
                                      "pinsvc.controller.agents -> pinsvc.adapters.cri"),
    "coordinator imports the controller": ("pinsvc/coordinator/selection.py", "from pinsvc.controller import status",
                                           "pinsvc.coordinator.selection -> pinsvc.controller.status"),
    "API layer imports the coordinator": ("pinsvc/api/convert.py", "from pinsvc.coordinator import objects",
                                          "pinsvc.api.convert -> pinsvc.coordinator.objects"),
}


@pytest.mark.parametrize("module, line, named", BREAKS.values(), ids=BREAKS.keys())
def test_contract_breaks_on_an_import_against_it(tmp_path, module, line, named):
    ignore = shutil.ignore_patterns("__pycache__")
    for package in ("pinsvc", "devenv"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=ignore)
    shutil.copy2(ROOT / ".importlinter", tmp_path)
    assert lint_imports(tmp_path).returncode == 0, "the copy holds before the import is added"
    with (tmp_path / module).open("a") as f:
        f.write(f"\n{line}  # against the layering\n")
    done = lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert named in done.stdout, done.stdout
