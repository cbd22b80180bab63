"""Progress lines for one-shot jobs (the demo, the compose stack's bootstrap)."""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    """One line per step, with the time since the demo started."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __call__(self, message: str) -> None:
        self.echo(f"[{self.elapsed:5.1f}s] {message}")
