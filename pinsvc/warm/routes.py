"""Which cache serves each image to the nodes, read from the nodes' own registries.conf (the
agent's reader, `pinsvc.adapters.registries_conf`, and resolver, `pinsvc.mirrors`): the
first endpoint the runtime tries for an image is the one to warm. Whether a node can still
pull an image while that cache is down is the same configuration's answer: only when a
later endpoint may be contacted (the source is not `blocked`, or another mirror follows).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pinsvc.adapters.registries_conf import RegistriesConfFiles
from pinsvc.mirrors.resolve import Endpoint
from pinsvc.refs import ImageRef, parse_reference


@dataclass(frozen=True)
class Route:
    """How the nodes reach one image: `cache` is the endpoint they try first when it is a
    mirror (None: the image is not mirrored, it is pulled from its source); `fallback`
    names the endpoints they try after it ("" when none may be contacted)."""

    image: ImageRef
    cache: Endpoint | None
    fallback: str

    @property
    def note(self) -> str:
        """Why the image is not warmed ("" when it is)."""
        return "" if self.cache else f"{self.image} is not mirrored in registries.conf: not warmed"


class Routes:
    """The nodes' registries.conf (`path` and drop-in `dirs`), re-read when they change."""

    def __init__(self, path: Path, dirs: Iterable[Path] = ()) -> None:
        self.files = RegistriesConfFiles(Path(path), tuple(Path(d) for d in dirs))

    def __call__(self, images: Iterable[str]) -> dict[str, Route]:
        """A route per image (duplicates collapsed). Raises StateError naming a file that
        cannot be read or parsed."""
        routes = {}
        for text in dict.fromkeys(images):
            image = parse_reference(text)
            endpoints = [e for e in self.files.resolve(image) if not e.refused]
            first = endpoints[0] if endpoints and endpoints[0].mirror else None
            rest = endpoints[1:] if first else []
            routes[text] = Route(image, first, ", ".join(str(e) for e in rest))
        return routes
