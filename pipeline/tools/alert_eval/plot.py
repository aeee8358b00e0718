"""PNG timeline of ``dae evaluate-alerts``: signal, score, thresholds and alerts around each kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.tools.alert_eval.replay import alert_intervals


def _overlaps(s: int, e: int, a: int, b: int) -> bool:
    return s < b and e > a


def plot_timeline(res: dict, runs: dict, path: Path, W: int, fs: float) -> None:
    """One panel pair per kind (around its first anomaly) + a clean excerpt: signal; score/thresholds/alerts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = []
    for k in res["config"]["kinds"]:
        name = next((nm for nm, (s, _) in runs.items() if s["kind"] == k), None)
        if name is not None:
            s, run = runs[name]
            a = s["anomalies"][0]
            picks.append((name, a.start - int(8 * fs), a.end + int(12 * fs)))
    name = next((nm for nm, (s, _) in runs.items() if s["kind"] is None), None)
    if name is not None:
        picks.append((name, int(30 * fs), int(70 * fs)))
    if not picks:
        return
    st = res["settings"]
    fig, axes = plt.subplots(2 * len(picks), 1, figsize=(13, 2.3 * 2 * len(picks)), squeeze=False)
    for p, (name, lo, hi) in enumerate(picks):
        s, run = runs[name]
        lo, hi = max(0, lo), min(run.n, hi)
        ax1, ax2 = axes[2 * p, 0], axes[2 * p + 1, 0]
        t = np.arange(lo, hi) / fs
        ax1.plot(t, s["y"][lo:hi], lw=0.4, color="0.2")
        for an in s["anomalies"]:
            if _overlaps(an.start, an.end, lo, hi):
                ax1.axvspan(max(an.start, lo) / fs, max(min(an.end, hi), an.start + 1) / fs, color="tab:orange",
                            alpha=0.3, lw=0)
        ax1.set_ylabel("signal")
        ax1.set_title(f"{name}  (orange: injected anomaly, red: alert raised→resolved)", fontsize=9, loc="left")
        sel = (run.starts + W > lo) & (run.starts < hi)
        centre = (run.starts[sel] + W / 2) / fs
        ax2.semilogy(centre, np.clip(run.score[sel], 0.05, None), ".-", ms=2, lw=0.6, label="score")
        ax2.axhline(st["raise_threshold"], color="tab:red", ls="--", lw=0.8, label="raise")
        ax2.axhline(st["resolve_threshold"], color="tab:green", ls=":", lw=0.8, label="resolve")
        for al in alert_intervals(run.events, run.n):
            if _overlaps(al["start"], al["end"], lo, hi):
                for ax in (ax1, ax2):
                    ax.axvspan(max(al["start"], lo) / fs, min(al["end"], hi) / fs, color="tab:red", alpha=0.12, lw=0)
                ax2.axvline(al["raised_at"] / fs, color="tab:red", lw=0.8)
        ax2.set_ylabel("score")
        ax2.set_xlabel("s")
        ax2.legend(loc="upper right", fontsize=7)
        ax1.set_xlim(lo / fs, hi / fs)
        ax2.set_xlim(lo / fs, hi / fs)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
