"""The lab's own controls do what they say (so the tests built on them can fail)."""

import sys

import pytest

pytestmark = pytest.mark.netns

CONNECT = ("import socket, sys\n"
           "try:\n"
           "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()\n"
           "    print('open')\n"
           "except OSError as e:\n"
           "    print(type(e).__name__)\n")
SERVE = ("import socket, time\n"
         "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
         "s.bind(('0.0.0.0', 9000)); s.listen(16)\n"
         "while True:\n"
         "    c, _ = s.accept(); c.close()\n")


def reach(src, dst):
    return src.run(sys.executable, "-c", CONNECT, dst.ip, "9000").stdout.strip()


def test_cut_and_restore_unicast_and_link_down(lab, tmp_path):
    a, b, c = lab.host("a"), lab.host("b"), lab.host("c")
    b.spawn(sys.executable, "-c", SERVE, log=tmp_path / "serve.log")
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
