"""Anomaly alerts from per-window reconstruction error and window statistics. Pure logic: no Kafka, no torch.

Inputs per window (from :class:`pipeline.inference.engine.Inference`): ``errors`` — the mean squared error
between the *standardised* window and the model's output — and ``scales`` — the window's standard
deviation in input units. Optionally the raw ``windows`` and the model's ``outputs`` (``(N, C, W)``,
input units) enable the noise, level, peak, clip and freq features. The features and the robust
statistics are in :mod:`pipeline.monitor.alerts.terms`; ``dae evaluate-alerts`` (docs/alerts.md) measures them.

Score. Each feature becomes a robust z against the stream's own running statistics (median and a
tail-aware MAD spread over the last ``stats_windows`` admitted windows, in logs where noted), so a
stream that is merely noisier than others has a higher median, not more alerts. The window score is
the largest ``|z|`` over the voting terms (``terms`` plus the slow versions of ``slow_terms``),
capped at ``max_score``; ``residual`` and ``noise`` measure the same residual and share one vote,
and the residual's high side counts only as far as the standardised ``error`` is high too.

Adaptation. Windows are admitted into the statistics while the stream has no alert up and the
window is not hot (winsorised at the raise threshold); during an alert every
``alert_admit_every``-th window is, so a lasting new regime is learnt and its alert resolves.

Warm-up. A stream raises nothing until ``min_windows`` windows are admitted; until then its residual
z is the calibration z of ``log(error)`` (the checkpoint's q50/q999), and until ``warmup_windows``
the residual's high side is the smaller of the calibration z and its own. Slow terms vote once they
have ``max(warmup_windows, 2 * slow_windows)`` admitted values; a slow value is admitted only when
the ``slow_windows`` windows it averages were all quiet (no alert, not hot), or once an alert has
outlasted two slow windows (a new regime to learn). :meth:`AlertEngine.set_model` restarts the model-dependent
statistics (residual, error, noise, peak, freq) and keeps the signal's own (scale, level, clip).

Alert state machine (per stream). ``hot`` = score >= ``raise_threshold``. Raise when at least ``k``
of the last ``n`` windows are hot, unless the stream is in cooldown; the raised event's range covers
the hot windows. While raised, windows scoring >= ``resolve_threshold`` extend the alert; after
``resolve_windows`` consecutive windows below it the alert resolves (hysteresis) with the whole
alert's range, and for ``cooldown_windows`` windows no new alert may be raised. A slow term keeps
an alert up, but only per-window terms extend its range: the slow mean still holds the anomaly for
up to ``slow_windows`` windows after it ended, so the resolve comes that much later than the range. Ranges are
``[start, end)`` sample indices: first sample of the first window to one past the last window's last.

Cost. :meth:`AlertEngine.update_batch` scores every window of a micro-batch, across streams, in one
call. Per-stream state lives in struct-of-arrays slots (:mod:`pipeline.monitor.alerts.slots`). Quiet
runs of streams past warm-up (most windows) are scored and admitted by one compiled pass over the
call's streams (:mod:`pipeline.monitor.alerts.runpass`; :mod:`pipeline.monitor.alerts.runs` is the same
in numpy array operations, its reference), new streams' first windows for all of them at once
(:mod:`pipeline.monitor.alerts.fresh`); every other window (warm-up, hot windows, open alerts, rewinds,
non-finite inputs) takes the scalar step (:mod:`pipeline.monitor.alerts.steppass`, compiled;
:mod:`pipeline.monitor.alerts.scalar` its Python reference), which hands a stream back to the runs as
soon as they can take it. They apply the same rules;
``tests/test_alerts_reference.py`` compares them with each other and with the engine before the
slots. The window features are compiled too (:mod:`pipeline.monitor.alerts.featpass`). Streams silent for
``state_ttl_s`` are dropped by :meth:`AlertEngine.expire`; beyond ``max_streams`` the least recently
seen is evicted.

Beside the window score, the sequential tests (:mod:`pipeline.monitor.alerts.sequential`) and the
raw-sample tests (:mod:`pipeline.monitor.alerts.outliers`: against the stream's long memory;
:mod:`pipeline.monitor.alerts.isolated`: against each sample's neighbours; they need the raw
``windows``, or their features among ``features``) raise alerts of their own, named by
``AlertEvent.detector``.

Modules: ``events`` (what is emitted; a leaf), ``terms`` (features, robust statistics), ``scoring``
(the :class:`~pipeline.monitor.alerts.scoring.Scoring` parameters and shared arithmetic), ``slots``
(per-stream state), ``runpass``/``runs``, ``fresh`` and ``steppass``/``scalar`` (the paths), and this
module, which owns the streams and dispatches windows to the paths.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from pipeline.monitor.alerts.events import EVENT_TYPE, TERMS, AlertEvent, WindowScores
from pipeline.monitor.alerts.fresh import first_windows
from pipeline.monitor.alerts.raw import RawTests
from pipeline.monitor.alerts.runpass import quiet_runs_compiled
from pipeline.monitor.alerts.runs import quiet_runs
from pipeline.monitor.alerts.scalar import step_spans
from pipeline.monitor.alerts.scoring import Scoring, window_values
from pipeline.monitor.alerts.sequential import WINDOWS_PER_HOUR, SeqPlan, SequentialTests
from pipeline.monitor.alerts.slots import SlotTable
from pipeline.monitor.alerts.steppass import step_spans_compiled, warm_paths
from pipeline.monitor.alerts.tail import block_rounds
from pipeline.monitor.alerts.terms import FeatureWork, window_features
from pipeline.settings import AlertSettings


# Longest quiet prefix taken in one pass (AlertEngine._score_rounds): a run's refreshes cost ~ its
# length squared (each sees the values admitted before it), so long calls take it in pieces.
PREFIX_RUN = 256


class BatchResult(NamedTuple):
    events: list[AlertEvent]  # in the order of the call's streams, then of their windows
    event_windows: list[int]  # per event: the index (into the call's windows) of the window that caused it
    scores: WindowScores  # per window of the call, in the call's order


class AlertEngine:
    """Per-stream scores and alert state for many streams (one instance per worker process).

    ``fast_path=False`` sends every window through the scalar step (the vectorised runs give the same
    results; tests compare them). ``clock`` (monotonic seconds) times the streams' silence for
    :meth:`expire`; ``on_evict(stream, reason)`` is called for each stream dropped by :meth:`expire`
    (``"idle"``) or to make room beyond ``max_streams`` (``"cap"``).
    """

    # the quiet runs compiled (runpass.py); False: in numpy array operations (runs.py), the reference
    compiled_runs = True
    # the scalar step compiled (steppass.py); False: in Python (scalar.py), the reference
    compiled_scalar = True

    def __init__(self, cfg: AlertSettings, calibration: dict[str, float] | None, model_version: str, *,
                 fast_path: bool = True, clock: Callable[[], float] = time.monotonic,
                 on_evict: Callable[[str, str], None] | None = None, window: int = 256,
                 windows_per_hour: float | None = None, hop: int | None = None):
        self.cfg = cfg
        self._fast, self._clock, self._on_evict = fast_path, clock, on_evict
        # window, windows_per_hour: the false-alarm models (samples per window, windows per stream-hour:
        # sample rate / hop * 3600; None: 1 kHz at hop 128); hop: samples new per window (None: window // 2)
        self._seq_window, self._wph = int(window), windows_per_hour
        self._hop = int(hop) if hop else max(1, int(window) // 2)
        self._active: set[str] = set()
        self._seq_active: set[str] = set()
        self._raw = RawTests()
        self._work = FeatureWork()
        self._use_model(calibration, model_version)
        self._tab = SlotTable(self._scoring, cfg.max_streams, cfg.state_ttl_s, self._evicted)
        self._warm()

    # ----------------------------------------------------------------------------- lifecycle
    def set_model(self, calibration: dict[str, float] | None, model_version: str) -> None:
        """Switch to a new model: its calibration becomes the warm-up prior and the model-dependent
        statistics restart; scale, level and clip statistics are kept."""
        p = self._use_model(calibration, model_version)
        self._tab.reset_cols(p.model_cols, [q for q, (f, _) in enumerate(p.slow) if f in p.model_cols])
        if self._seq is not None:
            sp = self._seq.plan
            terms = [i for i, c in enumerate(sp.cols) if c in p.model_cols]
            runs = [r for r, c in enumerate(sp.run_cols) if c in p.model_cols]
            sides = np.concatenate((np.flatnonzero(np.isin(sp.side_term, terms)), sp.side_term.size + np.array(runs, int)))
            self._tab.reset_seq(terms, sides, sp.spike, runs)

    def _warm(self) -> None:
        """The compiled passes compiled, or loaded from numba's cache (~0.3-0.7 s in a new process), now
        rather than in the first micro-batch."""
        if self._seq is not None and self._seq.compiled is not None:
            self._seq.compiled.warm(self._tab, len(self._scoring.cols))
        self._raw.warm(self._seq_window, self._hop)
        if self.cfg.enabled:
            warm_paths(self._scoring, self._tab, self._seq_window, self._work, runs=self._fast)

    def _use_model(self, calibration: dict[str, float] | None, model_version: str) -> Scoring:
        self.model_version = str(model_version)
        self.calibration = dict(calibration or {})
        self._scoring = Scoring.build(self.cfg, self.calibration, self.model_version)
        plan = SeqPlan.build(self.cfg, self._scoring, self._seq_window, self._wph) if self.cfg.enabled else None
        self._seq = SequentialTests(plan) if plan is not None else None
        # the raw-sample tests' shares of the false-alarm budget: one test's each (equal shares), per window
        wph = float(self._wph or WINDOWS_PER_HOUR)
        p_win = plan.p_win if plan is not None else self.cfg.false_alarms_per_hour / wph
        self._raw.build(self.cfg, self._seq_window, self._hop, p_win)
        return self._scoring

    def forget(self, stream: str) -> None:
        """Drop a stream's state (partition revoked, stream closed). An active alert is dropped silently."""
        self._tab.release(stream)
        self._active.discard(stream)
        self._seq_active.discard(stream)
        self._raw.discard(stream)

    def expire(self) -> list[str]:
        """Drop the state of streams without a window for ``state_ttl_s``; returns their ids."""
        return self._tab.expire(self._clock())

    def _evicted(self, stream: str, reason: str) -> None:
        self._active.discard(stream)
        self._seq_active.discard(stream)
        self._raw.discard(stream)
        if self._on_evict is not None:
            self._on_evict(stream, reason)

    @property
    def evictions(self) -> dict[str, int]:
        """Streams dropped so far: ``{"idle": n, "cap": n}``."""
        return dict(self._tab.evictions)

    def active(self) -> int:
        """Raised (not yet resolved) alerts: of the window score, plus of the sequential tests and of the
        raw-sample tests."""
        return len(self._active) + len(self._seq_active) + self._raw.count()

    def is_active(self, stream: str) -> bool:
        return stream in self._active or stream in self._seq_active or self._raw.has(stream)

    def streams(self) -> int:
        return len(self._tab)

    # -------------------------------------------------------------------------------- update
    def update(self, stream: str, starts: np.ndarray, window: int, errors: np.ndarray, scales: np.ndarray,
               now: float | None = None, windows: np.ndarray | None = None,
               outputs: np.ndarray | None = None) -> list[AlertEvent]:
        """Score the windows of one stream (increasing start order) and advance its alert state."""
        return self.update_scored(stream, starts, window, errors, scales, now, windows, outputs)[0]

    def update_scored(self, stream: str, starts: np.ndarray, window: int, errors: np.ndarray,
                      scales: np.ndarray, now: float | None = None, windows: np.ndarray | None = None,
                      outputs: np.ndarray | None = None,
                      features: dict[str, np.ndarray] | None = None) -> tuple[list[AlertEvent], WindowScores]:
        """:meth:`update` plus each window's score, terms and alert state (evaluation, metrics)."""
        n = np.asarray(starts).size
        r = self.update_batch([stream], [n], starts, window, errors, scales, now, windows, outputs, features)
        return r.events, r.scores

    def update_batch(self, streams: Sequence[str], lengths: Sequence[int], starts: np.ndarray, window: int,
                     errors: np.ndarray, scales: np.ndarray, now: float | None = None,
                     windows: np.ndarray | None = None, outputs: np.ndarray | None = None,
                     features: dict[str, np.ndarray] | None = None) -> BatchResult:
        """Score the windows of a micro-batch: segment ``j`` is the next ``lengths[j]`` windows, of stream
        ``streams[j]`` (a stream's segments in order; its windows in increasing start order).

        ``features`` passes :func:`~pipeline.monitor.alerts.terms.window_features` precomputed instead of
        ``windows``/``outputs``. A window whose start is not after the previous one's (a rewound
        producer) starts a new debounce history; an alert already raised stays raised. Non-finite
        inputs score 0 and are not admitted.
        """
        cfg, p = self.cfg, self._scoring
        starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        errors = np.asarray(errors, dtype=np.float64).reshape(-1)
        scales = np.asarray(scales, dtype=np.float64).reshape(-1)
        N = starts.size
        if not (starts.shape == errors.shape == scales.shape) or sum(lengths) != N or len(lengths) != len(streams):
            raise ValueError(f"starts {starts.shape}, errors {errors.shape}, scales {scales.shape} and the "
                             f"segment lengths (sum {sum(lengths)}) must match")
        if any(int(n) < 0 for n in lengths):
            raise ValueError(f"segment lengths must not be negative: {list(lengths)}")
        if not all(lengths):  # a segment without windows has nothing to score
            keep = [j for j, n in enumerate(lengths) if n]
            streams, lengths = [streams[j] for j in keep], [int(lengths[j]) for j in keep]
        score, act = np.zeros(N), np.zeros(N, dtype=bool)
        z = np.zeros((len(p.cols), N))
        events: list[AlertEvent] = []
        ev_win: list[int] = []
        if cfg.enabled and N:
            if features is None:
                features = window_features(windows, outputs, self._work)
            features = self._raw.features(features, windows, self._hop)
            ts = time.time() if now is None else float(now)
            self._score_rounds(streams, lengths, starts, int(window), errors, scales, features, ts, score, act, z,
                               events, ev_win)
            # in the order of their windows (the detectors append theirs in turn): a stream's events come
            # in the same order however its windows are cut into calls
            perm = sorted(range(len(ev_win)), key=ev_win.__getitem__)
            events, ev_win = [events[i] for i in perm], [ev_win[i] for i in perm]
        zs = np.zeros((len(TERMS), N))
        zs[p.term_rows] = z
        return BatchResult(events, ev_win, WindowScores(starts, score, dict(zip(TERMS, zs)), act,
                                                        cfg.raise_threshold, cfg.resolve_threshold))

    def _score_rounds(self, streams, lengths, starts, window, errors, scales, features, ts, score, act, z, events,
                      ev_win) -> None:
        """:meth:`_score` over the call, a round of :meth:`_rounds` at a time. When the call needs rounds,
        every stream's quiet prefix is taken first in one pass (:meth:`_score` with ``prefix``): windows
        scoring below ``raise_threshold`` are judged alike by any threshold a block could calibrate, so
        that pass decides as the rounds would (as if the call were cut after each prefix; at most
        ``PREFIX_RUN`` windows of a stream per pass), and only the rest goes round by round."""
        args = (window, ts, score, act, z, events, ev_win)
        data = (starts, errors, scales, features)
        if self._rounds(streams, lengths)[0] is None:
            self._score(streams, lengths, starts, window, errors, scales, features, ts, score, act, z, events,
                        ev_win)
            return
        seg = np.repeat(np.arange(len(streams)), lengths)
        rest = np.arange(seg.size)
        while rest.size:  # quiet prefixes, then the first block of what is left of each stream, again
            rest = rest[~self._score_at(rest, seg, streams, data, args, prefix=True)]
            if rest.size == 0:
                return
            sj = seg[rest]
            bounds = np.concatenate(([0], np.flatnonzero(sj[1:] != sj[:-1]) + 1, [rest.size]))
            first = self._rounds([streams[j] for j in sj[bounds[:-1]]], np.diff(bounds).tolist())[0]
            now = np.ones(rest.size, dtype=bool) if first is None else np.isin(np.arange(rest.size), first)
            self._score_at(rest[now], seg, streams, data, args)
            rest = rest[~now]

    def _score_at(self, idx, seg, streams, data, args, prefix: bool = False) -> np.ndarray:
        """:meth:`_score` on the call's windows ``idx`` (in call order; ``seg``: each window's segment of
        ``streams``); returns which of them it took."""
        window, ts, score, act, z, events, ev_win = args
        starts, errors, scales, features = data
        N = seg.size
        sj = seg[idx]  # the windows' segments: runs of one
        bounds = np.concatenate(([0], np.flatnonzero(sj[1:] != sj[:-1]) + 1, [idx.size]))
        r_score, r_act, r_z = np.zeros(idx.size), np.zeros(idx.size, dtype=bool), np.zeros((z.shape[0], idx.size))
        sub = {t: (np.asarray(v).reshape(-1)[idx] if np.size(v) == N else v) for t, v in features.items()}
        k = len(ev_win)
        took = self._score([streams[j] for j in sj[bounds[:-1]]], np.diff(bounds).tolist(), starts[idx], window,
                           errors[idx], scales[idx], sub, ts, r_score, r_act, r_z, events, ev_win, prefix)
        score[idx], act[idx], z[:, idx] = r_score, r_act, r_z
        ev_win[k:] = idx[np.asarray(ev_win[k:], dtype=np.int64)].tolist()
        return took

    def _rounds(self, streams, lengths):
        """The call's windows in rounds that each hold at most one block of every stream, or ``[None]``:
        one round (:func:`~pipeline.monitor.alerts.tail.block_rounds`). With ``score`` among the
        sequential tests the window score reads a threshold that moves at block ends, so a call spanning
        one is taken a block at a time: the same decisions however the stream is cut into calls.
        Without it only the sequential tests need blocks (they split the call themselves)."""
        if self._seq is None or not self._seq.plan.score or not len(streams):
            return [None]
        return block_rounds(self._tab, self._seq.plan.block, streams, lengths)

    def _score(self, streams, lengths, starts, window, errors, scales, features, ts, score, act, z, events,
               ev_win, prefix: bool = False) -> np.ndarray:
        """:meth:`update_batch` past the checks: group the windows by stream, run the quiet runs, then
        the scalar step for the rest; outputs into ``score``, ``act``, ``z``, ``events``, ``ev_win``.
        ``prefix``: only each stream's quiet run, up to its first window scoring ``raise_threshold`` or
        more (no scalar step; a new stream takes its first window, one not in a run none); returns
        which windows were taken (call order)."""
        p = self._scoring
        k0 = len(ev_win)  # events of earlier rounds of the call are already in the caller's order
        vals, cols, finite, log_err = window_values(p, errors, scales, features, starts.size)
        uniq: dict[str, int] = {}
        seg_u = [uniq.setdefault(s, len(uniq)) for s in streams]
        order = None
        if len(uniq) < len(seg_u):  # a stream in several segments: its windows together, in order
            order = np.argsort(np.repeat(seg_u, lengths), kind="stable")
            starts, vals, finite, log_err = starts[order], vals[:, order], finite[order], log_err[order]
            lengths = np.bincount(np.repeat(seg_u, lengths), minlength=len(uniq))
        ids = list(uniq)
        n_u = np.asarray(lengths, dtype=np.int64)
        first = np.concatenate(([0], np.cumsum(n_u)[:-1]))
        slots = self._tab.claim(ids, self._clock())
        if self._seq is not None and self._seq.tail is not None:
            self._seq.tail.young(self._tab, slots)  # a new stream's threshold before its first block ends
        o_score, o_act, o_z = (score, act, z) if order is None else (np.zeros_like(score), np.zeros_like(act),
                                                                     np.zeros_like(z))
        done = np.zeros_like(n_u)
        if self._fast:
            new = np.flatnonzero(~self._tab.has_last[slots])  # streams without a window so far
            if new.size:
                first_windows(p, self._tab, slots[new], first[new], vals, cols, starts, finite, log_err, o_score, o_z)
                done[new] = 1
            done += self._runs(slots, first, n_u, vals, cols, starts, finite, o_score, o_z, prefix)
        took = np.ones(starts.size, dtype=bool)
        if prefix:  # the tests below over the prefixes only: their windows, grouped by stream as before
            took = np.arange(starts.size) < np.repeat(first + done, n_u)
            pidx = np.flatnonzero(took)
            e = np.flatnonzero(done)
            ids, slots, n_u = [ids[u] for u in e], slots[e], done[e]
            first = np.concatenate(([0], np.cumsum(n_u)[:-1]))
            g_order = pidx if order is None else order[pidx]  # the prefixes' windows in call order
            k = len(ev_win)
            self._tests(ids, slots, first, n_u, starts[pidx], window, o_z[:, pidx], o_score[pidx], features, g_order,
                        finite[pidx], o_act[pidx], ts, events, ev_win)
            ev_win[k:] = pidx[np.asarray(ev_win[k:], dtype=np.int64)].tolist()
        else:
            self._rest(ids, slots, first, n_u, done, window, ts, starts, finite, vals, cols, log_err, o_score, o_act,
                       o_z, events, ev_win)
            self._tests(ids, slots, first, n_u, starts, window, o_z, o_score, features, order, finite, o_act, ts,
                        events, ev_win)
        if order is not None:
            score[order], act[order], z[:, order] = o_score, o_act, o_z
            ev_win[k0:] = order[np.asarray(ev_win[k0:], dtype=np.int64)].tolist()
            took = took[np.argsort(order)]
        return took

    def _tests(self, ids, slots, first, n_u, starts, window, z, score, features, order, finite, active, ts, events,
               ev_win) -> None:
        """The sequential and raw-sample tests over the windows (grouped by stream; ``order``: their
        indices into ``features``, None: the same)."""
        if self._seq is not None:
            self._sequential(ids, slots, first, n_u, starts, window, z, score, features, order, finite, active, ts,
                             events, ev_win)
        self._raw.update(self._tab, ids, slots, first, n_u, starts, window, features, order, ts, self.model_version,
                         events, ev_win)

    def _sequential(self, ids, slots, first, n_u, starts, window, z, score, features, order, finite, active, ts,
                    events, ev_win) -> None:
        """The sequential tests over the call's windows (grouped by stream); their events after the
        window score's."""
        spike = features.get("spike")
        spike = np.zeros(starts.size) if spike is None else np.asarray(spike, dtype=np.float64).reshape(-1)
        if order is not None:
            spike = spike[order]
        evs: list[AlertEvent] = []
        self._seq.update(self._tab, ids, slots, first, n_u, starts, window, z, spike, finite, active, ts,
                         self.model_version, evs, ev_win, score)
        for ev in evs:
            (self._seq_active.add if ev.kind == "raised" else self._seq_active.discard)(ev.stream)
        events.extend(evs)

    def _runs(self, slots, first, n_u, vals, cols, starts, finite, score, z, below_raise=False) -> np.ndarray:
        """The quiet runs of the streams that can take them; returns the windows done per stream."""
        p, tab = self._scoring, self._tab
        done = np.zeros_like(n_u)
        cnt = tab.count[slots]
        ok = ~tab.active[slots] & (cnt[:, cols] >= p.warmup_windows).all(axis=1)
        for q, (f, t) in enumerate(p.slow):
            if f in cols:
                ok &= (tab.slow_n[slots, q] >= p.slow_windows) & (cnt[:, t] >= p.slow_min)
        ok &= ~tab.has_last[slots] | (starts[first] > tab.last_start[slots])
        ok &= finite[first]
        if not ok.any():
            return done
        # a run ends before the first non-finite window or window not after the previous one
        bad = ~finite
        bad[1:] |= starts[1:] <= starts[:-1]
        bad[first] = ~finite[first]
        nxt = np.append(np.flatnonzero(bad), starts.size)
        stop = nxt[np.searchsorted(nxt, first, side="right")]
        length = np.minimum(stop - first, n_u if not below_raise else np.minimum(n_u, PREFIX_RUN))
        e = np.flatnonzero(ok)
        runs = quiet_runs_compiled if self.compiled_runs else quiet_runs
        done[e] = runs(p, tab, slots[e], first[e], length[e], vals, cols, starts, score, z, below_raise)
        return done

    def _rest(self, ids, slots, first, n_u, done, window, ts, starts, finite, vals, cols, log_err, score, act, z,
              events, ev_win) -> None:
        """The windows the runs left (``done`` per stream of ``n_u``): the scalar step, and with the fast path
        the runs again from where a stream can take them (past a hot window that raised nothing, an alert
        resolved), in turns until every window is done. Each turn steps at least one window per stream
        left, so a turn's runs that take nothing cost one more scalar window, never a loop."""
        while True:
            rest = np.flatnonzero(done < n_u)
            if not rest.size:
                return
            spans = [(ids[u], int(slots[u]), int(first[u] + done[u]), int(first[u] + n_u[u])) for u in rest]
            done[rest] += self._scalar(spans, window, ts, starts, finite, vals, cols, log_err, score, act, z, events,
                                       ev_win, until_runnable=self._fast)
            again = rest[done[rest] < n_u[rest]]
            if not again.size:
                return
            done[again] += self._runs(slots[again], first[again] + done[again], n_u[again] - done[again], vals, cols,
                                      starts, finite, score, z)

    def _scalar(self, spans, window, ts, starts, finite, vals, cols, log_err, score, act, z, events, ev_win,
                until_runnable: bool = False) -> np.ndarray:
        """Windows ``[a, b)`` of each ``(stream, slot, a, b)`` of ``spans`` through the scalar step
        (:func:`~pipeline.monitor.alerts.scalar.step_spans`); returns the windows stepped per span."""
        evs: list[AlertEvent] = []
        p = self._scoring
        step = step_spans_compiled if self.compiled_scalar and p.refresh_every <= p.stats_windows else step_spans
        stepped = step(p, self._tab, spans, window, ts, starts, finite, vals, cols, log_err, score, act, z, evs, ev_win,
                       until_runnable)
        for ev in evs:
            (self._active.add if ev.kind == "raised" else self._active.discard)(ev.stream)
        events.extend(evs)
        return np.asarray(stepped, dtype=np.int64)


__all__ = ["AlertEngine", "AlertEvent", "BatchResult", "WindowScores", "TERMS", "EVENT_TYPE", "window_features"]
