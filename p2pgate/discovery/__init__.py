"""Finding paired devices: mDNS on the LAN (and, later, the DHT across networks)."""

from p2pgate.discovery.mdns import (
    LanDiscovery,
    PeerDiscovered,
    PeerLost,
    discovery_tag,
    find_inviter,
)

__all__ = ["LanDiscovery", "PeerDiscovered", "PeerLost", "discovery_tag", "find_inviter"]
