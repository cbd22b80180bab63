"""One watcher per state directory: two would adopt, restart and retire each other's
deployments and overwrite each other's route table.

An exclusive ``flock`` on ``<state_dir>/watcher.lock``, held for the watcher's life. The
kernel drops it when the process ends, however it ends (a ``kill -9`` leaves no stale lock
behind, so a restarted watcher starts at once).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from mlops_toolkit.errors import ValidationError

LOCK_FILE = "watcher.lock"


class StateLock:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> StateLock:
        """Hold the lock, or raise ValidationError naming the watcher that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ValidationError(f"another watcher (pid {holder}) uses the state dir {self.path.parent}; "
                                  "stop it or give this one another --state-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
