import os

import pytest

from tests.lab import Lab, netns_available
from tests.natlab import NatLab


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


@pytest.fixture
def natlab(allow_blocking):
    """`natlab(nat_a, nat_b)`: a NAT lab (tests/natlab.py), closed after the test."""
    if not netns_available():
        pytest.fail("network namespaces are required in CI (root and iproute2)")
    labs: list[NatLab] = []

    def make(nat_a: str, nat_b: str = "port-restricted") -> NatLab:
        labs.append(NatLab(nat_a, nat_b))
        return labs[-1]

    try:
        yield make
    finally:
        for lab in labs:
            lab.close()
