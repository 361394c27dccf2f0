"""One sync session with one peer over one connection (sans-I/O).

States:

    AWAITING_HELLO --peer's Hello--> SYNCING --Close, protocol error, close()--> CLOSED

AWAITING_HELLO: our Hello (device ID, version vector) is out; it is re-sent on the
  retransmit timer until the peer's Hello arrives. Anything else means the peer's
  Hello was lost: it is ignored (and so retransmitted by the peer later).
SYNCING: each Hello carries the sender's policy for the receiver. When both
  policies let everything flow both ways, complete replicas reconcile with version
  vectors, as below; otherwise documents are reconciled by state
  (`sync.statesync`). A policy change sends a new Hello and both sides choose again;
  until the peer has it, it may still send messages of the mode we left: they are
  dropped (what they carried is reconciled in the new mode).
  With version vectors we send, per origin,
  the logged changes after what the peer is known to have (its Hello, its Acks,
  and the changes it sent us), at most `WINDOW` unacknowledged. We answer every
  Changes message with an Ack of our whole version vector. When no Ack progress
  arrives within `retransmit_after`, we go back to the last acknowledged point
  and send again: duplicates are ignored by sequence number, so re-delivery after
  a loss is safe. Our vector also goes out in an Ack when it grew by changes the
  peer has not heard of through us (e.g. released from quarantine). `PeerSynced`
  is reported each time both vectors become equal.
CLOSED: nothing is received; only a pending Close message is still sent.

The network layer feeds each received message (one framed byte string) to
`receive`, sends whatever `messages_to_send` returns, and calls `handle_timer`
at `get_timer()`. A peer that breaks the protocol never raises here: the session
closes with a code and a `ProtocolErrorOccurred` event.
"""

from __future__ import annotations

from enum import Enum

from sync.codec import (
    CLOSE_NORMAL,
    CLOSE_WRONG_PEER,
    Ack,
    ChangesEncoder,
    ChangesMessage,
    Close,
    DocsMessage,
    Hello,
    Recon,
    encode,
)
from sync.codec import decode as decode_message
from sync.errors import RemoteProtocolError
from sync.events import PeerSynced, ProtocolErrorOccurred, SessionClosed
from sync.host import SessionHost
from sync.policy import Flow, PeerPolicy
from sync.statesync import StateSync

__all__ = ["MESSAGE_TARGET", "WINDOW", "PeerSession", "SessionState"]

WINDOW = 8192  # changes sent and not yet acknowledged
MESSAGE_TARGET = 256 << 10  # a Changes message is cut near this size


class SessionState(Enum):
    """The states of a `PeerSession` (see the module docstring)."""

    AWAITING_HELLO = "awaiting_hello"
    SYNCING = "syncing"
    CLOSED = "closed"


class PeerSession:
    """The protocol state of one connection to one peer. Create with `Replica.connect`."""

    def __init__(self, replica: SessionHost, peer_id: str, now: float) -> None:
        self.replica = replica
        self.peer_id = peer_id
        self.state = SessionState.AWAITING_HELLO
        self.bytes_sent = 0
        self.bytes_received = 0
        self._peer_vv: dict[str, int] = {}
        self._sent: dict[str, int] = {}
        self._hello_due = True
        self._ack_due = False
        self._told: dict[str, int] = {}  # our vector as the peer last heard it
        self._progress_at = now
        self._synced = False
        self._outbox: list[bytes] = []
        self._theirs = PeerPolicy()
        self._their_base: dict[str, int] = {}
        self._need_reply = False
        self.flow: Flow | None = None
        self.by_state: StateSync | None = None  # None: version vectors

    @property
    def closed(self) -> bool:
        """Whether the session has ended; a closed session receives nothing."""
        return self.state is SessionState.CLOSED

    def peer_version_vector(self) -> dict[str, int]:
        """What the peer is known to hold."""
        return dict(self._peer_vv)

    # ------------------------------------------------------------ input

    def receive(self, data: bytes, now: float) -> None:
        """Handle one message from the peer."""
        if self.state is SessionState.CLOSED:
            return
        self.bytes_received += len(data)
        try:
            msg = decode_message(data)
            if isinstance(msg, Close):
                self.state = SessionState.CLOSED
                self.replica.emit(SessionClosed(self.peer_id, msg.code, msg.reason, True))
                return
            if isinstance(msg, Hello):
                self._on_hello(msg)
            elif self.state is SessionState.AWAITING_HELLO:
                return  # its Hello was lost: ignored, unacknowledged, so sent again later
            elif isinstance(msg, Recon | DocsMessage):
                if self.by_state is None:
                    return  # sent before the peer heard that we left state mode
                if isinstance(msg, Recon):
                    self.by_state.on_recon(msg)
                else:
                    self.by_state.on_docs(msg, now)
            elif self.by_state is not None:
                return  # changes or acks sent before the peer heard we left version vectors
            elif isinstance(msg, ChangesMessage):
                self._on_changes(msg, now)
            elif isinstance(msg, Ack):
                self._on_ack(msg, now)
        except RemoteProtocolError as exc:
            self._fail(exc.code, str(exc))
            return
        self._check_synced()

    def _on_hello(self, msg: Hello) -> None:
        if msg.device_id != self.peer_id:
            raise RemoteProtocolError("Hello from an unexpected device", CLOSE_WRONG_PEER)
        theirs = PeerPolicy() if msg.policy is None else PeerPolicy.from_wire(msg.policy)
        base = (msg.policy or {}).get("log_base", {})
        if not isinstance(base, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in base.values()):
            raise RemoteProtocolError("bad log base in Hello")
        self._their_base = base
        self._merge_peer(msg.version_vector)
        first = self.state is SessionState.AWAITING_HELLO
        if first:
            self.state = SessionState.SYNCING
        elif msg.need_reply:
            self._hello_due = True  # the peer lost our Hello, or changed its policy
        if first or theirs != self._theirs:
            self._theirs = theirs
            self._choose_mode()

    def _choose_mode(self) -> None:
        replica = self.replica
        self.flow = flow = Flow(replica.policy_for(self.peer_id), self._theirs)
        # a side whose log lost what the other lacks makes both reconcile by state
        behind = replica.behind_log(self._peer_vv) or any(
            replica.applied.get(o, 0) < b for o, b in self._their_base.items())
        if flow.complete and not behind:
            self.by_state = None
            self._sent = dict(self._peer_vv)
        else:
            rounds = 0 if self.by_state is None else self.by_state.round
            self.by_state = StateSync(replica, self.peer_id, flow,
                                      initiator=replica.device_id < self.peer_id, rounds=rounds)

    def policy_changed(self) -> None:
        """Our policy for the peer changed: tell it, and reconcile under the new one."""
        if self.state is SessionState.CLOSED:
            return
        self._hello_due = True
        self._need_reply = True
        if self.state is SessionState.SYNCING:
            self._choose_mode()

    def _on_changes(self, msg: ChangesMessage, now: float) -> None:
        self.replica.receive_changes(self.peer_id, msg.changes, now)
        peer = self._peer_vv
        for change in msg.changes:
            if change.seq > peer.get(change.origin, 0):
                peer[change.origin] = change.seq
        self._ack_due = True

    def _on_ack(self, msg: Ack, now: float) -> None:
        if self._merge_peer(msg.version_vector):
            self._progress_at = now

    def _merge_peer(self, vv: dict[str, int]) -> bool:
        progressed = False
        peer = self._peer_vv
        for origin, seq in vv.items():
            if seq > peer.get(origin, 0):
                peer[origin] = seq
                progressed = True
        return progressed

    def _fail(self, code: int, reason: str) -> None:
        self.state = SessionState.CLOSED
        self._outbox = [encode(Close(code, reason))]
        self.replica.emit(ProtocolErrorOccurred(self.peer_id, code, reason))

    def _check_synced(self) -> None:
        if self.state is not SessionState.SYNCING or self.by_state is not None:
            return
        mine = self.replica.applied
        peer = self._peer_vv
        synced = all(peer.get(o, 0) >= s for o, s in mine.items()) and all(
            mine.get(o, 0) >= s for o, s in peer.items()
        )
        if synced and not self._synced:
            self.replica.emit(PeerSynced(self.peer_id, dict(mine)))
        self._synced = synced

    # ------------------------------------------------------------ output

    def messages_to_send(self, now: float) -> list[bytes]:
        """Encoded messages for the peer, in order."""
        out, self._outbox = self._outbox, []
        if self.state is SessionState.CLOSED:
            self.bytes_sent += sum(map(len, out))
            return out
        replica = self.replica
        if self._hello_due:
            self._hello_due = False
            need = self.state is SessionState.AWAITING_HELLO or self._need_reply
            self._need_reply = False
            self._told = dict(replica.applied)
            policy, base = replica.policy_for(self.peer_id), replica.gc.log_base
            terms = None if policy.complete and not base else policy.to_wire() | (
                {"log_base": base} if base else {})
            out.append(encode(Hello(replica.device_id, self._told, need, policy=terms)))
            if self.state is SessionState.AWAITING_HELLO:
                self._progress_at = now
        if self.by_state is not None and self.state is SessionState.SYNCING:
            self.by_state.messages(now, out)
        elif self.state is SessionState.SYNCING:
            self._send_changes(out, now)
            if self._ack_due or self._told != replica.applied:
                self._ack_due = False
                self._told = dict(replica.applied)
                out.append(encode(Ack(self._told)))
            self._check_synced()
        self.bytes_sent += sum(map(len, out))
        return out

    def _in_flight(self) -> int:
        peer = self._peer_vv
        return sum(max(0, s - peer.get(o, 0)) for o, s in self._sent.items())

    def _send_changes(self, out: list[bytes], now: float) -> None:
        replica = self.replica
        peer, sent = self._peer_vv, self._sent
        budget = WINDOW - self._in_flight()
        if budget <= 0:
            return
        was_idle = budget == WINDOW
        enc = ChangesEncoder()
        for origin, have in replica.applied.items():
            start = max(sent.get(origin, 0), peer.get(origin, 0))
            if have <= start or budget <= 0:
                continue
            for change in replica.storage.changes_since(origin, start, min(have - start, budget)):
                if not enc.add(change, MESSAGE_TARGET):
                    out.append(enc.to_bytes())
                    enc = ChangesEncoder()
                    enc.add(change, MESSAGE_TARGET)
                sent[origin] = change.seq
                budget -= 1
            if self._told.get(origin, 0) < sent.get(origin, 0):
                self._told[origin] = sent[origin]
        if len(enc):
            out.append(enc.to_bytes())
            if was_idle:
                self._progress_at = now

    # ------------------------------------------------------------ timers, closing

    def get_timer(self) -> float | None:
        """When `handle_timer` should run next (Unix seconds), or None."""
        if self.state is SessionState.CLOSED:
            return None
        if self.by_state is not None and self.state is SessionState.SYNCING:
            return self.by_state.get_timer()
        if self.state is SessionState.AWAITING_HELLO or self._in_flight():
            return self._progress_at + self.replica.retransmit_after
        return None

    def handle_timer(self, now: float) -> None:
        """Retransmit what was not acknowledged in time."""
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return
        self._progress_at = now
        if self.state is SessionState.AWAITING_HELLO:
            self._hello_due = True
        elif self.by_state is None:
            self._sent = dict(self._peer_vv)
            self._ack_due = True

    def close(
        self, now: float, *, code: int = CLOSE_NORMAL, reason: str = "", notify_peer: bool = True
    ) -> None:
        """End the session; a Close message is queued unless `notify_peer` is false."""
        if self.state is SessionState.CLOSED:
            return
        self.state = SessionState.CLOSED
        if notify_peer:
            self._outbox.append(encode(Close(code, reason)))
        self.replica.emit(SessionClosed(self.peer_id, code, reason, False))
