"""Plot an offline benchmark result: tau vs verified tokens per step, and speedup per setting.

Run: ``python -m bench.plot RESULT.json [OUT.png]`` (``bench.offline`` calls ``plot`` itself).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless
import matplotlib.pyplot as plt

COLORS = {"autoregressive": "black", "chain": "tab:gray", "dense": "tab:blue",
          "pruned": "tab:green", "retrieval": "tab:orange", "graft": "tab:red"}


def label(run: dict) -> str:
    s = run["settings"]
    parts = [run["method"]]
    if s.get("budget") and run["method"] != "autoregressive":
        parts.append(f"N={s['budget']}")
    if s.get("threshold") is not None:
        parts.append(f"t={s['threshold']}")
    return " ".join(parts)


def plot(result: dict, out: Path) -> None:
    runs = result["runs"]
    fig, (ax_tau, ax_speed) = plt.subplots(1, 2, figsize=(13, 5))
    for run in runs:
        color = COLORS.get(run["method"], "tab:purple")
        ax_tau.scatter(run["verified_per_step"], run["tau"], color=color)
        ax_tau.annotate(label(run), (run["verified_per_step"], run["tau"]), fontsize=7)
    for method, color in COLORS.items():
        ax_tau.scatter([], [], color=color, label=method)
    ax_tau.set_xlabel("verified tokens per target forward")
    ax_tau.set_ylabel("tau (tokens committed per target forward)")
    ax_tau.set_title(f"{result['dataset']}: acceptance vs verification cost")
    ax_tau.legend(fontsize=8)
    names = [label(r) for r in runs]
    ax_speed.barh(names, [r["speedup"] for r in runs],
                  color=[COLORS.get(r["method"], "tab:purple") for r in runs])
    ax_speed.axvline(1.0, color="black", linewidth=0.8)
    ax_speed.set_xlabel("speedup vs autoregressive (decoding tokens/s, wall clock)")
    ax_speed.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"{result['model']}, drafter: {result['drafter'][:80]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    path = Path(sys.argv[1])
    plot(json.loads(path.read_text()), Path(sys.argv[2]) if len(sys.argv) > 2
         else path.with_suffix(".png"))
