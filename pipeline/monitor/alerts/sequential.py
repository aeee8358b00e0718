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

Cost: per call and block, every stream's CUSUMs in closed form (:func:`~pipeline.monitor.alerts.cusum.lindley`); only streams where a test
reaches its threshold or an alert of these tests is up step window by window (:class:`_Lockstep`).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from pipeline.monitor.alerts.cusum import U_MAX, cusum_threshold, ew_block, exact, lindley
from pipeline.monitor.alerts.events import AlertEvent
from pipeline.monitor.alerts.isolated import isolated_tests
from pipeline.monitor.alerts.outliers import outlier_tests
from pipeline.monitor.alerts.scoring import Scoring
from pipeline.monitor.alerts.signruns import MAX_RUNS, SignRuns, run_cols
from pipeline.monitor.alerts.tail import ScoreTail, gumbel_c
from pipeline.settings import AlertSettings

# Directions tested per CUSUM term: +1 upwards, -1 downwards.
SIDES = {"level": (1, -1), "scale": (1, -1), "noise": (1,), "freq": (1, -1), "floor": (1,)}
MAX_TERMS = 5  # slot record sizes (slots.record_dtype): CUSUM terms, and sides (CUSUMs, then run tests)
MAX_SIDES = 8 + MAX_RUNS
# Smallest long-run sigma of a z sequence (a constant stream has none).
_SIG_FLOOR = 0.05
_ERR = 1  # the engine's column of the standardised error (scoring.Scoring.build)
# The spike ratio is taken at most at exp(this) (a flat window's is 0 / 0).
_V_MAX = 20.0
# Bound of a term's z the estimates take in (a power of 2; :func:`exact`); the spike ratio's: cusum.U_MAX.
_Z_MAX = 64.0
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
        P = plan
        self.tail = ScoreTail(P.score_tail, P.p_win, P.tail_frac, P.raise_threshold, P.warmup, P.memory,
                              P.block) if P.score else None
        self.runs = SignRuns(P.run_cols, P.run_signs, P.p_win, P.warmup, P.memory)

    def update(self, tab, ids, slots, first, n_u, starts, window, z, spike, finite, engine_active, ts,
               model_version, events, ev_win, score=None) -> np.ndarray:
        """The windows of each stream ``u`` are ``first[u]`` to ``first[u] + n_u[u]`` of the grouped
        arrays. Appends events (and their windows); returns each window's score in units of the raise
        threshold (``raise_threshold`` at a test's threshold).

        The estimates move once per *block* of ``plan.block`` windows of a stream, counted from its
        first window, not once per call: the call is taken in rounds, round ``r`` holding each stream's
        windows of its ``r``-th block in the call, so a stream cut into calls of any size decides the
        same (the worker's micro-batches grow when it falls behind)."""
        N, U = starts.size, slots.size
        if N == 0:
            return np.zeros(0)
        B = self.plan.block
        seg = np.repeat(np.arange(U), n_u)
        pos0 = tab.seq_pos[slots].copy()
        tab.seq_pos[slots] = pos0 + n_u
        rnd = (pos0[seg] + np.arange(N) - first[seg]) // B - (pos0 // B)[seg]
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

    def _block(self, tab, ids, slots, first, n_u, starts, window, z, spike, finite, engine_active, ts,
               model_version, events, ev_win, score, closes) -> np.ndarray:
        """:meth:`update` over windows that lie in one block of each stream; ``closes``: the streams whose
        block ends with these windows (their estimates then take the block's quiet windows in)."""
        P = self.plan
        N, U = starts.size, slots.size
        if N == 0:
            return np.zeros(0)
        c = _Call(P, tab, slots, first, n_u, z, spike, finite, self.runs)
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
            _Lockstep(P, tab, c, slots, ids, starts, window, ts, model_version).run(
                slow, first, n_u, engine_active, out, quiet_w, events, ev_win)
        c.learn(quiet_w & finite, closes, self.runs)
        if self.tail is not None and score is not None:  # the window score's threshold (tail.py)
            self.tail.update(tab, slots, c.seg, first, n_u, score, finite, engine_active, closes)
        return out


class _Call:
    """One call's (one block's) per-window inputs of the tests, from the estimates at the start of the block."""

    def __init__(self, P: SeqPlan, tab, slots, first, n_u, z, spike, finite, runs: SignRuns):
        self.P, self.tab, self.slots, self.first, self.n_u = P, tab, slots, first, n_u
        U, N = slots.size, int(n_u.sum())
        self.seg = seg = np.repeat(np.arange(U), n_u)
        self.pos = np.arange(N) - first[seg]
        T = len(P.terms)
        self.z = z[list(P.cols)] if T else np.zeros((0, N))
        self.have = (self.z != 0.0) & finite[None, :]  # a term without statistics yet has z 0
        if P.gate >= 0:  # noise rises count only as far as the standardised error agrees (as the residual's)
            zn = self.z[P.gate]
            self.z[P.gate] = np.where(zn > 0, np.minimum(zn, np.maximum(z[_ERR], 0.0)), zn)
        n = tab.seq_n[slots, :T].T
        mu, m2, c1 = (getattr(tab, f)[slots, :T].T for f in ("seq_mu", "seq_m2", "seq_c1"))
        var = np.maximum(m2 - mu * mu, 0.0)
        rho = np.clip((c1 - mu * mu) / np.maximum(var, 1e-12), 0.0, 0.95)
        sig = np.maximum(np.sqrt(var * (1 + rho) / (1 - rho)), _SIG_FLOOR)
        x = np.clip((self.z - mu[:, seg]) / sig[:, seg], -P.clip, P.clip)
        ready = self.have & (n >= P.warmup)[:, seg]
        self.inc = x[P.side_term] * P.side_sign[:, None] - P.k  # (D, N)
        self.ready = ready[P.side_term]
        if len(runs):  # the run tests: more sides, reset off their side (signruns.py)
            self.on = runs.sides(z, finite)
            r_inc, r_ready = runs.increments(tab, slots, self.seg, self.on, P.h)
            self.inc, self.ready = np.concatenate((self.inc, r_inc)), np.concatenate((self.ready, r_ready))
        self.sp = np.zeros(N)
        self.v = np.exp(np.minimum(np.where(np.isfinite(spike), spike, 0.0), _V_MAX))
        if P.spike:
            un, umu, um2 = tab.seq_un[slots], tab.seq_umu[slots], tab.seq_um2[slots]
            thr = np.maximum(P.spike_t, umu + P.gumbel_c * np.sqrt(np.maximum(um2 - umu * umu, 0.0)))
            ok = (un >= P.warmup)[seg] & finite & np.isfinite(spike)
            self.sp = np.where(ok, self.v / thr[seg], 0.0)

    def closed_form(self, engine_active) -> tuple[np.ndarray, np.ndarray]:
        """Every window's CUSUMs ``(D, N)`` without the cap (exact where none reaches ``h``) and spike
        ratio ``(N,)``. A window where a side is not ready or a window-score alert is up resets it
        to 0: it starts a new segment of the running minimum, whose segments are kept apart by
        offsets larger than any range of ``C`` (each later segment lies wholly below the earlier)."""
        D, N = self.inc.shape
        if D == 0:
            return np.zeros((0, N)), self.sp
        U, L = self.slots.size, int(self.n_u.max())
        live = self.ready & ~engine_active[None, :]
        inc, rst = np.zeros((D, U, L)), np.zeros((D, U, L))
        inc[:, self.seg, self.pos] = np.where(live, self.inc, 0.0)
        rst[:, self.seg, self.pos] = ~live
        S = lindley(inc, rst, self.tab.seq_S[self.slots, :D].T)[:, self.seg, self.pos]
        return S, self.sp

    def last_zero(self, S, streams, starts):
        """Per side and stream of ``streams``: the start of its last window in the call at 0, or -1."""
        if S.size == 0:
            return None
        idx = np.where(S == 0.0, np.arange(S.shape[1])[None, :], -1)
        best = np.maximum.reduceat(idx, self.first, axis=1)[:, streams]  # each stream's windows are contiguous
        return np.where(best >= 0, starts[np.maximum(best, 0)], -1).T

    def learn(self, quiet, closes, runs: SignRuns) -> None:
        """The call's quiet windows into the blocks' accumulators, and the estimates of the streams whose
        block closes: the terms' z (and lag-1 products) where they have one, the spike ratio, the runs."""
        P, tab, slots, seg = self.P, self.tab, self.slots, self.seg
        if len(runs):
            runs.learn(tab, slots, seg, self.first, self.n_u, self.on, quiet, closes)
        T, U = len(P.terms), slots.size
        B = P.block
        if T:  # every term at once: row t of the (T, N) arrays is column t of the slot fields
            Z = self.z
            prev = np.concatenate((np.zeros((T, 1)), Z[:, :-1]), axis=1)
            prev[:, self.first] = tab.seq_prev[slots, :T].T
            vals = exact(Z, _Z_MAX, B), exact(Z * Z, _Z_MAX**2, B), exact(Z * prev, _Z_MAX**2, B)
            ew_block(tab, slots, closes, seg, quiet[None, :] & self.have, vals,
                     ("seq_n", "seq_mu", "seq_m2", "seq_c1"), ("seq_qn", "seq_q1", "seq_q2", "seq_qc"),
                     memory=P.memory)
            lastz = np.full((T, U), np.nan)
            t_, h = np.nonzero(self.have)
            lastz[t_, seg[h]] = Z[t_, h]  # the last window that has a z, per term and stream
            tab.seq_prev[slots, :T] = np.where(np.isnan(lastz), tab.seq_prev[slots, :T].T, lastz).T
        if P.spike:
            v = np.minimum(self.v, U_MAX)
            ew_block(tab, slots, closes, seg, quiet & (self.v > 0), (exact(v, U_MAX, B), exact(v * v, U_MAX**2, B)),
                      ("seq_un", "seq_umu", "seq_um2"), ("seq_uqn", "seq_uq1", "seq_uq2"), memory=P.memory)


class _Lockstep:
    """The streams of a call with something to decide, one window index at a time: the capped CUSUMs
    (reset where a side is not ready or a window-score alert is up), the spike test and the alerts."""

    def __init__(self, P: SeqPlan, tab, call: _Call, slots, ids, starts, window, ts, model_version):
        self.P, self.tab, self.c, self.slots, self.ids = P, tab, call, slots, ids
        self.starts, self.window, self.ts, self.mv = starts, window, ts, model_version

    def run(self, streams, first, n_u, engine_active, out, quiet, events, ev_win) -> None:
        P, tab, c = self.P, self.tab, self.c
        sl = self.slots[streams]
        D = c.inc.shape[0]
        S = tab.seq_S[sl, :D].T.copy()
        zero = tab.seq_zero[sl, :D].T.copy()
        act, cool, below = tab.seq_active[sl].copy(), tab.seq_cool[sl].copy(), tab.seq_below[sl].copy()
        a0, a1, peak, det = (tab.seq_a_start[sl].copy(), tab.seq_a_end[sl].copy(), tab.seq_peak[sl].copy(),
                             tab.seq_det[sl].copy())
        for t in range(int(n_u[streams].max())):
            live = np.flatnonzero(t < n_u[streams])
            i = first[streams[live]] + t
            st, eng = self.starts[i], engine_active[i]
            S[:, live] = np.where(c.ready[:, i] & ~eng[None, :],
                                  np.minimum(2 * P.h, np.maximum(0.0, S[:, live] + c.inc[:, i])), 0.0)
            Sl = S[:, live]
            zero[:, live] = np.where(Sl == 0.0, st[None, :], zero[:, live])
            cu_hot = Sl >= P.h
            sp_hot = c.sp[i] >= 1.0
            hot = cu_hot.any(axis=0) | sp_hot
            sc = np.minimum(np.maximum(Sl.max(axis=0, initial=0.0) / P.h, c.sp[i]) * P.raise_threshold, P.cap)
            out[i] = sc
            end = st + self.window
            was = act[live]
            rise = hot & ~was & (cool[live] == 0) & ~eng
            cool[live] = np.maximum(cool[live] - 1, 0)
            calm = (Sl < P.h / 2).all(axis=0) & ~sp_hot
            below[live] = np.where(was & calm, below[live] + 1, 0)
            a1[live] = np.where(was & hot, end, a1[live])
            peak[live] = np.where(was, np.maximum(peak[live], sc), peak[live])
            done = was & (below[live] >= P.resolve_windows)
            for j in np.flatnonzero(rise | done):
                u = live[j]
                sid = self.ids[streams[u]]
                if rise[j]:
                    hot_d = np.flatnonzero(cu_hot[:, j])
                    det[u] = hot_d[np.argmax(Sl[hot_d, j])] if hot_d.size else len(P.names) - 1
                    a0[u] = int(zero[hot_d, u].min()) if hot_d.size else int(st[j])
                    a1[u], peak[u] = end[j], sc[j]
                    events.append(AlertEvent("raised", sid, int(a0[u]), int(end[j]), float(sc[j]), P.raise_threshold,
                                             self.mv, self.ts, detector=P.names[int(det[u])]))
                else:
                    events.append(AlertEvent("resolved", sid, int(a0[u]), int(a1[u]), float(peak[u]),
                                             P.raise_threshold / 2, self.mv, self.ts, detector=P.names[int(det[u])]))
                    cool[u] = P.cooldown_windows
                ev_win.append(int(i[j]))
            act[live] = (was & ~done) | rise
            below[live] = np.where(rise | done, 0, below[live])
            quiet[i] &= ~hot & ~act[live]
        tab.seq_S[sl, :D], tab.seq_zero[sl, :D] = S.T, zero.T
        tab.seq_active[sl], tab.seq_cool[sl], tab.seq_below[sl] = act, cool, below
        tab.seq_a_start[sl], tab.seq_a_end[sl], tab.seq_peak[sl], tab.seq_det[sl] = a0, a1, peak, det
