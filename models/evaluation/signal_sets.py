"""The evaluation's signals: the families and their groups, the noise levels, and reproducible
test/validation sets (each family's signals and noise depend on its name and the seed only, so a
subset of families draws exactly what the full evaluation draws). Pure numpy, no I/O."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from models.signals.families import FAMILIES, add_noise, generate
from models.signals.heldout import HELDOUT_FAMILIES, generate_heldout

LEVELS = (0.05, round(10 ** -0.5, 4), 0.5)  # noise σ relative to the signal RMS
EVAL_SEED = 7_770_001  # entropy for test signals; training uses small seeds (0, 1, ...)
VAL_SEED = 7_770_002  # baseline tuning signals
N2N_SEED = 7_770_003  # the noisy recordings the noisy-target model trains on


def level_key(sigma: float) -> str:
    return f"{sigma:g}"


def input_snr_db(sigma: float) -> float:
    return -20.0 * math.log10(sigma)


def make_signal(family: str, n: int, sample_rate: float, rng: np.random.Generator) -> np.ndarray:
    if family in HELDOUT_FAMILIES:
        return generate_heldout(family, n, rng)
    return generate(family, n, sample_rate, rng)


ALL_FAMILIES = FAMILIES + HELDOUT_FAMILIES
FAMILY_GROUPS = {"seen": FAMILIES, "heldout": HELDOUT_FAMILIES, "all": ALL_FAMILIES}


def family_index(family: str, families: Sequence[str]) -> int:
    """A family's seed index: its place in ``ALL_FAMILIES`` (so evaluating a subset, e.g. only the
    held-out families, draws exactly the signals and noise the full evaluation draws), else its place
    in ``families`` after them (other names)."""
    if family in ALL_FAMILIES:
        return ALL_FAMILIES.index(family)
    return len(ALL_FAMILIES) + list(families).index(family)


def parse_names(spec: str, valid: Sequence[str], groups: dict[str, Sequence[str]], what: str) -> tuple[str, ...]:
    """A comma-separated list of ``valid`` names and ``groups`` (a group stands for its names), in
    order, each once; an unknown name is a ValueError listing what is valid."""
    out: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        for name in groups.get(part, (part,)):
            if name not in valid:
                raise ValueError(f"unknown {what} {name!r}; valid: {', '.join([*groups, *valid])}")
            if name not in out:
                out.append(name)
    if not out:
        raise ValueError(f"no {what} given")
    return tuple(out)


def parse_families(spec: str) -> tuple[str, ...]:
    """``"heldout"``, ``"seen"``, ``"all"`` or a comma-separated list of family names (groups allowed)."""
    return parse_names(spec, ALL_FAMILIES, FAMILY_GROUPS, "family")


def signal_set(families: Sequence[str], per_family: int, n: int, sample_rate: float, seed: int) -> dict:
    """family → list of clean signals, one independent child seed per family (``family_index``)."""
    idx = [family_index(f, families) for f in families]
    seeds = np.random.SeedSequence(seed).spawn(max(idx) + 1)
    out = {}
    for family, i in zip(families, idx):
        rng = np.random.default_rng(seeds[i])
        out[family] = [make_signal(family, n, sample_rate, rng) for _ in range(per_family)]
    return out


def noisy_copy(clean: np.ndarray, sigma: float, key: Sequence[int]) -> np.ndarray:
    """clean + white noise of std σ·RMS(clean), drawn from a seed derived from ``key`` (reproducible)."""
    return add_noise(clean, input_snr_db(sigma), np.random.default_rng(np.random.SeedSequence(list(key))))
