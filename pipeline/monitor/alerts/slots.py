"""Per-stream alert state as struct-of-arrays slots, bounded in number and in memory (pure numpy).

Every tracked stream owns a *slot*: a fixed-size record in one anonymous memory map holding its
running statistics (per term column: admitted count, values since the last refresh, median and
spreads), its ring buffer of the last ``stats_windows`` admitted values per column, the last
``slow_windows`` values of each slow term's feature, and its alert state machine. Each field is a
numpy view with the slot as first axis (``count[slot, col]``, ``ring[slot, position, col]``), so the
paths read and write the state of many streams with one indexing operation.

Memory. The ring is stored position-major (``[slot, position, col]``) and placed last in the record, so
a young stream touches only the first page of its slot; the map grows by ``mremap`` (untouched pages
stay unallocated) and a freed slot's pages go back to the kernel (``MADV_DONTNEED``, which also
zeroes them: a zeroed record is a new stream's state). A stream is dropped after ``ttl_s`` without
windows (:meth:`SlotTable.expire`) and, beyond ``max_streams`` tracked streams, the least recently
seen is evicted to make room (:meth:`SlotTable.claim`); ``evictions`` counts both.
"""

from __future__ import annotations

import mmap
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from pipeline.monitor.alerts.isolated import STATE_FIELDS as ISOLATED_FIELDS
from pipeline.monitor.alerts.outliers import STATE_FIELDS as OUTLIER_FIELDS
from pipeline.monitor.alerts.scoring import Scoring
from pipeline.monitor.alerts.sequential import MAX_SIDES, MAX_TERMS
from pipeline.monitor.alerts.signruns import MAX_RUNS
from pipeline.monitor.alerts.tail import TAIL_LEVELS

_PAGE = mmap.PAGESIZE
# Slots the map holds at first; it doubles when full (up to max_streams).
_FIRST_SLOTS = 64


def record_dtype(p: Scoring) -> np.dtype:
    """The slot record of one stream under ``p``'s layout, padded to whole pages."""
    t, f, n = len(p.cols), len(p.slow), p.n
    fields = [
        ("count", np.int64, (t,)),  # values admitted so far per column (not capped at stats_windows)
        ("pending", np.int64, (t,)),  # values admitted since the column's last refresh
        ("med", np.float64, (t,)), ("hi", np.float64, (t,)), ("lo", np.float64, (t,)),
        ("slow_n", np.int64, (max(f, 1),)),  # feature values appended to each slow history so far
        ("last_start", np.int64), ("has_last", np.bool_),
        # the last n windows (debounce history), oldest first, right-aligned: the newest at n - 1
        ("rec_start", np.int64, (n,)), ("rec_score", np.float64, (n,)), ("rec_hot", np.bool_, (n,)),
        ("rec_len", np.int64),
        ("active", np.bool_), ("alert_start", np.int64), ("alert_end", np.int64), ("alert_peak", np.float64),
        ("below", np.int64),  # consecutive windows below resolve_threshold while active
        ("cooldown", np.int64),  # windows left in which no alert may be raised
        ("in_alert", np.int64),  # windows seen during the current alert (for alert_admit_every)
        ("quiet", np.int64),  # consecutive windows neither hot nor in an alert
        ("fast_below", np.int64),  # consecutive windows whose per-window score is below resolve_threshold
        ("range_done", np.bool_),  # the per-window evidence of the current alert has resolved
        # sequential tests (pipeline.monitor.alerts.sequential): per CUSUM term the running mean, mean
        # square, lag-1 product and last value of its z, and the count; per side the CUSUM and the
        # start of its last window at 0; the spike statistic's count, mean and mean square; the alert
        ("seq_mu", np.float64, (MAX_TERMS,)), ("seq_m2", np.float64, (MAX_TERMS,)),
        ("seq_c1", np.float64, (MAX_TERMS,)), ("seq_prev", np.float64, (MAX_TERMS,)),
        ("seq_n", np.int64, (MAX_TERMS,)),
        ("seq_S", np.float64, (MAX_SIDES,)), ("seq_zero", np.int64, (MAX_SIDES,)),
        ("seq_un", np.int64), ("seq_umu", np.float64), ("seq_um2", np.float64),
        ("seq_active", np.bool_), ("seq_a_start", np.int64), ("seq_a_end", np.int64), ("seq_peak", np.float64),
        ("seq_det", np.int64), ("seq_below", np.int64), ("seq_cool", np.int64),
        ("seq_pos", np.int64),  # windows through the tests so far (their estimates move per block of them)
        # the current block's quiet windows: per CUSUM term their count and sums of z, z^2, z * previous z;
        # of the spike statistic and of the window score: count, sum, sum of squares
        ("seq_qn", np.int64, (MAX_TERMS,)), ("seq_q1", np.float64, (MAX_TERMS,)),
        ("seq_q2", np.float64, (MAX_TERMS,)), ("seq_qc", np.float64, (MAX_TERMS,)),
        ("seq_uqn", np.int64), ("seq_uq1", np.float64), ("seq_uq2", np.float64),
        ("seq_sqn", np.int64), ("seq_sq1", np.float64), ("seq_sq2", np.float64),
        # run tests (signruns.py): per test the current run's length, the counted windows, the runs of at
        # least RUN_L0 windows and their excess per window, and the current block's count and sums
        ("seq_rlen", np.int64, (MAX_RUNS,)), ("seq_rn", np.int64, (MAX_RUNS,)),
        ("seq_rc", np.float64, (MAX_RUNS,)), ("seq_re", np.float64, (MAX_RUNS,)),
        ("seq_rqn", np.int64, (MAX_RUNS,)), ("seq_rq1", np.float64, (MAX_RUNS,)),
        ("seq_rq2", np.float64, (MAX_RUNS,)),
        # the window score's calibrated raise threshold (0: the setting) and its quiet score's statistics
        ("seq_thr", np.float64), ("seq_sn", np.int64), ("seq_smu", np.float64), ("seq_sm2", np.float64),
        # its upper tail on the POT grid (tail.py): per level the running fractions of quiet windows above
        # it and crossing it upwards and the mean excess over it, the current block's counts and sum of
        # excesses, and the last window's score
        ("seq_tx", np.float64, (TAIL_LEVELS,)), ("seq_tc", np.float64, (TAIL_LEVELS,)),
        ("seq_te", np.float64, (TAIL_LEVELS,)), ("seq_tqx", np.int32, (TAIL_LEVELS,)),
        ("seq_tqc", np.int32, (TAIL_LEVELS,)), ("seq_tqe", np.float64, (TAIL_LEVELS,)), ("seq_tlast", np.float64),
        # the record outlier test (outliers.py): its state row (estimates, block, alert)
        ("out", np.float64, (OUTLIER_FIELDS,)),
        # the isolated-sample test (isolated.py): its calibration and alert
        ("iso", np.float64, (ISOLATED_FIELDS,)),
        ("slow", np.float32, (p.slow_windows, max(f, 1))),  # ring of each slow term's feature values
        ("ring", np.float32, (p.stats_windows, t)),  # ring of admitted values per column (last: lazily touched)
    ]
    base = np.dtype(fields, align=True)
    return np.dtype({"names": base.names, "formats": [base.fields[k][0] for k in base.names],
                     "offsets": [base.fields[k][1] for k in base.names],
                     "itemsize": -(-base.itemsize // _PAGE) * _PAGE})


class SlotTable:
    """Slots of the tracked streams: stream id -> slot, least recently seen first."""

    def __init__(self, p: Scoring, max_streams: int, ttl_s: float,
                 on_evict: Callable[[str, int], None] | None = None):
        self.dtype = record_dtype(p)
        self.max_streams, self.ttl_s, self._on_evict = int(max_streams), float(ttl_s), on_evict
        self.ids: OrderedDict[str, int] = OrderedDict()  # least recently seen first
        self.seen = np.zeros(0)  # per slot: clock time of its last window
        self._free: list[int] = []
        self._top = 0  # slots below this have been handed out at least once
        self.evictions = {"idle": 0, "cap": 0}
        self._map = mmap.mmap(-1, self.dtype.itemsize * _FIRST_SLOTS, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._view()

    def _view(self) -> None:
        rec = np.frombuffer(self._map, dtype=self.dtype)
        for name in self.dtype.names:
            setattr(self, name, rec[name])
        self.capacity = rec.shape[0]
        seen = np.zeros(self.capacity)
        seen[: self.seen.size] = self.seen
        self.seen = seen

    def _grow(self) -> None:
        for name in self.dtype.names:  # the map cannot move while views of it exist
            delattr(self, name)
        self._map.resize(self.dtype.itemsize * min(2 * self.capacity, max(self.max_streams, self.capacity + 1)))
        self._view()

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, stream: str) -> int | None:
        return self.ids.get(stream)

    def claim(self, streams: Sequence[str], now: float) -> np.ndarray:
        """The slots of ``streams`` (new ones get a fresh slot, evicting the least recently seen beyond
        ``max_streams``), each marked seen at ``now``."""
        out = np.empty(len(streams), dtype=np.int64)
        ids = self.ids
        claimed = set(streams) if len(ids) + len(streams) > self.max_streams else ()
        for i, sid in enumerate(streams):
            s = ids.get(sid)
            if s is None:
                s = self._new(claimed)
                ids[sid] = s
            else:
                ids.move_to_end(sid)
            out[i] = s
        self.seen[out] = now
        return out

    def _new(self, claimed) -> int:
        while len(self.ids) >= self.max_streams:
            oldest = next(iter(self.ids))
            if oldest in claimed:  # one call holds more streams than the cap: they all stay, for now
                break
            self._drop(oldest, "cap")
        if self._free:
            return self._free.pop()
        if self._top >= self.capacity:
            self._grow()
        self._top += 1
        return self._top - 1

    def release(self, stream: str) -> int | None:
        """Drop ``stream``'s slot (its pages go back to the kernel, zeroed); returns the slot or None."""
        s = self.ids.pop(stream, None)
        if s is None:
            return None
        size = self.dtype.itemsize
        if hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED, s * size, size)
        else:  # no madvise here: zero the record by hand
            self._map[s * size : (s + 1) * size] = bytes(size)
        self._free.append(s)
        return s

    def _drop(self, stream: str, reason: str) -> None:
        self.release(stream)
        self.evictions[reason] += 1
        if self._on_evict is not None:
            self._on_evict(stream, reason)

    def expire(self, now: float) -> list[str]:
        """Drop the streams without a window for more than ``ttl_s`` (the oldest first); returns them."""
        limit, gone = now - self.ttl_s, []
        for sid, s in self.ids.items():
            if self.seen[s] >= limit:
                break
            gone.append(sid)
        for sid in gone:
            self._drop(sid, "idle")
        return gone

    def reset_cols(self, cols: Sequence[int], slow: Sequence[int]) -> None:
        """Restart the statistics of columns ``cols`` and the histories of slow terms ``slow`` in every slot."""
        live = np.fromiter(self.ids.values(), dtype=np.int64, count=len(self.ids))
        if live.size == 0:
            return
        c = np.asarray(cols, dtype=np.int64)
        for name in ("count", "pending", "med", "hi", "lo"):
            getattr(self, name)[live[:, None], c[None, :]] = 0
        if len(slow):
            self.slow_n[live[:, None], np.asarray(slow, dtype=np.int64)[None, :]] = 0

    def reset_seq(self, terms: Sequence[int], sides: Sequence[int], spike: bool, runs: Sequence[int] = ()) -> None:
        """Restart the sequential tests' estimates of CUSUM terms ``terms`` (indices), the CUSUMs of
        ``sides``, with ``spike`` the spike statistic's, and those of run tests ``runs`` (indices), in
        every slot."""
        live = np.fromiter(self.ids.values(), dtype=np.int64, count=len(self.ids))
        if live.size == 0:
            return
        t, d = np.asarray(terms, dtype=np.int64), np.asarray(sides, dtype=np.int64)
        for name in ("seq_mu", "seq_m2", "seq_c1", "seq_prev", "seq_n", "seq_qn", "seq_q1", "seq_q2", "seq_qc"):
            getattr(self, name)[live[:, None], t[None, :]] = 0
        self.seq_S[live[:, None], d[None, :]] = 0
        r = np.asarray(runs, dtype=np.int64)
        for name in ("seq_rlen", "seq_rn", "seq_rc", "seq_re", "seq_rqn", "seq_rq1", "seq_rq2"):
            getattr(self, name)[live[:, None], r[None, :]] = 0
        if spike:
            self.seq_un[live], self.seq_umu[live], self.seq_um2[live] = 0, 0.0, 0.0
            self.seq_uqn[live], self.seq_uq1[live], self.seq_uq2[live] = 0, 0.0, 0.0
