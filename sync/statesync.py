"""Syncing whole document states with a peer that holds a filtered subset (sans-I/O).

Version vectors describe complete replicas only: once a policy withholds a
collection or a filter withholds documents, "the peer has change n of origin o"
no longer says which documents it holds. Such a session reconciles *documents*:
each side's items are the documents it may exchange with the peer (shared
collection, matching both filters now), keyed by collection and ID, with a digest
of the document's version (`sync.rbsr`). Differences found are repaired by
sending whole states, which the receiver joins (`merge_docs`) after checking its
own policy. Afterwards every document that changes here is pushed again, so the
peer stays current while the session lasts.

The lower device ID starts each reconciliation round; the other side may ask for
a new round with an empty Recon (e.g. when the clock has caught up with a state it
had to leave aside). A round assumes a reliable, ordered transport: a lost
connection simply means a new session and a new round.
"""

from __future__ import annotations

from sync.codec import MAX_MESSAGE_SIZE, DocsMessage, Recon, encode, encode_docs
from sync.events import PeerSynced
from sync.host import SessionHost
from sync.model import filter_view
from sync.policy import Flow
from sync.rbsr import FP, IDS, ItemSet, split_key
from sync.statecodec import encode_state

__all__ = ["StateSync"]

DOCS_TARGET = 256 << 10  # a Docs message is cut near this size
SEND_BUDGET = 4 << 20  # bytes of states per messages_to_send call


class StateSync:
    """The state reconciliation of one `PeerSession` (created and fed by it)."""

    def __init__(self, replica: SessionHost, peer_id: str, flow: Flow, initiator: bool,
                 rounds: int = 0) -> None:
        self.replica = replica
        self.peer_id = peer_id
        self.flow = flow
        self.initiator = initiator
        self.round = rounds  # rounds go on increasing when a policy change restarts us
        self._items: ItemSet | None = None
        self._reconciling = True  # until a round has been answered
        self._to_send: dict[tuple[str, str], None] = {}
        self._dirty: dict[tuple[str, str], None] = {}
        self._retry_at: float | None = None
        self._synced = False
        self._outbox: list[bytes] = []
        if initiator:
            self._begin_round()

    def _begin_round(self) -> None:
        self.round += 1
        self._items = self.replica.item_set(self.flow)
        self._reconciling = True
        self._synced = False
        self._outbox.append(encode(Recon(self.round, self._items.initial())))

    # ------------------------------------------------------------ input

    def on_recon(self, msg: Recon) -> None:
        """Handle the peer's Recon: answer it, note what to send, or start a round it asked for."""
        if not msg.ranges:  # the peer asks for a round
            if self.initiator:
                self._begin_round()
            return
        if msg.round < self.round:
            return  # an answer to a round we have since restarted
        if msg.round > self.round or self._items is None:
            self.round = msg.round
            self._items = self.replica.item_set(self.flow)
        outcome = self._items.process(msg.ranges)
        for key in outcome.send:
            self._to_send[split_key(key)] = None
        asked = any(r.mode in (FP, IDS) for r in msg.ranges)
        if asked or outcome.needs_reply:
            self._outbox.append(encode(Recon(msg.round, outcome.reply)))
        # the round is over for us once nothing we sent waits for an answer
        self._reconciling = outcome.expects_answer
        self._synced = False

    def on_docs(self, msg: DocsMessage, now: float) -> None:
        """Join the states the peer sent, and note when to retry the ones left aside."""
        retry = self.replica.merge_states(self.peer_id, msg.docs, self.flow, now)
        if retry is not None:
            self._retry_at = retry if self._retry_at is None else min(self._retry_at, retry)

    def doc_changed(self, key: tuple[str, str]) -> None:
        """Note that a document changed here, so its state is pushed to the peer again."""
        self._dirty[key] = None

    # ------------------------------------------------------------ output

    def messages(self, now: float, out: list[bytes]) -> None:
        """Append the messages due at `now` to `out`; emits `PeerSynced` when a round is done."""
        out.extend(self._outbox)
        self._outbox = []
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            if self.initiator:
                self._begin_round()
                out.extend(self._outbox)
                self._outbox = []
            else:
                out.append(encode(Recon(0, [])))
        if self._dirty:
            for key in self._dirty:
                self._to_send[key] = None
            self._dirty = {}
        if self._to_send:
            self._send_docs(out)
        if not self._reconciling and not self._to_send and not self._synced:
            self._synced = True
            self.replica.emit(PeerSynced(self.peer_id, self.replica.version_vector()))

    def _send_docs(self, out: list[bytes]) -> None:
        storage, flow = self.replica.storage, self.flow
        batch: list[tuple[str, str, bytes]] = []
        size = budget = 0
        while self._to_send and budget < SEND_BUDGET:
            key = next(iter(self._to_send))
            del self._to_send[key]
            doc = storage.get_doc(*key)
            if doc is None or not flow.may_send(key[0], filter_view(doc)):
                continue
            state = encode_state(doc)
            n = len(state) + len(key[0]) + len(key[1]) + 8
            if batch and size + n > DOCS_TARGET:
                out.append(encode_docs(batch))
                batch, size = [], 0
            if n > MAX_MESSAGE_SIZE - 64:
                continue  # too large for any message: it stays where it is
            batch.append((key[0], key[1], state))
            size += n
            budget += n
        if batch:
            out.append(encode_docs(batch))

    def get_timer(self) -> float | None:
        """When `messages` should run next (Unix seconds; 0.0 means right away), or None."""
        if self._to_send or self._dirty:
            return 0.0  # more to send right away
        return self._retry_at
