"""Relay: the fallback server operators run, and the node's client for it."""
