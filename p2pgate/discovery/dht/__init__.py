"""WAN discovery: private, per-pair records in a hardened Kademlia DHT."""
