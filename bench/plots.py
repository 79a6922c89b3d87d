"""The suite's plots (PNG, matplotlib, no display): time vs k per workload with the
baselines, W100 speed-up and efficiency vs k, and the phase breakdown."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PHASE_COLORS = {"space_check": "#4c72b0", "pulls": "#55a868", "exists_check": "#8172b2",
                "dropin_reload": "#c44e52", "verify": "#dd8452", "other": "#999999"}


def methods_of(results: dict, workload: str) -> dict:
    """The methods measured on `workload` (name -> runs and summary)."""
    return results["workloads"].get(workload, {}).get("methods", {})


def par_of(methods: dict) -> dict[int, dict]:
    """k -> summary of the PAR-k methods."""
    return {int(n[4:]): m["summary"] for n, m in methods.items() if n.startswith("PAR-")}


def best_par(methods: dict) -> tuple[int, float] | None:
    par = par_of(methods)
    if not par:
        return None
    k = min(par, key=lambda k: par[k]["median"])
    return k, par[k]["median"]


def _label(results: dict) -> str:
    mach = results["meta"]["machine"]
    return f"{mach['cores']} cores, {mach['storage_driver']}, CRI-O {mach['crio_version']}, {results['meta']['started_utc'][:10]}"


def plot_time_vs_k(results: dict, workloads: list[str], path: Path, title: str) -> Path | None:
    present = [w for w in workloads if par_of(methods_of(results, w))]
    if not present:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    styles = {"SEQ": ("k", ":"), "MCO-like": ("#c44e52", "--"), "pinsvc": ("#4c72b0", "-"),
              "pinctl-3-nodes": ("#8172b2", "-.")}
    for w in present:
        methods = methods_of(results, w)
        par = par_of(methods)
        ks = sorted(par)
        med = [par[k]["median"] for k in ks]
        err = [[par[k]["median"] - par[k]["min"] for k in ks], [par[k]["max"] - par[k]["median"] for k in ks]]
        bars = ax.errorbar(ks, med, yerr=err, marker="o", capsize=3, label=f"{w} PAR-k (direct CRI)")
        for name, (color, ls) in styles.items():
            if name in methods:
                s = methods[name]["summary"]
                lbl = f"{w} {name}" if len(present) > 1 else name
                if len(present) > 1:
                    color = bars.lines[0].get_color()
                ax.axhline(s["median"], color=color, linestyle=ls, alpha=0.8, label=f"{lbl}: {s['median']:.1f} s")
                if name == "pinsvc":  # at the parallelism it pulled with
                    k = min(results["meta"]["pinsvc_parallelism"], results["workloads"][w]["facts"]["images"])
                    ax.plot([k], [s["median"]], marker="*", color=color, markersize=12)
    ax.set_xticks(sorted({k for w in present for k in par_of(methods_of(results, w))}))
    ax.set_xlabel("k (pulls in flight); star: pinsvc at its parallelism")
    ax.set_ylabel("seconds to present (and pinned), median; bars min-max")
    ax.set_title(f"{title}\n{_label(results)}", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_speedup(results: dict, path: Path) -> Path | None:
    methods = methods_of(results, "W100")
    par = par_of(methods)
    if "SEQ" not in methods or not par:
        return None
    seq = methods["SEQ"]["summary"]["median"]
    ks = sorted(par)
    speed = [seq / par[k]["median"] for k in ks]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    ax.plot(ks, speed, marker="o", label="speed-up SEQ / PAR-k")
    ax.plot(ks, ks, linestyle=":", color="grey", label="ideal (k)")
    ax2 = ax.twinx()
    ax2.plot(ks, [s / k for s, k in zip(speed, ks)], marker="s", color="#dd8452", label="efficiency (speed-up / k)")
    ax2.set_ylim(0, 1.1)
    ax.set_ylim(0, max(max(speed) * 1.2, 2))
    ax.set_xlabel("k")
    ax.set_ylabel("speed-up")
    ax2.set_ylabel("efficiency")
    ax.set_title(f"W100 speed-up and efficiency vs k\n{_label(results)}", fontsize=10)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_phases(results: dict, path: Path) -> Path | None:
    """One panel per workload (linear seconds), a stacked bar per method: its phases."""
    panels = []
    for w in ("W100", "W500", "WBIG-1L", "WBIG-4L"):
        rows = [(name, s["phases"], s["median"]) for name in ("MCO-like", "pinsvc")
                if (s := methods_of(results, w).get(name, {}).get("summary"))]
        if rows:
            panels.append((w, rows))
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.2 * sum(len(r) for _, r in panels) + 1.4), squeeze=False)
    seen: set[str] = set()
    for ax, (w, rows) in zip(axes[:, 0], panels):
        for y, (name, ph, total) in enumerate(rows):
            left = 0.0
            for phase, color in PHASE_COLORS.items():
                value = ph.get(phase, 0.0)
                if value <= 0:
                    continue
                ax.barh(y, value, left=left, color=color, height=0.6,
                        label=None if phase in seen else phase.replace("_", " "))
                seen.add(phase)
                left += value
            ax.text(left, y, f" {total:.2f} s", va="center", fontsize=8)
        ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.invert_yaxis()
        ax.set_title(w, fontsize=9, loc="left")
        ax.set_xlim(0, max(r[2] for r in rows) * 1.15)
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("seconds (median of each phase)")
    fig.suptitle(f"Where the time goes, per phase\n{_label(results)}", fontsize=10)
    handles = [h for ax in axes[:, 0] for h in ax.get_legend_handles_labels()[0]]
    labels = [l for ax in axes[:, 0] for l in ax.get_legend_handles_labels()[1]]
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
