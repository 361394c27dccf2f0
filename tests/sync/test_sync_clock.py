import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.clock import MAX_HLC, HybridClock, hlc_millis
from sync.errors import LocalProtocolError

T0 = 1_700_000_000.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-10, 10), st.integers(0, 2**40)), max_size=50))
def test_stamps_strictly_increase_and_dominate_observed(steps):
    clock = HybridClock()
    last = 0
    for dt, remote in steps:
        stamp = clock.observe(remote, T0 + dt) if remote % 2 else clock.tick(T0 + dt)
        assert stamp > last
        if remote % 2:
            assert stamp > remote
        assert stamp < 2**53
        last = stamp


def test_stamp_follows_wall_clock_and_counter_carries():
    clock = HybridClock()
    first = clock.tick(T0)
    assert hlc_millis(first) == int(T0 * 1000)
    stamps = [clock.tick(T0) for _ in range(600)]
    assert stamps == sorted(set(stamps))
    assert hlc_millis(stamps[-1]) - int(T0 * 1000) == 2  # 600 events spill 2 ms ahead


def test_clock_refuses_to_leave_53_bits():
    clock = HybridClock(MAX_HLC)
    with pytest.raises(LocalProtocolError):
        clock.tick(T0)


def test_ahead_by():
    stamp = HybridClock().tick(T0 + 400)
    assert HybridClock.ahead_by(stamp, T0) == pytest.approx(400, abs=0.002)
