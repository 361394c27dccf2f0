"""The inviter's open offers, sans-I/O (time is an argument).

Offer states: waiting → paired (a joiner proved the code) | failed (burned by
`MAX_FAILURES` wrong confirmations) | expired (its time ran out). While one joiner's
attempt holds a waiting offer it is `busy`, and others are refused (the race guard).
A finished offer is forgotten `FORGET_AFTER` seconds after its expiry.

Advertised on the LAN: the nameplates of waiting offers, and of burned ones until
they expire (so a joiner with the right words learns that the code burned). Each
change of that set is an `OffersChanged` event; `get_timer()` is the next expiry.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from p2pgate.pairing.codes import make_code
from p2pgate.pairing.protocol import PairingResult

__all__ = ["MAX_FAILURES", "Offer", "OfferBook", "OffersChanged", "Refusal"]

MAX_FAILURES = 3
FORGET_AFTER = 600.0


@dataclass
class Offer:
    """One code (and its URI secret) waiting for a joiner."""

    nameplate: int
    code: str
    secret: str
    expires_at: float
    repair: bool = False
    failures: int = 0
    busy: bool = False
    state: str = "waiting"  # waiting, paired, failed, expired
    result: PairingResult | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a joiner's attempt ends: for people (`reason`) and programs (`code`)."""

    reason: str
    code: str


@dataclass(frozen=True, slots=True)
class OffersChanged:
    """The nameplates to advertise changed."""

    nameplates: frozenset[int]


WRONG_CODE = Refusal("wrong code", "wrong_code")
BURNED_NOW = Refusal("wrong code, and too many wrong attempts: the code is burned; make a "
                     "new one", "burned")
_USED = Refusal("this code has expired or was already used; make a new one", "expired")
_BURNED = Refusal("this code burned after 3 wrong tries; make a new one", "burned")
_BUSY = Refusal("another device is pairing with this code; try again", "busy")


class OfferBook:
    """Open offers by nameplate; every method takes the current time."""

    def __init__(self, make: Callable[[], tuple[str, str]] = make_code) -> None:
        self.offers: dict[int, Offer] = {}
        self._make = make
        self._shown: frozenset[int] = frozenset()
        self._events: list[OffersChanged] = []
        self._now = float("-inf")  # the latest time seen

    def open(self, now: float, ttl: float, repair: bool = False,
             avoid: Collection[int] = (), nameplate: int | None = None,
             secret: str | None = None) -> Offer:
        """A new offer whose nameplate is neither ours nor in `avoid` (seen on the LAN),
        or is `nameplate` (a relay allocated it); `secret`: its URI's, if made already."""
        self.handle_timer(now)
        taken = set(self.advertised(now)) | set(avoid)
        for _ in range(1000):  # 99 nameplates: give up avoiding only if all are taken
            code, made = self._make()
            picked = int(code.split("-")[0])
            if nameplate is not None or picked not in taken:
                break
        if nameplate is not None:
            code = f"{nameplate}-{code.split('-', 1)[1]}"
            picked = nameplate
        offer = Offer(picked, code, secret or made, now + ttl, repair)
        self.offers[picked] = offer
        self._changed(now)
        return offer

    def status(self, nameplate: int, now: float) -> Offer | None:
        """The offer showing this nameplate (its state brought up to date)."""
        self.handle_timer(now)
        return self.offers.get(nameplate)

    def claim(self, nameplate: int, now: float) -> Offer | Refusal:
        """A joiner asks for an offer: it holds it, or learns why not."""
        offer = self.status(nameplate, now)
        if offer is None or offer.state in ("paired", "expired"):
            return _USED
        if offer.state == "failed":
            return _BURNED
        if offer.busy:
            return _BUSY
        offer.busy = True
        return offer

    def wrong_code(self, offer: Offer, now: float) -> Refusal:
        """The joiner holding `offer` failed confirmation: count it, burn at the third."""
        offer.failures += 1
        if offer.failures < MAX_FAILURES:
            return WRONG_CODE
        offer.state, offer.reason = "failed", "too many wrong attempts"
        self._changed(now)
        return BURNED_NOW

    def paired(self, offer: Offer, result: PairingResult, now: float) -> None:
        """The joiner proved the code and both registries trust each other."""
        offer.state, offer.result = "paired", result
        self._changed(now)

    def release(self, offer: Offer, reason: str | None = None) -> None:
        """The joiner's attempt is over; `reason` says why it failed, if it did."""
        offer.busy = False
        if reason is not None and offer.state == "waiting":
            offer.reason = reason

    def advertised(self, now: float) -> frozenset[int]:
        """Nameplates to show on the LAN now."""
        return frozenset(n for n, o in self.offers.items()
                         if o.state in ("waiting", "failed") and o.expires_at > now)

    def get_timer(self) -> float | None:
        """When an advertised offer expires next (None: nothing to withdraw)."""
        times = [o.expires_at for o in self.offers.values()
                 if o.state in ("waiting", "failed") and o.expires_at > self._now]
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        """Expire offers whose time ran out; forget old finished ones."""
        for n, offer in list(self.offers.items()):
            if offer.expires_at <= now and offer.state == "waiting":
                offer.state = "expired"
            if offer.expires_at + FORGET_AFTER <= now:
                del self.offers[n]
        self._changed(now)

    def next_event(self) -> OffersChanged | None:
        """The oldest event not yet taken."""
        return self._events.pop(0) if self._events else None

    def _changed(self, now: float) -> None:
        self._now = max(self._now, now)
        shown = self.advertised(now)
        if shown != self._shown:
            self._shown = shown
            self._events.append(OffersChanged(shown))
