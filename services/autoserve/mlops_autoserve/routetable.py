"""The route table: the one thing the watcher (control plane) hands the gateway (data plane).

A versioned snapshot, ``<state_dir>/routes.json``, replaced atomically (write a temp file,
then ``rename``), so a reader sees the old table or the new one, never half of one. The
gateway loads the last table at start and keeps serving it while no watcher runs: a
watcher crash or restart changes nothing for clients.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

TABLE_FILE = "routes.json"
FORMAT = 1


@dataclass(frozen=True)
class Replica:
    """One running copy of a model version the gateway may send requests to."""

    url: str
    ident: str  # pid or container id
    index: int = 0


@dataclass(frozen=True)
class ShadowTarget:
    """Where copies of a route's requests go (``mlops shadow set``), and how they are compared."""

    alias: str
    version: int
    percent: float
    compare: str  # auto | classification | regression
    replicas: tuple[Replica, ...] = ()


@dataclass(frozen=True)
class CanaryTarget:
    """A rollout's candidate: ``percent`` of the route's requests go to its replicas."""

    version: int
    percent: int
    replicas: tuple[Replica, ...] = ()


@dataclass(frozen=True)
class EnvBuild:
    """The wanted version's environment being built (shown by ``mlops serve status``)."""

    version: int
    env: str  # the environment's key
    since: float  # unix time the build started
    progress: str = ""  # the installer's last summary line


@dataclass(frozen=True)
class ScaleView:
    """The serving version's autoscaling (shown by ``mlops serve status``)."""

    wanted: int
    min: int
    max: int
    last: str | None = None  # the last decision: direction, counts and why
    at: float | None = None  # unix time of the last decision


@dataclass(frozen=True)
class RouteEntry:
    """Where one (model, alias) goes, as the watcher last decided."""

    model: str
    alias: str
    desired_version: int
    version: int | None  # the version serving now (None: nothing ready)
    state: str  # a planner.RouteState value: ready, degraded, starting, switching, restarting, failed
    since: float  # unix time the serving version took the route
    last_error: str | None = None
    replicas: tuple[Replica, ...] = ()
    shadow: ShadowTarget | None = None
    canary: CanaryTarget | None = None
    building: EnvBuild | None = None
    scale: ScaleView | None = None


_ENTRY_FIELDS = frozenset(RouteEntry.__dataclass_fields__)


@dataclass(frozen=True)
class RouteTable:
    serial: int = 0  # grows by one per published change
    published_at: float = 0.0
    routes: tuple[RouteEntry, ...] = field(default_factory=tuple)

    def get(self, model: str, alias: str) -> RouteEntry | None:
        return self._index().get((model, alias))

    def _index(self) -> dict[tuple[str, str], RouteEntry]:
        index = self.__dict__.get("_by_key")
        if index is None:
            index = {(r.model, r.alias): r for r in self.routes}
            object.__setattr__(self, "_by_key", index)
        return index


def table_path(state_dir: Path) -> Path:
    return Path(state_dir) / TABLE_FILE


def to_json(table: RouteTable) -> str:
    return json.dumps({"format": FORMAT, "serial": table.serial, "published_at": table.published_at,
                       "routes": [asdict(r) for r in table.routes]}, separators=(",", ":"))


def from_json(text: str) -> RouteTable:
    data = json.loads(text)
    if int(data.get("format", 0)) > FORMAT:
        raise ValueError(f"route table format {data['format']} is newer than this gateway understands")
    routes = tuple(  # fields a newer watcher added are ignored: a gateway keeps serving across upgrades
        RouteEntry(**{**{k: v for k, v in r.items() if k in _ENTRY_FIELDS}, "replicas": _replicas(r),
                      "shadow": _shadow(r.get("shadow")), "canary": _canary(r.get("canary")),
                      "building": EnvBuild(**r["building"]) if r.get("building") else None,
                      "scale": ScaleView(**r["scale"]) if r.get("scale") else None})
        for r in data.get("routes", ())
    )
    return RouteTable(int(data["serial"]), float(data.get("published_at", 0.0)), routes)


def _replicas(data: dict) -> tuple[Replica, ...]:
    return tuple(Replica(**rep) for rep in data.get("replicas", ()))


def _shadow(data: dict | None) -> ShadowTarget | None:
    return ShadowTarget(**{**data, "replicas": _replicas(data)}) if data else None


def _canary(data: dict | None) -> CanaryTarget | None:
    return CanaryTarget(**{**data, "replicas": _replicas(data)}) if data else None


def write(path: Path, table: RouteTable) -> None:
    """Replace the table atomically (readers never see a partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(to_json(table))
    partial.replace(path)


def read(path: Path) -> RouteTable | None:
    """The table on disk, or None when there is none yet (or it cannot be read)."""
    try:
        return from_json(path.read_text())
    except FileNotFoundError:
        return None


class TableFile:
    """Reload the table when the file changes; cheap enough to call on every tick."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.table = RouteTable()
        self.error: str | None = None
        self._stamp: tuple[int, int, int] | None = None

    def refresh(self) -> bool:
        """Reload if the file changed; True when a new table was loaded."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return False
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return False
        try:
            table = read(self.path)
        except (OSError, ValueError, TypeError, KeyError) as exc:  # keep serving the last good table
            self.error = f"{type(exc).__name__}: {exc}"
            self._stamp = stamp
            return False
        if table is None:
            return False
        self._stamp, self.error = stamp, None
        if table.serial < self.table.serial and self.table.serial:
            # An older snapshot than ours (a watcher that restarted from an older file):
            # still take it, the file is the truth, but say so in /health.
            self.error = f"serial went back from {self.table.serial} to {table.serial}"
        self.table = table
        return True


class TablePublisher:
    """The watcher's side: publish only real changes, with a serial that never goes back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last: RouteTable | None = None
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            self.last = read(path)
        self.serial = self.last.serial if self.last else 0

    def publish(self, routes: tuple[RouteEntry, ...]) -> RouteTable:
        routes = tuple(sorted(routes, key=lambda r: (r.model, r.alias)))
        if self.last is not None and self.last.routes == routes:
            return self.last
        self.serial += 1
        table = RouteTable(self.serial, time.time(), routes)
        write(self.path, table)
        self.last = table
        return table
