from hypothesis import given, strategies as st

from pipeline.batching import MicroBatcher


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_closes_on_size():
    b = MicroBatcher(3, 10.0, FakeClock())
    b.extend("a", [1, 2])
    assert not b.due()
    b.add("b", 3)
    assert b.due()
    assert b.take() == [("a", 1), ("a", 2), ("b", 3)]
    assert len(b) == 0 and b.time_left() is None


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


def test_drop_removes_only_matching_keys():
    b = MicroBatcher(10, 1.0, FakeClock())
    b.extend(("t", 0, "s1"), [1, 2])
    b.extend(("t", 1, "s2"), [3])
    assert b.drop(lambda k: k[1] == 0) == 2
    assert b.take() == [(("t", 1, "s2"), 3)]


@given(st.integers(1, 50), st.lists(st.integers(0, 5), max_size=60))
def test_take_preserves_order_and_never_exceeds_max_batch(max_batch, keys):
    b = MicroBatcher(max_batch, 0.0, FakeClock())
    for i, k in enumerate(keys):
        b.add(k, i)
    got = []
    while len(b):
        batch = b.take()
        assert 1 <= len(batch) <= max_batch
        got.extend(batch)
    assert got == [(k, i) for i, k in enumerate(keys)]
