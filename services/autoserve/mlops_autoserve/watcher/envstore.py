"""Built environments, one per key, built once and kept: uv virtual environments in a cache
directory (process runtime) or images derived from the serving image (Docker runtime).

MLflow's own ``--env-manager uv|virtualenv`` builds an environment at every start; here a
build happens once per set of requirements and every later deployment (a restart, another
replica, the next version with the same requirements) starts from it.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlops_autoserve.watcher.envspec import (
    LIST_INSTALLED,
    Interpreter,
    interpreter_from,
    this_interpreter,
)

Progress = Callable[[str], None]
READY_FILE = "mlops-env.json"  # written last: an environment without it is an unfinished build
LAST_USED_FILE = ".mlops-last-used"
DOWNLOAD_CACHE = ".uv-cache"  # uv's download and wheel cache, inside the environments' directory
DOWNLOAD_CACHE_KIND = "download-cache"  # its row among the environments (EnvInfo.kind)
CACHE_LOCK_WAIT = 5  # seconds `uv cache prune|clean` waits for a build (another watcher's) to finish
CACHE_CLEAN_TIMEOUT = 300.0
ENV_LABEL = "mlops.env"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_DOCKER_NOISE = re.compile(r"^\s*(Removing intermediate container|Running in|---> |Step \d+/\d+|Successfully )")
_PROGRESS = re.compile(r"^(Resolved|Prepared|Installed|Uninstalled|Audited|Building|Built|Downloading)\b")


class EnvBuildError(Exception):
    """The environment could not be built; the message is the installer's one-line reason."""


@dataclass(frozen=True)
class ServeEnv:
    """Where a deployment runs from: a Python (process runtime) or an image (Docker)."""

    key: str
    python: str | None = None
    image: str | None = None


@dataclass(frozen=True)
class EnvInfo:
    key: str
    location: str  # directory or image tag
    size_bytes: int
    built_at: float
    build_seconds: float
    last_used: float
    requirements: tuple[str, ...] = ()
    in_use: bool = field(default=False, compare=False)
    kind: str = "env"  # or DOWNLOAD_CACHE_KIND: uv's cache, counted toward the same limit

    def to_dict(self) -> dict:
        return asdict(self)


def to_prune(envs: list[EnvInfo], in_use: set[str], now: float, max_idle: float,
             max_bytes: int) -> list[tuple[EnvInfo, str]]:
    """Which environments to remove, and why: idle longer than ``max_idle`` seconds, then the
    least recently used until the rest fits in ``max_bytes``. One in use is never removed."""
    removable = sorted((e for e in envs if e.key not in in_use), key=lambda e: e.last_used)
    chosen = [(e, "idle") for e in removable if now - e.last_used > max_idle]
    total = sum(e.size_bytes for e in envs) - sum(e.size_bytes for e, _ in chosen)
    for env in removable:
        if total <= max_bytes:
            break
        if all(env.key != c.key for c, _ in chosen):
            chosen.append((env, "size"))
            total -= env.size_bytes
    return chosen


def failure_reason(output: str, limit: int = 400) -> str:
    """The installer's own reason, on one line: from uv's first ``error:`` (or ``×``) line, or
    pip's ``ERROR:``, to the end; else the last lines it printed."""
    raw = [line for line in (_ANSI.sub("", line) for line in output.splitlines())
           if line.strip() and not _DOCKER_NOISE.match(line)]
    first = next((i for i, line in enumerate(raw) if re.match(r"^\s*(×|error:|ERROR:)", line)), None)
    picked = raw[first:] if first is not None else raw[-3:]
    text = " ".join(re.sub(r"^(error|ERROR):\s*", "", re.sub(r"^[\s×╰─▶│|]+", "", line).strip()) for line in picked)
    text = text or "no output"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def uv_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """uv's settings from pip's: the index this machine is configured for, never a Python download."""
    env = dict(os.environ if base is None else base)
    env.setdefault("UV_PYTHON_DOWNLOADS", "never")
    if env.get("PIP_INDEX_URL") and not (env.get("UV_INDEX_URL") or env.get("UV_DEFAULT_INDEX")):
        env["UV_DEFAULT_INDEX"] = env["PIP_INDEX_URL"]
    if env.get("PIP_EXTRA_INDEX_URL") and not (env.get("UV_EXTRA_INDEX_URL") or env.get("UV_INDEX")):
        env["UV_INDEX"] = env["PIP_EXTRA_INDEX_URL"]
    return env


def uv_binary() -> str:
    """The uv executable installed with autoserve (a PyPI wheel), else one on PATH."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if not found:
            raise EnvBuildError("uv is not installed: pip install uv") from None
        return found


def write_requirements(folder: Path, lines: list[str], files: tuple[tuple[str, str], ...]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files:
        (folder / name).write_text(content)
    path = folder / "requirements.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


class ProcessEnvs:
    """uv virtual environments in ``cache_dir/<key>``, with the watcher's Python.

    uv's download cache sits in the same directory tree, so a second environment with
    packages in common hard-links them instead of downloading or copying them again.
    A file lock per key lets several watchers (or replicas) share one cache: one builds,
    the others wait and use its result.
    """

    runtime = "process"

    def __init__(self, cache_dir: Path, build_timeout: float) -> None:
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.download_cache = self.cache_dir / DOWNLOAD_CACHE
        self.build_timeout = build_timeout
        self._interpreter: Interpreter | None = None
        self._running: set[subprocess.Popen] = set()  # uv steps running now: a shutdown ends them
        self._running_lock = threading.Lock()
        self._cancelled = False

    def cancel(self) -> None:
        """End every build step now (the watcher is stopping): a hung install must not hold
        the shutdown for up to --env-build-timeout. Its deploy fails; the next watcher builds."""
        with self._running_lock:
            self._cancelled = True
            for process in self._running:
                with contextlib.suppress(OSError):
                    process.kill()

    def interpreter(self) -> Interpreter:
        if self._interpreter is None:
            self._interpreter = this_interpreter()
        return self._interpreter

    def base(self) -> str:
        return f"python:{self.interpreter().python}:{sys.base_prefix}"

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        with open(self.cache_dir / f".{key}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def get(self, key: str) -> ServeEnv | None:
        folder = self.cache_dir / key
        if not (folder / READY_FILE).is_file():
            return None
        return ServeEnv(key, python=str(folder / "bin" / "python"))

    def build(self, key: str, lines: list[str], files: tuple[tuple[str, str], ...], progress: Progress) -> ServeEnv:
        folder = self.cache_dir / key
        shutil.rmtree(folder, ignore_errors=True)  # an unfinished build (the watcher died during it)
        started = time.time()
        uv = uv_binary()
        env = {**uv_environment(), "UV_CACHE_DIR": str(self.download_cache)}
        deadline = time.monotonic() + self.build_timeout
        try:
            self._run([uv, "venv", "--quiet", "--python", sys.executable, str(folder)], env, deadline, progress)
            requirements = write_requirements(folder / "mlops-requirements", lines, files)
            # No --compile-bytecode: compiling a whole environment took 50 s here; the first
            # deployment writes the .pyc of what it imports instead (the process runtime lets it).
            self._run([uv, "pip", "install", "--python", str(folder / "bin" / "python"), "-r", str(requirements)],
                      env, deadline, progress)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        info = EnvInfo(key, str(folder), _tree_size(folder), started, time.time() - started, time.time(),
                       tuple(lines))
        (folder / READY_FILE).write_text(json.dumps(info.to_dict()))
        return ServeEnv(key, python=str(folder / "bin" / "python"))

    def touch(self, key: str) -> None:
        with contextlib.suppress(OSError):
            (self.cache_dir / key / LAST_USED_FILE).touch()

    def list(self) -> list[EnvInfo]:
        envs = []
        for ready in sorted(self.cache_dir.glob(f"*/{READY_FILE}")):
            try:
                data = json.loads(ready.read_text())
                last_used = ready.parent / LAST_USED_FILE
                used = last_used.stat().st_mtime if last_used.exists() else data["built_at"]
                envs.append(EnvInfo(data["key"], data["location"], int(data["size_bytes"]), float(data["built_at"]),
                                    float(data["build_seconds"]), used, tuple(data.get("requirements", ()))))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue  # not a record this store wrote: not listed (and so never removed by the clean-up)
        return envs

    def download_cache_info(self) -> EnvInfo | None:
        """uv's download cache as one more row: the bytes only it holds (a file a built
        environment hard-links from it is counted in that environment's size already)."""
        folder = self.download_cache
        try:
            stamps = [folder.stat().st_mtime, *(entry.stat().st_mtime for entry in folder.iterdir())]
        except OSError:  # none yet (or being cleaned right now)
            return None
        return EnvInfo(DOWNLOAD_CACHE, str(folder), _tree_size(folder, shared=False), min(stamps), 0.0, max(stamps),
                       kind=DOWNLOAD_CACHE_KIND)

    def clean_download_cache(self, everything: bool) -> None:
        """``uv cache prune`` (what no cache entry refers to) or ``uv cache clean`` (all of it).
        Built environments keep the files they link; a later build downloads again. uv waits
        for a build using the cache (another watcher's) CACHE_LOCK_WAIT seconds, then fails."""
        command = [uv_binary(), "cache", "clean" if everything else "prune"]
        env = {**uv_environment(), "UV_CACHE_DIR": str(self.download_cache), "UV_LOCK_TIMEOUT": str(CACHE_LOCK_WAIT)}
        try:
            result = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                    errors="replace", timeout=CACHE_CLEAN_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise EnvBuildError(f"uv cache {command[2]} took over {CACHE_CLEAN_TIMEOUT:.0f} s") from None
        if result.returncode != 0:
            raise EnvBuildError(f"uv cache {command[2]} failed: {failure_reason(result.stdout + result.stderr)}")

    def remove(self, key: str) -> None:
        with self.locked(key):
            folder = self.cache_dir / key
            with contextlib.suppress(FileNotFoundError):
                (folder / READY_FILE).unlink()  # unusable first, then gone
            shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (self.cache_dir / f".{key}.lock").unlink()

    def _run(self, command: list[str], env: dict[str, str], deadline: float, progress: Progress) -> None:
        """Run one uv step, reporting its summary lines; its output is the reason if it fails."""
        with self._running_lock:
            if self._cancelled:
                raise EnvBuildError("the watcher is shutting down")
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                       stdin=subprocess.DEVNULL, text=True, errors="replace")
            self._running.add(process)
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), process.kill)
        timer.start()
        output = []
        try:
            for line in process.stdout:
                output.append(line)
                if _PROGRESS.match(line.strip()):
                    progress(line.strip())
            code = process.wait()
        finally:
            timer.cancel()
            process.stdout.close()
            with self._running_lock:
                self._running.discard(process)
        if self._cancelled and code != 0:
            raise EnvBuildError("the watcher is shutting down")
        if time.monotonic() >= deadline and code != 0:
            raise EnvBuildError("environment build timed out (--env-build-timeout)")
        if code != 0:
            raise EnvBuildError(failure_reason("".join(output)))


class DockerEnvs:
    """Images derived from the serving image: ``FROM`` it, ``uv pip install`` the model's
    requirements into its environment, one layer per set of requirements.

    The serving image stays small; only what a model adds is in its layer, and a container
    start never installs anything. The images are tagged ``<serving repo>-env:<key>`` and
    labelled, so they are found (and removed) by label. Last use is kept in a small JSON
    file in the cache directory (an image's labels cannot change).
    """

    runtime = "docker"

    def __init__(self, client, base_image: str, cache_dir: Path, build_timeout: float) -> None:
        self.client = client
        self.base_image = base_image
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.build_timeout = build_timeout
        self._interpreters: dict[str, Interpreter] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._ledger = self.cache_dir / "docker-envs.json"

    def _base(self):
        import docker

        try:
            return self.client.images.get(self.base_image)
        except docker.errors.ImageNotFound:
            # not a build failure: the deploy cannot start at all (the runtime says the same)
            raise RuntimeError(f"serving image {self.base_image} is not on this Docker host: build it (make images); "
                               "autoserve never pulls it from a registry") from None

    def interpreter(self) -> Interpreter:
        image = self._base()
        if image.id not in self._interpreters:
            output = self.client.containers.run(image.id, ["python", "-c", LIST_INSTALLED], remove=True,
                                                network_disabled=True, entrypoint=[])
            self._interpreters[image.id] = interpreter_from(json.loads(output.decode().strip().splitlines()[-1]))
        return self._interpreters[image.id]

    def base(self) -> str:
        return f"image:{self._base().id}"

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield

    def tag(self, key: str) -> str:
        repository = self.base_image.rsplit(":", 1)[0] if ":" in self.base_image.rsplit("/", 1)[-1] else self.base_image
        return f"{repository}-env:{key}"

    def get(self, key: str) -> ServeEnv | None:
        import docker

        try:
            self.client.images.get(self.tag(key))
        except docker.errors.ImageNotFound:
            return None
        return ServeEnv(key, image=self.tag(key))

    def build(self, key: str, lines: list[str], files: tuple[tuple[str, str], ...], progress: Progress) -> ServeEnv:
        import docker

        base = self._base()
        user = base.attrs.get("Config", {}).get("User") or "root"
        started = time.time()
        context = _build_context(lines, files, base.id, user, key, self.base_image, started)
        output: list[str] = []
        deadline = time.monotonic() + self.build_timeout
        try:
            stream = self.client.api.build(fileobj=context, custom_context=True, tag=self.tag(key), rm=True,
                                           forcerm=True, network_mode="host", decode=True,
                                           buildargs=_uv_buildargs(), timeout=max(60, int(self.build_timeout)))
            for chunk in stream:
                if "error" in chunk:
                    raise EnvBuildError(failure_reason("".join(output) or chunk["error"]))
                for line in _ANSI.sub("", str(chunk.get("stream", ""))).splitlines():
                    output.append(line + "\n")
                    if _PROGRESS.match(line.strip()):
                        progress(line.strip())
                if time.monotonic() > deadline:
                    raise EnvBuildError("environment build timed out (--env-build-timeout)")
        except docker.errors.APIError as exc:
            self._remove_leftovers(key)
            raise EnvBuildError(f"docker build failed: {exc.explanation or exc}") from None
        except EnvBuildError:
            self._remove_leftovers(key)
            raise
        self._record(key, time.time() - started)
        return ServeEnv(key, image=self.tag(key))

    def _remove_leftovers(self, key: str) -> None:
        """The untagged layers a failed build left behind (they carry its labels)."""
        with contextlib.suppress(Exception):
            self.client.images.prune(filters={"dangling": True, "label": f"{ENV_LABEL}.key={key}"})

    def touch(self, key: str) -> None:
        self._record(key)

    def download_cache_info(self) -> EnvInfo | None:
        """None: image builds run uv with --no-cache, there is no download cache on the host."""
        return None

    def clean_download_cache(self, everything: bool) -> None:
        """Nothing to clean (see :meth:`download_cache_info`)."""

    def list(self) -> list[EnvInfo]:
        ledger = self._read_ledger()
        base_sizes: dict[str, int] = {}
        envs = []
        for image in self.client.images.list(filters={"label": f"{ENV_LABEL}=true"}):
            labels = image.labels or {}
            key = labels.get(f"{ENV_LABEL}.key")
            if not key:
                continue
            base_id = labels.get(f"{ENV_LABEL}.base", "")
            if base_id not in base_sizes:
                try:
                    base_sizes[base_id] = int(self.client.images.get(base_id).attrs.get("Size", 0))
                except Exception:  # noqa: BLE001 - the base was removed: the whole image is this env's
                    base_sizes[base_id] = 0
            built_at = float(labels.get(f"{ENV_LABEL}.built_at", 0))
            entry = ledger.get(key, {})
            envs.append(EnvInfo(key, self.tag(key), max(0, int(image.attrs.get("Size", 0)) - base_sizes[base_id]),
                                built_at, float(entry.get("build_seconds", 0.0)),
                                float(entry.get("last_used", built_at)),
                                tuple(json.loads(labels.get(f"{ENV_LABEL}.requirements", "[]")))))
        return envs

    def remove(self, key: str) -> None:
        import docker

        with self.locked(key):
            with contextlib.suppress(docker.errors.ImageNotFound):
                self.client.images.remove(self.tag(key), noprune=False)
            with self._guard:
                ledger = self._read_ledger()
                ledger.pop(key, None)
                self._write_ledger(ledger)

    def _record(self, key: str, build_seconds: float | None = None) -> None:
        with self._guard:
            ledger = self._read_ledger()
            entry = ledger.setdefault(key, {})
            entry["last_used"] = time.time()
            if build_seconds is not None:
                entry["build_seconds"] = round(build_seconds, 2)
            self._write_ledger(ledger)

    def _read_ledger(self) -> dict:
        try:
            data = json.loads(self._ledger.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_ledger(self, ledger: dict) -> None:
        partial = self._ledger.with_suffix(".partial")
        partial.write_text(json.dumps(ledger))
        partial.replace(self._ledger)


def _uv_buildargs() -> dict[str, str]:
    env = uv_environment()
    return {name: env[name] for name in ("UV_DEFAULT_INDEX", "UV_INDEX") if env.get(name)}


def _build_context(lines: list[str], files: tuple[tuple[str, str], ...], base_id: str, user: str, key: str,
                   base_image: str, built_at: float) -> io.BytesIO:
    """A tar with the Dockerfile and the requirements: nothing else from the host goes in."""
    labels = {ENV_LABEL: "true", f"{ENV_LABEL}.key": key, f"{ENV_LABEL}.base": base_id,
              f"{ENV_LABEL}.base_image": base_image, f"{ENV_LABEL}.built_at": f"{built_at:.3f}",
              f"{ENV_LABEL}.requirements": json.dumps(lines)}
    # uv trusts the image's certificate store (where an operator adds a company CA), not only
    # its own bundled roots: UV_SYSTEM_CERTS (UV_NATIVE_TLS before uv 0.9).
    install = ('if command -v uv >/dev/null 2>&1; then UV_SYSTEM_CERTS=1 UV_NATIVE_TLS=1 '
               'uv pip install --no-cache --compile-bytecode --python "$(command -v python)" '
               '-r /tmp/mlops-env/requirements.txt; '
               'else python -m pip install --no-cache-dir -r /tmp/mlops-env/requirements.txt; fi')
    dockerfile = "\n".join([
        f"FROM {base_id}",
        # labels first: every layer of the build carries them, so a failed build's leftovers are found
        "LABEL " + " ".join(f"{name}={json.dumps(value)}" for name, value in labels.items()),
        "ARG UV_DEFAULT_INDEX",
        "ARG UV_INDEX",
        "USER root",
        "COPY mlops-env/ /tmp/mlops-env/",
        f"RUN {install} && rm -rf /tmp/mlops-env",
        f"USER {user}",
        "",
    ])
    members = {"Dockerfile": dockerfile, "mlops-env/requirements.txt": "\n".join(lines) + "\n",
               **{f"mlops-env/{name}": content for name, content in files}}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in members.items():
            data = content.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(built_at)
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def _tree_size(folder: Path, shared: bool = True) -> int:
    """Bytes on disk, each hard-linked file counted once (uv links from its cache); with
    ``shared=False`` only files linked nowhere else (uv's cache: what it alone holds)."""
    seen, total = set(), 0
    for root, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                stat = os.lstat(os.path.join(root, name))
                if not shared and stat.st_nlink > 1:
                    continue
                if (stat.st_dev, stat.st_ino) not in seen:
                    seen.add((stat.st_dev, stat.st_ino))
                    total += stat.st_blocks * 512
    return total
