"""Giving the memory of a large body back to the system once it is gone.

glibc keeps the heap pages of freed objects for reuse: after a 64 MB body (refused at the
cap, or proxied) the process would keep that much RSS for good, whatever the
caller meant by it. A request that held at least ``TRIM_AFTER_BYTES`` (its body, or a
backend answer refused at ``--max-response-mb``) asks for one ``malloc_trim(0)`` shortly
after, when its buffers are freed; a burst of them costs one trim. Elsewhere than glibc
this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util

TRIM_AFTER_BYTES = 8 * 1024 * 1024
TRIM_DELAY_S = 0.05  # the request's buffers are freed once its answer is written


def _malloc_trim():  # noqa: ANN202
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


class Trimmer:
    def __init__(self) -> None:
        self._trim = _malloc_trim()
        self._pending = False
        self.trims = 0

    def after(self, size: int) -> None:
        """A request that held ``size`` bytes ended: trim soon if that was a lot."""
        if size < TRIM_AFTER_BYTES or self._trim is None or self._pending:
            return
        self._pending = True
        asyncio.get_running_loop().call_later(TRIM_DELAY_S, self._run)

    def _run(self) -> None:
        self._pending = False
        self._trim(0)
        self.trims += 1
