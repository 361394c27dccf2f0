"""A dead direct path is noticed within seconds on default settings: while writing
(a), and by the first write after an idle cut (b); the move back when the route
returns loses and repeats no event (c). The same journeys, repeated, are
`bench/failover_bench.py`."""

from __future__ import annotations

import pytest

from tests.netns import failover

pytestmark = pytest.mark.netns

BOUND = 5.0  # the CI bound; the bench holds the 3 s target


def test_a_cut_is_noticed_in_seconds_while_writing_and_after_idling(lab, tmp_path):
    pair = failover.start(lab, tmp_path)
    try:
        writing = failover.writes_after_a_cut(pair, "a")
        assert pair.paths() == ("relay", "relay")
        back = failover.restored(pair)
        idle = failover.write_after_idle(pair, 60.0, "b")
        counts = failover.events_once_each(pair)
    finally:
        pair.close()

    print(f"(a) {writing:.2f} s  (b) {idle:.2f} s  (c) {back:.1f} s  {counts}")
    assert writing < BOUND
    assert idle < BOUND
    assert counts == {"desk_lost": 0, "desk_repeated": 0, "phone_lost": 0,
                      "phone_repeated": 0}
