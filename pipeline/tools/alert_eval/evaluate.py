"""Evaluate the anomaly alerts (``dae evaluate-alerts``): synthetic injected anomalies and NAB.

Both parts run every stream through the worker's own path, offline: the signal is cut into chunks
(``chunk`` samples, like producer messages), each chunk goes through :class:`StreamWindowing`,
each round's windows through ``InferenceEngine.infer``, the outputs back through overlap-add, and
their ``errors``/``scales`` through one :meth:`AlertEngine.update_batch`; the tail is flushed as the
worker does when a stream goes idle.

Synthetic (held-out)
--------------------
Streams of the ``models.signals.families`` families drawn from a seed the training never uses, with white
noise at ``snr_db`` (10 dB by default) at 1000 Hz. Clean streams carry no anomaly; anomaly streams
carry ``anomalies_per_stream`` anomalies of one kind each, the first after ``lead_seconds`` (the
alerts' warm-up) and at least ~20 s apart. Kinds and strengths (``sd``: the noisy stream's std,
``sn``: its noise std):

- ``spike``: 1-3 samples offset by ±(6-10)·sd;
- ``level_shift``: offset ±(2-4)·sd for 5-15 s, then back;
- ``frequency_change``: the underlying process runs 2.5-4x faster for 5-15 s (the clean signal is
  time-compressed, noise at the same level added anew);
- ``flatline``: the value is held (stuck sensor) or 0 (dropout) for 2-10 s;
- ``noise_burst``: extra white noise of (2-4)·sn for 1-5 s;
- ``saturation``: clipped for 5-15 s at rails placed at the q and 1-q quantiles of the previous
  10 s with q in 15-25 %, i.e. 30-50 % of the samples sit on a rail.

Scoring: an anomaly ``[a, b)`` is *detected* when an alert's range (raise to resolve) overlaps it;
its *delay* is the number of samples from ``a`` until the raised event could be published (the end
of the window that completed the k-of-n rule), 0 if an alert was already up. A raised alert is
*true* when its triggering windows overlap some ``[a - W, b + W)``, else a *false alarm*. False
alarms per stream-hour are counted over the clean streams and over the stretches of the anomaly
streams outside ``[a - W, b + W)``.

NAB: see :mod:`pipeline.tools.alert_eval.nab`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.tools.alert_eval.replay import StreamRun, alert_engine, alert_intervals, run_streams
from pipeline.settings import AlertSettings
from models.signals.families import FAMILIES, add_noise, generate

KINDS = ("spike", "level_shift", "frequency_change", "flatline", "noise_burst", "saturation")
# Done-when of issue 4 (synthetic, ~10 dB input SNR).
TARGET_RECALL = 0.9
TARGET_FA_PER_HOUR = 1.0


# ============================================================================ synthetic streams
@dataclass
class Anomaly:
    kind: str
    start: int
    end: int  # exclusive
    params: dict = field(default_factory=dict)


@dataclass
class SyntheticConfig:
    sample_rate: float = 1000.0
    snr_db: float = 10.0
    families: tuple[str, ...] = FAMILIES
    kinds: tuple[str, ...] = KINDS
    anomaly_streams_per_family: int = 2  # per kind
    anomaly_seconds: float = 180.0
    anomalies_per_stream: int = 4
    clean_streams_per_family: int = 4
    clean_seconds: float = 600.0
    lead_seconds: float = 20.0  # no anomaly before this (alert warm-up)
    chunk: int = 2048  # samples per fed chunk (a producer message)
    # Held out: training draws from SeedSequence(TrainConfig.seed=0); this root seed is never trained on.
    seed: int = 20_250_604


def _u(rng, lo, hi) -> float:
    return float(rng.uniform(lo, hi))


def inject(kind: str, y: np.ndarray, clean: np.ndarray, a: int, rng: np.random.Generator, fs: float,
           sd: float, sn: float) -> Anomaly:
    """Inject one anomaly of ``kind`` starting at ``a`` into the noisy signal ``y`` (in place)."""
    n = y.shape[0]
    if kind == "spike":
        L = int(rng.integers(1, 4))
        amp = _u(rng, 6, 10) * sd * (1 if rng.random() < 0.5 else -1)
        y[a : a + L] += amp
        return Anomaly(kind, a, a + L, {"amplitude_sd": amp / sd})
    if kind == "level_shift":
        L = int(_u(rng, 5, 15) * fs)
        off = _u(rng, 2, 4) * sd * (1 if rng.random() < 0.5 else -1)
        y[a : a + L] += off
        return Anomaly(kind, a, min(a + L, n), {"offset_sd": off / sd})
    if kind == "frequency_change":
        L = min(int(_u(rng, 5, 15) * fs), n - a)
        r = _u(rng, 2.5, 4.0)
        # Source positions run r times faster; start them where the compressed stretch fits.
        src0 = a if a + r * L < n else max(0.0, n - 1 - r * L)
        pos = src0 + r * np.arange(L)
        faster = np.interp(pos, np.arange(n), clean)
        y[a : a + L] = faster + sn * rng.standard_normal(L)
        return Anomaly(kind, a, a + L, {"speedup": r})
    if kind == "flatline":
        L = int(_u(rng, 2, 10) * fs)
        stuck = rng.random() < 0.5
        y[a : a + L] = y[a - 1] if stuck else 0.0
        return Anomaly(kind, a, min(a + L, n), {"mode": "stuck" if stuck else "dropout"})
    if kind == "noise_burst":
        L = int(_u(rng, 1, 5) * fs)
        g = _u(rng, 2, 4)
        seg = y[a : a + L]
        seg += g * sn * rng.standard_normal(seg.shape[0])
        return Anomaly(kind, a, min(a + L, n), {"noise_x": g})
    if kind == "saturation":
        L = int(_u(rng, 5, 15) * fs)
        q = _u(rng, 0.15, 0.25)
        ref = y[max(0, a - int(10 * fs)) : a]
        lo, hi = np.quantile(ref, [q, 1 - q])
        seg = y[a : a + L]
        clipped = np.clip(seg, lo, hi)
        frac = float(np.mean((clipped == lo) | (clipped == hi))) if seg.size else 0.0
        y[a : a + L] = clipped
        return Anomaly(kind, a, min(a + L, n), {"rail_quantile": q, "clipped_fraction": frac})
    raise ValueError(f"unknown anomaly kind {kind!r}; valid: {', '.join(KINDS)}")


def make_streams(cfg: SyntheticConfig) -> list[dict]:
    """[{name, family, kind (None: clean), y, anomalies}] — deterministic in cfg."""
    fs = cfg.sample_rate
    root = np.random.SeedSequence(cfg.seed)
    out = []
    specs = [(None, fam, i) for fam in cfg.families for i in range(cfg.clean_streams_per_family)]
    specs += [(k, fam, i) for k in cfg.kinds for fam in cfg.families for i in range(cfg.anomaly_streams_per_family)]
    for (kind, fam, i), ss in zip(specs, root.spawn(len(specs))):
        rng = np.random.default_rng(ss)
        n = int(round((cfg.clean_seconds if kind is None else cfg.anomaly_seconds) * fs))
        clean = generate(fam, n, fs, rng)
        y = add_noise(clean, cfg.snr_db, rng).astype(np.float64)
        anomalies = []
        if kind is not None:
            sd = float(np.std(y))
            sn = math.sqrt(float(np.mean(clean.astype(np.float64) ** 2)) / 10 ** (cfg.snr_db / 10))
            lead = int(cfg.lead_seconds * fs)
            slot = (n - lead) // max(1, cfg.anomalies_per_stream)
            for j in range(cfg.anomalies_per_stream):
                # Anomaly in the first half of its slot: >= half a slot of normal signal follows it.
                a = lead + j * slot + int(rng.integers(0, max(1, slot // 2 - int(15 * fs))))
                anomalies.append(inject(kind, y, clean, a, rng, fs, sd, sn))
        out.append({"name": f"{kind or 'clean'}/{fam}/{i}", "family": fam, "kind": kind,
                    "y": y.astype(np.float32), "anomalies": anomalies})
    return out


def _overlaps(s: int, e: int, a: int, b: int) -> bool:
    return s < b and e > a


def score_stream(run: StreamRun, anomalies: list[Anomaly], W: int) -> dict:
    alerts = alert_intervals(run.events, run.n)
    det = []
    for an in anomalies:
        hit = [al for al in alerts if _overlaps(al["start"], al["end"], an.start, an.end)]
        if hit:
            first = min(hit, key=lambda al: al["raised_at"])
            delay = max(0, first["raised_at"] - an.start)
            det.append({"kind": an.kind, "start": an.start, "end": an.end, "detected": True, "delay": int(delay)})
        else:
            det.append({"kind": an.kind, "start": an.start, "end": an.end, "detected": False, "delay": None})
    true_alerts = false_alerts = 0
    by: dict[str, int] = {}
    for al in alerts:
        s, e = al["trigger"]
        if any(_overlaps(s, e, an.start - W, an.end + W) for an in anomalies):
            true_alerts += 1
        else:
            false_alerts += 1
            by[al["detector"]] = by.get(al["detector"], 0) + 1
    # Clean time: the stream minus [a - W, b + W) of every anomaly.
    mask = np.ones(run.n, dtype=bool)
    for an in anomalies:
        mask[max(0, an.start - W) : min(run.n, an.end + W)] = False
    return {"detections": det, "true_alerts": true_alerts, "false_alarms": false_alerts,
            "false_alarms_by_detector": by, "clean_samples": int(mask.sum()), "alerts": len(alerts)}


def by_detector(rows: list[dict]) -> dict[str, int]:
    """False alarms of the scored streams ``rows`` per detector that raised them."""
    out: dict[str, int] = {}
    for r in rows:
        for d, k in r.get("false_alarms_by_detector", {}).items():
            out[d] = out.get(d, 0) + k
    return dict(sorted(out.items()))


def summarise(rows: list[dict], fs: float) -> dict:
    """Recall, precision, delays and false alarms over the scored streams ``rows`` (see :func:`score_stream`)."""
    dets = [d for r in rows for d in r["detections"]]
    delays = [d["delay"] for d in dets if d["detected"]]
    alerts_n = sum(r["alerts"] for r in rows)
    true_n = sum(r["true_alerts"] for r in rows)
    fa = sum(r["false_alarms"] for r in rows)
    hours = sum(r["clean_samples"] for r in rows) / fs / 3600
    return {
        "streams": len(rows),
        "anomalies": len(dets),
        "detected": sum(d["detected"] for d in dets),
        "recall": (sum(d["detected"] for d in dets) / len(dets)) if dets else None,
        "alerts": alerts_n,
        "true_alerts": true_n,
        "precision": (true_n / alerts_n) if alerts_n else None,
        "delay_samples_median": float(np.median(delays)) if delays else None,
        "delay_samples_p90": float(np.quantile(delays, 0.9)) if delays else None,
        "false_alarms": fa,
        "false_alarms_by_detector": by_detector(rows),
        "clean_hours": hours,
        "false_alarms_per_hour": fa / hours if hours > 0 else None,
    }


def evaluate_synthetic(engine, settings: AlertSettings, cfg: SyntheticConfig,
                       log: Callable[[str], None] = lambda s: None) -> tuple[dict, dict]:
    """(results JSON, {stream name: (stream dict, StreamRun)} for plotting)."""
    t0 = time.perf_counter()
    streams = make_streams(cfg)
    t_gen = time.perf_counter() - t0
    log(f"synthetic: {len(streams)} streams generated in {t_gen:.1f} s; running the alert path")
    alerts = alert_engine(engine, settings, cfg.sample_rate)
    W, fs = engine.window, cfg.sample_rate
    per_stream, runs = [], {}
    windows = 0
    t1 = time.perf_counter()
    results = run_streams(engine, alerts, {s["name"]: s["y"] for s in streams}, cfg.chunk, fs)
    for s in streams:
        run = results[s["name"]]
        windows += run.starts.size
        r = score_stream(run, s["anomalies"], W)
        r.update(name=s["name"], family=s["family"], kind=s["kind"], n=run.n)
        per_stream.append(r)
        runs[s["name"]] = (s, run)
    t_run = time.perf_counter() - t1

    per_kind = {k: summarise([r for r in per_stream if r["kind"] == k], fs) for k in cfg.kinds}
    for k in cfg.kinds:
        per_kind[k]["by_family"] = {
            f: summarise([r for r in per_stream if r["kind"] == k and r["family"] == f], fs) for f in cfg.families
        }
    clean = summarise([r for r in per_stream if r["kind"] is None], fs)
    anom = [r for r in per_stream if r["kind"] is not None]
    overall = summarise(per_stream, fs)
    all_rec = summarise(anom, fs)
    fa_h = overall["false_alarms_per_hour"]
    met = bool(all_rec["recall"] is not None and all_rec["recall"] >= TARGET_RECALL
               and fa_h is not None and fa_h <= TARGET_FA_PER_HOUR)
    result = {
        "config": {**asdict(cfg), "families": list(cfg.families), "kinds": list(cfg.kinds)},
        "model": {"version": engine.version, "window": engine.window, "hop": engine.hop,
                  "error_quantiles": engine.meta.error_quantiles},
        "settings": settings.model_dump(),
        "per_kind": per_kind,
        "clean_streams": clean,
        "overall": {
            "recall": all_rec["recall"],
            "anomalies": all_rec["anomalies"],
            "detected": all_rec["detected"],
            "precision": overall["precision"],
            "alerts": overall["alerts"],
            "false_alarms": overall["false_alarms"],
            "false_alarms_by_detector": overall["false_alarms_by_detector"],
            "clean_hours": overall["clean_hours"],
            "false_alarms_per_hour": fa_h,
            "false_alarms_per_hour_clean_streams": clean["false_alarms_per_hour"],
            "delay_samples_median": all_rec["delay_samples_median"],
            "stream_hours": sum(r["n"] for r in per_stream) / fs / 3600,
            "windows": windows,
            "seconds": round(t_gen + t_run, 2),
        },
        "target": {"recall_min": TARGET_RECALL, "false_alarms_per_hour_max": TARGET_FA_PER_HOUR, "met": met},
        "streams": [{k: v for k, v in r.items()} for r in per_stream],
    }
    return result, runs


def format_synthetic(res: dict) -> str:
    fs = res["config"]["sample_rate"]

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [f"{'kind':17s} {'anom':>5s} {'recall':>7s} {'prec':>6s} {'delay med':>10s} {'p90':>7s} "
             f"{'FA':>4s} {'FA/h':>6s}   (delay in samples at {fs:g} Hz)"]
    for k, r in res["per_kind"].items():
        lines.append(f"{k:17s} {r['anomalies']:5d} {f(r['recall'], '7.3f')} {f(r['precision'], '6.3f')} "
                     f"{f(r['delay_samples_median'], '10.0f')} {f(r['delay_samples_p90'], '7.0f')} "
                     f"{r['false_alarms']:4d} {f(r['false_alarms_per_hour'], '6.2f')}")
    c = res["clean_streams"]
    lines.append(f"{'clean streams':17s} {'':5s} {'':7s} {'':6s} {'':10s} {'':7s} {c['false_alarms']:4d} "
                 f"{f(c['false_alarms_per_hour'], '6.2f')}   ({c['clean_hours']:.2f} stream-hours)")
    o = res["overall"]
    lines.append(f"{'ALL':17s} {o['anomalies']:5d} {f(o['recall'], '7.3f')} {f(o['precision'], '6.3f')} "
                 f"{f(o['delay_samples_median'], '10.0f')} {'':7s} {o['false_alarms']:4d} "
                 f"{f(o['false_alarms_per_hour'], '6.2f')}   ({o['clean_hours']:.2f} clean stream-hours)")
    if o.get("false_alarms_by_detector"):
        lines.append(f"false alarms by detector: {o['false_alarms_by_detector']}")
    t = res["target"]
    lines.append(f"target recall >= {t['recall_min']} and <= {t['false_alarms_per_hour_max']} false alarm per "
                 f"stream-hour: {'MET' if t['met'] else 'NOT MET'}")
    return "\n".join(lines)


# ================================================================================ entry point
def run(
    out: Path,
    json_path: Path | None = None,
    registry: Path | None = None,
    nab: bool = True,
    nab_dir: Path | None = None,
    settings: AlertSettings | None = None,
    synthetic: SyntheticConfig | None = None,
    engine=None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run both parts, print tables, write JSON and the PNG timeline. Returns the JSON dict."""
    from pipeline.inference.engine import InferenceEngine

    settings = settings or AlertSettings()
    synthetic = synthetic or SyntheticConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if engine is None:
        engine = InferenceEngine.from_source(Path(registry or ".dae/registry"), None, device="cpu")
    syn, runs = evaluate_synthetic(engine, settings, synthetic, log=log)
    log(format_synthetic(syn))
    png = out / "alerts_timeline.png"
    from pipeline.tools.alert_eval.plot import plot_timeline

    plot_timeline(syn, runs, png, engine.window, synthetic.sample_rate)
    result = {"synthetic": syn, "timeline_png": str(png)}
    if nab:
        result["nab"] = nab_part(out, nab_dir, settings, log)
    write_results(result, Path(json_path or out / "evaluate_alerts.json"), log, also=png)
    return result


def nab_part(out: Path, nab_dir: Path | None, settings: AlertSettings, log: Callable[[str], None]) -> dict | None:
    """NAB results (None when ``nab_dir`` has no labels), with the NAB model cached under ``out``."""
    nab_dir = Path(nab_dir or default_nab_dir())
    if not (nab_dir / "labels" / "combined_windows.json").is_file():
        log(f"nab: {nab_dir} has no labels/combined_windows.json; skipped")
        return None
    from pipeline.tools.alert_eval.nab import evaluate_nab, format_nab, nab_model, nab_settings

    eng = nab_model(Path(out) / "nab-model", log=log)
    res = evaluate_nab(eng, nab_settings(settings), nab_dir, log=log)
    log(format_nab(res))
    return res


def write_results(result: dict, json_path: Path, log: Callable[[str], None], also: Path | None = None) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1, default=_jsonable) + "\n")
    log(f"wrote {json_path}" + (f" and {also}" if also else ""))


def default_nab_dir() -> Path:
    return Path(__file__).resolve().parents[4] / "shared" / "data" / "nab"


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Anomaly):
        return asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
