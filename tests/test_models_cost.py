"""A model's serving cost (FLOPs and µs per window) in its checkpoint, the retrain decision that
uses it, and the distillation of a noisy-target model into one pass of its network."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.archs import build_model
from models.checkpoint import load_checkpoint, save_checkpoint
from models.cost import COST_BATCH, compare_cost, flops_per_window, measure_cost
from models.training import TrainConfig, train_arrays
from models.training.distill import DistilConfig, distil
from pipeline.retrain.run import decide


def _linear_flops(model) -> int:
    return sum(2 * m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_flops_are_counted_from_the_shapes():
    mlp = build_model("mlp", {"window": 256})
    assert flops_per_window(mlp, 256) == _linear_flops(mlp) == 393_216  # 2 per multiply-add
    conv = build_model("conv", {"window": 256})
    twice = build_model("conv", {"window": 256, "self_ensemble": 2})
    assert flops_per_window(twice, 256) == 2 * flops_per_window(conv, 256)  # the self-ensemble's 2 passes
    n2n = build_model("noisier2noise", {"window": 256, "inner_arch": "mlp", "inner": {"window": 256}, "draws": 8})
    assert flops_per_window(n2n, 256) == 8 * flops_per_window(mlp, 256)  # one pass per fixed draw
    assert n2n.training  # left as it was found


def test_measured_cost_and_side_by_side_comparison():
    mlp = build_model("mlp", {"window": 64, "hidden": 32})
    c = measure_cost(mlp, 64)
    assert c["flops_per_window"] == _linear_flops(mlp) and c["batch"] == COST_BATCH
    assert 0 < c["us_per_window"] < 1e5 and c["threads"] == torch.get_num_threads()
    n2n = build_model("noisier2noise", {"window": 64, "inner_arch": "mlp", "inner": {"window": 64, "hidden": 32}})
    cmp = compare_cost(n2n, mlp, 64)
    assert cmp["flops_ratio"] == 8.0
    assert cmp["candidate_us_per_window"] > 0 and cmp["current_us_per_window"] > 0
    assert math.isclose(cmp["time_ratio"], cmp["candidate_us_per_window"] / cmp["current_us_per_window"], rel_tol=1e-2)


def test_cost_is_saved_with_the_checkpoint_and_older_files_still_load(tmp_path):
    t = np.arange(3000)
    sigs = [np.sin(2 * np.pi * t / p).astype(np.float32) for p in (17.0, 23.0, 31.0)]
    model, meta = train_arrays(TrainConfig(sample_rate=1000.0, window=64, hidden=32, steps=3), sigs, progress=False)
    assert meta.cost["flops_per_window"] == _linear_flops(model) and meta.cost["us_per_window"] > 0
    save_checkpoint(tmp_path / "a", model, meta)
    _, back = load_checkpoint(tmp_path / "a")
    assert back.cost == meta.cost
    meta.cost = None  # a checkpoint written before costs were recorded
    save_checkpoint(tmp_path / "b", model, meta)
    assert load_checkpoint(tmp_path / "b")[1].cost is None


def test_side_by_side_timing_stops_each_model_at_its_own_budget(monkeypatch):
    """A fast model's many short passes do not make a slow one repeat its long ones (a conv candidate
    beside a seed MLP ran ~80 passes for the MLP's budget: 10.4 s per comparison)."""
    import models.cost as cost

    fast, slow = build_model("mlp", {"window": 64, "hidden": 32}), build_model("mlp", {"window": 64, "hidden": 32})
    seconds = {id(fast): 0.001, id(slow): 0.2}  # what each pass "takes": the loop's arithmetic, not the clock
    calls = {id(fast): 0, id(slow): 0}

    def one_pass(model, x):
        calls[id(model)] += 1
        return seconds[id(model)]

    monkeypatch.setattr(cost, "_one_pass", one_pass)
    us = cost.time_per_window({"candidate": slow, "current": fast}, 64)
    assert calls[id(slow)] == cost._MIN_PASSES  # 3 x 0.2 s covers its 0.3 s
    assert calls[id(fast)] == math.ceil(cost._MIN_SECONDS / 0.001 - 1e-9)  # 300 passes of 1 ms
    assert us == {"candidate": 1e6 * 0.2 / COST_BATCH, "current": 1e6 * 0.001 / COST_BATCH}


COST = {"flops_ratio": 1.0, "time_ratio": 1.1}


def test_decide_promotes_only_a_candidate_that_is_not_worse_and_not_costlier():
    ok, why = decide({"candidate_gain_db": 5.0, "current_gain_db": 4.0}, COST, 0.0, 2.0)
    assert ok and "limit 2x" in why
    ok, why = decide({"candidate_gain_db": 3.0, "current_gain_db": 4.0}, COST, 0.0, 2.0)
    assert not ok and "below the current model's +4.00 dB" in why and "cost" not in why
    assert decide({"candidate_gain_db": 3.5, "current_gain_db": 4.0}, COST, 0.5, 2.0)[0]
    assert not decide({"candidate_gain_db": float("nan"), "current_gain_db": 4.0}, COST, 0.0, 2.0)[0]
    costly = {"flops_ratio": 8.0, "time_ratio": 1.5}  # the larger ratio counts
    ok, why = decide({"candidate_gain_db": 9.0, "current_gain_db": 4.0}, costly, 0.0, 2.0)
    assert not ok and "forward cost 8.0x the current model's" in why and "retrain.max_cost_ratio 2" in why
    slow = {"flops_ratio": 1.0, "time_ratio": 3.0}
    assert not decide({"candidate_gain_db": 9.0, "current_gain_db": 4.0}, slow, 0.0, 2.0)[0]
    assert decide({"candidate_gain_db": 9.0, "current_gain_db": 4.0}, slow, 0.0, 4.0)[0]


def test_distillation_gives_one_pass_of_the_inner_network_close_to_the_teacher():
    rng = np.random.default_rng(0)
    t = np.arange(6000)
    sigs = [(np.sin(2 * np.pi * t / p) + 0.3 * rng.standard_normal(t.size)).astype(np.float32)
            for p in (17.0, 23.0, 31.0, 41.0)]
    cfg = TrainConfig(sample_rate=1000.0, window=64, arch="conv", arch_config={"channels": [4, 8]},
                      objective="noisier2noise", steps=40, batch_size=32, n2n_draws=4, cpu_threads=1)
    teacher, tmeta = train_arrays(cfg, sigs, progress=False)
    dcfg = DistilConfig(steps=60, batch_size=32, pool=512, val_windows=128, lr=3e-3)
    student, meta = distil(teacher, tmeta, sigs, dcfg)
    assert meta.arch == "conv" and meta.config == teacher.config.inner
    assert meta.cost["flops_per_window"] * 4 == tmeta.cost["flops_per_window"]  # 1 pass instead of 4
    d = meta.training["distilled"]
    assert d["teacher"]["arch"] == "noisier2noise" and d["steps"] == 60
    # Closer to the teacher than the inner net it started from, on windows it never trained on.
    from models.forward import standardize
    from models.training.sampler import WindowSampler, as_streams

    w, _ = WindowSampler(as_streams(sigs), 64).sample(np.random.default_rng(9), 256)
    xn, _, _ = standardize(w)
    with torch.no_grad():
        want = teacher(xn)
        before = float(((teacher.inner(xn) - want) ** 2).mean())
        after = float(((student(xn) - want) ** 2).mean())
    assert after < 0.8 * before, (after, before)
    assert d["val_mse_to_teacher"] < d["val_teacher_change"]
    again, _ = distil(teacher, tmeta, sigs, dcfg)  # reproducible
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="noisier2noise"):
        distil(student, meta, sigs, dcfg)
