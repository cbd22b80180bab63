"""A deployment's output with a hard size cap: ``python -I -S logcap.py LOG`` copies its stdin
to LOG; past half the cap, LOG becomes ``LOG.1`` (replacing the one before) and a new LOG
starts. LOG and LOG.1 together never hold more than :data:`CAP_BYTES`.

It runs as a small process of its own beside the serve process, not as a thread of the
watcher: it outlives a watcher restart like the serve process does (a pipe read by a dead
watcher would lose every later line), and a busy or stopped watcher never blocks the
server's writes. It exits when the pipe closes, i.e. when the serve process and its
uvicorn child are gone. Standard library only: it starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import os
import sys

CAP_BYTES = 10 * 1024 * 1024  # per deployment, LOG and LOG.1 together; a constant no option raises
CHUNK = 64 * 1024


def copy(source: int, path: str, cap: int = CAP_BYTES) -> None:
    """Copy from file descriptor ``source`` to ``path`` until end of file, rotating at cap/2.

    Never stops before the end of its input: a write that fails (disk full, the directory
    removed) loses that chunk only. An exiting copier would break the server's next write."""
    half = cap // 2
    out, size = None, 0
    while chunk := os.read(source, CHUNK):
        try:
            if out is None:
                out, size = _open(path, half)
            if size and size + len(chunk) > half:
                out.close()
                out, size = None, 0
                os.replace(path, path + ".1")
                out = open(path, "ab", buffering=0)  # noqa: SIM115 - kept open across chunks
            out.write(chunk)
            size += len(chunk)
        except OSError:
            with contextlib.suppress(OSError):
                if out is not None:
                    out.close()
            out = None
    if out is not None:
        out.close()


def _open(path: str, half: int):
    """LOG for appending, and its size; a LOG from before the cap becomes LOG.1, cut to the half."""
    out = open(path, "ab", buffering=0)  # noqa: SIM115 - the caller closes it
    size = out.tell()
    if size <= half:
        return out, size
    out.close()
    os.replace(path, path + ".1")
    os.truncate(path + ".1", half)
    return open(path, "ab", buffering=0), 0  # noqa: SIM115 - the caller closes it


if __name__ == "__main__":
    copy(sys.stdin.fileno(), sys.argv[1])
