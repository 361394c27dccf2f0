"""Relay URLs as people type them, made canonical (sans-I/O, standard library only).

A device signs its relay login over the relay's URL and the relay checks that
signature against its own URL, so both sides must spell it the same way. Everyone
types it differently (`http://relay:8443/`, `WS://Relay:8443`, `wss://relay:443`),
so both sides pass it through `canonical_relay_url` first: http becomes ws, https
becomes wss, scheme and host are lower-cased, the default port (80 for ws, 443 for
wss) and a trailing slash are dropped. Anything that is not a bare relay address
(another scheme, no host, a path, a query, user info) is refused with ValueError.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

__all__ = ["RELAY_URL_FORMS", "canonical_relay_url"]

RELAY_URL_FORMS = "ws://, wss://, http:// or https:// HOST[:PORT]"

_SCHEMES = {"ws": "ws", "http": "ws", "wss": "wss", "https": "wss"}
_DEFAULT_PORTS = {"ws": 80, "wss": 443}


def canonical_relay_url(text: str) -> str:
    """`text` as the one URL a device signs and a relay checks, e.g. `ws://host:8443`.

    Raises ValueError (a message without the URL's secrets: it has none) otherwise.
    """
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
    if parts.path not in ("", "/") or parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError(f"not a relay URL {text!r}: a relay URL has no path or query")
    if port == 0:
        raise ValueError(f"not a relay URL {text!r}: bad port")
    shown = _host(host)
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{shown}"
    return f"{scheme}://{shown}:{port}"


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
