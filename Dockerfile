# syntax=docker/dockerfile:1
#
# pinsvc container image: the node agent (`pinsvc agent`) and the coordinator (`pinctl`).
#
#   bash scripts/build-image.sh                  # buildah, FROM python:3.11-slim (Docker Hub)
#   bash scripts/build-image.sh --base debian    # buildah, FROM a local Debian 12 + python3 base
#   docker build -t pinsvc:0.1.0 .                # the same, with Docker
#
# PYTHON_IMAGE is any image with python3 3.11 and pip (>= 22.3, for `pip --python`).
# scripts/build-image.sh makes the Debian one with mmdebstrap from Debian's own packages
# when no registry for images is reachable; tests/packaging/test_image_run.py builds and
# runs the image that way. Pin the base by digest too (python:3.11-slim@sha256:...) when you
# release.
ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: the wheels and the application's venv, never shipped ------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# A CA bundle for pip when PyPI is reached through a TLS-inspecting proxy (set by
# scripts/build-image.sh from the caller's PIP_CERT; unset otherwise).
ARG PIP_CERT
WORKDIR /src
# Third-party dependencies: the exact versions and hashes of requirements/image.txt
# (scripts/lock-image.py), as binary wheels only, so nothing is compiled; installed into a
# venv without pip (the base's pip installs into it), hashes checked again, no index. These
# two layers stay cached until the lock changes.
COPY requirements/image.txt requirements/image.txt
RUN python3 -m pip wheel --require-hashes --only-binary=:all: --no-deps --wheel-dir /wheels/deps -r requirements/image.txt
RUN python3 -m venv --without-pip /opt/pinsvc \
    && python3 -m pip --python /opt/pinsvc/bin/python install --no-index --find-links /wheels/deps \
       --require-hashes --no-deps -r requirements/image.txt
# The project's own distributions: pinsvc and pinsvc-client (clients/python), without
# dependencies: only what the lock names is installed, and `pip check` fails the build when
# a dependency is missing from the lock. /opt/pinsvc/pip-list.json lists what the venv holds
# (`pip list --format json`), for whoever inspects the image.
COPY pyproject.toml README.md ./
COPY pinsvc ./pinsvc
COPY clients/python ./clients/python
COPY scripts/build-wheels.sh ./scripts/build-wheels.sh
RUN bash scripts/build-wheels.sh /wheels/project \
    && python3 -m pip --python /opt/pinsvc/bin/python install --no-index --no-deps /wheels/project/*.whl \
    && python3 -m pip --python /opt/pinsvc/bin/python check \
    && python3 -m pip --python /opt/pinsvc/bin/python list --format json > /opt/pinsvc/pip-list.json

# --- final: the base's Python and the venv; no compilers, no build tools, no wheels --------
FROM ${PYTHON_IMAGE}
# The coordinator (pinctl) runs as this unprivileged user (distroless' "nonroot" uid).
# The agent cannot: it writes CRI-O's drop-in under /etc/crio, reads the kubelet's pull
# secret (0600 root) and signals CRI-O, so the DaemonSet sets runAsUser: 0 (deploy/README.md).
RUN useradd --no-log-init --no-create-home --uid 65532 --user-group --home-dir /nonexistent \
      --shell /usr/sbin/nologin pinsvc
COPY --from=builder /opt/pinsvc /opt/pinsvc
ENV PATH=/opt/pinsvc/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /tmp
# No ENTRYPOINT: the manifests run `pinsvc agent ...` or `pinctl ...`.
CMD ["pinctl", "--help"]
# Last, so that a new revision changes no layer.
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="pinsvc" \
      org.opencontainers.image.description="Pre-pull and pin container images on Kubernetes nodes through the CRI: node agent (pinsvc) and coordinator (pinctl)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
