"""dae evaluate-alerts (pipeline.tools.alert_eval.evaluate): injection, scoring, NAB scoring, a quick smoke run."""

import json

import numpy as np
import pytest
import torch

from models.checkpoint import meta_for
from models.archs import DenoisingAutoencoder, MLPConfig
from pipeline.monitor.alerts.engine import AlertEvent
from pipeline.settings import AlertSettings
from pipeline.inference.engine import InferenceEngine
from pipeline.tools.alert_eval.nab import nab_score_file, nab_windows
from pipeline.tools.alert_eval.evaluate import KINDS, Anomaly, StreamRun, SyntheticConfig, inject, run, score_stream


@pytest.mark.parametrize("kind", KINDS)
def test_inject_changes_the_signal_only_inside_the_anomaly(kind):
    rng = np.random.default_rng(0)
    n, fs = 40_000, 1000.0
    clean = np.sin(2 * np.pi * 5 * np.arange(n) / fs)
    y = clean + 0.3 * rng.standard_normal(n)
    before = y.copy()
    an = inject(kind, y, clean, 20_000, rng, fs, float(np.std(before)), 0.3)
    assert an.kind == kind and an.start == 20_000 and an.end > an.start
    changed = np.flatnonzero(y != before)
    assert changed.size > 0
    assert changed.min() >= an.start and changed.max() < an.end


def test_inject_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="unknown anomaly kind"):
        inject("wobble", np.zeros(10), np.zeros(10), 2, np.random.default_rng(0), 1.0, 1.0, 1.0)


def test_score_stream_counts_detection_delay_and_false_alarms():
    W = 256
    ev = [AlertEvent("raised", "s", 10_000, 10_384, 9.0, 6.0, "v", 0.0),
          AlertEvent("resolved", "s", 10_000, 12_000, 9.0, 3.0, "v", 0.0),
          AlertEvent("raised", "s", 50_000, 50_384, 7.0, 6.0, "v", 0.0, "isolated"),
          AlertEvent("resolved", "s", 50_000, 50_512, 7.0, 3.0, "v", 0.0, "isolated")]
    run_ = StreamRun("s", 100_000, np.zeros(0, np.int64), np.zeros(0), {}, np.zeros(0, bool), ev, {})
    anomalies = [Anomaly("spike", 10_200, 10_203), Anomaly("spike", 80_000, 80_002)]
    r = score_stream(run_, anomalies, W)
    assert [d["detected"] for d in r["detections"]] == [True, False]
    assert r["detections"][0]["delay"] == 10_384 - 10_200  # raised once its triggering window ended
    assert (r["true_alerts"], r["false_alarms"]) == (1, 1)
    assert r["false_alarms_by_detector"] == {"isolated": 1}  # what raised the false alarm
    # clean time excludes [a - W, b + W) of each anomaly
    assert r["clean_samples"] == 100_000 - (3 + 2 * W) - (2 + 2 * W)


def test_nab_score_perfect_null_and_false_positive():
    n, wins = 10_000, [(5000, 5999), (8000, 8499)]
    assert nab_score_file(n, [5000, 8000], wins)["raw"] == pytest.approx(2.0)  # earliest possible: 1 each
    assert nab_score_file(n, [], wins)["raw"] == pytest.approx(-2.0)
    late = nab_score_file(n, [5999], wins)["raw"]
    assert -1.0 < late < 0.0  # detected at the very end of the window: ~0, minus the missed second
    fp = nab_score_file(n, [5000, 8000, 3000], wins)
    assert fp["fp_detections"] == 1 and fp["raw"] == pytest.approx(2.0 - 0.11)
    assert nab_score_file(n, [100], wins)["fp_detections"] == 0  # inside the probationary period


def test_nab_windows_map_timestamps_to_inclusive_rows():
    ts = np.arange("2020-01-01T00:00", "2020-01-01T01:00", np.timedelta64(5, "m"), dtype="datetime64[s]")
    assert nab_windows(ts, [["2020-01-01 00:10:00.000000", "2020-01-01 00:20:00.000000"]]) == [(2, 4)]


def _engine(window=64):
    torch.manual_seed(0)
    m = DenoisingAutoencoder(MLPConfig(window=window, hidden=32))
    meta = meta_for(m, "mlp", window=window, hop=window // 2, sample_rates=[1000.0],
                    normalisation="window_standardize", corruption={}, training={}, metrics={},
                    error_quantiles={"q50": 0.1, "q90": 0.2, "q99": 0.4, "q999": 0.8}, created="t")
    return InferenceEngine(m, meta, device="cpu", version="vt")


def test_quick_run_writes_the_table_json_and_timeline(tmp_path):
    syn = SyntheticConfig(families=("vibration", "ecg"), anomaly_streams_per_family=1, clean_streams_per_family=1,
                          anomaly_seconds=40.0, clean_seconds=40.0, anomalies_per_stream=1, lead_seconds=15.0)
    lines = []
    res = run(tmp_path, nab=False, settings=AlertSettings(), synthetic=syn, engine=_engine(), log=lines.append)
    saved = json.loads((tmp_path / "evaluate_alerts.json").read_text())
    assert set(saved["synthetic"]["per_kind"]) == set(KINDS)
    assert saved["synthetic"]["overall"]["anomalies"] == len(KINDS) * 2
    assert isinstance(res["synthetic"]["target"]["met"], bool)
    assert (tmp_path / "alerts_timeline.png").stat().st_size > 10_000
    table = "\n".join(lines)
    assert "recall" in table and "clean streams" in table and "target" in table


def test_the_nab_profile_turns_the_fast_signal_tests_off_and_the_outlier_test_on():
    from pipeline.settings import AlertSettings
    from pipeline.tools.alert_eval.nab import nab_settings

    strict = AlertSettings(isolated_z=5.0, sequential=("level", "spike", "score", "floor"))
    nab = nab_settings(strict)
    assert nab.isolated_z == 0 and nab.outlier_z == 7.0
    assert nab.sequential == ("level", "spike")  # the rest of the base's choice kept
