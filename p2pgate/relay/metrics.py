"""A few Prometheus metrics in the text exposition format (no dependency needed)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

__all__ = ["Metrics"]

Labels = tuple[tuple[str, str], ...]


class Metrics:
    """Counters (with labels) and gauges (read when rendered) of the relay."""

    def __init__(self, prefix: str = "p2pgate_relay") -> None:
        self._prefix = prefix
        self._help: dict[str, tuple[str, str]] = {}
        self._values: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self._gauges: dict[str, Callable[[], float]] = {}

    def counter(self, name: str, help_text: str) -> None:
        """Declare counter `name`; it renders as 0 until `inc` adds to it."""
        self._help[name] = ("counter", help_text)

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """Declare gauge `name`, whose value is `read()` each time it is asked for."""
        self._help[name] = ("gauge", help_text)
        self._gauges[name] = read

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        """Add `amount` to the series of counter `name` with these labels."""
        self._values[name][tuple(sorted(labels.items()))] += amount

    def value(self, name: str, **labels: str) -> float:
        """A gauge's value now, or a counter series' total (0 if never incremented)."""
        if name in self._gauges:
            return self._gauges[name]()
        return self._values[name][tuple(sorted(labels.items()))]

    def render(self) -> str:
        """Every declared metric in the Prometheus text exposition format."""
        lines = []
        for name, (kind, help_text) in sorted(self._help.items()):
            full = f"{self._prefix}_{name}"
            lines += [f"# HELP {full} {help_text}", f"# TYPE {full} {kind}"]
            if name in self._gauges:
                lines.append(f"{full} {self._gauges[name]()}")
                continue
            series = self._values.get(name) or {(): 0.0}
            for labels, value in sorted(series.items()):
                text = ",".join(f'{k}="{v}"' for k, v in labels)
                lines.append(f"{full}{{{text}}} {value}" if text else f"{full} {value}")
        return "\n".join(lines) + "\n"
