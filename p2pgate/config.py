"""Node configuration: `DATA_DIR/config.toml` overlaid by command-line flags.

One frozen pydantic model validates both; a bad value becomes one line naming the key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from p2pgate.errors import LocalProtocolError
from p2pgate.urls import RELAY_URL_FORMS, canonical_relay_url, relay_base_url

__all__ = [
    "ConfigError", "HostPort", "NodeConfig", "load_config", "one_line", "parse_host_port",
    "read_toml",
]


class ConfigError(LocalProtocolError):
    """The configuration file or a flag has a bad value."""


HostPort = tuple[str, int]


def parse_host_port(text: str) -> HostPort:
    """`HOST:PORT`, `[IPv6]:PORT` or `:PORT` (all interfaces)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 (explicit ':PORT' means all interfaces)
    return host, int(port)


class NodeConfig(BaseModel):
    """Everything a node can be told; each field is a key of config.toml."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = Field(None, description="Device name shown to paired devices.")
    api: HostPort = Field(("127.0.0.1", 8771), description="Local API address, HOST:PORT.")
    listen: HostPort = Field(("0.0.0.0", 7771), description="P2P listen address, HOST:PORT.")  # noqa: S104
    relays: tuple[str, ...] = Field((), description="Relay URLs to keep control connections "
                                    f"to ({RELAY_URL_FORMS}); kept in canonical form.")
    relay_tokens: dict[str, str] = Field(
        {}, repr=False, description="Relay URL -> access token for relays with access = "
        "\"token\" (the operator makes it with `p2pgate relay token --device ID`).")
    bootstrap: tuple[HostPort, ...] = Field((), description="DHT bootstrap nodes, HOST:PORT.")
    mdns: bool = Field(True, description="Advertise and browse on the LAN with mDNS.")
    dht: bool = Field(True, description="Publish and look up private records in the DHT.")
    log_format: Literal["human", "json"] = Field("human", description="Log line format.")
    allowed_hosts: tuple[str, ...] = Field(
        (), description="Extra Host header values the API accepts (DNS-rebinding guard)."
    )
    cors_origins: tuple[str, ...] = Field(
        (), description="Browser origins allowed to call the API; CORS is off when empty."
    )
    max_body_bytes: int = Field(1 << 20, gt=0, description="Largest request body accepted.")
    rate_limit: float = Field(200.0, gt=0, description="Requests per second per token.")
    rate_burst: int = Field(400, gt=0, description="Requests a token may burst above the rate.")
    keepalive: float = Field(30.0, gt=0, description="Seconds between pings on "
                             "an idle session (a write is always acknowledged at once: a cut "
                             "is noticed within about a second of the next write).")
    keepalive_timeout: float = Field(20.0, gt=0, description="A ping unanswered "
                                     "this long ends the session (an alternative path has "
                                     "started long before, after max(1 s, 4 x RTT)).")
    dht_lookup_interval: float = Field(30.0, gt=0, description="Seconds between DHT lookups "
                                       "of paired devices we have no direct session with.")
    direct_probe_interval: float = Field(30.0, gt=0, description="While a peer is reached "
                                         "through a relay, seconds between direct attempts.")
    webrtc: bool = Field(True, description="While a peer is reached through a relay, try a "
                         "direct WebRTC data channel (NAT traversal; signalled through the "
                         "relay, sealed end to end).")
    gc_interval: float = Field(3600.0, gt=0, description="Seconds between garbage collections "
                               "of the sync log and of deleted documents.")
    gc_peer_timeout: float = Field(30 * 86400.0, gt=0, description="A peer not synced for "
                                   "this long no longer holds back garbage collection; it "
                                   "reconciles by document state when it returns.")
    durability: Literal["full", "normal"] = Field(
        "full", description="full: every acknowledged write is on disk (survives power loss); "
        "normal: survives a crashed or killed node, may lose the last writes on power loss."
    )
    event_retention: int = Field(
        100_000, gt=0, description="Events kept for WebSocket resume; older cursors get a reset."
    )

    @field_validator("api", "listen", mode="before")
    @classmethod
    def _host_port(cls, value: Any) -> Any:
        return parse_host_port(value) if isinstance(value, str) else value

    @field_validator("relays")
    @classmethod
    def _relay_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(canonical_relay_url(url) for url in value))

    @field_validator("relay_tokens")
    @classmethod
    def _relay_token_urls(cls, value: dict[str, str]) -> dict[str, str]:
        if any(not token.strip() for token in value.values()):
            raise ValueError("a relay token is empty")
        return {relay_base_url(url): token.strip() for url, token in value.items()}

    @field_validator("bootstrap", mode="before")
    @classmethod
    def _host_ports(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(parse_host_port(v) if isinstance(v, str) else v for v in value)
        return value

    @property
    def api_url(self) -> str:
        """The API's base URL, e.g. http://127.0.0.1:8771 (IPv6 hosts in brackets)."""
        host, port = self.api
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"


# keys whose flag has another name (a flag's error names the flag)
_FLAG_OF_KEY = {"relays": "--relay"}


def one_line(exc: ValidationError, source: str) -> ConfigError:
    """A validation error as one line naming the key (the flag, for flags)."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"] if not isinstance(p, int)) or "(top level)"
    if source == "flags":
        key = _FLAG_OF_KEY.get(key, key)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    return ConfigError(f"{source}: {key}: {msg}")


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed TOML file; raises ConfigError if it is missing or not valid TOML."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> NodeConfig:
    """Read `path` (if it exists), apply non-None `overrides` (flags), validate."""
    values: dict[str, Any] = {}
    source = "flags"
    if path is not None and path.exists():
        source = str(path)
        values = read_toml(path)
    try:
        NodeConfig.model_validate(values)
    except ValidationError as exc:
        raise one_line(exc, source) from None
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return NodeConfig.model_validate(values)
    except ValidationError as exc:
        raise one_line(exc, "flags") from None
