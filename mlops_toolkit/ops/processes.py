"""Local processes and ports: what the demo, the process runtime and the test harness share.

Linux only (``/proc``), like the process runtime itself.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from mlops_toolkit.waiting import wait_until


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (Linux /proc)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def who_listens(port: int) -> str | None:
    """'pid 123 (cmdline)' of the process listening on TCP ``port``, from /proc (Linux)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(fields[9])
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (proc / "fd").iterdir()}
            if any(f"socket:[{inode}]" in links for inode in inodes):
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                return f"pid {proc.name} ({cmdline[:120]})"
        except OSError:
            continue
    return "another user's process"


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group led by ``pid`` (a child started with start_new_session)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def terminate(pid: int, timeout: float = 10.0, group: bool = False) -> bool:
    """SIGTERM ``pid`` (or its process group), SIGKILL after ``timeout`` s; True once it is gone."""
    def send(sig: int) -> None:
        if group:
            signal_group(pid, sig)
        else:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def gone() -> bool:
        try:  # reap it if it is our child, or it lingers as a zombie
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return not pid_running(pid)

    send(signal.SIGTERM)
    if wait_until(gone, timeout, interval=0.05, default=False):
        return True
    send(signal.SIGKILL)
    return bool(wait_until(gone, 5, interval=0.05, default=False))


__all__ = ["free_port", "pid_running", "port_is_open", "signal_group", "terminate", "who_listens"]
