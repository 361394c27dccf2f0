"""Node-to-node transport: admission before TLS, pinned mutual TLS, framed sessions."""

from p2pgate.net.frames import PROTOCOL_VERSION, Hello
from p2pgate.net.peers import DialFailed, Listener, Trust, dial
from p2pgate.net.session import Session, SessionClosed, SessionOptions

__all__ = ["PROTOCOL_VERSION", "DialFailed", "Hello", "Listener", "Session", "SessionClosed",
           "SessionOptions", "Trust", "dial"]
