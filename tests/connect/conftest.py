"""Connection-manager fixtures: real devices (identities, libSQL registries, pinned
TLS) from the net tests, plus their documents."""

from __future__ import annotations

from tests.net.conftest import Device, devices, pair

__all__ = ["Device", "devices", "pair"]
