"""The lab's own controls do what they say (so the tests built on them can fail)."""

import sys

import pytest

pytestmark = pytest.mark.netns

def reach(src, dst):
    out = src.run(sys.executable, "-m", "tests.programs.tcp", "connect", dst.ip, "9000")
    return out.stdout.strip()


def test_cut_and_restore_unicast_and_link_down(lab, tmp_path):
    a, b, c = lab.host("a"), lab.host("b"), lab.host("c")
    b.spawn(sys.executable, "-m", "tests.programs.tcp", "serve", "9000",
            log=tmp_path / "serve.log")
    from tests.lab import wait_for
    wait_for(lambda: reach(a, b) == "open", what="server up")
    lab.cut_unicast(a, b)
    assert reach(a, b) != "open"
    assert reach(c, b) == "open"  # only that pair is cut
    lab.restore_unicast(a, b)
    assert reach(a, b) == "open"
    b.link_down()
    assert reach(c, b) != "open"
    b.link_up()
    wait_for(lambda: reach(c, b) == "open", what="link back up")
