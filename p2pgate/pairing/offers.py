"""The inviter's open offers, sans-I/O (time is an argument).

Offer states: waiting → paired (a joiner proved the code) | failed (burned by
`MAX_FAILURES` wrong confirmations) | expired (its time ran out). A waiting offer
takes up to `MAX_ATTEMPTS` joiners' attempts at once, at most `ATTEMPTS_PER_SOURCE` of
them from one source (IPv4 address or IPv6 /64); on a full offer a newcomer pushes out
the oldest attempt of the source holding the most, so a stranger's silent attempts do
not keep the real joiner out. Only one attempt may prove the code: the others are
refused `busy` at their confirmation (the race guard), and so is a pushed-out one,
before its proof is checked (it is no guess). A source's wrong confirmations
spend its `WrongCodeBudget` (see the package docstring for the rate).
A finished offer is forgotten `FORGET_AFTER` seconds after its expiry.

Advertised on the LAN: the nameplates of waiting offers, and of burned ones until
they expire (so a joiner with the right words learns that the code burned). Each
change of that set is an `OffersChanged` event; `get_timer()` is the next expiry.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass, field

from p2pgate.pairing.codes import make_code
from p2pgate.pairing.protocol import PairingResult

__all__ = ["ATTEMPTS_PER_SOURCE", "MAX_ATTEMPTS", "MAX_FAILURES", "WRONG_CODE_REFILL", "Offer",
           "OfferBook", "OffersChanged", "Refusal", "WrongCodeBudget"]

MAX_FAILURES = 3
FORGET_AFTER = 600.0
MAX_ATTEMPTS = 8  # joiners' attempts on one offer at once
ATTEMPTS_PER_SOURCE = 2  # of those, from one source
WRONG_CODE_REFILL = 100.0  # seconds per wrong confirmation a source earns back
_MAX_SOURCES = 4096  # budgets remembered; full ones are forgotten first


@dataclass
class Offer:
    """One code (and its URI secret) waiting for a joiner."""

    nameplate: int
    code: str
    secret: str
    expires_at: float
    repair: bool = False
    failures: int = 0
    state: str = "waiting"  # waiting, paired, failed, expired
    result: PairingResult | None = None
    reason: str | None = None
    attempts: dict[Hashable, str] = field(default_factory=dict)  # holder -> source, by age
    proving: bool = False  # one attempt proved the code and is being trusted

    def held_by(self, source: str) -> int:
        """Attempts from `source` on this offer now."""
        return sum(1 for s in self.attempts.values() if s == source)

    @property
    def busy(self) -> bool:
        """Whether any joiner's attempt holds this offer now."""
        return bool(self.attempts)


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
_TOO_MANY = Refusal("too many wrong codes from this address; wait a minute and try again",
                    "busy")


class WrongCodeBudget:
    """Wrong confirmations per source: `MAX_FAILURES` at once, then one per
    `WRONG_CODE_REFILL` seconds (a token bucket; time is an argument)."""

    def __init__(self, burst: int = MAX_FAILURES, refill: float = WRONG_CODE_REFILL) -> None:
        self._burst, self._refill = burst, refill
        self._spent: dict[str, tuple[float, float]] = {}  # source -> (tokens spent, at)

    def _level(self, source: str, now: float) -> float:
        spent, at = self._spent.get(source, (0.0, now))
        return max(0.0, spent - max(0.0, now - at) / self._refill)

    def allows(self, source: str, now: float, pending: int = 0) -> bool:
        """Whether `source` may make one more guess now, besides `pending` attempts it
        already holds (each may still be a guess)."""
        return self._level(source, now) + pending <= self._burst - 1

    def spend(self, source: str, now: float) -> None:
        """`source` made a wrong confirmation."""
        level = self._level(source, now) + 1
        if source not in self._spent and len(self._spent) >= _MAX_SOURCES:
            self._forget(now)
        self._spent[source] = (level, now)

    def _forget(self, now: float) -> None:
        for key in [k for k in self._spent if self._level(k, now) == 0.0]:
            del self._spent[key]
        while len(self._spent) >= _MAX_SOURCES:  # all still spent: drop the oldest
            del self._spent[min(self._spent, key=lambda k: self._spent[k][1])]


class OfferBook:
    """Open offers by nameplate; every method takes the current time."""

    def __init__(self, make: Callable[[], tuple[str, str]] = make_code) -> None:
        self.offers: dict[int, Offer] = {}
        self._make = make
        self._shown: frozenset[int] = frozenset()
        self._events: list[OffersChanged] = []
        self._now = float("-inf")  # the latest time seen
        self.budget = WrongCodeBudget()

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

    def claim(self, nameplate: int, now: float, holder: Hashable,
              source: str | None = None) -> Offer | Refusal:
        """A joiner's attempt (`holder`, from `source`) asks for an offer: it holds it until
        `release`, or learns why not. On a full offer the oldest attempt of the source
        holding the most is pushed out (`holds` then says so), if that source holds more
        than the newcomer's. `source` None (a relay mailbox, whose joiners the relay
        limits) takes no per-source limit."""
        offer = self.status(nameplate, now)
        if offer is None or offer.state in ("paired", "expired"):
            return _USED
        if offer.state == "failed":
            return _BURNED
        key = source or ""
        mine = offer.held_by(key)
        if source is not None:
            pending = sum(o.held_by(key) for o in self.offers.values())
            if not self.budget.allows(key, now, pending):
                return _TOO_MANY
            if mine >= ATTEMPTS_PER_SOURCE:
                return _BUSY
        if offer.proving:
            return _BUSY
        if len(offer.attempts) >= MAX_ATTEMPTS:
            heaviest = max(offer.attempts.values(), key=offer.held_by)  # ties: the oldest
            if offer.held_by(heaviest) <= mine:
                return _BUSY
            del offer.attempts[next(h for h, s in offer.attempts.items() if s == heaviest)]
        offer.attempts[holder] = key
        return offer

    def pushed_out(self, offer: Offer, holder: Hashable) -> Refusal | None:
        """Why this attempt no longer holds the offer (None: it still does)."""
        return None if holder in offer.attempts else _BUSY

    def proved(self, offer: Offer, holder: Hashable) -> Refusal | None:
        """An attempt proved the code: it alone goes on (None), or it learns why not."""
        if offer.state == "failed":
            return _BURNED
        if offer.state != "waiting":
            return _USED
        if offer.proving or holder not in offer.attempts:
            return _BUSY
        offer.proving = True
        return None

    def wrong_code(self, offer: Offer, now: float, source: str | None = None) -> Refusal:
        """An attempt on `offer` failed confirmation: count it, burn at the third."""
        if source is not None:
            self.budget.spend(source, now)
        if offer.state != "waiting":
            return _BURNED if offer.state == "failed" else _USED
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

    def release(self, offer: Offer, holder: Hashable, reason: str | None = None,
                proved: bool = False) -> None:
        """The attempt `holder` is over (`proved`: it was the one that proved the code);
        `reason` says why it failed, if it did."""
        offer.attempts.pop(holder, None)
        if proved:
            offer.proving = False
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
