"""Node-to-node transport: admission before TLS, pinned mutual TLS, framed sessions."""

from p2pgate.net.frames import PROTOCOL_VERSION, PeerHello
from p2pgate.net.peers import DialFailed, Listener, Trust, dial
from p2pgate.net.session import Session, SessionError, SessionOptions

__all__ = ["PROTOCOL_VERSION", "DialFailed", "Listener", "PeerHello", "Session", "SessionError",
           "SessionOptions", "Trust", "dial"]
