# Placeholder: the container image is a later issue (multi-stage build, pinned versions,
# non-root coordinator user, OCI labels). This file is not built or tested here: this kind
# of machine has no container engine.
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pinsvc ./pinsvc
RUN pip install --no-cache-dir .
ENTRYPOINT ["pinsvc", "agent"]
