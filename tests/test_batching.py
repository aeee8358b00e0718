from hypothesis import given, strategies as st

from pipeline.stream.batching import MicroBatcher


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_closes_on_size_counted_in_windows():
    b = MicroBatcher(8, 10.0, FakeClock())
    b.add("a", "block1", 5)
    assert not b.due() and len(b) == 5
    b.add("b", "block2", 3)
    assert b.due()
    assert b.take() == [("a", "block1"), ("b", "block2")]
    assert len(b) == 0 and b.time_left() is None


def test_take_stops_before_exceeding_max_batch_but_never_returns_nothing():
    b = MicroBatcher(8, 0.0, FakeClock())
    b.add("a", 1, 6)
    b.add("b", 2, 6)
    assert b.take() == [("a", 1)]
    assert b.take() == [("b", 2)]
    b.add("c", 3, 20)  # a single chunk bigger than max_batch goes alone
    assert b.take() == [("c", 3)]


def test_closes_on_deadline_counted_from_first_item():
    clock = FakeClock()
    b = MicroBatcher(100, 0.02, clock)
    b.add("a", 1)
    clock.t += 0.015
    b.add("b", 2)
    assert not b.due()
    assert abs(b.time_left() - 0.005) < 1e-9
    clock.t += 0.006
    assert b.due()


def test_last_wait_is_from_the_first_item_taken():
    clock = FakeClock()
    b = MicroBatcher(2, 1.0, clock)
    b.add("a", 1)
    clock.t += 0.25
    b.add("b", 2)
    b.add("c", 3)
    clock.t += 0.5
    assert b.take() == [("a", 1), ("b", 2)] and abs(b.last_wait - 0.75) < 1e-9
    assert b.take() == [("c", 3)] and abs(b.last_wait - 0.5) < 1e-9


def test_drop_removes_only_matching_keys():
    b = MicroBatcher(10, 1.0, FakeClock())
    b.add(("t", 0, "s1"), 1, 2)
    b.add(("t", 1, "s2"), 3, 4)
    assert b.drop(lambda k: k[1] == 0) == 2
    assert len(b) == 4
    assert b.take() == [(("t", 1, "s2"), 3)]


@given(st.integers(1, 50), st.lists(st.tuples(st.integers(0, 5), st.integers(1, 20)), max_size=60))
def test_take_preserves_order_and_respects_max_batch(max_batch, items):
    b = MicroBatcher(max_batch, 0.0, FakeClock())
    for i, (k, n) in enumerate(items):
        b.add(k, (i, n), n)
    got = []
    while len(b):
        batch = b.take()
        total = sum(n for _, (_, n) in batch)
        assert batch and (total <= max_batch or len(batch) == 1)
        got.extend(batch)
    assert got == [(k, (i, n)) for i, (k, n) in enumerate(items)]
