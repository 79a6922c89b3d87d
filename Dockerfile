# syntax=docker/dockerfile:1
#
# pinsvc container image: the node agent (`pinsvc agent`) and the coordinator (`pinctl`).
#
#   docker build -t pinsvc:0.1.0 .
#
# Not built on the project's development machines: they have the docker client but no
# container engine. What is tested there (tests/packaging/test_image.py): hadolint on this
# file, and the wheels of the builder stage built by the same script into a fresh venv with
# the same lock, whose `pinsvc` and `pinctl` entry points must run.
#
# The base is pinned by tag. Pin it by digest too (python:3.11-slim@sha256:...) when you
# release: no registry for images is reachable from the development machines, so a digest
# written here could not be verified and is left out on purpose.
ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: wheels only, never shipped --------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Third-party dependencies: the exact versions and hashes of requirements/image.txt
# (scripts/lock-image.py), as binary wheels only, so nothing is compiled.
COPY requirements/image.txt requirements/image.txt
RUN pip wheel --require-hashes --only-binary=:all: --no-deps --wheel-dir /wheels/deps -r requirements/image.txt
# The project's own distributions: pinsvc and pinsvc-client (clients/python).
COPY pyproject.toml README.md ./
COPY pinsvc ./pinsvc
COPY clients/python ./clients/python
COPY scripts/build-wheels.sh ./scripts/build-wheels.sh
RUN bash scripts/build-wheels.sh /wheels/project

# --- final: the runtime and the wheels, no compilers, no build tools ----------------------
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="pinsvc" \
      org.opencontainers.image.description="Pre-pull and pin container images on Kubernetes nodes through the CRI: node agent (pinsvc) and coordinator (pinctl)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# Dependencies from the lock (hashes checked again, no index), then the project's wheels
# without dependencies: only what the lock names is installed. `pip check` fails the build
# when a dependency is missing from the lock.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,source=requirements/image.txt,target=/tmp/image.txt \
    pip install --no-index --find-links /wheels/deps --require-hashes --no-deps -r /tmp/image.txt \
    && pip install --no-index --no-deps /wheels/project/*.whl \
    && pip check
# The coordinator (pinctl) runs as this unprivileged user (distroless' "nonroot" uid).
# The agent cannot: it writes CRI-O's drop-in under /etc/crio, reads the kubelet's pull
# secret (0600 root) and signals CRI-O, so the DaemonSet sets runAsUser: 0 (deploy/README.md).
RUN useradd --system --no-log-init --uid 65532 --user-group --home-dir /nonexistent \
      --shell /usr/sbin/nologin pinsvc
USER 65532:65532
WORKDIR /tmp
# No ENTRYPOINT: the manifests run `pinsvc agent ...` or `pinctl ...`.
CMD ["pinctl", "--help"]
