"""Sans-I/O CRDT sync engine. Imports no asyncio, sockets or SQL driver."""

__all__: list[str] = []
