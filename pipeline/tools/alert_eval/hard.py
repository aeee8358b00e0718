"""The harder alert evaluation set (``dae evaluate-alerts --set hard``, issue 15).

Streams of the held-out families (``models.signals.heldout``: chirp, square, impacts — no model was
trained on them) with white noise at 10 dB, 1 kHz, carrying the faults of
:mod:`pipeline.tools.alert_eval.faults` at several strengths each, go through the worker's path
offline (:func:`replay.run_streams`, one ``AlertEngine`` per seed) and are scored as the standard set
is (``evaluate.score_stream``, ``evaluate.summarise``).

Per seed: ``clean_streams_per_family`` clean streams of ``clean_seconds`` per family (the false-alarm
time), and per (kind, strength) ``fault_streams_per_family`` streams per family with
``faults_per_stream`` faults each. The streams of one kind share their draws across strengths
(same signal, noise, positions and signs: a paired detection curve). Seeds are independent children
of ``root_seed`` (``SeedSequence(root_seed, spawn_key=(seed,))``); training draws from
``SeedSequence(TrainConfig.seed)`` (0 by default) and the standard set from 20250604, so neither is
reused here.

Reported: recall per kind and strength with a 95 % Wilson interval (and per family); false alarms per
clean stream-hour on the clean streams, pooled over seeds and per seed, with an exact Poisson
(Garwood) 95 % interval, and which detector raised them; recall pooled over the four subtle kinds
issue 15's done-when line names at their strengths (``subtle_named``: step, spike, gain, noise), over
all six subtle kinds at their target strengths (``subtle_at_target``, with speed and hold), and over
the gross kinds; and issue 15's target: ``subtle_named`` ≥ 0.8, gross ≥ 0.95, false alarms ≤
``settings.false_alarms_per_hour`` (0.2 per stream-hour where the settings have none).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.stats import chi2, norm

from models.signals.heldout import HELDOUT_FAMILIES
from pipeline.tools.alert_eval import faults as F
from pipeline.tools.alert_eval.evaluate import by_detector, score_stream, summarise
from pipeline.tools.alert_eval.replay import alert_engine, run_streams

HARD_ROOT = 20_251_115  # root of the hard set's seeds: never used by training or the standard set
TARGET_SUBTLE_RECALL = 0.8
TARGET_GROSS_RECALL = 0.95
DEFAULT_FA_PER_HOUR = 0.2


@dataclass
class HardConfig:
    seeds: tuple[int, ...] = (1, 2, 3, 4)
    families: tuple[str, ...] = HELDOUT_FAMILIES
    kinds: tuple[str, ...] = F.KINDS
    snr_db: float = 10.0
    sample_rate: float = 1000.0
    # 3 families x 4 x 30 min = 6 clean stream-hours per seed, 24 over the four seeds.
    clean_streams_per_family: int = 4
    clean_seconds: float = 1800.0
    fault_streams_per_family: int = 2  # per (kind, strength)
    faults_per_stream: int = 4
    lead_seconds: float = 20.0  # no fault before this (alert warm-up)
    gap_seconds: float = 20.0  # at least this much normal signal after every fault
    jitter_seconds: float = 10.0  # random placement within each fault's slot
    chunk: int = 2048  # samples per fed chunk (a producer message)
    root_seed: int = HARD_ROOT
    rotate_families: bool = False  # True: each kind's fault streams in one family (kinds take turns)

    @classmethod
    def smoke(cls, seeds: tuple[int, ...] = (1,)) -> "HardConfig":
        """``--quick``: one fault per kind and strength (the kinds take turns over the families), a
        minute of clean signal per family."""
        return cls(seeds=seeds, clean_streams_per_family=1, clean_seconds=60.0, fault_streams_per_family=1,
                   faults_per_stream=1, gap_seconds=5.0, jitter_seconds=0.0, rotate_families=True)


def with_clean_hours(cfg: HardConfig, hours: float) -> HardConfig:
    """``cfg`` with clean streams long enough for ``hours`` clean stream-hours pooled over its seeds."""
    streams = len(cfg.seeds) * len(cfg.families) * cfg.clean_streams_per_family
    return replace(cfg, clean_seconds=round(hours * 3600 / streams, 1))


def wilson(k: int, n: int, conf: float = 0.95) -> list[float] | None:
    """Wilson score interval of a proportion k/n (None for n = 0)."""
    if n <= 0:
        return None
    z = float(norm.ppf(0.5 + conf / 2))
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [max(0.0, c - h), min(1.0, c + h)]


def garwood(k: int, exposure: float, conf: float = 0.95) -> list[float] | None:
    """Exact (Garwood) interval of a Poisson rate: k events in ``exposure`` (e.g. hours)."""
    if exposure <= 0:
        return None
    a = 1 - conf
    lo = float(chi2.ppf(a / 2, 2 * k)) / 2 if k > 0 else 0.0
    hi = float(chi2.ppf(1 - a / 2, 2 * k + 2)) / 2
    return [lo / exposure, hi / exposure]


def label(strength: float) -> str:
    return f"{strength:g}"


def seed_streams(cfg: HardConfig, seed: int) -> list[dict]:
    """[{name, family, kind (None: clean), strength, y, faults}] of one seed — deterministic."""
    for k in cfg.kinds:
        F.fault_seconds(k, 1.0)  # unknown kinds fail here, before any work
    root = np.random.SeedSequence(cfg.root_seed, spawn_key=(int(seed),))
    specs = [(None, fam, i) for fam in cfg.families for i in range(cfg.clean_streams_per_family)]
    nf = len(cfg.families)
    specs += [(k, fam, i) for j, k in enumerate(cfg.kinds)
              for fam in (cfg.families[j % nf : j % nf + 1] if cfg.rotate_families else cfg.families)
              for i in range(cfg.fault_streams_per_family)]
    kw = dict(fs=cfg.sample_rate, snr_db=cfg.snr_db, lead=cfg.lead_seconds, gap=cfg.gap_seconds,
              jitter=cfg.jitter_seconds)
    out = []
    for (kind, fam, i), ss in zip(specs, root.spawn(len(specs))):
        for s in (F.STRENGTHS[kind] if kind else (None,)):
            # The same child for every strength of a kind: paired streams along the curve.
            y, fl = F.make_fault_stream(fam, kind, s or 1.0, cfg.faults_per_stream, np.random.default_rng(ss),
                                        seconds=cfg.clean_seconds, **kw)
            name = f"s{seed}/{kind or 'clean'}@{label(s) if s else ''}/{fam}/{i}"
            out.append({"name": name, "family": fam, "kind": kind, "strength": s, "y": y, "faults": fl})
    return out


def run_seed(engine, settings, cfg: HardConfig, seed: int, log: Callable[[str], None]) -> tuple[list[dict], int]:
    """Scored rows of one seed's streams (one AlertEngine for the seed), and the windows it took."""
    t0 = time.perf_counter()
    streams = seed_streams(cfg, seed)
    hours = sum(s["y"].shape[0] for s in streams) / cfg.sample_rate / 3600
    log(f"hard set, seed {seed}: {len(streams)} streams ({hours:.1f} stream-hours) generated in "
        f"{time.perf_counter() - t0:.0f} s; running the alert path")
    alerts = alert_engine(engine, settings, cfg.sample_rate)
    runs = run_streams(engine, alerts, {s["name"]: s["y"] for s in streams}, cfg.chunk, cfg.sample_rate)
    rows, windows = [], 0
    for s in streams:
        run = runs.pop(s["name"])
        windows += run.starts.size
        r = score_stream(run, s["faults"], engine.window)
        r.update(name=s["name"], seed=seed, family=s["family"], kind=s["kind"], strength=s["strength"], n=run.n,
                 faults=[asdict(f) for f in s["faults"]])
        rows.append(r)
    log(f"hard set, seed {seed}: done after {time.perf_counter() - t0:.0f} s")
    return rows, windows


def _recall(rows: list[dict], fs: float) -> dict:
    s = summarise(rows, fs)
    out = {k: s[k] for k in ("streams", "anomalies", "detected", "recall", "delay_samples_median",
                             "delay_samples_p90", "alerts", "false_alarms")}
    out["ci95"] = wilson(s["detected"], s["anomalies"])
    return out


def _fa(rows: list[dict], fs: float) -> dict:
    k = sum(r["false_alarms"] for r in rows)
    hours = sum(r["clean_samples"] for r in rows) / fs / 3600
    return {"false_alarms": k, "stream_hours": hours, "per_hour": k / hours if hours > 0 else None,
            "ci95": garwood(k, hours), "by_detector": by_detector(rows)}


def aggregate(rows: list[dict], cfg: HardConfig, fa_max: float) -> dict:
    """Curve, false alarms, pooled recalls and the target from the scored rows of all seeds."""
    fs = cfg.sample_rate
    curve = {}
    for k in cfg.kinds:
        curve[k] = {}
        for s in F.STRENGTHS[k]:
            sel = [r for r in rows if r["kind"] == k and r["strength"] == s]
            c = _recall(sel, fs)
            c["target_strength"] = F.TARGET_STRENGTH.get(k) == s
            c["by_family"] = {f: _recall([r for r in sel if r["family"] == f], fs) for f in cfg.families}
            curve[k][label(s)] = c
    clean = [r for r in rows if r["kind"] is None]
    fa = {"clean_streams": _fa(clean, fs),
          "all_clean_time": _fa(rows, fs),
          "per_seed": {str(sd): _fa([r for r in clean if r["seed"] == sd], fs) for sd in cfg.seeds},
          "by_family": {f: _fa([r for r in clean if r["family"] == f], fs) for f in cfg.families}}
    subtle = [r for r in rows if r["kind"] in F.SUBTLE and r["strength"] == F.TARGET_STRENGTH[r["kind"]]]
    pooled = {"subtle_named": _recall([r for r in subtle if r["kind"] in F.TARGET_KINDS], fs),
              "subtle_at_target": _recall(subtle, fs),
              "gross": _recall([r for r in rows if r["kind"] in F.GROSS], fs),
              "extra": _recall([r for r in rows if r["kind"] in F.EXTRA], fs)}
    sub, gro, fah = pooled["subtle_named"]["recall"], pooled["gross"]["recall"], fa["clean_streams"]["per_hour"]
    t = {"subtle_recall_min": TARGET_SUBTLE_RECALL, "subtle_recall": sub,
         "subtle_met": sub is not None and sub >= TARGET_SUBTLE_RECALL,
         "gross_recall_min": TARGET_GROSS_RECALL, "gross_recall": gro,
         "gross_met": gro is not None and gro >= TARGET_GROSS_RECALL,
         "false_alarms_per_hour_max": fa_max, "false_alarms_per_hour": fah,
         "false_alarms_met": fah is not None and fah <= fa_max}
    t["met"] = bool(t["subtle_met"] and t["gross_met"] and t["false_alarms_met"])
    t["status"] = "MET" if t["met"] else "NOT MET"
    return {"curve": curve, "false_alarms": fa, "pooled": pooled, "target": t}


def evaluate_hard(engine, settings, cfg: HardConfig, log: Callable[[str], None] = lambda s: None) -> dict:
    """Results JSON of the hard set (every seed through the alert path, then :func:`aggregate`)."""
    t0 = time.perf_counter()
    rows, windows = [], 0
    for seed in cfg.seeds:
        r, w = run_seed(engine, settings, cfg, seed, log)
        rows += r
        windows += w
    fa_max = float(getattr(settings, "false_alarms_per_hour", DEFAULT_FA_PER_HOUR))
    res = {"config": {**asdict(cfg), "seeds": list(cfg.seeds), "families": list(cfg.families),
                      "kinds": list(cfg.kinds)},
           "model": {"version": engine.version, "window": engine.window, "hop": engine.hop,
                     "error_quantiles": engine.meta.error_quantiles},
           "settings": settings.model_dump(),
           "strengths": {k: list(F.STRENGTHS[k]) for k in cfg.kinds},
           "target_strength": dict(F.TARGET_STRENGTH),
           **aggregate(rows, cfg, fa_max)}
    res["run"] = {"streams": len(rows), "stream_hours": sum(r["n"] for r in rows) / cfg.sample_rate / 3600,
                  "windows": windows, "seconds": round(time.perf_counter() - t0, 1)}
    res["streams"] = rows
    return res


def _ci(v, ci, fmt=".2f") -> str:
    if v is None:
        return "-"
    return f"{v:{fmt}} [{ci[0]:{fmt}}, {ci[1]:{fmt}}]" if ci else f"{v:{fmt}}"


def format_hard(res: dict) -> str:
    """Detection curve (a row per kind, a cell per strength: recall [95 % CI] k/n; * = target
    strength), false alarms with their intervals, pooled recalls and the target."""
    lines = ["detection curve: recall [95 % Wilson] detected/faults per strength (* = issue-15 target strength)"]
    for k, per in res["curve"].items():
        cells = [f"{s + ('*' if c['target_strength'] else ''):>4s}: {_ci(c['recall'], c['ci95'])} "
                 f"{c['detected']}/{c['anomalies']}" for s, c in per.items()]
        lines.append(f"{k:13s} " + " | ".join(cells))
    fa = res["false_alarms"]
    c = fa["clean_streams"]
    lines.append(f"false alarms, clean streams: {c['false_alarms']} in {c['stream_hours']:.2f} stream-hours = "
                 f"{_ci(c['per_hour'], c['ci95'], '.3f')} per stream-hour (95 % Garwood); by detector "
                 f"{c.get('by_detector') or '-'}")
    for sd, v in fa["per_seed"].items():
        lines.append(f"  seed {sd}: {v['false_alarms']} in {v['stream_hours']:.2f} h = {_ci(v['per_hour'], v['ci95'], '.3f')}")
    a = fa["all_clean_time"]
    lines.append(f"false alarms, all clean time (with the fault streams' clean stretches): {a['false_alarms']} in "
                 f"{a['stream_hours']:.2f} h = {_ci(a['per_hour'], a['ci95'], '.3f')}")
    for name, p in res["pooled"].items():
        lines.append(f"pooled {name}: {_ci(p['recall'], p['ci95'], '.3f')} ({p['detected']}/{p['anomalies']})")
    t = res["target"]
    yes = {True: "met", False: "not met"}
    lines.append(f"target (issue 15): subtle recall >= {t['subtle_recall_min']} ({yes[t['subtle_met']]}), gross >= "
                 f"{t['gross_recall_min']} ({yes[t['gross_met']]}), <= {t['false_alarms_per_hour_max']:g} false "
                 f"alarms per stream-hour ({yes[t['false_alarms_met']]}): {t['status']}")
    r = res["run"]
    lines.append(f"{r['streams']} streams, {r['stream_hours']:.1f} stream-hours, {r['windows']} windows, {r['seconds']:.0f} s")
    return "\n".join(lines)


def run_hard(out: Path, json_path: Path | None = None, nab: bool = False, nab_dir: Path | None = None,
             settings=None, cfg: HardConfig | None = None, engine=None, log: Callable[[str], None] = print) -> dict:
    """The hard set (and NAB when ``nab``): print the tables, write the JSON (key ``hard``)."""
    from pipeline.settings import AlertSettings
    from pipeline.tools.alert_eval.evaluate import nab_part, write_results

    settings = settings or AlertSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hard = evaluate_hard(engine, settings, cfg or HardConfig(), log=log)
    log(format_hard(hard))
    result = {"hard": hard}
    if nab:
        result["nab"] = nab_part(out, nab_dir, settings, log)
    write_results(result, Path(json_path or out / "evaluate_alerts.json"), log)
    return result
