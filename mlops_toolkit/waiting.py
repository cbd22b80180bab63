"""One way to wait for something: poll a predicate until it holds or a deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from mlops_toolkit.errors import MlopsError

T = TypeVar("T")
_RAISE = object()


class WaitTimeout(MlopsError, TimeoutError):
    """The condition did not hold in time; the message names it and its last value."""


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.1, what: str = "",
               default: object = _RAISE) -> T:
    """Call ``predicate`` every ``interval`` s until it returns something truthy, and return that.

    After ``timeout`` s: return ``default`` if one was given, else raise WaitTimeout. An
    exception from ``predicate`` ends the wait at once (use it to give up early, e.g. when
    the process being waited for has exited).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            if default is not _RAISE:
                return default  # type: ignore[return-value]
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what or 'a condition'}; last value: {last!r}")
        time.sleep(interval)


__all__ = ["WaitTimeout", "wait_until"]
