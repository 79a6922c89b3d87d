"""The local demo: a registry with sample images, a real CRI-O with its pinsvc agent, and an
Apply of a sample PinnedImageSet with live progress; then the node status and crictl's view.

    python -m pinsvc.devenv.demo [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path

from pinsvc_client import PinError, SetSpec, to_dict

from pinsvc.devenv import images as sample_images
from pinsvc.devenv.agent import AgentProcess
from pinsvc.devenv.crio import Crio
from pinsvc.devenv.registry import Registry
from pinsvc.progress import ApplyProgress


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


async def run_apply(agent: AgentProcess, spec: SetSpec) -> dict | None:
    async with agent.client() as client:
        try:
            with ApplyProgress() as progress:
                status = await client.apply([spec], on_event=progress.update)
        except PinError as e:
            print(f"apply failed: {e}")
            status = e.status
    return to_dict(status) if status is not None else None


async def demo(root: Path) -> int:
    registry = Registry(root / "registry")
    crio = None
    agent = None
    try:
        say("starting a registry and pushing sample images")
        registry.start()
        items = sample_images.small_workload()
        refs = await sample_images.push_many(registry.host, list(items.values()))
        print(f"registry {registry.url}: {len(refs)} images")

        say("starting CRI-O and the pinsvc agent")
        crio = Crio(root / "crio", registries=[registry.host])
        crio.start()
        agent = AgentProcess(root / "agent", crio, registry, **{"node-name": "demo-node"})
        agent.start()
        print(f"CRI-O at {crio.endpoint}, agent at {agent.endpoint}")

        spec = SetSpec("worker-pinned-images", 1, tuple(refs))
        say(f"Apply: pin {len(refs)} images (set {spec.name}, generation 1)")
        status = await run_apply(agent, spec)
        say("Apply again: nothing to pull, no write, no reload")
        await run_apply(agent, spec)

        say("node status (MachineConfigNode-shaped)")
        print(json.dumps({k: status[k] for k in ("node", "pinnedImageSets", "conditions") if k in status}, indent=2))
        say("crictl images (pinned as CRI-O reports it)")
        print(crio.crictl("images", "--digests"))
        listing = crio.images_json()["images"]
        pinned = {d for i in listing if i.get("pinned") for d in i.get("repoDigests", [])}
        print(f"crictl: {sum(1 for i in listing if i.get('pinned'))} of {len(listing)} images pinned")
        say(f"drop-in {crio.dropin_dir / '50-pinned-images'}")
        print((crio.dropin_dir / "50-pinned-images").read_text())
        return 0 if status and set(refs) <= pinned else 1
    finally:
        for peer in (agent, crio, registry):
            if peer is not None:
                peer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, state)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="pinsvc-demo-"))
    try:
        return asyncio.run(demo(root))
    finally:
        if args.keep:
            print(f"\nwork directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
