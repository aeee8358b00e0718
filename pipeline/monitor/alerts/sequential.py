"""Sequential tests beside the window score: CUSUMs for small lasting shifts and a matched test for
isolated spikes, each with a false-alarm model that sets its threshold (pure numpy).

The window score (:mod:`pipeline.monitor.alerts.engine`) raises when single windows are far off the
stream's own statistics. Faults an operator expects to catch can be smaller than that per window and
still certain over time: a level step of one signal std for five seconds, a gain that falls to 60 %,
noise power that doubles; or a single wild sample, certain in one window but diluted in every window
statistic. These tests sit next to the score, read the same per-window z values and features, and
raise alerts of their own (``AlertEvent.detector`` names the test). They do not repeat the window
score: while its alert is up the CUSUMs stay at 0 and nothing is raised here.

CUSUM (``level``, ``scale`` and ``freq`` both ways, ``noise`` upwards). Input: the term's robust z of each
window (the engine's, against the stream's own median and spread). Overlapping windows make
successive z values correlated, so each stream also keeps an exponential estimate (memory
``sequential_memory`` quiet windows, plain averages during its first ``sequential_warmup``; moved once
per block of ``sequential_block`` windows of the stream, counted from its first) of the
z's mean ``mu``, variance ``v`` and lag-1 correlation ``rho``, and the CUSUM sums
``x = clip((z - mu) / s, ±cusum_clip)`` with the long-run sigma ``s = sqrt(v (1 + rho) / (1 - rho))``
(an AR(1) model of the z sequence): ``S = min(2h, max(0, S + x - k))`` per side. The false-alarm
model: for independent standard normal ``x`` the mean number of windows to a false alarm is
Siegmund's ``ARL0 = (exp(2kb) - 2kb - 1) / (2k^2)``, ``b = h + 1.166``; ``h`` is solved from the
ARL0 that gives each test its share of ``false_alarms_per_hour`` (shares are equal). The cap ``2h``
bounds how long a CUSUM stays high after its fault ended (at most ``1.5h/k`` windows to fall below
``h/2``).

Spike (``spike``). Input: the window feature ``spike = log(max|d2| / (1.4826 median|d2|))`` of the
residual's second differences (:func:`pipeline.monitor.alerts.terms.window_features`): a spike of
``A`` on white residual noise of std ``s`` gives ``2A / (sqrt(6) s)``, and smooth misfit barely
reaches the second differences. Two false-alarm models, the stricter wins: (a) Gaussian: the
``m = W - 2`` second differences exceed ``t`` with probability at most ``2 m Q(t)``, so
``t = Q^-1(p / 2m)`` for the test's per-window share ``p``; (b) the stream's own quiet history: the
ratio ``max|d2| / scale`` is a maximum, so its upper tail is taken as a Gumbel law fitted to the
ratio's running mean and std (the same exponential memory): threshold
``mean + (-ln p - 0.577) sqrt(6)/pi * sd``.

Sign runs (``runs``, :mod:`pipeline.monitor.alerts.signruns`): a term on one side of the stream's
median for longer than its own run-length history makes credible; here one more CUSUM side each,
adding ``h / L*`` per window on its side and reset by any other.

The window score's threshold (``score``). The score is a maximum of ``|z|`` over the terms, so its
upper tail is taken as a Gumbel law too, fitted per stream to the running mean and std of its quiet
windows' scores (plain averages for the first ``sequential_memory`` windows, then that memory; updated
once per block): the stream's raise threshold becomes the quantile at the score's per-window share,
never below ``raise_threshold``; until ``sequential_warmup`` quiet scores are in, twice
``raise_threshold`` (young statistics raised most false alarms; gross faults still raise). The
paths read it per stream (a stream whose misfit has heavy tails
gets a higher threshold, not false alarms); the k-of-n rule makes the real rate lower still.

Alerts. A window is *hot* when a CUSUM reaches ``h`` or the spike statistic its threshold. The first
hot window raises (the CUSUM is its own debounce), unless an alert of these tests is up or in
cooldown; the raised range starts at the last window where a hot CUSUM was 0 (the change-point
estimate) or at the spike's window. The alert extends while windows are hot and resolves after
``resolve_windows`` windows in which every CUSUM is below ``h/2`` and no spike is hot. Estimates
learn only from quiet windows (no alert of either kind up, not hot, window score below
``raise_threshold`` even where ``score`` calibrated a higher threshold); a fault that lasts becomes the
window score's new regime within ``stats_windows`` windows, and the CUSUMs' with it.

Batching. The estimates move at the end of each block of ``sequential_block`` windows of a stream,
from the block's quiet windows (their sums exact in float64 in any order, :func:`~pipeline.monitor.alerts.cusum.exact`), and a
call spanning block ends is taken block by block: a stream's decisions and events are the same to
the last bit however its windows are cut into calls (the worker's micro-batches grow when it falls
behind, and a replay after a crash cuts them elsewhere). With ``score`` on, the engine takes such a
call a block at a time for the window score too (``AlertEngine._rounds``), whose paths read the
calibrated threshold as it stood at the start of the block.

Paths. Compiled (:mod:`pipeline.monitor.alerts.quietpass`): every stream of a call in one pass, its
blocks in turn, alerts included, with the rounds' result. In numpy, the reference: per call and block,
every stream's CUSUMs in closed form (:func:`~pipeline.monitor.alerts.cusum.lindley`), and only streams
where a test reaches its threshold or an alert of these tests is up step window by window
(:class:`~pipeline.monitor.alerts.lockstep.Lockstep`); a call spanning block ends where nothing is hot
in one pass (:mod:`pipeline.monitor.alerts.span`).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from pipeline.monitor.alerts import span
from pipeline.monitor.alerts.cusum import cusum_threshold
from pipeline.monitor.alerts.isolated import isolated_tests
from pipeline.monitor.alerts.lockstep import Lockstep
from pipeline.monitor.alerts.outliers import outlier_tests
from pipeline.monitor.alerts.quietpass import QuietPass
from pipeline.monitor.alerts.scoring import Scoring
from pipeline.monitor.alerts.seqcall import Call, estimates
from pipeline.monitor.alerts.signruns import MAX_RUNS, SignRuns, run_cols
from pipeline.monitor.alerts.tail import ScoreTail, gumbel_c
from pipeline.settings import AlertSettings

# Directions tested per CUSUM term: +1 upwards, -1 downwards.
SIDES = {"level": (1, -1), "scale": (1, -1), "noise": (1,), "freq": (1, -1), "floor": (1,)}
MAX_TERMS = 5  # slot record sizes (slots.record_dtype): CUSUM terms, and sides (CUSUMs, then run tests)
MAX_SIDES = 8 + MAX_RUNS
# Default windows per hour when the caller does not say (1 kHz, hop 128).
WINDOWS_PER_HOUR = 1000.0 / 128 * 3600


@dataclass(frozen=True)
class SeqPlan:
    """The sequential tests of one engine: what they read and their thresholds."""

    terms: tuple[str, ...]  # CUSUM terms, in the engine's column order
    cols: tuple[int, ...]  # their engine columns
    side_term: np.ndarray  # (D,) index into terms
    side_sign: np.ndarray  # (D,) +1 / -1
    names: tuple[str, ...]  # (D + R + spike,) detector names of the events
    run_cols: tuple[int, ...]  # (R,) engine columns of the run tests (signruns.py)
    run_signs: tuple[int, ...]
    gate: int  # index into terms of "noise" (gated by the error's z), or -1
    spike: bool
    score: bool  # calibrate the window score's raise threshold per stream
    k: float
    clip: float
    h: float
    warmup: int
    memory: int
    block: int  # windows of a stream per step of the estimates
    spike_t: float  # threshold of the Gaussian model
    gumbel_c: float  # sds above the mean of a Gumbel fit at one test's per-window share
    resolve_windows: int
    cooldown_windows: int
    raise_threshold: float
    cap: float  # max_score: scores are capped here, as the window score's
    per_test_rate: float  # false alarms per hour each test may raise
    p_win: float  # per-window false-alarm probability of one test
    score_tail: str  # the window score's tail model (tail.py)
    tail_frac: float  # its tail: the fraction of quiet windows above the POT level

    @classmethod
    def build(cls, cfg: AlertSettings, p: Scoring, window: int, windows_per_hour: float | None) -> SeqPlan | None:
        terms = tuple(t for t in p.cols[: p.features] if t in SIDES and t in cfg.sequential)
        spike = "spike" in cfg.sequential
        sides = [(i, s) for i, t in enumerate(terms) for s in SIDES[t]]
        rcols, rsigns, rnames = run_cols(p.cols[: p.features], cfg.sequential)
        score = "score" in cfg.sequential
        tests = len(sides) + len(rcols) + spike + score
        if not tests:
            return None
        wph = float(windows_per_hour or WINDOWS_PER_HOUR)
        rate = cfg.false_alarms_per_hour / (tests + outlier_tests(cfg) + isolated_tests(cfg))  # equal shares with the raw-sample tests
        p_win = rate / wph  # per-window false-alarm probability of one test
        m = max(int(window) - 2, 1)
        return cls(
            terms=terms, cols=tuple(p.col(t) for t in terms),
            side_term=np.array([i for i, _ in sides], dtype=np.int64),
            side_sign=np.array([s for _, s in sides], dtype=np.float64),
            names=tuple(f"cusum_{terms[i]}{'+' if s > 0 else '-'}" for i, s in sides) + rnames
            + (("spike",) if spike else ()), run_cols=rcols, run_signs=rsigns,
            gate=terms.index("noise") if "noise" in terms else -1, spike=spike, score=score,
            k=cfg.cusum_k, clip=cfg.cusum_clip, h=cusum_threshold(1.0 / p_win, cfg.cusum_k),
            warmup=cfg.sequential_warmup, memory=cfg.sequential_memory, block=cfg.sequential_block,
            spike_t=-NormalDist().inv_cdf(p_win / (2.0 * m)),
            gumbel_c=gumbel_c(p_win),
            resolve_windows=cfg.resolve_windows, cooldown_windows=cfg.cooldown_windows,
            raise_threshold=cfg.raise_threshold, cap=cfg.max_score, per_test_rate=rate, p_win=p_win,
            score_tail=cfg.score_tail, tail_frac=1.0 - cfg.score_tail_quantile)


class SequentialTests:
    """Runs a :class:`SeqPlan` over the windows of an engine call; state in the engine's slots
    (:mod:`pipeline.monitor.alerts.slots`, fields ``seq_*``): a zeroed slot is a new stream.

    Per call and block (:meth:`update`): every window's CUSUM increments and spike ratio from the
    estimates as they stood at the start of the block (one array operation), then the CUSUMs of the
    streams whose call holds nothing to decide (no alert of either kind, no test reaching its
    threshold, every test ready throughout or not at all) in closed form (Lindley: ``S_t = C_t - min(-S_0, min_j<=t C_j)`` over the
    cumulative increments ``C``), the others window by window in lockstep, and last the block's
    quiet windows into its accumulators (one exponential-memory step per stream and block, at its end)."""

    def __init__(self, plan: SeqPlan, closed_form: bool = True):
        self.plan = plan
        self.closed = closed_form  # False: every stream window by window (tests compare the two)
        self.one_pass = True  # False: a call spanning block ends always block by block (tests compare)
        P = plan
        self.tail = ScoreTail(P.score_tail, P.p_win, P.tail_frac, P.raise_threshold, P.warmup, P.memory,
                              P.block) if P.score else None
        self.runs = SignRuns(P.run_cols, P.run_signs, P.p_win, P.warmup, P.memory)
        # None: the one pass in numpy array operations (span.py; tests compare the two)
        self.compiled = QuietPass(P, self.runs, self.tail)

    def update(self, tab, ids, slots, first, n_u, starts, window, z, spike, finite, engine_active, ts,
               model_version, events, ev_win, score=None) -> np.ndarray:
        """The windows of each stream ``u`` are ``first[u]`` to ``first[u] + n_u[u]`` of the grouped
        arrays. Appends events (and their windows); returns each window's score in units of the raise
        threshold (``raise_threshold`` at a test's threshold).

        The estimates move once per *block* of ``plan.block`` windows of a stream, counted from its
        first window, not once per call: the call is taken in rounds, round ``r`` holding each stream's
        windows of its ``r``-th block in the call, so a stream cut into calls of any size decides the
        same (the worker's micro-batches grow when it falls behind). The compiled pass (:meth:`_compiled`)
        has the rounds' result for every stream in one pass, alerts included; its numpy form (:meth:`_span`)
        only for a call where nothing is hot."""
        N, U = starts.size, slots.size
        if N == 0:
            return np.zeros(0)
        B = self.plan.block
        seg = np.repeat(np.arange(U), n_u)
        pos0 = tab.seq_pos[slots].copy()
        tab.seq_pos[slots] = pos0 + n_u
        rnd = (pos0[seg] + np.arange(N) - first[seg]) // B - (pos0 // B)[seg]
        args = (tab, ids, slots, first, n_u, starts, window, z, spike, finite, engine_active, ts, model_version,
                events, ev_win, score, pos0, rnd)
        if self.closed and self.one_pass and self.compiled is not None:
            out, left = self._compiled(tab, ids, slots, first, n_u, starts, window, z, spike, finite, engine_active,
                                       ts, model_version, events, ev_win, score, pos0)
            if left.size:  # the others block by block
                idx = np.concatenate([np.arange(first[u], first[u] + n_u[u]) for u in left])
                sub_n = n_u[left]
                sub = (tab, [ids[u] for u in left], slots[left], np.concatenate(([0], np.cumsum(sub_n)[:-1])), sub_n,
                       starts[idx], window, z[:, idx], spike[idx], finite[idx], engine_active[idx], ts,
                       model_version, events, ev_win, None if score is None else score[idx], pos0[left], rnd[idx])
                k = len(ev_win)
                out[idx] = self._blocks(*sub)
                ev_win[k:] = idx[np.asarray(ev_win[k:], dtype=np.int64)].tolist()
            return out
        if self.closed and self.one_pass and rnd.any():  # numpy's one pass (span.py): none of the call hot
            out = self._span(tab, slots, first, n_u, starts, z, spike, finite, engine_active, score, rnd, pos0)
            if out is not None:
                return out
        return self._blocks(*args)

    def _blocks(self, tab, ids, slots, first, n_u, starts, window, z, spike, finite, engine_active, ts, model_version,
                events, ev_win, score, pos0, rnd) -> np.ndarray:
        """:meth:`update` block by block: in rounds that each hold one block of every stream (``rnd``: each
        window's round; ``pos0``: each stream's windows before the call)."""
        B = self.plan.block
        N, U = starts.size, slots.size
        seg = np.repeat(np.arange(U), n_u)
        if not rnd.any():
            return self._block(tab, ids, slots, first, n_u, starts, window, z, spike, finite, engine_active, ts,
                               model_version, events, ev_win, score, (pos0 + n_u) // B > pos0 // B)
        out = np.zeros(N)
        for r in range(int(rnd.max()) + 1):
            idx = np.flatnonzero(rnd == r)  # grouped by stream, in order: rnd does not fall within one
            cnt = np.bincount(seg[idx], minlength=U)
            has = np.flatnonzero(cnt)
            sub_n = cnt[has]
            sub_first = np.concatenate(([0], np.cumsum(sub_n)[:-1]))
            end = (pos0[has] // B + r + 1) * B  # where each stream's block of this round ends
            k = len(ev_win)
            out[idx] = self._block(tab, [ids[u] for u in has], slots[has], sub_first, sub_n, starts[idx], window,
                                   z[:, idx], spike[idx], finite[idx], engine_active[idx], ts, model_version,
                                   events, ev_win, None if score is None else score[idx],
                                   pos0[has] + n_u[has] >= end)
            ev_win[k:] = idx[np.asarray(ev_win[k:], dtype=np.int64)].tolist()
        return out

    def _span(self, tab, slots, first, n_u, starts, z, spike, finite, engine_active, score, rnd, pos0):
        """:meth:`update` over a call spanning block ends in one pass (:mod:`pipeline.monitor.alerts.span`),
        or None (nothing written) where a window is hot, an alert of these tests is up, or a window these
        tests would take as quiet scores ``raise_threshold`` or more."""
        P = self.plan
        quiet = ~engine_active
        if score is not None:
            below = score < P.raise_threshold
            if (finite & quiet & ~below).any():
                return None
            quiet = quiet & below
        if tab.seq_active[slots].any():
            return None
        sp = span.Span(P, slots, first, n_u, rnd, pos0)
        c = Call(P, tab, slots, first, n_u, z, spike, finite, self.runs, later=True)
        groups, put = [], {}
        if P.terms:
            g, w = span.terms(sp, tab, c, quiet, finite)
            groups.append(g)
            put.update(w)
        if P.spike:
            groups.append(span.spike(sp, tab, c, quiet, finite))
        if len(self.runs):
            g, w = span.runs(sp, tab, self.runs, c.on, quiet & finite)
            groups.append(g)
            put.update(w)
        inputs = len(groups)  # the groups the tests' inputs read; the tail's only learn
        tail = self.tail is not None and score is not None
        if tail:
            g, w = span.tail(sp, tab, self.tail, score, finite, quiet & finite)
            groups += g
            put.update(w)
        res = span.steps(groups, sp.closes)
        est = {}  # what the tests read; the slots as they stand only for parts without a group
        for g, r in zip(groups[:inputs], res[:inputs]):
            est.update(span.per_window(sp, g, r))
        if not (P.terms and P.spike and len(self.runs)):
            est = {**estimates(tab, slots, sp.seg, len(P.terms), len(self.runs)), **est}
        c.inputs(est)
        S, sp_ratio = c.closed_form(engine_active)
        peak = S.max(axis=0) if S.size else np.zeros(starts.size)
        if ((peak >= P.h) | (sp_ratio >= 1.0)).any():
            return None
        for g, r in zip(groups, res):
            put.update(span.writes(g, r))
        if tail:
            put["seq_thr"] = span.threshold(slots, sp.closes.any(axis=0), tab, self.tail, put)
        for f, v in put.items():
            col = getattr(tab, f)
            if col.ndim == 1:
                col[slots] = v
            else:
                col[slots, : v.shape[1]] = v
        D = S.shape[0]
        tab.seq_S[slots, :D] = S[:, first + n_u - 1].T
        zero = c.last_zero(S, np.arange(slots.size), starts)
        if zero is not None:
            tab.seq_zero[slots, :D] = np.where(zero >= 0, zero, tab.seq_zero[slots, :D])
        tab.seq_cool[slots] = np.maximum(tab.seq_cool[slots] - n_u, 0)
        return np.minimum(np.maximum(peak / P.h, sp_ratio) * P.raise_threshold, P.cap)

    def _compiled(self, tab, ids, slots, first, n_u, starts, window, z, spike, finite, engine_active, ts,
                  model_version, events, ev_win, score, pos0):
        """:meth:`update` compiled (:mod:`pipeline.monitor.alerts.quietpass`): each window's score, and the
        streams it handed back (nothing of them written; see that module)."""
        P = self.plan
        quiet, tq, hi = ~engine_active, np.zeros(starts.size, dtype=bool), np.zeros(starts.size, dtype=bool)
        if score is not None:
            below = score < P.raise_threshold
            thr = np.maximum(P.raise_threshold, tab.seq_thr[slots])[np.repeat(np.arange(slots.size), n_u)]
            tq = finite & quiet & (score < thr)  # the score tail's quiet windows (tail.py), as the threshold stands
            if self.tail is not None:  # where a moved threshold could have judged otherwise
                hi = finite & quiet & ~below
            quiet = quiet & below
        out, taken, EI, EF = self.compiled(tab, slots, first, n_u, pos0, starts, window, z, spike, finite, quiet, tq,
                                           hi, engine_active, score)
        if EI.shape[0]:
            events.extend(self.compiled.events(EI, EF, ids, model_version, ts))
            ev_win.extend(EI[:, 5].tolist())
        t = np.flatnonzero(taken)
        s = slots[t]
        if self.tail is not None and score is not None and t.size:
            closed = (pos0[t] + n_u[t]) // P.block > pos0[t] // P.block
            now = {f: getattr(tab, f)[s] for f in ("seq_sn", "seq_smu", "seq_sm2", "seq_tx", "seq_tc", "seq_te")}
            tab.seq_thr[s] = span.threshold(s, closed, tab, self.tail, now)
        return out, np.flatnonzero(~taken)

    def _block(self, tab, ids, slots, first, n_u, starts, window, z, spike, finite, engine_active, ts,
               model_version, events, ev_win, score, closes) -> np.ndarray:
        """:meth:`update` over windows that lie in one block of each stream; ``closes``: the streams whose
        block ends with these windows (their estimates then take the block's quiet windows in)."""
        P = self.plan
        N, U = starts.size, slots.size
        if N == 0:
            return np.zeros(0)
        c = Call(P, tab, slots, first, n_u, z, spike, finite, self.runs)
        S, sp = c.closed_form(engine_active)
        peak = S.max(axis=0) if S.size else np.zeros(N)
        hot_w = (peak >= P.h) | (sp >= 1.0)
        busy = (np.bincount(c.seg, weights=hot_w, minlength=U) > 0) | tab.seq_active[slots] | (not self.closed)
        quiet_w = ~hot_w & ~engine_active
        if score is not None:  # nor one the fixed rule finds hot (a calibrated threshold may sit higher)
            quiet_w &= score < P.raise_threshold
        fast = np.flatnonzero(~busy)
        if fast.size:
            last = first[fast] + n_u[fast] - 1
            tab.seq_S[slots[fast], : S.shape[0]] = S[:, last].T
            zero = c.last_zero(S, fast, starts)
            if zero is not None:
                tab.seq_zero[slots[fast], : S.shape[0]] = np.where(zero >= 0, zero, tab.seq_zero[slots[fast], : S.shape[0]])
            tab.seq_cool[slots[fast]] = np.maximum(tab.seq_cool[slots[fast]] - n_u[fast], 0)
        out = np.minimum(np.maximum(peak / P.h, sp) * P.raise_threshold, P.cap)
        slow = np.flatnonzero(busy)
        if slow.size:
            Lockstep(P, tab, c, slots, ids, starts, window, ts, model_version).run(
                slow, first, n_u, engine_active, out, quiet_w, events, ev_win)
        c.learn(quiet_w & finite, closes, self.runs)
        if self.tail is not None and score is not None:  # the window score's threshold (tail.py)
            self.tail.update(tab, slots, c.seg, first, n_u, score, finite, engine_active, closes)
        return out
