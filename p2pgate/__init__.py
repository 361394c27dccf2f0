"""p2pgate: a peer-to-peer device gateway."""

__version__ = "0.1.0"
__all__ = ["__version__"]
