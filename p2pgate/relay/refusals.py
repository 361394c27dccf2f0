"""Why a relay refused our login, said once, with what the user can do about it.

Sans-I/O. The relay answers a refused login with a short reason (`wrong_url`,
`public_url_unset`, `not_allowed`, `token_missing`, `token_expired`...), and the client
refuses a relay that cannot prove its key (`wrong_relay_key`, `bad_relay_proof`). The
client retries every few seconds, so `RefusalNotes` lets each reason be logged loudly
once (until a login succeeds) and every repeat quietly; `refusal_advice` turns a
reason into one line naming the fix. No token ever appears in these lines.
"""

from __future__ import annotations

from p2pgate.identity.deviceid import DeviceID

__all__ = ["RefusalNotes", "refusal_advice"]


def _ask_operator(url: str, device: DeviceID) -> str:
    return (f"ask the relay operator for a token (p2pgate relay token --device {device}), "
            f"then run `p2pgate relay-token set {url} TOKEN` or add it under [relay_tokens] "
            "in config.toml")


def refusal_advice(reason: str, url: str, device: DeviceID) -> str:
    """One line: relay `url` refused device `device` for `reason`, and the fix."""
    if reason in ("bad_signature", "wrong_url"):
        return (f"relay {url} refused our login signature: it checks logins against another "
                f"URL than the one we signed ({url}); use the URL its operator gives (the "
                "relay's public_url, or the address it listens on)")
    if reason == "public_url_unset":
        return (f"relay {url} cannot check a login for a URL with a host name: its operator "
                f"must set public_url = \"{url}\" in the relay's config (or use the relay's "
                "IP address in the URL)")
    if reason == "wrong_key":
        return (f"relay {url} refused our login: we signed it for another relay's key, so "
                "something between us and the relay is not that relay")
    if reason == "wrong_relay_key":
        return (f"relay {url} did not prove the key of the relay ID in its URL (?id=): it is "
                "not the relay we were given, or its key changed; refusing it (check the URL "
                "and its ID with the relay's operator)")
    if reason in ("bad_relay_proof", "no_relay_proof"):
        return (f"relay {url} did not prove its identity ({reason.replace('_', ' ')}): an "
                "older relay, or not a p2pgate relay; refusing it")
    if reason == "not_allowed":
        return (f"relay {url} admits only the devices on its allowlist: ask its operator to "
                f"add this device ({device})")
    if reason == "clock":
        return f"relay {url} refused us: this device's clock is wrong by more than it allows"
    if reason == "token_missing":
        return f"relay {url} needs an access token and we have none: {_ask_operator(url, device)}"
    if reason == "token_expired":
        return f"our access token for relay {url} has expired: {_ask_operator(url, device)}"
    if reason == "token_wrong_audience":
        return (f"our access token for relay {url} is for another relay fleet: "
                f"{_ask_operator(url, device)}")
    if reason == "token_wrong_device":
        return (f"our access token for relay {url} was issued to another device: "
                f"{_ask_operator(url, device)}")
    if reason.startswith("token_"):
        return (f"relay {url} refused our access token ({reason.removeprefix('token_')}): "
                f"{_ask_operator(url, device)}")
    return f"relay {url} refused us: {reason}"


class RefusalNotes:
    """Which refusal reasons were already reported since the last successful login."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self.last: str | None = None

    def refused(self, reason: str) -> bool:
        """Note a refusal; True the first time this reason is seen (log it loudly)."""
        self.last = reason
        first = reason not in self._seen
        self._seen.add(reason)
        return first

    def logged_in(self) -> None:
        """A login succeeded: a later refusal is news again."""
        self._seen.clear()
        self.last = None
