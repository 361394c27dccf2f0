"""WAN discovery: private, per-pair records in a hardened Kademlia DHT.

`records` holds the format (sealed per pair and 24 h epoch, checkable by anyone,
readable only by the peer), `node` the hardened node and its bounded store, `seq` the
counter behind each record's `seq`.

What a DHT participant still learns, after the hardening of issue 17 (#8, #9):

- A node that stores one of our records sees the STORE's source, our P2P ip:port
  (the DHT runs on the P2P port number), so it can tell the records that come from
  one device apart from others by address, and see when we republish (hourly, at
  each epoch change and when our addresses change). In a small DHT (a relay or two)
  one node stores all of a device's records, so it can count our peers.
- It sees each record's key, size, `seq` and expiry in clear. The key changes every
  UTC day, and the change happens for all of a device's records at the same moment
  from the same address, so days can be linked by address and timing. The seq of
  different records are unrelated (a secret offset per pair and epoch), and the step
  between two seqs of one key counts our publishing passes, not our records; expiry
  is 3 h minus a random jitter of up to 30 min per record.
- A node that answers a lookup sees the reader's ip:port and the key. Holding the
  record too, it links publisher and reader addresses: these two are paired. Readers
  look up while they have no direct session (every 30 s), for the current and the
  previous epoch, and for the next one only in the last 10 minutes before it starts.
- It learns nothing else: not the device IDs, not which pair, not the content
  (addresses, relays: sealed), not the keys of other epochs (they come from the pair
  secret), and a device ID alone gives no key to look up.

What bounds an attacker: records are held at most 4 h, each /24 or /64 holds at
most 64 records per node, and a full store evicts the least recently stored or read
record, so a flood from a few networks cannot fill it and a fresh record always fits.
"""
