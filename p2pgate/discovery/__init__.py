"""Finding paired devices: mDNS on the LAN (and, later, the DHT across networks)."""

from p2pgate.discovery.mdns import (
    InvitersFound,
    LanDiscovery,
    PeerDiscovered,
    PeerLost,
    discovery_tag,
    find_inviters,
)

__all__ = ["InvitersFound", "LanDiscovery", "PeerDiscovered", "PeerLost", "discovery_tag",
           "find_inviters"]
