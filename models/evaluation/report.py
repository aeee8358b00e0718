"""Evaluation output: the terminal tables, the figure and the results JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def format_table(results: dict) -> str:
    """Mean SNR gain (dB) per method: one column per (level, group); then per family at every noise
    level; then each model's margin over the best tuned baseline."""
    levels = [lv["key"] for lv in results["levels"]]
    groups = [g for g in results["groups"] if g != "all"] + ["all"]
    cols = [(lk, g) for lk in levels for g in groups]
    head = ["method"] + [f"σ={lk} {g}" for lk, g in cols]
    rows = [head]
    for name, m in results["methods"].items():
        rows.append([name] + [f"{m['summary'][lk][g]:+.2f}" for lk, g in cols])
    out = [_grid(rows)]
    for lk in levels:
        snr = next(lv["input_snr_db"] for lv in results["levels"] if lv["key"] == lk)
        fam_rows = [["method"] + list(results["families"])]
        for name, m in results["methods"].items():
            fam_rows.append([name] + [f"{m['gain_db'][lk][f]:+.2f}" for f in results["families"]])
        out.append(f"\nper family at σ={lk} ({snr:g} dB input SNR):\n" + _grid(fam_rows))
    margins = margin_table(results)
    if margins:
        out.append("\nmodel minus best_baseline (dB), group means:\n" + margins)
    if results["models"]:
        mrows = [["model", "arch", "objective", "params", "train s", "samples/s @512"]]
        for name, info in results["models"].items():
            tp = info.get("throughput_samples_per_s")
            mrows.append([name, info["arch"], info["objective"], f"{info['parameters']:,}",
                          f"{info['train_seconds']:.0f}" if info.get("train_seconds") is not None else "-",
                          f"{tp / 1e6:.2f} M" if tp else "-"])
        out.append("\n" + _grid(mrows))
    return "\n".join(out)


def margins(results: dict, method: str, against: str = "best_baseline") -> dict:
    """level → group → mean gain of ``method`` minus that of ``against`` (dB)."""
    a, b = results["methods"][method]["summary"], results["methods"][against]["summary"]
    return {lk: {g: a[lk][g] - b[lk][g] for g in a[lk]} for lk in a}


def margin_table(results: dict) -> str:
    if "best_baseline" not in results["methods"]:
        return ""
    levels = [lv["key"] for lv in results["levels"]]
    groups = [g for g in results["groups"] if g != "all"] + ["all"]
    cols = [(lk, g) for lk in levels for g in groups]
    rows = [["model"] + [f"σ={lk} {g}" for lk, g in cols]]
    for name, m in results["methods"].items():
        if m["kind"] == "model":
            d = margins(results, name)
            rows.append([name] + [f"{d[lk][g]:+.2f}" for lk, g in cols])
    return _grid(rows) if len(rows) > 1 else ""


def _grid(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(results: dict, examples: dict, path: Path) -> None:
    """Left: mean gain vs input SNR per method (held-out families when present); right: excerpts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    group = "heldout" if "heldout" in results["groups"] else "all"
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 5))
    x = [lv["input_snr_db"] for lv in results["levels"]]
    for name, m in results["methods"].items():
        y = [m["summary"][lv["key"]][group] for lv in results["levels"]]
        ax.plot(x, y, marker="o", ls="-" if m["kind"] == "model" else "--", label=name)
    ax.set_xlabel("input SNR (dB)")
    ax.set_ylabel(f"mean SNR gain (dB), {group} families")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    t = np.arange(len(examples["clean"]))
    bx.plot(t, examples["noisy"], color="0.75", lw=0.8, label="noisy")
    bx.plot(t, examples["clean"], color="k", lw=1.5, label="clean")
    for name in ("best_baseline", "mlp", "conv", "conv_n2n"):
        if name in examples:
            bx.plot(t, examples[name], lw=1.0, label=name)
    bx.set_title(examples["title"])
    bx.set_xlabel("sample")
    bx.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(results: dict, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
