"""Relay operator configuration: a TOML file plus flags, one frozen pydantic model.

`access` governs everything a device does on the relay: with `allowlist` or `token`,
pairing mailboxes too are served only to devices that pass the rule (both the inviter
and the joiner log in as on the control connection); `open` serves them to anyone,
capped per source (`relay.mailbox`).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from p2pgate.config import HostPort, one_line, parse_host_port, read_toml
from p2pgate.urls import relay_base_url

__all__ = ["RelayConfig", "load_relay_config"]


class RelayConfig(BaseModel):
    """Everything a relay operator can set; each field is a key of the config file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    listen: HostPort = Field(("0.0.0.0", 8443), description="HOST:PORT to serve on.")  # noqa: S104
    public_url: str | None = Field(
        None, description="URL devices use (ws://, wss://, http:// or https://; stored in "
        "canonical form, so http: means ws: and https: means wss:, and without ?id=); device "
        "auth is bound to it. Set it when devices dial a host name, a port forward or a TLS "
        "terminator. Default: the address each connection reached (ws://IP:PORT, never the "
        "request's Host header); a device that dials a host name is then refused."
    )
    data_dir: str | None = Field(
        None, description="Where the relay keeps its key (relay.key, mode 0600, made on first "
        "start; it is the relay ID). Default: --data-dir, else $P2PGATE_HOME, else the user "
        "data dir."
    )
    dht_port: int | None = Field(None, ge=0, le=65535, description="UDP port of the DHT "
                                 "bootstrap node; none = no DHT node.")
    stun_port: int = Field(
        3478, ge=0, le=65535, description="UDP port (on the listen host) answering STUN "
        "Binding requests, so devices learn their address outside their NAT for direct "
        "WebRTC paths; 0 = off. Never the DHT port."
    )
    stun_host: str | None = Field(
        None, description="IP address the STUN port binds instead of listen's host: behind a "
        "TLS-terminating proxy (listen on 127.0.0.1) set it to the public address or 0.0.0.0, "
        "as devices are told public_url's host."
    )
    access: Literal["open", "allowlist", "token"] = Field(
        "open", description="Who may use the relay: its sessions and also its pairing "
        "mailboxes (on an allowlist or token relay, only allowed devices may pair through it)."
    )
    allowlist: tuple[str, ...] = Field((), description="Device IDs allowed (access=allowlist).")
    token_keys: dict[str, str] = Field(
        {}, description="kid -> base64url Ed25519 public key of token signers (access=token)."
    )
    audience: str = Field("p2pgate", description="The fleet name tokens must carry as aud.")
    session_rate: int = Field(4 << 20, gt=0, description="Bytes/s per session and direction.")
    global_rate: int = Field(256 << 20, gt=0, description="Bytes/s over all sessions.")
    max_sessions_per_device: int = Field(32, gt=0, description="Concurrent relayed sessions.")
    max_connections_per_ip: int = Field(64, gt=0, description="Open connections per client IP.")
    accept_rate_per_ip: float = Field(20.0, gt=0, description="New connections/s per IP.")
    trusted_proxies: tuple[str, ...] = Field(
        (), description="Proxy networks whose X-Forwarded-For is believed (CIDR)."
    )
    idle_timeout: float = Field(300.0, gt=0, description="Seconds before an idle splice closes.")
    max_frame: int = Field(256 << 10, gt=0, description="Largest WebSocket frame accepted.")
    invite_rate: float = Field(2.0, gt=0, description="Invitations/s one device may send to "
                               "one other device (4x that to all of them together).")
    unavailable_delay: float = Field(
        1.0, gt=0, description="Seconds before 'unavailable' (same for absent and refusing)."
    )
    auth_skew: float = Field(86_400.0, gt=0, description="Allowed clock skew of device auth.")
    drain_timeout: float = Field(30.0, ge=0, description="Seconds SIGTERM waits for sessions.")

    @field_validator("listen", mode="before")
    @classmethod
    def _host_port(cls, value: Any) -> Any:
        return parse_host_port(value) if isinstance(value, str) else value

    @field_validator("public_url")
    @classmethod
    def _canonical_url(cls, value: str | None) -> str | None:
        return None if value is None else relay_base_url(value)

    @model_validator(mode="after")
    def _stun_not_on_dht(self) -> RelayConfig:
        if self.stun_port and self.stun_port == self.dht_port:
            raise ValueError("stun_port must differ from dht_port (their requests collide)")
        return self

    @field_validator("stun_host")
    @classmethod
    def _stun_ip(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.ip_address(value)  # a name would need resolving at start
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for net in value:
            ipaddress.ip_network(net, strict=False)
        return value


def load_relay_config(path: Path | None, overrides: dict[str, Any] | None = None
                      ) -> RelayConfig:
    """The config file at `path` (if any) with the non-None `overrides` (flags) on top.

    Raises ConfigError (one line naming the key) for a missing file or an invalid value.
    """
    values = read_toml(path) if path is not None else {}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return RelayConfig.model_validate(values)
    except ValidationError as exc:
        raise one_line(exc, str(path) if path is not None else "flags") from None
