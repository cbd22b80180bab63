"""The route table: the one thing the watcher (control plane) hands the gateway (data plane).

A versioned snapshot, ``<state_dir>/routes.json``, replaced atomically (write a temp file,
then ``rename``), so a reader sees the old table or the new one, never half of one. The
gateway loads the last table at start and keeps serving it while no watcher runs: a
watcher crash or restart changes nothing for clients.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import sys
import time
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

log = logging.getLogger("autoserve.routetable")

TABLE_FILE = "routes.json"
FORMAT = 1
MAX_TABLE_BYTES = 32 * 1024 * 1024  # a bigger file is not a table the watcher wrote: refused unread


class TableError(ValueError):
    """The file is not a usable route table (truncated, not JSON, wrong shape or types)."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(f"{where.lstrip('.')}: {message}" if where else message)
        self.message, self.where = message, where

    def inside(self, outer: str) -> TableError:
        """The same error, one level up: ``routes`` + ``[0]`` + ``.version``."""
        return TableError(self.message, outer + self.where)


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
class BatchSpec:
    """Adaptive batching of a route: concurrent requests wait at most ``max_wait_ms`` (or
    until ``max_rows`` rows wait) and go to one replica as one request."""

    max_rows: int
    max_wait_ms: float


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
    problems: tuple[str, ...] = ()  # the model's inputs the watcher ignores (a bad tag), and why
    batching: BatchSpec | None = None  # None: every request goes alone


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


def from_json(text: str | bytes) -> RouteTable:
    """Parse and check a table; anything else than what :func:`to_json` writes raises
    :class:`TableError` (one type, so a reader can keep its last good table). Fields a newer
    watcher added are ignored: a gateway keeps serving across upgrades."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # also bytes that are not UTF-8, or nested too deep
        raise TableError(f"not JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise TableError(f"expected a JSON object, got {_kind(data)}")
    if "serial" not in data:
        raise TableError("missing 'serial'")
    values = {}
    for name, kind, default in (("format", int, 0), ("serial", int, None), ("published_at", float, 0.0),
                                ("routes", tuple[RouteEntry, ...], [])):
        try:
            values[name] = _parser(kind)(data.get(name, default))
        except TableError as exc:
            raise exc.inside(name) from None
    if values["format"] > FORMAT:
        raise TableError(f"route table format {values['format']} is newer than this gateway understands")
    return RouteTable(values["serial"], values["published_at"], values["routes"])


Parser = typing.Callable[[object], typing.Any]


@functools.cache
def _parser(kind: object) -> Parser:
    """A checker for the annotated type ``kind`` (a dataclass of this module, ``tuple[X, ...]``,
    ``X | None``, int, float or str) that returns the value as that type, built once per type."""
    args = typing.get_args(kind)
    if type(None) in args:
        inner = _parser(next(a for a in args if a is not type(None)))
        return lambda value: None if value is None else inner(value)
    if typing.get_origin(kind) is tuple:
        return functools.partial(_items, _parser(args[0]))
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        spec = tuple((f.name, _parser(hints[f.name]), f.default is MISSING and f.default_factory is MISSING)
                     for f in fields(kind))
        return functools.partial(_record, kind, spec)
    return functools.partial(_scalar, kind, _SCALARS[kind])


def _items(item: Parser, value: object) -> tuple:
    if not isinstance(value, list):
        raise TableError(f"expected a list, got {_kind(value)}")
    out = []
    for i, v in enumerate(value):
        try:
            out.append(item(v))
        except TableError as exc:
            raise exc.inside(f"[{i}]") from None
    return tuple(out)


def _record(cls: type, spec: tuple[tuple[str, Parser, bool], ...], value: object) -> typing.Any:
    if not isinstance(value, dict):
        raise TableError(f"expected an object, got {_kind(value)}")
    values = {}
    for name, parse, required in spec:
        if name in value:
            try:
                values[name] = parse(value[name])
            except TableError as exc:
                raise exc.inside(f".{name}") from None
        elif required:
            raise TableError(f"missing {name!r}")
    return cls(**values)


def _scalar(kind: type, ok: typing.Callable[[object], bool], value: object) -> object:
    if not ok(value):
        raise TableError(f"expected {kind.__name__}, got {_kind(value)}")
    return float(value) if kind is float else value


_SCALARS = {  # bool is an int in Python, never in a table; NaN, infinities and 400-digit ints are not times
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= sys.float_info.max,
    str: lambda v: isinstance(v, str),
}


def _kind(value: object) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return "null" if value is None else {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__)


def write(path: Path, table: RouteTable) -> None:
    """Replace the table atomically (readers never see a partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(to_json(table))
    partial.replace(path)


def read(path: Path) -> RouteTable | None:
    """The table on disk, or None when there is none yet; TableError when it is unusable."""
    try:
        return from_json(_read_bytes(path))
    except FileNotFoundError:
        return None


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as handle:
        data = handle.read(MAX_TABLE_BYTES + 1)
    if len(data) > MAX_TABLE_BYTES:
        raise TableError(f"over {MAX_TABLE_BYTES} bytes")
    return data


class TableFile:
    """Reload the table when the file changes; cheap enough to call on every tick.

    Never raises: a file that cannot be used (truncated, not JSON, a route missing a key, a
    wrong type) is logged once per distinct content and the last good table stays in
    service, in ``table``, until a good one replaces it; ``error`` says why meanwhile."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.table = RouteTable()
        self.error: str | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._bad: str | None = None  # digest of the unusable content last warned about

    def refresh(self) -> bool:
        """Reload if the file changed; True when a new table was loaded."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return False
        except OSError as exc:
            self._refuse(f"{type(exc).__name__}: {exc}", repr(exc))
            return False
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return False
        self._stamp = stamp  # each change is read once: a bad file is not parsed again every tick
        try:
            data = _read_bytes(self.path)
        except FileNotFoundError:
            return False
        except (OSError, TableError) as exc:  # too big, or unreadable (then tried again next tick)
            if isinstance(exc, OSError):
                self._stamp = None
            self._refuse(f"{type(exc).__name__}: {exc}", repr(exc))
            return False
        try:
            table = from_json(data)
        except TableError as exc:
            self._refuse(str(exc), hashlib.sha256(data).hexdigest())
            return False
        self.error, self._bad = None, None
        if table.serial < self.table.serial and self.table.serial:
            # An older snapshot than ours (a watcher that restarted from an older file):
            # still take it, the file is the truth, but say so in /health.
            self.error = f"serial went back from {self.table.serial} to {table.serial}"
        self.table = table
        return True

    def _refuse(self, reason: str, digest: str) -> None:
        self.error = f"{self.path.name} is unusable ({reason}): serving table {self.table.serial}"
        if digest != self._bad:
            self._bad = digest
            log.warning("route table unusable: keeping the last good one",
                        extra={"path": str(self.path), "error": reason, "serial": self.table.serial})


class TablePublisher:
    """The watcher's side: publish only real changes, with a serial that never goes back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last: RouteTable | None = None  # the previous watcher's table: the next one's seed
        try:
            self.last = read(path)
        except (OSError, TableError) as exc:  # replaced by this watcher's first publish
            log.warning("route table unusable: starting without the last published table",
                        extra={"path": str(path), "error": f"{type(exc).__name__}: {exc}"})
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
