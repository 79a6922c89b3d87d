"""The warm benchmark's plot and its section of `docs/benchmarks.md` (bench/warm.py writes
`bench/results/warm.json`; `bench/report.py` includes the section whenever that file exists,
so a run of either benchmark keeps the other's figures).

    .venv/bin/python -m bench.warm_report [bench/results/warm.json]   # plot + docs again
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MiB = 1 << 20
METHODS = ("pinsvc+warm", "pinsvc", "MCO-like")
STYLE = {"pinsvc+warm": ("tab:green", "o"), "pinsvc": ("tab:blue", "s"), "MCO-like": ("tab:red", "^")}


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    return {"cpu_model": model, "cores": os.cpu_count(), "kernel": platform.release(), "hostname": platform.node(),
            "loadavg_end": [round(x, 2) for x in os.getloadavg()]}


def _runs(results: dict, method: str) -> list[dict]:
    return sorted((r for r in results["runs"] if r["method"] == method), key=lambda r: r["nodes"])


def plot(results: dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in METHODS:
        runs = _runs(results, method)
        color, marker = STYLE[method]
        ns = [r["nodes"] for r in runs]
        left.plot(ns, [r["upstream_ratio"] for r in runs], marker=marker, color=color, label=method)
        right.plot(ns, [r["seconds"] for r in runs], marker=marker, color=color, label=method)
    ns = sorted({r["nodes"] for r in results["runs"]})
    left.plot(ns, [1.0] * len(ns), linestyle=":", color="gray", label="one copy of the set")
    ideal = {r["nodes"]: r["ideal_seconds"] for r in results["runs"]}
    right.plot(ns, [ideal[n] for n in ns], linestyle=":", color="gray", label="ideal: set at the cap + one LAN pull")
    left.set(title="Upstream bytes per rollout", xlabel="nodes (N)", ylabel="x the set's compressed bytes", xticks=ns)
    right.set(title="Rollout wall time", xlabel="nodes (N)", ylabel="seconds", xticks=ns)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    cap = results["cap_bytes_per_second"] / MiB
    fig.suptitle(f"{results['set_bytes'] / MiB:.0f} MiB set, {results['images']} images, link capped at {cap:g} MiB/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def section(docs: Path, source: Path = RESULTS / "warm.json") -> list[str]:
    """The markdown section (empty when the benchmark never ran)."""
    if not source.exists():
        return []
    r = json.loads(source.read_text())
    mach, cap = r["machine"], r["cap_bytes_per_second"] / MiB
    images = f" --images {r['images']}" if not r.get("quick") and r["images"] != 50 else ""  # the default: 50
    lan = ", ".join(f"N={n}: {t:.1f} s" for n, t in r["lan_pull_seconds"].items())
    rel = os.path.relpath(source.parent / "warm.png", docs.parent)
    out = ["## Slow links: the warm stage (issue 15)", "",
           f"Measured {r['started_utc']} on {mach['hostname']} ({mach['cpu_model']}, {mach['cores']} cores) by "
           f"`python -m bench.warm{' --quick' if r.get('quick') else ''}{images}` in {r['wall_seconds']} s: one PinnedImageSet "
           f"of {r['images']} images ({r['blobs']} blobs, {r['set_bytes'] / MiB:.1f} MiB compressed, in one repository "
           f"as a release payload keeps them) to N real CRI-O nodes whose registries.conf reaches the canonical "
           f"(unresolvable) name only through a site cache (Debian's docker-registry 2.8 in proxy mode) in front of "
           f"an upstream registry behind a link capped at {cap:g} MiB/s (a fault proxy counting the bytes). Every "
           f"measurement from an empty cache and empty nodes; the pool's maxUnavailable is N (all nodes at once, as "
           f"the Machine Config Operator prefetches). **pinsvc+warm**: `pinctl rollout --warm-registries-conf ... "
           f"--warm-rate {cap:g}MiB`; **pinsvc**: `pinctl rollout` without the warm stage; **MCO-like**: "
           f"`bench/mco.py` on every node at once. The ideal: the set once at the cap "
           f"({r['set_bytes'] / r['cap_bytes_per_second']:.1f} s) plus one LAN pull: the N nodes pulling the set "
           f"from a warm cache at once, measured per N ({lan}); the N nodes share this machine's "
           f"{mach['cores']} cores, so that pull grows with N here, where real nodes each pull with their own.", "",
           f"The machine is shared: {mach['cores']} cores on which other work ran at the same time (load average "
           f"{', '.join(f'{x:g}' for x in mach['loadavg_end'])} at the end; `foreign CPU s`: the busy CPU of no process "
           f"involved during the measurement). Absolute times are this machine's; the ratios, measured against "
           f"baselines of the same run, are what carries over. CPU per image per node: **own**, pinsvc's agents "
           f"and pinctl (its warm stage included), or the MCO-like emulation; **CRI-O**, the nodes' pulls.", "",
           "| N | method | wall s | x ideal | of which warm s | upstream MiB | x the set | own CPU s per node "
           "| own CPU ms per image per node | CRI-O CPU ms per image per node | cache CPU s | foreign CPU s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in sorted(r["runs"], key=lambda x: (x["nodes"], METHODS.index(x["method"]))):
        warm = f"{run['warm_seconds']:.1f}" if "warm_seconds" in run else "-"
        cpu = run.get("cpu_seconds", {})
        out.append(f"| {run['nodes']} | {run['method']} | {run['seconds']:.1f} | {run['vs_ideal']:.2f} | {warm} | "
                   f"{run['upstream_bytes'] / MiB:.1f} | {run['upstream_ratio']:.2f} | "
                   + (f"{run['own_cpu_per_node']:.2f} | {run['own_cpu_per_image_node'] * 1000:.1f} | "
                      f"{run['crio_cpu_per_image_node'] * 1000:.1f} | {cpu['cache']:.1f} | {cpu['foreign']:.1f} |"
                      if cpu else "- | - | - | - | - |"))
    warm = _runs(r, "pinsvc+warm")
    worst = max((x["upstream_ratio"] for x in warm), default=0)
    five = next((x for x in warm if x["nodes"] == max(y["nodes"] for y in warm)), None)
    out += ["", f"Targets: upstream bytes with the warm stage <= 1.05x the set for every N: **{worst:.2f}x** "
            f"({'met' if worst <= 1.05 else 'missed'}); wall time <= 1.3x the ideal for N = {five['nodes'] if five else '-'}: "
            f"**{five['vs_ideal'] if five else '-'}x** ({'met' if five and five['vs_ideal'] <= 1.3 else 'missed'}).", "",
            "Why the others move more than one copy: distribution's proxy fetches a blob it lacks twice when first "
            "asked (one copy into its storage in the background, one streamed to the client), and once more for "
            "every request that arrives while that fetch runs; the nodes of a pool ask together. The warm stage "
            "asks once per blob, closes its connection as soon as the answer starts (the streamed copy stops after "
            "its first KiB), waits until the cache holds the blob and verifies it: what remains above 1.00x is "
            "those cut-off copies and the small configs' whole ones (docs/warm.md).", "",
            f"![warm]({rel})", ""]
    return out


def write(source: Path, *, docs: bool = True) -> list[Path]:
    """The plot next to `source`; with `docs`, docs/benchmarks.md regenerated (bench/report.py)."""
    written = [plot(json.loads(source.read_text()), source.parent / "warm.png")]
    if docs:  # the suite's section as it is (its plots untouched), this one anew
        from bench import report
        data = json.loads((RESULTS / "results.json").read_text())
        target = RESULTS.parent.parent / "docs" / "benchmarks.md"
        plots = [RESULTS / name for name in report.PLOTS if (RESULTS / name).exists()]
        target.write_text(report.document(data, plots, target, RESULTS))
        written.append(target)
    return written


if __name__ == "__main__":
    for path in write(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "warm.json"):
        print(path)
