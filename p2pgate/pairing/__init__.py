"""Pairing: a short code or a QR URI, SPAKE2 with key confirmation, then trust.

The words of a short code (`NAMEPLATE-word-word`) carry 16 bits, so nothing that
leaves the device before SPAKE2 may be a function of them: any hash or MAC of the
code lets a stranger test all 6.5 M codes offline in seconds. What each value on the
wire before TLS reveals to a stranger:

- mDNS TXT (`_p2pgate._tcp.local.`): `v` the protocol version; `n` 8 random bytes,
  new at every re-roll; `t` = HMAC(K_disc, n)[:8] under a 256-bit random key that only
  paired peers know; `p` the nameplates of open offers, in plain text. Instance and
  host names are random. A stranger learns that a p2pgate node is there and which
  nameplates are open, nothing about the words or who runs it.
- Admission on the P2P port: a random challenge, answered with HMAC(K_pair, challenge
  ‖ dialer nonce) under the 256-bit pair secret; a stranger receives no byte of
  certificate, ID or name.
- Pairing connections (`P2PG-PAIR`, on the P2P port or through a relay mailbox): the
  nameplate, the kind (code or URI) and SPAKE2 messages, which reveal nothing testable
  offline. The joiner confirms first, so a device that answers a nameplate (a stranger
  who advertises it too) learns one online guess per attempt; the inviter burns the
  code after 3 failed confirmations. Everything after confirmation is AEAD-sealed.
- Relay mailboxes: a code's box is its nameplate, a URI's is named by SHA-256 of its
  128-bit secret; the relay sees the nameplate, as in Magic Wormhole, never the words.

One nameplate for the LAN and the relays (`service.open_offer`, `relay_boxes`): with
relays configured, the first relay that answers allocates the offer's nameplate, as
Magic Wormhole's mailbox server does (never one of its other open offers; 1–99 while
any is free; it avoids the nameplates we and the LAN already show, which we send it),
and the mDNS advertisement shows that same number. The other relays are asked for it
too; one where another offer holds it carries only the URI's box (the code then works
on the LAN and the first relay). With no relay answering, the nameplate is picked here
(`create_offer`) and claimed on each relay later. The box is held by the inviter's
connection and closes with the offer (paired, or expired; a burned one stays shown
until it expires so a joiner learns it burned); if the relay drops it, it is claimed
again. A joiner on another network meets it by nameplate (code) or box (URI) through
the relays it knows (its own for a code, the URI's `r=`).
- DHT records: keys and values derived from K_pair (HKDF, per 24 h epoch); opaque to
  anyone without the pair secret.
- Strangers on the P2P port (a node must stay reachable while one floods it): every
  pairing connection counts under the listener's caps on unauthenticated connections
  (`net/admission.py`: 128 in all, 16 per IPv4 address or IPv6 /64; past a cap the
  oldest of the heaviest source is pushed out). The hello is due within 5 s, every
  later step within 10 s (no step waits for a person). An offer takes 8 attempts at
  once, at most 2 per source; on a full offer a newcomer pushes out the oldest attempt
  of the source holding the most (a pushed-out attempt's proof is refused unchecked,
  so it is no guess). A stranger's silent attempts after a valid SPAKE2 message so do
  not keep the real joiner out; only the first attempt to prove the code goes on (the
  race guard).
- Burning: 3 wrong confirmations burn a code, from whichever sources (the designed
  bound: at most 3 online guesses per code, so 3 in 65,536 for a stranger). What one
  source may burn is bounded separately: its wrong confirmations spend a budget of 3
  that refills at one per 100 s, across all offers of this node, so a source that
  scans nameplates it was never shown burns at most one offer per default offer
  lifetime (5 minutes), and a source out of budget is refused before SPAKE2 (no guess,
  no failure counted). A joiner that mistyped is refused for at most 100 s. Joiners
  through a relay mailbox carry no source here; the relay limits them.
- The QR URI carries the code, the 128-bit secret, addresses and relays; it is shown
  to the user and never sent by the node.
"""
