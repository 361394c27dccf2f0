import os

import pytest

from tests.lab import Lab, netns_available


@pytest.fixture
def lab(allow_blocking):
    if not netns_available():
        if os.environ.get("CI"):
            pytest.fail("network namespaces are required in CI (root and iproute2)")
        pytest.skip("needs root and `ip netns` (CAP_NET_ADMIN)")
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()
