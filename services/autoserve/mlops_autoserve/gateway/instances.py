"""``mlops gateway --instances N``: N gateway processes on one port, kept running.

One gateway process is one event loop on one core, and a gateway that dies stops every
request. With ``--instances N`` a small supervisor (this module, no event loop of its own)
runs N gateways: each listens on ``--port`` with ``SO_REUSEPORT`` (the kernel spreads new
connections among them) and on its own admin port, ``--admin-port`` + i. When one dies the
supervisor starts it again within a poll (:data:`POLL_S`): the others keep serving meanwhile,
so a client that retries a reset connection once loses nothing.

Instances are forked from the supervisor, not started as new interpreters: the supervisor
has imported the gateway already, and a fresh ``python -m`` spends seconds importing on a
small machine, a fork about a millisecond. A child asks the kernel for SIGTERM when the
supervisor dies (``PR_SET_PDEATHSIG``): a supervisor killed with -9 leaves no gateway
behind. SIGTERM (or SIGINT) to the supervisor stops every instance cleanly.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from mlops_autoserve.gateway.server import admin_url, registration_path, serve
from mlops_autoserve.settings import GatewaySettings
from mlops_toolkit import http
from mlops_toolkit.errors import MlopsError, ValidationError

log = logging.getLogger("autoserve.gateway.instances")

POLL_S = 0.1  # how often the supervisor looks for a dead instance
START_TIMEOUT = 30.0  # every instance must answer its /health within this at start
STOP_TIMEOUT = 10.0  # then SIGKILL
QUICK_DEATH_S = 5.0  # an instance that dies sooner after its start is restarted after a back-off
BACKOFF_MAX_S = 5.0
PR_SET_PDEATHSIG = 1
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def admin_ports(settings: GatewaySettings) -> range:
    return range(settings.admin_port, settings.admin_port + settings.instances)


def check_ports(settings: GatewaySettings, instances_flag: str = "--instances") -> None:
    """The admin ports of N instances must exist and leave --port out; one line otherwise."""
    ports = admin_ports(settings)
    if settings.instances == 1:
        return
    if ports[-1] > 65535:
        raise ValidationError(f"--admin-port {settings.admin_port} with {instances_flag} {settings.instances} "
                              f"needs ports up to {ports[-1]}; pick a lower --admin-port")
    if settings.port in ports:
        raise ValidationError(f"--port {settings.port} is one of the admin ports {ports[0]}-{ports[-1]} "
                              f"(--admin-port {settings.admin_port}, {instances_flag} {settings.instances}); "
                              "pick another")


def instance_settings(settings: GatewaySettings, index: int) -> GatewaySettings:
    """What instance ``index`` runs with: one process, the shared data port, its own admin port."""
    return replace(settings, instances=1, reuse_port=True, admin_port=settings.admin_port + index)


def _free(host: str, port: int) -> bool:
    """Can this port be bound without SO_REUSEPORT? (No when anything listens on it, a group of
    SO_REUSEPORT sockets included: a second ``--instances`` gateway must not join the first's.)"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise MlopsError(f"cannot listen on {host}:{port}: {exc}") from None
    return True


def check_free(settings: GatewaySettings) -> None:
    if not _free(settings.host, settings.port):
        raise ValidationError(f"gateway port {settings.host}:{settings.port} is already in use; "
                              "pick another with --port")
    for port in admin_ports(settings):
        if not _free(settings.admin_host, port):
            raise ValidationError(f"gateway admin port {settings.admin_host}:{port} is already in use; "
                                  f"pick another with --admin-port (instance i listens on it + i)")


@dataclass
class Instance:
    index: int
    pid: int | None = None
    started: float = 0.0  # monotonic
    quick_deaths: int = 0  # deaths in a row soon after a start
    restart_at: float = 0.0  # monotonic: not before (back-off)


class Supervisor:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.instances = [Instance(i) for i in range(settings.instances)]
        self.stopping = False
        self.pid = os.getpid()

    # -- the supervisor ------------------------------------------------------------------
    def run(self) -> None:
        """Start every instance, restart the ones that die, stop them all on SIGTERM/SIGINT."""
        check_ports(self.settings)
        check_free(self.settings)
        if threading.active_count() > 1:  # a fork copies only this thread: a lock another holds stays held
            log.warning("forking gateway instances from a process with threads",
                        extra={"threads": threading.active_count()})
        migrate_queued_connections()
        previous = {sig: signal.signal(sig, self._stop) for sig in STOP_SIGNALS}
        try:
            for instance in self.instances:
                self._start(instance)
            self._wait_started()
            log.info("gateway instances started", extra={
                "instances": len(self.instances), "pids": [i.pid for i in self.instances],
                "url": f"http://{self.settings.host}:{self.settings.port}",
                "admin": [admin_url(self.settings.admin_host, p) for p in admin_ports(self.settings)]})
            while not self.stopping:
                self._restart_dead()
                time.sleep(POLL_S)
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("gateway instances stopped")

    def _stop(self, signum: int, frame: object) -> None:  # a signal handler: only a flag
        self.stopping = True

    def _wait_started(self) -> None:
        """Until each instance answers /health with its own pid (not some other process on its port)."""
        deadline = time.monotonic() + START_TIMEOUT
        waiting = list(self.instances)
        while waiting:
            if self.stopping:
                return
            for instance in list(waiting):
                code = self._exit_code(instance)
                if code is not None:  # its error is on stderr already, one line
                    instance.pid = None
                    raise ChildFailed(code)
                health = http.get_json(f"{self._admin_url(instance)}/health", timeout=0.5)
                if isinstance(health, dict) and health.get("pid") == instance.pid:
                    waiting.remove(instance)
            if waiting and time.monotonic() > deadline:
                raise MlopsError(f"gateway instance(s) {', '.join(str(i.index) for i in waiting)} did not answer "
                                 f"within {START_TIMEOUT:.0f} s")
            time.sleep(POLL_S)

    def _restart_dead(self) -> None:
        now = time.monotonic()
        for instance in self.instances:
            if instance.pid is not None:
                code = self._exit_code(instance)
                if code is None:
                    continue
                dead, lived = instance.pid, now - instance.started
                self._unregister(dead)
                instance.pid = None
                instance.quick_deaths = instance.quick_deaths + 1 if lived < QUICK_DEATH_S else 0
                delay = 0.0 if instance.quick_deaths <= 1 else min(BACKOFF_MAX_S, 0.25 * 2 ** instance.quick_deaths)
                instance.restart_at = now + delay
                log.error("gateway instance died; starting it again", extra={
                    "instance": instance.index, "pid": dead, "exit": code, "lived_s": round(lived, 1),
                    "restart_in_s": delay})
            if instance.pid is None and now >= instance.restart_at and not self.stopping:
                self._start(instance)

    def _exit_code(self, instance: Instance) -> int | None:
        """The exit code once the instance is gone (reaped here), None while it runs."""
        try:
            pid, status = os.waitpid(instance.pid, os.WNOHANG)
        except ChildProcessError:
            return -1
        if pid == 0:
            return None
        return os.waitstatus_to_exitcode(status)

    def _stop_all(self) -> None:
        running = [i for i in self.instances if i.pid is not None]
        for instance in running:
            _signal(instance.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while running and time.monotonic() < deadline:
            running = [i for i in running if self._exit_code(i) is None]
            if running:
                time.sleep(0.02)
        for instance in running:
            log.warning("gateway instance did not stop in time: killed", extra={"instance": instance.index,
                                                                                 "pid": instance.pid})
            _signal(instance.pid, signal.SIGKILL)
            os.waitpid(instance.pid, 0)
            self._unregister(instance.pid)
        for instance in self.instances:
            instance.pid = None

    def _unregister(self, pid: int) -> None:
        """A killed instance could not remove its record: the supervisor does (else it goes stale)."""
        try:
            registration_path(self.settings.state_dir, pid).unlink(missing_ok=True)
        except OSError:
            pass

    def _admin_url(self, instance: Instance) -> str:
        return admin_url(self.settings.admin_host, self.settings.admin_port + instance.index)

    def _start(self, instance: Instance) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # Held back across the fork: a SIGTERM must not reach the child while it still has the
        # supervisor's handler (a flag nobody reads); it gets it once its own are in place.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                _child(instance_settings(self.settings, instance.index), instance.index, len(self.instances),
                       self.pid)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        instance.pid, instance.started = pid, time.monotonic()


class ChildFailed(Exception):
    """An instance exited at start; it said why on stderr."""

    def __init__(self, code: int) -> None:
        super().__init__(f"a gateway instance exited at start ({code})")
        self.code = code if code > 0 else 1


MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def migrate_queued_connections() -> bool:
    """Ask Linux (5.14+) to hand the connections queued on a closing SO_REUSEPORT socket to
    the other sockets of its group, instead of resetting them: a draining instance then
    loses none. Needs the right to write the sysctl (root in the network namespace); without
    it a connection that arrives in the instant an instance closes may be reset."""
    try:
        if MIGRATE_REQ.read_text().strip() == "1":
            return True
        MIGRATE_REQ.write_text("1")
        return True
    except OSError as exc:
        log.warning("net.ipv4.tcp_migrate_req is off and cannot be set: a connection queued on an instance "
                    "that stops may be reset", extra={"error": str(exc)})
        return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _die_with(parent: int) -> None:
    """SIGTERM to this process when ``parent`` dies (Linux; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the prctl: nobody would tell us
        os._exit(0)


def _child(settings: GatewaySettings, index: int, instances: int, parent: int) -> None:
    """A forked instance: never returns into the supervisor's code."""
    code = 0
    try:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)  # until serve() has its own: a stop before that just ends it
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        _die_with(parent)
        asyncio.run(serve(settings, instance={"instance": index, "instances": instances, "supervisor": parent}))
    except MlopsError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 - logged; the supervisor starts the instance again
        log.exception("gateway instance failed", extra={"instance": index})
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run(settings: GatewaySettings) -> None:
    """``mlops gateway --instances N``: serve until SIGTERM or SIGINT."""
    import click

    from mlops_toolkit.jsonlog import configure_json_logging

    configure_json_logging(service="gateway")
    try:
        Supervisor(settings).run()
    except ChildFailed as exc:
        raise click.exceptions.Exit(exc.code) from None


__all__ = ["Supervisor", "admin_ports", "check_ports", "instance_settings", "run"]
