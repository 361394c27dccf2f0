"""Relay URLs as people type them, made canonical (sans-I/O, standard library only).

A device signs its relay login over the relay's URL and the relay checks that
signature against its own URL, so both sides must spell it the same way. Everyone
types it differently (`http://relay:8443/`, `WS://Relay:8443`, `wss://relay:443`),
so both sides pass it through `canonical_relay_url` first: http becomes ws, https
becomes wss, scheme and host are lower-cased, the default port (80 for ws, 443 for
wss) and a trailing slash are dropped. Anything that is not a bare relay address
(another scheme, no host, a path, a query other than `?id=`, user info) is refused
with ValueError.

A URL may pin the relay's identity with `?id=RELAYID` (`ws://relay:8443?id=ABCDEFG-...`):
the canonical URL keeps it (the ID spelled in groups, upper case), `relay_url_id`
reads it, and `relay_base_url` is the URL without it: the one a device dials and
signs. Relay IDs are written like device IDs (eight groups of seven with Luhn mod 32
check characters, see `p2pgate.identity.deviceid`; this layer cannot import it, so
the check is repeated here) and a typo is refused here, not when dialing.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import parse_qs, urlsplit

__all__ = ["RELAY_URL_FORMS", "canonical_relay_url", "relay_base_url", "relay_url_id"]

RELAY_URL_FORMS = "ws://, wss://, http:// or https:// HOST[:PORT][?id=RELAYID]"

_SCHEMES = {"ws": "ws", "http": "ws", "wss": "wss", "https": "wss"}
_DEFAULT_PORTS = {"ws": 80, "wss": 443}
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_LOOKALIKES = str.maketrans({"0": "O", "1": "I", "8": "B"})


def canonical_relay_url(text: str) -> str:
    """`text` as one canonical relay URL, e.g. `ws://host:8443` or `ws://host?id=…`.

    Raises ValueError (a message without the URL's secrets: it has none) otherwise.
    """
    base, relay_id = _parse(text)
    return base if relay_id is None else f"{base}?id={relay_id}"


def relay_base_url(text: str) -> str:
    """The canonical URL without `?id=`: what a device dials and signs (ValueError)."""
    return _parse(text)[0]


def relay_url_id(text: str) -> str | None:
    """The relay ID a URL pins with `?id=` (canonical spelling), or None (ValueError)."""
    return _parse(text)[1]


def _parse(text: str) -> tuple[str, str | None]:
    if not isinstance(text, str) or text != text.strip() or not text:
        raise ValueError(f"not a relay URL {text!r}: expected {RELAY_URL_FORMS}")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"not a relay URL {text!r}: bad host or port") from None
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ValueError(f"not a relay URL {text!r}: expected {RELAY_URL_FORMS}")
    host = parts.hostname
    if not host or "@" in parts.netloc:
        raise ValueError(f"not a relay URL {text!r}: expected {RELAY_URL_FORMS}")
    if parts.path not in ("", "/") or parts.fragment or text.endswith(("?", "#")):
        raise ValueError(f"not a relay URL {text!r}: a relay URL has no path "
                         "(and no query but ?id=RELAYID)")
    relay_id = _relay_id(text, parts.query) if parts.query else None
    if port == 0:
        raise ValueError(f"not a relay URL {text!r}: bad port")
    shown = _host(host)
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{shown}", relay_id
    return f"{scheme}://{shown}:{port}", relay_id


def _relay_id(text: str, query: str) -> str:
    """The `?id=` of a relay URL, spelled canonically; ValueError for anything else."""
    try:
        fields = parse_qs(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        fields = {}
    if list(fields) != ["id"] or len(fields["id"]) != 1:
        raise ValueError(f"not a relay URL {text!r}: a relay URL has no query but "
                         "?id=RELAYID")
    cleaned = "".join(fields["id"][0].split()).replace("-", "").upper().translate(_LOOKALIKES)
    if len(cleaned) != 56 or any(c not in _ALPHABET for c in cleaned):
        raise ValueError(f"not a relay URL {text!r}: a relay ID has 8 groups of 7 letters "
                         "and digits")
    for n in range(4):
        chunk = cleaned[n * 14:(n + 1) * 14]
        if _luhn32(chunk[:-1]) != chunk[-1]:
            raise ValueError(f"not a relay URL {text!r}: the relay ID has a typo in groups "
                             f"{2 * n + 1}-{2 * n + 2}")
    return "-".join(cleaned[i:i + 7] for i in range(0, 56, 7))


def _luhn32(chars: str) -> str:
    factor, total = 2, 0
    for ch in reversed(chars):
        addend = factor * _ALPHABET.index(ch)
        total += addend // 32 + addend % 32
        factor = 3 - factor
    return _ALPHABET[-total % 32]


def _host(host: str) -> str:
    """A host as it appears in a canonical URL: lower-case, IPv6 in brackets."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not all(part and _is_label(part) for part in host.rstrip(".").split(".")):
            raise ValueError(f"not a relay URL: bad host {host!r}") from None
        return host.rstrip(".").lower()
    return f"[{address.compressed}]" if address.version == 6 else address.compressed


def _is_label(label: str) -> bool:
    return len(label) <= 63 and all(c.isalnum() or c in "-_" for c in label) \
        and label.isascii()
