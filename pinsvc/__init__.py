"""pinsvc: pre-pull and pin container images on Kubernetes nodes."""

from importlib import metadata


def version() -> str:
    """The installed pinsvc's version ("0+unknown" from a source tree that is not installed)."""
    try:
        return metadata.version("pinsvc")
    except metadata.PackageNotFoundError:
        return "0+unknown"
