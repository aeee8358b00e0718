"""Sensor faults with a numeric strength, for the harder alert evaluation set (issue 15). Pure numpy.

A stream is ``y = clean + noise`` with the two kept apart, so a fault can act on either: "gain falls,
noise unchanged" is ``y = g·clean + noise`` over its stretch. ``sd`` is the clean signal's std and
``sn`` the noise std (at 10 dB input SNR ``sd ≈ 3.16·sn``). Every fault returns a :class:`Fault`
(``Anomaly``'s fields and a ``strength``): the stretch ``[start, end)`` it changed, and its parameters.
Random signs are drawn per fault.

Subtle kinds (strengths; the target strength of issue 15 in ``TARGET_STRENGTH``):

- ``step`` (0.5, **1**, 2): level step of s·sd for 5 s, then back.
- ``spike`` (3, **5**, 8): one sample offset by ±s·sd.
- ``gain`` (0.8, **0.6**, 0.4): the signal's gain is g for 5 s, the noise unchanged.
- ``noise`` (1.5, **2**, 4): noise power × p for 3 s (independent noise of std sn·sqrt(p − 1) added).
- ``speed`` (0.1, **0.2**, 0.4): the process runs (1 + f)× faster for 5 s (the clean signal is
  time-compressed from ``start`` on, the noise unchanged); at ``end`` it resumes at its own time, so
  the process's time jumps back by f·5 s there, as in evaluate.py's ``frequency_change``.
- ``hold`` (0.1, **0.3**, 1.0): the value is held (stuck at the last sample before) for t s.

Gross kinds (strength 1.0 each): ``stuck`` (held for 3 s); ``clipping`` (clipped for 5 s at the
20 % / 80 % quantiles of the previous 10 s); ``glitch_train`` (5 spikes of ±8·sd within 0.5 s);
``ramp`` (offset rising linearly to ±3·sd over 10 s, then back to normal at once); ``lost`` (signal
lost, noise only: clean → 0 for 5 s); ``spike_pair`` (two adjacent samples offset by +10·sd and
−10·sd, order random).

Extra kinds operators meet: ``drift`` (1, 3): an offset rising linearly to ±s·sd over 60 s, then
returning linearly to 0 over another 60 s (so no step anywhere; the record covers all 120 s);
``intermittent`` (1.0): contact loss, 5–10 dropouts to 0 of 5–20 ms within 2 s; ``quantise``
(0.5, 1): the measured signal rounded to steps of q·sd for 5 s; ``stuck_bit`` (1.0): for 5 s the
values snap down to a grid of 0.25·sd, as if the low bits stuck (floor); ``phase_jump`` (1.0): the
clean signal jumps forward by a quarter of its dominant period (clipped to 5–20 samples) at one
instant and stays ahead. It is the one kind that changes samples outside ``[start, end)`` (the
instant ``[a, a + 1)``): everything after it is the shifted, still normal, signal; it shifts
``clean`` in place too and needs ≥ 20 samples per jump of the arrays beyond the stream (the builder pads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

SUBTLE = ("step", "spike", "gain", "noise", "speed", "hold")
GROSS = ("stuck", "clipping", "glitch_train", "ramp", "lost", "spike_pair")
EXTRA = ("drift", "intermittent", "quantise", "stuck_bit", "phase_jump")
KINDS = SUBTLE + GROSS + EXTRA
STRENGTHS: dict[str, tuple[float, ...]] = {
    "step": (0.5, 1.0, 2.0), "spike": (3.0, 5.0, 8.0), "gain": (0.8, 0.6, 0.4), "noise": (1.5, 2.0, 4.0),
    "speed": (0.1, 0.2, 0.4), "hold": (0.1, 0.3, 1.0),
    **{k: (1.0,) for k in GROSS},
    "drift": (1.0, 3.0), "intermittent": (1.0,), "quantise": (0.5, 1.0), "stuck_bit": (1.0,), "phase_jump": (1.0,),
}
# The subtle kinds issue 15's done-when line names with their strengths (its target pools these four;
# speed and hold, in its table of subtle faults too, are reported beside them).
TARGET_KINDS = ("step", "spike", "gain", "noise")
# The strengths issue 15's target is stated at (subtle kinds).
TARGET_STRENGTH = {"step": 1.0, "spike": 5.0, "gain": 0.6, "noise": 2.0, "speed": 0.2, "hold": 0.3}
# Seconds each fault may span (its longest stretch); phase_jump/spikes: one instant.
SECONDS = {"step": 5.0, "gain": 5.0, "noise": 3.0, "speed": 5.0, "stuck": 3.0, "clipping": 5.0,
           "glitch_train": 0.5, "ramp": 10.0, "lost": 5.0, "drift": 120.0, "intermittent": 2.0,
           "quantise": 5.0, "stuck_bit": 5.0}
PAD = 256  # samples the builder keeps beyond a stream (phase_jump reads ahead: ≤ 20 per jump)


@dataclass
class Fault:
    """One injected fault: what ``evaluate.score_stream`` reads of an ``Anomaly`` (kind, start,
    end), its parameters and its strength."""

    kind: str
    start: int
    end: int  # exclusive
    params: dict = field(default_factory=dict)
    strength: float = 1.0


def fault_seconds(kind: str, strength: float) -> float:
    """The longest stretch (seconds) a ``kind`` fault of ``strength`` can span."""
    if kind not in STRENGTHS:
        raise ValueError(f"unknown fault kind {kind!r}; valid: {', '.join(KINDS)}")
    if kind == "hold":
        return float(strength)
    return SECONDS.get(kind, 0.002)


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def _dominant_period(x: np.ndarray) -> float:
    """Samples per cycle of the strongest non-DC frequency of ``x`` (inf for a flat ``x``)."""
    if x.size < 8:
        return math.inf
    spec = np.abs(np.fft.rfft(x - x.mean()))
    spec[0] = 0.0
    k = int(np.argmax(spec))
    return x.size / k if k > 0 and spec[k] > 0 else math.inf


def inject_fault(kind: str, strength: float, y: np.ndarray, clean: np.ndarray, noise: np.ndarray, a: int,
                 rng: np.random.Generator, fs: float, sd: float, sn: float) -> Fault:
    """Inject one ``kind`` fault of ``strength`` starting at sample ``a`` into ``y`` (in place; ``y`` is
    ``clean + noise``, which stay as they were except for ``phase_jump``, see the module doc)."""
    if kind not in STRENGTHS:
        raise ValueError(f"unknown fault kind {kind!r}; valid: {', '.join(KINDS)}")
    s = float(strength)
    L = int(round(fault_seconds(kind, s) * fs))
    b = min(a + L, y.shape[0])
    if kind == "step":
        off = _sign(rng) * s * sd
        y[a:b] += off
        return Fault(kind, a, b, {"offset_sd": off / sd}, s)
    if kind in ("spike", "spike_pair"):
        amp = _sign(rng) * s * sd if kind == "spike" else _sign(rng) * 10.0 * sd
        y[a] += amp
        if kind == "spike_pair":
            y[a + 1] -= amp
        return Fault(kind, a, a + (1 if kind == "spike" else 2), {"amplitude_sd": amp / sd}, s)
    if kind == "gain":
        y[a:b] = s * clean[a:b] + noise[a:b]
        return Fault(kind, a, b, {"gain": s}, s)
    if kind == "noise":
        y[a:b] += sn * math.sqrt(s - 1.0) * rng.standard_normal(b - a)
        return Fault(kind, a, b, {"noise_power_x": s}, s)
    if kind == "speed":
        pos = a + (1.0 + s) * np.arange(b - a)
        y[a:b] = np.interp(pos, np.arange(clean.shape[0]), clean) + noise[a:b]
        return Fault(kind, a, b, {"speedup": 1.0 + s}, s)
    if kind in ("hold", "stuck"):
        y[a:b] = y[a - 1]
        return Fault(kind, a, b, {"value": float(y[a - 1])}, s)
    if kind == "clipping":
        lo, hi = np.quantile(y[max(0, a - int(10 * fs)) : a], [0.2, 0.8])
        y[a:b] = np.clip(y[a:b], lo, hi)
        return Fault(kind, a, b, {"rails": [float(lo), float(hi)]}, s)
    if kind == "glitch_train":
        at = a + np.sort(np.concatenate([[0], 1 + rng.choice(L - 1, 4, replace=False)]))
        signs = np.where(rng.random(5) < 0.5, -1.0, 1.0)
        y[at] += 8.0 * sd * signs
        return Fault(kind, a, int(at[-1]) + 1, {"at": at.tolist()}, s)
    if kind == "ramp":
        off = _sign(rng) * 3.0 * sd
        y[a:b] += off * np.arange(1, b - a + 1) / L
        return Fault(kind, a, b, {"peak_sd": off / sd}, s)
    if kind == "lost":
        y[a:b] = noise[a:b]
        return Fault(kind, a, b, {}, s)
    if kind == "drift":
        off = _sign(rng) * s * sd
        half = L // 2
        shape = np.concatenate([np.arange(1, half + 1) / half, np.arange(L - half - 1, -1, -1) / (L - half)])
        y[a:b] += off * shape[: b - a]
        return Fault(kind, a, b, {"peak_sd": off / sd, "peak_at": a + half}, s)
    if kind == "intermittent":
        m = int(rng.integers(5, 11))
        slot = L // m
        starts = a + slot * np.arange(m) + np.concatenate([[0], rng.integers(0, slot - int(0.02 * fs), m - 1)])
        lengths = rng.integers(int(0.005 * fs), int(0.02 * fs) + 1, m)
        for st, ln in zip(starts, lengths):
            y[st : st + ln] = 0.0
        return Fault(kind, a, int(starts[-1] + lengths[-1]), {"dropouts": m, "ms": (lengths / fs * 1e3).tolist()}, s)
    if kind == "quantise":
        q = s * sd
        y[a:b] = np.round(y[a:b] / q) * q
        return Fault(kind, a, b, {"step_sd": s}, s)
    if kind == "stuck_bit":
        q = 0.25 * sd
        y[a:b] = np.floor(y[a:b] / q) * q
        return Fault(kind, a, b, {"grid_sd": 0.25}, s)
    # phase_jump: the process is ahead by d samples from a on.
    period = _dominant_period(clean[max(0, a - int(10 * fs)) : a])
    d = int(min(20, max(5, round(period / 4)))) if math.isfinite(period) else int(rng.integers(5, 21))
    m = clean.shape[0]
    clean[a : m - d] = clean[a + d :].copy()
    y[a : m - d] = clean[a : m - d] + noise[a : m - d]
    return Fault(kind, a, a + 1, {"shift_samples": d, "period_samples": period if math.isfinite(period) else None}, s)


def clean_signal(family: str, n: int, fs: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of a held-out family (models.signals.heldout) or a training family (float64)."""
    from models.signals.families import FAMILIES, generate
    from models.signals.heldout import HELDOUT_FAMILIES, generate_heldout

    if family in HELDOUT_FAMILIES:
        return generate_heldout(family, n, rng).astype(np.float64)
    if family in FAMILIES:
        return generate(family, n, fs, rng).astype(np.float64)
    raise ValueError(f"unknown family {family!r}; valid: {', '.join(HELDOUT_FAMILIES + FAMILIES)}")


def fault_stream_seconds(kind: str, strength: float, faults: int, lead: float, gap: float, jitter: float) -> float:
    """Length of a stream holding ``faults`` faults: a lead, then per fault a slot of its longest
    stretch, ``gap`` seconds of normal signal and ``jitter`` seconds of random placement."""
    return lead + faults * (fault_seconds(kind, strength) + gap + jitter)


def make_fault_stream(family: str, kind: str | None, strength: float, faults: int, rng: np.random.Generator,
                      fs: float = 1000.0, snr_db: float = 10.0, lead: float = 20.0, gap: float = 20.0,
                      jitter: float = 10.0, seconds: float | None = None) -> tuple[np.ndarray, list[Fault]]:
    """(noisy float32 stream, faults): white noise at ``snr_db``; ``kind`` None: a clean stream of
    ``seconds``. Fault j starts ``lead + j·slot + U(0, jitter)`` s in (slot: see
    :func:`fault_stream_seconds`), so faults are ≥ ``gap`` s apart and ≥ ``gap`` s of normal signal
    follow the last one."""
    if kind is not None:
        seconds = fault_stream_seconds(kind, strength, faults, lead, gap, jitter)
    n = int(round(float(seconds) * fs))
    clean = clean_signal(family, n + PAD, fs, rng)
    sn = math.sqrt(float(np.mean(clean[:n] ** 2)) / 10 ** (snr_db / 10))
    noise = sn * rng.standard_normal(n + PAD)
    y = clean + noise
    out: list[Fault] = []
    if kind is not None:
        sd = float(np.std(clean[:n]))
        slot = (fault_seconds(kind, strength) + gap + jitter) * fs
        for j in range(faults):
            a = int(lead * fs + j * slot + rng.uniform(0, jitter * fs))
            out.append(inject_fault(kind, strength, y, clean, noise, a, rng, fs, sd, sn))
    return y[:n].astype(np.float32), out
