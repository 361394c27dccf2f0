"""The connection core (sans-I/O): which paths to dial, when, and which session to keep.

It owns no socket, task or clock: the adapter feeds it what happened, with `now`
(monotonic seconds), and takes back commands and events from `next_event()`; its
timers are values (`get_timer()` / `handle_timer(now)`). Jitter comes from an
injected `random.Random`.

Each trusted peer is in one of these states:

    IDLE ----due (timer)----> DIALING ----a session is adopted----> LINKED
      ^                          |                                    |
      +--every attempt failed----+   (backoff)                        |
      +--------------the session ended (redial at once)---------------+

IDLE: no session, no dial in flight; a round of dials is due at `due` (at once for a
  new peer, a sighting, a path change or an ended session; else after a backoff that
  doubles from `redial` up to `max_redial`).
DIALING: happy eyeballs. With direct candidates the direct attempt starts at once
  and the relay attempt `relay_delay` (0.5 s) later, or at once when the direct one
  fails first; without direct candidates the relay attempt starts at once. The first
  session to complete Hello wins; the other attempts are cancelled (not a WebRTC
  attempt off a session of the peer's adopted meanwhile), and a session from a
  cancelled attempt is closed ("another path won"; a webrtc session is ranked instead).
LINKED: one adopted session. Another session with the peer (accepted, a probe, a late
  dial) is ranked: direct > webrtc > relay; a better path replaces the current one (a
  *move*), a worse one is closed; of two of the same rank, the one initiated by the
  lower device ID is kept. While the path is the relay or webrtc, direct paths are
  probed every `probe_every` seconds (± 20 % jitter) and at once on a sighting; while
  it is the relay (with `webrtc`) a WebRTC attempt starts at once, then after each
  failure with a backoff from `webrtc_retry` (30 s) doubling up to `webrtc_max_retry`
  (10 min), and at once again on a new sighting (other addresses than the last) or a
  path change; a webrtc session moves
  the peer off the relay. A network change (our addresses changed) resets every
  backoff: unlinked peers are dialed, relayed ones get a WebRTC attempt (after the one
  in flight, which began with the old addresses) and direct probes at once.
SUSPECT (a LINKED session whose PING went unanswered, see `p2pgate.net.frames`): the
  session is kept, and every alternative starts at once (direct candidates and the
  relay), each naming the session it replaces. The first to complete Hello takes the
  peer's session whatever its rank (a move); the peer, told which session it replaces,
  moves too, even though its side of the dead path still looks fine. A suspect path
  that answers again stays, unless a replacement already won.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from p2pgate.identity.deviceid import DeviceID

__all__ = [
    "CancelDials",
    "CloseSession",
    "ConnectionCore",
    "DialDirect",
    "DialRelay",
    "DialWebRtc",
    "PeerUnreachable",
    "SessionAdopted",
    "path_rank",
]

DIRECT, RELAY, WEBRTC = "direct", "relay", "webrtc"
_RANKS = {RELAY: 0, "webrtc": 1}  # everything else ranks with direct TCP


def path_rank(path: str) -> int:
    """Higher is better: direct TCP > webrtc > relay."""
    return _RANKS.get(path, 2)


# -- commands (for the adapter to carry out) ----------------------------------------------

@dataclass(frozen=True, slots=True)
class DialDirect:
    """Dial the peer's direct addresses; report `session_established` or `dial_failed`."""
    peer: DeviceID
    probe: bool = False  # True: the peer is relayed and this looks for a direct path
    replaces: int | None = None  # the key of the suspect session this would replace


@dataclass(frozen=True, slots=True)
class DialRelay:
    """Reach the peer through a relay; report `session_established` or `dial_failed`."""
    peer: DeviceID
    replaces: int | None = None  # the key of the suspect session this would replace


@dataclass(frozen=True, slots=True)
class DialWebRtc:
    """Open a WebRTC data channel to the relayed peer (signalled through the relay);
    report `session_established` or `dial_failed`."""
    peer: DeviceID


@dataclass(frozen=True, slots=True)
class CancelDials:
    """Another path won: cancel the peer's dials still in flight (only on `path`, if
    given)."""
    peer: DeviceID
    path: str | None = None


@dataclass(frozen=True, slots=True)
class CloseSession:
    """Close this session (a duplicate, a worse path, or one that was replaced)."""
    peer: DeviceID
    key: int
    reason: str


# -- events (what happened) ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SessionAdopted:
    """This session is now the peer's one live session; `moved_from` names the path of
    the session it replaced, if any."""
    peer: DeviceID
    key: int
    path: str
    initiated_by_us: bool
    moved_from: str | None = None
    why: str | None = None  # of a move: "suspect path", "the peer lost its path", ...


@dataclass(frozen=True, slots=True)
class PeerUnreachable:
    """Every attempt of a round failed (`tried` names the paths; none: nothing to
    dial); the next round is due at `retry_at`."""
    peer: DeviceID
    retry_at: float
    tried: tuple[str, ...] = ()


Output = (DialDirect | DialRelay | DialWebRtc | CancelDials | CloseSession | SessionAdopted
          | PeerUnreachable)


@dataclass(slots=True)
class _Link:
    key: int
    path: str
    initiated_by_us: bool
    suspect: bool = False


@dataclass(slots=True)
class _Peer:
    direct: bool = False  # direct candidates known
    relayed: bool = False  # a relay to try
    link: _Link | None = None
    dialing: set[str] = field(default_factory=set)  # paths with an attempt in flight
    in_round: bool = False  # a happy-eyeballs round is running
    tried: set[str] = field(default_factory=set)  # paths dialed in this round
    due: float | None = 0.0  # IDLE: when the next round starts
    relay_at: float | None = None  # DIALING: when the relay attempt starts
    probe_at: float | None = None  # LINKED via the relay: next direct probe
    replacing: int | None = None  # key of the suspect session our dials in flight replace
    webrtc_at: float | None = None  # LINKED via the relay: next WebRTC attempt
    webrtc_backoff: float = 0.0
    webrtc_again: bool = False  # the network changed during the attempt in flight
    sighted: frozenset[str] | None = None  # the addresses of the last sighting
    backoff: float = 0.0


class ConnectionCore:
    """Decides dials and keeps at most one live session per trusted peer."""

    def __init__(self, me: DeviceID, rng: random.Random, *, redial: float = 5.0,
                 max_redial: float = 30.0, relay_delay: float = 0.5,
                 probe_every: float = 30.0, webrtc: bool = False,
                 webrtc_retry: float = 30.0, webrtc_max_retry: float = 600.0) -> None:
        self._me = me
        self._rng = rng
        self._redial = redial
        self._max_redial = max(redial, max_redial)
        self._relay_delay = relay_delay
        self._probe_every = probe_every
        self._webrtc = webrtc
        self._webrtc_retry = webrtc_retry
        self._webrtc_max_retry = max(webrtc_retry, webrtc_max_retry)
        self._peers: dict[DeviceID, _Peer] = {}
        self._out: deque[Output] = deque()

    # -- outputs -------------------------------------------------------------------------

    def next_event(self) -> Output | None:
        """The next command or event, or None."""
        return self._out.popleft() if self._out else None

    def get_timer(self) -> float | None:
        """When `handle_timer` should run next (None: only on input)."""
        times = [t for p in self._peers.values() for t in self._times(p) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Start due rounds, the relay attempts of happy eyeballs, and direct probes."""
        for peer, state in self._peers.items():
            if state.link is None and not state.in_round and not state.dialing and (
                    state.due is not None and state.due <= now):
                self._start_round(peer, state, now)
            if state.in_round and state.relay_at is not None and state.relay_at <= now:
                state.relay_at = None
                self._dial_relay(peer, state, now)
                if not state.dialing:
                    self._round_over(peer, state, now)
            if state.link is not None and state.probe_at is not None and state.probe_at <= now:
                self._probe(peer, state, now)
            if state.link is not None and state.webrtc_at is not None and (
                    state.webrtc_at <= now):
                self._dial_webrtc(peer, state)

    # -- inputs: what the node knows about peers ------------------------------------------

    def peers_known(self, peers: Iterable[tuple[DeviceID, bool, bool]], now: float) -> None:
        """The trusted peers with (direct candidates known, a relay to try); a new peer
        is dialed at once, a peer missing from the list is forgotten."""
        seen = set()
        for peer, direct, relayed in peers:
            seen.add(peer)
            state = self._peers.setdefault(peer, _Peer(due=now, backoff=self._redial))
            state.direct, state.relayed = direct, relayed
        for gone in set(self._peers) - seen:
            del self._peers[gone]

    def peer_discovered(self, peer: DeviceID, addresses: Iterable[str], now: float) -> None:
        """The peer was sighted (mDNS, a DHT record): dial it now, or probe the direct
        path now if it is relayed; a relayed peer gets a WebRTC attempt now only if the
        sighting is new (other addresses than the last one: a periodic lookup finding
        the same record does not undo the attempts' backoff)."""
        state = self._peers.get(peer)
        if state is None:
            return
        seen, state.sighted = state.sighted, frozenset(addresses)
        state.direct = state.direct or bool(state.sighted)
        if state.link is None:
            state.due = now
        elif path_rank(state.link.path) < path_rank(DIRECT):
            state.probe_at = now
            if state.link.path == RELAY and state.sighted != seen:
                self._webrtc_soon(state, now)

    def paths_changed(self, now: float) -> None:
        """A relay (re)connected or our keys changed: every peer without a session is
        dialed now."""
        for state in self._peers.values():
            if state.link is None:
                state.due = now
            elif state.link.path == RELAY:
                self._webrtc_soon(state, now)

    def network_changed(self, now: float) -> None:
        """Our local addresses changed: every backoff starts over and every peer is
        tried now (dialed, or probed directly and over WebRTC if relayed)."""
        for state in self._peers.values():
            state.backoff = self._redial
            if state.link is None:
                state.due = now
                continue
            if path_rank(state.link.path) < path_rank(DIRECT):
                state.probe_at = now
            if state.link.path == RELAY and self._webrtc:
                state.webrtc_backoff = self._webrtc_retry
                state.webrtc_at = now
                state.webrtc_again = WEBRTC in state.dialing

    # -- inputs: dial outcomes and sessions --------------------------------------------------

    def dial_failed(self, peer: DeviceID, path: str, now: float) -> None:
        """The attempt on `path` ended without a session (any failure)."""
        state = self._peers.get(peer)
        if state is None or path not in state.dialing:
            return  # cancelled, or the peer is gone
        state.dialing.discard(path)
        if path == WEBRTC:
            if state.link is not None and state.link.path == RELAY:
                if state.webrtc_again:  # it began before the network changed
                    state.webrtc_again, state.webrtc_at = False, now
                    return
                state.webrtc_at = now + state.webrtc_backoff
                state.webrtc_backoff = min(self._webrtc_max_retry, state.webrtc_backoff * 2)
            return
        if not state.in_round:
            return  # a failed probe: the next one is already scheduled
        if path == DIRECT and state.relay_at is not None:
            state.relay_at = None  # happy eyeballs: no need to wait any longer
            self._dial_relay(peer, state, now)
        if not state.dialing and state.relay_at is None:
            self._round_over(peer, state, now)

    def session_established(self, peer: DeviceID, key: int, path: str,
                            initiated_by_us: bool, now: float,
                            replaces: int | None = None) -> None:
        """A session completed Hello (`initiated_by_us`: we dialed it; `replaces`: the key
        of our session the peer says this one replaces). The core answers with
        SessionAdopted, or CloseSession for this or the replaced session."""
        # pinned TLS proved the peer is trusted, maybe before our list of peers knows it
        state = self._peers.setdefault(peer, _Peer(due=None, backoff=self._redial))
        attempt = path if path in (RELAY, WEBRTC) else DIRECT
        if initiated_by_us:
            if attempt not in state.dialing and attempt != WEBRTC:  # webrtc: ranked below
                self._out.append(CloseSession(peer, key, "another path won"))
                return
            state.dialing.discard(attempt)
        current = state.link
        why = None
        if current is not None and initiated_by_us and state.replacing == current.key:
            why = "suspect path"  # the first replacement to complete Hello wins
        elif current is not None and not initiated_by_us and replaces == current.key:
            why = "the peer lost its path"
        if initiated_by_us and (state.in_round or why is not None):
            self._end_round(peer, state)  # the first of ours to complete Hello wins
        if current is not None:
            reason = None if why else self._loser(current, path, initiated_by_us, peer)
            if reason is not None:
                self._out.append(CloseSession(peer, key, reason))
                return
            self._out.append(CloseSession(peer, current.key, f"replaced: {why}" if why else
                                          "replaced by the preferred session"))
        self._adopt(peer, state, _Link(key, path, initiated_by_us), now,
                    None if current is None else current.path, why)

    def session_suspect(self, peer: DeviceID, key: int, now: float) -> None:
        """The adopted session's PING went unanswered: start every alternative now."""
        state = self._peers.get(peer)
        if state is None or state.link is None or state.link.key != key or state.link.suspect:
            return
        state.link.suspect = True
        state.replacing = key
        if state.direct and DIRECT not in state.dialing:
            state.dialing.add(DIRECT)
            self._out.append(DialDirect(peer, replaces=key))
        if state.relayed and RELAY not in state.dialing:
            state.dialing.add(RELAY)
            self._out.append(DialRelay(peer, replaces=key))

    def session_recovered(self, peer: DeviceID, key: int, now: float) -> None:
        """The suspect session answered: keep it (a replacement in flight still wins)."""
        state = self._peers.get(peer)
        if state is not None and state.link is not None and state.link.key == key:
            state.link.suspect = False

    def session_ended(self, peer: DeviceID, key: int, now: float) -> None:
        """An adopted session ended: dial the peer again at once."""
        state = self._peers.get(peer)
        if state is None or state.link is None or state.link.key != key:
            return
        state.link = None
        state.probe_at = state.webrtc_at = None
        state.webrtc_again = False
        state.due = now
        if WEBRTC in state.dialing:  # it would only move us off a relay we no longer have
            state.dialing.discard(WEBRTC)
            self._out.append(CancelDials(peer, WEBRTC))
        # replacement dials in flight go on: the first to complete is adopted

    def is_suspect(self, peer: DeviceID) -> bool:
        """Whether the peer's adopted session is suspect."""
        state = self._peers.get(peer)
        return state is not None and state.link is not None and state.link.suspect

    def path_of(self, peer: DeviceID) -> str | None:
        """The path of the peer's adopted session, or None."""
        state = self._peers.get(peer)
        return None if state is None or state.link is None else state.link.path

    # -- internals -----------------------------------------------------------------------

    @staticmethod
    def _times(state: _Peer) -> tuple[float | None, ...]:
        idle = state.link is None and not state.in_round and not state.dialing
        return (state.probe_at if state.link is not None else None,
                state.webrtc_at if state.link is not None else None,
                state.relay_at if state.in_round else None,
                state.due if idle else None)

    def _start_round(self, peer: DeviceID, state: _Peer, now: float) -> None:
        state.in_round, state.due = True, None
        state.tried.clear()
        if state.direct:
            state.tried.add(DIRECT)
            if DIRECT not in state.dialing:
                state.dialing.add(DIRECT)
                self._out.append(DialDirect(peer))
            if state.relayed:
                state.relay_at = now + self._relay_delay
        else:
            self._dial_relay(peer, state, now)
        if not state.dialing and state.relay_at is None:
            self._round_over(peer, state, now)

    def _dial_relay(self, peer: DeviceID, state: _Peer, now: float) -> None:
        # a relay never beats a live session (it ranks lowest): dial it only without one
        if state.link is None and state.relayed and RELAY not in state.dialing:
            state.dialing.add(RELAY)
            state.tried.add(RELAY)
            self._out.append(DialRelay(peer))

    def _round_over(self, peer: DeviceID, state: _Peer, now: float) -> None:
        """Every attempt of the round has ended without a session of ours."""
        state.in_round, state.relay_at = False, None
        if state.link is not None:
            return  # the peer's own dial reached us meanwhile
        state.due = now + state.backoff
        state.backoff = min(self._max_redial, state.backoff * 2)
        self._out.append(PeerUnreachable(peer, state.due, tuple(sorted(state.tried))))

    def _end_round(self, peer: DeviceID, state: _Peer) -> None:
        state.in_round, state.relay_at = False, None
        ended = state.dialing - {WEBRTC}  # a WebRTC attempt is no part of the round
        if not ended:
            return
        state.dialing -= ended
        if WEBRTC in state.dialing:
            self._out.extend(CancelDials(peer, path) for path in sorted(ended))
        else:
            self._out.append(CancelDials(peer))

    def _loser(self, current: _Link, path: str, initiated_by_us: bool,
               peer: DeviceID) -> str | None:
        """Why the new session loses against `current`, or None if it wins."""
        old_rank, new_rank = path_rank(current.path), path_rank(path)
        if new_rank < old_rank:
            return f"a {current.path} session exists"
        if new_rank > old_rank:
            return None
        lower_is_me = self._me < peer
        if current.initiated_by_us == initiated_by_us or initiated_by_us != lower_is_me:
            return "duplicate session"
        return None

    def _adopt(self, peer: DeviceID, state: _Peer, link: _Link, now: float,
               moved_from: str | None, why: str | None = None) -> None:
        state.link, state.due, state.backoff = link, None, self._redial
        state.replacing = None
        # a relayed or webrtc peer keeps looking for a direct path
        state.probe_at = (self._next_probe(now) if path_rank(link.path) < path_rank(DIRECT)
                          else None)
        state.webrtc_at, state.webrtc_backoff = None, self._webrtc_retry
        state.webrtc_again = False
        if link.path == RELAY:
            self._webrtc_soon(state, now)
        self._out.append(SessionAdopted(peer, link.key, link.path, link.initiated_by_us,
                                        moved_from, why))

    def _probe(self, peer: DeviceID, state: _Peer, now: float) -> None:
        state.probe_at = self._next_probe(now)
        if state.direct and DIRECT not in state.dialing:
            state.dialing.add(DIRECT)
            self._out.append(DialDirect(peer, probe=True))

    def _webrtc_soon(self, state: _Peer, now: float) -> None:
        """Try WebRTC now (a relayed peer, a new sighting or a path change)."""
        if self._webrtc:
            state.webrtc_at = now

    def _dial_webrtc(self, peer: DeviceID, state: _Peer) -> None:
        state.webrtc_at = None  # rescheduled by its outcome
        if WEBRTC not in state.dialing:
            state.dialing.add(WEBRTC)
            self._out.append(DialWebRtc(peer))

    def _next_probe(self, now: float) -> float:
        return now + self._probe_every * self._rng.uniform(0.8, 1.2)
