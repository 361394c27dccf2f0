"""One pairing handshake, either side, sans-I/O (the messages are in `protocol.py`).

Each side is fed the peer's messages (`receive(msg, now)`) and returns the messages
to send. Every step has a deadline `STEP_TIMEOUT` after the last message
(`get_timer()`/`handle_timer(now)`); the inviter waits only `HELLO_TIMEOUT` for the
joiner's first message. No step waits for a person, so both are short: a silent
stranger holds one of an offer's attempts for seconds, not half a minute.

Inviter states: hello → confirm (PAKE answered, waiting for the joiner's proof) →
sealed (proved; waiting for the joiner's identity) → trusting (the adapter writes
the registry, then calls `trusted()` or `refuse()`) → done | failed.
Joiner states: pake (hello sent) → confirm (our proof sent) → done-wait (identities
exchanged; waiting for "done", sent once the inviter trusts us) → done | failed.
A failed handshake holds its `failure` (a `PairingFailed`); nothing is trusted.
"""

from __future__ import annotations

from collections.abc import Callable

from p2pgate.errors import RemoteProtocolError
from p2pgate.pairing.codes import Invitation
from p2pgate.pairing.errors import PairingFailed
from p2pgate.pairing.offers import Offer, OfferBook, Refusal
from p2pgate.pairing.protocol import (
    PairingIdentity,
    PairingResult,
    Role,
    derive,
    open_sealed,
    seal,
)
from p2pgate.pairing.wire import Message, field_bytes, field_int, field_str

__all__ = ["HELLO_TIMEOUT", "STEP_TIMEOUT", "InviterHandshake", "JoinerHandshake"]

HELLO_TIMEOUT = 5.0
STEP_TIMEOUT = 10.0
_FINISHED = ("done", "failed")


class _Handshake:
    def __init__(self, me: Callable[[], PairingIdentity], now: float) -> None:
        self._me = me
        self.state = ""
        self.result: PairingResult | None = None
        self.failure: PairingFailed | None = None
        self._deadline = now + STEP_TIMEOUT

    @property
    def finished(self) -> bool:
        return self.state in _FINISHED

    def get_timer(self) -> float | None:
        """The current step's deadline (None once finished)."""
        return None if self.finished else self._deadline

    def handle_timer(self, now: float) -> list[Message]:
        """Past the deadline: the handshake fails."""
        if not self.finished and now >= self._deadline:
            self._fail(PairingFailed("the other device stopped answering", "failed"))
        return []

    def abort(self, reason: str) -> None:
        """The connection broke (or the peer broke the protocol)."""
        if not self.finished:
            self._fail(PairingFailed(f"pairing failed: {reason}", "failed"))

    def receive(self, msg: Message, now: float) -> list[Message]:
        """Feed one message from the other side; the messages to send back. A peer that
        breaks the protocol fails the handshake; nothing is raised."""
        if msg.get("t") == "fail":
            self._peer_failed(msg)
            return []
        self._step(now)
        try:
            out = self._on_message(msg, now)
        except (RemoteProtocolError, ValueError) as exc:
            self.abort(str(exc))
            return []
        if out is None:
            self.abort(f"unexpected message in state {self.state}")
            return []
        return out

    def _on_message(self, msg: Message, now: float) -> list[Message] | None:
        """This side's step for one message (None: not expected now)."""
        raise NotImplementedError

    def _peer_failed(self, msg: Message) -> None:
        raise NotImplementedError

    def _fail(self, failure: PairingFailed) -> None:
        self.state, self.failure = "failed", failure

    def _step(self, now: float) -> None:
        self._deadline = now + STEP_TIMEOUT


class InviterHandshake(_Handshake):
    """The inviter's side for one joiner connection, over the node's `OfferBook`."""

    def __init__(self, book: OfferBook, me: Callable[[], PairingIdentity], now: float,
                 source: str | None = None) -> None:
        super().__init__(me, now)
        self.state = "hello"
        self._deadline = now + HELLO_TIMEOUT
        self.offer: Offer | None = None  # one of its attempts, from claim to `release()`
        self._book = book
        self._source = source  # the joiner's address key (None: through a relay mailbox)
        self._proved = False
        self._role: Role | None = None
        self._mine: PairingIdentity | None = None

    def _peer_failed(self, msg: Message) -> None:
        self.abort(_said(msg, "the other device gave up"))  # e.g. it could not open ours

    def _on_message(self, msg: Message, now: float) -> list[Message] | None:
        if self.state == "hello":
            return self._hello(msg, now)
        if self.state == "confirm":
            return self._confirm(msg, now)
        if self.state == "sealed":
            assert self._role is not None  # noqa: S101
            assert self._mine is not None  # noqa: S101
            peer = open_sealed(self._role, field_bytes(msg, "sealed"))
            self.result = derive(self._role, self._mine, peer)
            self.state = "trusting"
            return []
        return None

    def _hello(self, msg: Message, now: float) -> list[Message]:
        nameplate = field_int(msg, "nameplate", 1, 9999)
        kind = field_str(msg, "kind", ("code", "uri"))
        pake = field_bytes(msg, "pake")
        claimed = self._book.claim(nameplate, now, self, self._source)
        if isinstance(claimed, Refusal):
            return self._refuse(claimed)
        self.offer = claimed
        password = (claimed.secret if kind == "uri" else claimed.code).encode()
        self._role = Role(joiner=False, password=password)
        self._role.finish(pake)
        self.state = "confirm"
        return [{"t": "pake", "pake": self._role.message}]

    def _confirm(self, msg: Message, now: float) -> list[Message]:
        assert self._role is not None  # noqa: S101
        assert self.offer is not None  # noqa: S101
        tag = field_bytes(msg, "confirm")
        pushed = self._book.pushed_out(self.offer, self)
        if pushed is not None:  # its proof is not checked: it is no guess
            return self._refuse(pushed)
        if not self._role.check(tag):
            return self._refuse(self._book.wrong_code(self.offer, now, self._source))
        refusal = self._book.proved(self.offer, self)  # another may have proved it first
        if refusal is not None:
            return self._refuse(refusal)
        self._proved = True
        self._mine = self._me()
        self.state = "sealed"
        return [{"t": "confirm", "confirm": self._role.confirmation(of_joiner=False),
                 "sealed": seal(self._role, self._mine)}]

    def trusted(self, now: float) -> list[Message]:
        """The registry now trusts the joiner: the offer is used up."""
        assert self.offer is not None  # noqa: S101
        assert self.result is not None  # noqa: S101
        self._book.paired(self.offer, self.result, now)
        self.state = "done"
        return [{"t": "done"}]

    def refuse(self, failure: PairingFailed) -> list[Message]:
        """The registry write was refused (e.g. the device was revoked)."""
        return self._refuse(Refusal(str(failure), failure.code))

    def release(self) -> None:
        """The connection is over: let go of the offer."""
        if self.offer is not None:
            self._book.release(self.offer, self,
                               None if self.failure is None else str(self.failure),
                               self._proved)
            self.offer = None

    def _refuse(self, refusal: Refusal) -> list[Message]:
        self._fail(PairingFailed(refusal.reason, refusal.code))
        return [{"t": "fail", "reason": refusal.reason, "code": refusal.code}]


class JoinerHandshake(_Handshake):
    """The joiner's side: `start()` gives the hello, then feed the inviter's answers."""

    def __init__(self, invitation: Invitation, me: Callable[[], PairingIdentity],
                 now: float) -> None:
        super().__init__(me, now)
        self._invitation = invitation
        self._role = Role(joiner=True, password=invitation.password)
        self.state = "pake"

    def start(self) -> list[Message]:
        """The first message (after the `P2PG-PAIR` magic)."""
        inv = self._invitation
        return [{"t": "hello", "nameplate": inv.nameplate, "kind": inv.kind,
                 "pake": self._role.message}]

    def _peer_failed(self, msg: Message) -> None:
        self._fail(PairingFailed(_said(msg, "the other side refused"),
                                 _said(msg, "refused", "code")))

    def _on_message(self, msg: Message, now: float) -> list[Message] | None:
        if self.state == "pake":
            self._role.finish(field_bytes(msg, "pake"))
            self.state = "confirm"
            return [{"t": "confirm", "confirm": self._role.confirmation(of_joiner=True)}]
        if self.state == "confirm":
            return self._confirmed(msg)
        if self.state == "done-wait" and msg.get("t") == "done":
            self.state = "done"
            return []
        return None

    def _confirmed(self, msg: Message) -> list[Message]:
        if not self._role.check(field_bytes(msg, "confirm")):
            self._fail(PairingFailed("the other device failed to prove the code", "refused"))
            return []
        peer = open_sealed(self._role, field_bytes(msg, "sealed"))
        mine = self._me()
        self.result = derive(self._role, mine, peer)
        self.state = "done-wait"
        return [{"t": "sealed", "sealed": seal(self._role, mine)}]


def _said(msg: Message, default: str, key: str = "reason") -> str:
    """What the peer says, fit to show a person: printable, at most 200 characters."""
    text = msg.get(key)
    if not isinstance(text, str) or not text:
        return default
    return "".join(c if c.isprintable() else "?" for c in text[:200])
