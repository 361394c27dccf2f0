"""Finding paired devices: mDNS on the LAN, private records in the DHT across networks.

This package's top level holds only the sans-I/O parts, so importing the record
refresh core loads no asyncio or socket. The adapters live in their modules:
`p2pgate.discovery.mdns` (`LanDiscovery`, zeroconf), `p2pgate.discovery.wan`
(`WanDiscovery`, the asyncio adapter of the refresh core) and
`p2pgate.discovery.dht` (the hardened Kademlia node and the record format).
"""

from p2pgate.discovery.refresh import (
    Command,
    LookupPeer,
    PublishRecord,
    RecordRefresh,
    needs_lookup,
)

__all__ = ["Command", "LookupPeer", "PublishRecord", "RecordRefresh", "needs_lookup"]
