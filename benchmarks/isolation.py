"""Isolation: does one model's trouble, or a hung audit store, stop the watcher serving the others?

Three faults on real processes: a local MLflow server, real sklearn versions, and the checkout's
own ``mlops autoserve --poll-interval 1`` (process runtime, one replica per version), measured
as a client of the gateway sees them:

1. **Garbage tag.** Models A and B, both versions of each served (aliases Production and
   challenger). A gets a ``mlops.rollout.Production`` tag whose ``steps`` list is empty, as a
   broken tool or a hand edit might leave it. Then B's Production moves v1 -> v2: seconds until
   the gateway answers B@Production with ``X-Model-Version: 2`` (a model nobody touched must
   keep following its aliases), and whether B moves once A's tag is deleted.
2. **Blocked version.** In prod, C's Production moved v1 -> v2 (both approved), v2 serving;
   then ``mlops block C --version 2``. What answers C@Production 8 s later, and the seconds
   until v1 (the alias history's previous version) or a 503 answers: a blocked version must
   stop serving, not keep serving because it was serving.
3. **Audit store hung.** The watcher writes its audit events (autoserve.deploy/switch) to
   ``s3://audit/events`` on moto's S3 server (a stand-in for the stack's MinIO, which cannot run
   here). The store's port is made to hang, the real failure of a stuck object store (a TCP peer
   that accepts and never answers, unlike a refused port, which fails fast), while D's alias
   moves twice: the longest reconcile cycle in the window (``autoserve_reconcile_duration_seconds``
   buckets), the seconds each move took to serve, and, once the store is back, how many of the
   moves' audit events arrived.

The same script measures any checkout (``--repo``, default: the one it is in), so it gives the
figures before and after a change: a ``git worktree`` of an old commit is run with this
interpreter and the worktree first on PYTHONPATH, and the script checks that the modules
imported really are the worktree's.

    python benchmarks/isolation.py [--repo PATH] [--hang 30] [--out NAME] [--only SCENARIO] [--keep]
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (python benchmarks/isolation.py): import from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.support import (  # noqa: E402
    Checkout,
    CheckoutWatcher,
    HungPort,
    ServingStack,
    log_iris_versions,
    print_table,
    write_json,
)
from mlops_toolkit.ops.processes import free_port  # noqa: E402
from tests.harness import IRIS_SPLIT, wait_for  # noqa: E402

POLL_S = 1.0
GIVE_UP_S = 60.0  # how long a client waits for a move before "never"
READY_S = 180.0  # a first deployment: model download, uvicorn start, smoke test
BLOCK_PROBE_S = 8.0
ARRIVAL_S = 15.0  # after the store is back, the time its events get to arrive
BUCKET, AUDIT_URI = "audit", "s3://audit/events"
DUMMY_AWS = {"AWS_ACCESS_KEY_ID": "moto-bench", "AWS_SECRET_ACCESS_KEY": "moto-bench",
             "AWS_DEFAULT_REGION": "us-east-1"}
# Left out of every command's environment unless a scenario sets them: the figures must not
# depend on the caller's shell (an audit trail, a policy, an environment of its own).
OWN_VARS = ("MLOPS_AUDIT_URI", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "MLOPS_ENVIRONMENT", "MLOPS_POLICY_FILE",
            *DUMMY_AWS)
HISTOGRAM = "autoserve_reconcile_duration_seconds"


@dataclass(frozen=True)
class Row:
    scenario: str
    figure: str
    value: str


@dataclass(frozen=True)
class Bench:
    """What every scenario shares: the code measured, the tracking server, a scratch dir."""

    checkout: Checkout
    uri: str
    root: Path
    hang_s: float

    def env(self, **extra: str) -> dict[str, str]:
        return self.checkout.env({"MLFLOW_TRACKING_URI": self.uri, **extra}, drop=OWN_VARS)

    def mlops(self, *args: str, **extra_env: str) -> None:
        self.checkout.run(*args, env=self.env(**extra_env))

    def set_alias(self, model: str, alias: str, version: int, **extra_env: str) -> None:
        self.mlops("alias", "set", alias, "--model", model, "--version", str(version), **extra_env)

    def watcher(self, name: str, models: list[str], *extra: str, **env: str) -> CheckoutWatcher:
        return CheckoutWatcher(self.checkout, self.env(**env), self.uri, self.root / name, models, "--replicas", "1",
                               *extra, poll_interval=POLL_S).start()


def answer(watcher: CheckoutWatcher, model: str, alias: str) -> tuple[int | None, str | None]:
    """(status, X-Model-Version) of one valid iris request through the gateway; (None, None)
    when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", watcher.port, timeout=10)
    try:
        conn.request("POST", f"/serve/{model}/{alias}/invocations", body=json.dumps(IRIS_SPLIT),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("X-Model-Version")
    except (OSError, http.client.HTTPException):
        return None, None
    finally:
        conn.close()


def answers(watcher: CheckoutWatcher, model: str, alias: str, version: int) -> bool:
    return answer(watcher, model, alias) == (200, str(version))


def seconds_until(done: Callable[[], bool], since: float, limit: float = GIVE_UP_S) -> float | None:
    """Seconds from ``since`` (monotonic) until ``done()`` holds, polled every 0.2 s; None past ``limit``."""
    held = wait_for(done, max(0.0, since + limit - time.monotonic()), interval=0.2, default=False)
    return time.monotonic() - since if held else None


def took(seconds: float | None, limit: float = GIVE_UP_S) -> str:
    return f"{seconds:.1f} s" if seconds is not None else f"never (> {limit:.0f} s)"


def serve_all(watcher: CheckoutWatcher, wanted: dict[tuple[str, str], int]) -> None:
    for (model, alias), version in wanted.items():
        wait_for(lambda m=model, a=alias, v=version: answers(watcher, m, a, v), READY_S,
                 what=f"{model}@{alias} answering v{version} (log {watcher.log_path})")


# -- 1. a garbage rollout tag on another model ---------------------------------------------
def garbage_tag(bench: Bench) -> list[Row]:
    """A's rollout tag is unreadable as a rollout (no steps): does B still follow its alias?"""
    from mlflow import MlflowClient

    a, b = "iso-a", "iso-b"
    versions = {m: log_iris_versions(bench.uri, m, 2) for m in (a, b)}
    for model, (v1, v2) in versions.items():
        bench.set_alias(model, "Production", v1)
        bench.set_alias(model, "challenger", v2)
    watcher = bench.watcher("garbage", [a, b])
    try:
        serve_all(watcher, {(m, alias): v for m, pair in versions.items()
                            for alias, v in zip(("Production", "challenger"), pair)})
        (a1, a2), (_, b2) = versions[a], versions[b]
        tag = "mlops.rollout.Production"
        garbage = {"to": "challenger", "candidate": a2, "baseline": a1, "steps": [], "step_seconds": 60,
                   "max_error_rate": 0.01, "max_p95_ms": 500}
        client = MlflowClient(bench.uri, registry_uri=bench.uri)
        client.set_registered_model_tag(a, tag, json.dumps(garbage))
        time.sleep(3 * POLL_S)  # the watcher has read the tag
        bench.set_alias(b, "Production", b2)
        moved = time.monotonic()
        served = seconds_until(lambda: answers(watcher, b, "Production", b2), moved)
        status, version = answer(watcher, a, "Production")
        client.delete_registered_model_tag(a, tag)
        deleted = time.monotonic()
        after = None if served is not None else seconds_until(lambda: answers(watcher, b, "Production", b2), deleted)
    finally:
        watcher.stop_everything()
    return [
        Row("garbage tag on A", "B@Production v1->v2 answering after", took(served)),
        Row("garbage tag on A", "A@Production meanwhile", f"HTTP {status}, X-Model-Version {version}"),
        Row("garbage tag on A", "B moves once A's tag is deleted",
            "n/a (B had moved)" if served is not None else
            (f"yes, after {after:.1f} s" if after is not None else f"no (> {GIVE_UP_S:.0f} s)")),
    ]


# -- 2. the version serving in prod is blocked ---------------------------------------------
def blocked_version(bench: Bench) -> list[Row]:
    """In prod, the version C@Production serves is blocked: does it stop answering?"""
    c = "iso-c"
    v1, v2 = log_iris_versions(bench.uri, c, 2)
    prod = {"MLOPS_ENVIRONMENT": "prod"}
    for version in (v1, v2):
        bench.mlops("approve", c, "--version", str(version), "--reason", "benchmark", **prod)
    bench.set_alias(c, "Production", v1, **prod)
    watcher = bench.watcher("blocked", [c], "--environment", "prod", **prod)
    try:
        serve_all(watcher, {(c, "Production"): v1})
        bench.set_alias(c, "Production", v2, **prod)  # the alias history now holds v1
        serve_all(watcher, {(c, "Production"): v2})
        bench.mlops("block", c, "--version", str(v2), "--reason", "leaked split", **prod)
        blocked = time.monotonic()
        samples: list[tuple[float, int | None, str | None]] = []
        while time.monotonic() - blocked < GIVE_UP_S:
            samples.append((time.monotonic() - blocked, *answer(watcher, c, "Production")))
            stopped = any(s == 503 or v == str(v1) for _, s, v in samples)
            if stopped and samples[-1][0] >= BLOCK_PROBE_S:
                break
            time.sleep(0.2)
    finally:
        watcher.stop_everything()
    _, status, version = next(s for s in samples if s[0] >= BLOCK_PROBE_S)
    first = next(((t, s, v) for t, s, v in samples if s == 503 or v == str(v1)), None)
    stopped = f"{'v1' if first[1] == 200 else 'HTTP 503'} after {first[0]:.1f} s" if first else \
        f"never (> {GIVE_UP_S:.0f} s): v2 kept answering"
    return [
        Row("blocked version (prod)", f"C@Production {BLOCK_PROBE_S:.0f} s after v2 was blocked",
            f"HTTP {status}, X-Model-Version {version}"),
        Row("blocked version (prod)", "v1 (or 503) answering after", stopped),
    ]


# -- 3. the audit trail's object store hangs -----------------------------------------------
class S3StandIn:
    """moto's S3 server on a fixed port with an empty bucket, stopped and started again on
    the same port (moto keeps its state in memory: a restarted one is given the bucket again)."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port, self.log_path = port, log_path
        self.daemon: Any = None  # tests.daemons.Daemon while it runs

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        import boto3

        return boto3.session.Session(aws_access_key_id=DUMMY_AWS["AWS_ACCESS_KEY_ID"],
                                     aws_secret_access_key=DUMMY_AWS["AWS_SECRET_ACCESS_KEY"],
                                     region_name=DUMMY_AWS["AWS_DEFAULT_REGION"]).client("s3", endpoint_url=self.url)

    def start(self) -> S3StandIn:
        from tests.daemons import Daemon, binary

        moto = binary("moto_server", path=str(Path(sys.executable).parent))
        self.daemon = Daemon([moto, "-H", "127.0.0.1", "-p", str(self.port)], self.port, self.log_path, ready_path="/")
        self.client().create_bucket(Bucket=BUCKET)
        return self

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None

    def actions(self) -> Counter[str]:
        """Audit events in the bucket by action (keys end ``<ns>-<action>-<random>.json``)."""
        listed = self.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])
        return Counter(item["Key"].rsplit("/", 1)[-1].split("-", 1)[1].rsplit("-", 1)[0] for item in listed)


def reconcile_buckets(watcher: CheckoutWatcher) -> dict[float, float]:
    """The watcher's reconcile-duration histogram: cumulative count per upper bound (inf included)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(watcher.watcher_url + "/metrics", timeout=10) as page:
        text = page.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == HISTOGRAM:
            return {float(s.labels["le"]): s.value for s in family.samples if s.name == HISTOGRAM + "_bucket"}
    raise RuntimeError(f"{HISTOGRAM} is not on {watcher.watcher_url}/metrics")


class StallWatch:
    """Polls the watcher's ``autoserve_last_reconcile_timestamp_seconds`` (its /metrics answers
    from a thread of its own while the loop is stuck) and keeps the longest time seen since
    a cycle last finished: the stall itself, finer than the duration buckets."""

    def __init__(self, watcher: CheckoutWatcher, every_s: float = 0.5) -> None:
        self.watcher, self.every_s, self.longest = watcher, every_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                last = self.watcher.metric("autoserve_last_reconcile_timestamp_seconds")
            except OSError:
                continue
            if last:
                self.longest = max(self.longest, time.time() - last)

    def __enter__(self) -> StallWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def longest_cycle(before: dict[float, float], after: dict[float, float]) -> tuple[str, int]:
    """Between two readings: the bucket the longest cycle fell in (``lo-hi s``, the highest
    bucket whose own count rose) and how many cycles ran."""
    bounds = sorted(after)
    rose = [after[b] - before.get(b, 0.0) for b in bounds]  # cumulative, like the buckets
    own = [n - below for n, below in zip(rose, [0.0, *rose])]
    highest = max((i for i, n in enumerate(own) if n > 0), default=None)
    if highest is None:
        return "no cycle ran", 0
    lo, hi = (bounds[highest - 1] if highest else 0.0), bounds[highest]
    return (f"> {lo:g} s" if hi == float("inf") else f"{lo:g}-{hi:g} s"), int(rose[-1])


def store_hung(bench: Bench) -> list[Row]:
    """The watcher's audit store hangs while D's alias moves twice; then it comes back."""
    hang_s = bench.hang_s
    d = "iso-d"
    v1, v2 = log_iris_versions(bench.uri, d, 2)
    store = S3StandIn(free_port(), bench.root / "moto.log").start()
    audit_env = {"MLOPS_AUDIT_URI": AUDIT_URI, "AWS_ENDPOINT_URL": store.url, **DUMMY_AWS}
    bench.set_alias(d, "Production", v1)  # the CLI's own env has no audit trail: only the watcher writes one
    watcher = bench.watcher("hung", [d], **audit_env)
    back = threading.Event()
    back_at: list[float] = []
    failures: list[BaseException] = []

    def outage() -> None:
        try:
            with HungPort(store.port):
                time.sleep(hang_s)
            store.start()
            back_at.append(time.monotonic())
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)
        finally:
            back.set()

    try:
        serve_all(watcher, {(d, "Production"): v1})
        time.sleep(3 * POLL_S)  # the first deployment's event is written; the loop is idle
        before = reconcile_buckets(watcher)
        store.stop()
        thread = threading.Thread(target=outage, daemon=True)
        with StallWatch(watcher) as stall:
            started = time.monotonic()
            thread.start()
            moves = []
            for version in (v2, v1):
                bench.set_alias(d, "Production", version)
                moved = time.monotonic()
                moves.append(seconds_until(lambda v=version: answers(watcher, d, "Production", v), moved, READY_S))
            both = time.monotonic() - started
            if not back.wait(hang_s + 60) or failures:
                raise RuntimeError(f"the S3 stand-in did not come back: {failures[0] if failures else 'timed out'}")
            time.sleep(max(0.0, back_at[0] + ARRIVAL_S - time.monotonic()))
        after = reconcile_buckets(watcher)
        arrived = store.actions()
        window = time.monotonic() - started
    finally:
        watcher.stop_everything()
        store.stop()
    longest, cycles = longest_cycle(before, after)
    written = ("autoserve.deploy", "autoserve.switch")  # what the two moves write: one of each per move
    moved = sum(arrived[a] for a in written)
    others = ", ".join(f"{a} {n}" for a, n in sorted(arrived.items()) if a not in written)
    name = f"audit store hung {hang_s:.0f} s"
    return [
        Row(name, f"longest reconcile cycle ({cycles} cycles in {window:.0f} s)", longest),
        Row(name, "longest time since the last finished cycle (polled)", f"{stall.longest:.1f} s"),
        Row(name, "move 1 (v1->v2) answering after", took(moves[0], READY_S)),
        Row(name, "move 2 (v2->v1) answering after", took(moves[1], READY_S)),
        Row(name, "both moves served, wall time from the hang", f"{both:.1f} s" if None not in moves else "-"),
        Row(name, f"move events in the store {ARRIVAL_S:.0f} s after it came back ({back_at[0] - started:.0f} s in)",
            f"{moved} of 4 (deploy {arrived['autoserve.deploy']}, switch {arrived['autoserve.switch']})"
            + (f"; also {others}" if others else "")),
    ]


SCENARIOS: dict[str, Callable[[Bench], list[Row]]] = {
    "garbage-tag": garbage_tag, "blocked-version": blocked_version, "store-hung": store_hung,
}


def code_under_test(checkout: Checkout) -> dict[str, str | dict[str, str]]:
    """Commit and imported module files of the checkout; raises if any module comes from elsewhere."""
    service = checkout.root / "services" / "autoserve" / "mlops_autoserve"
    layout = "mlops_autoserve.watcher." if (service / "watcher").is_dir() else "mlops_autoserve."  # old: no watcher/
    reconciler = layout + "reconciler"
    modules = checkout.imported("mlops_toolkit", "mlops_autoserve", reconciler)
    foreign = {m: f for m, f in modules.items() if not Path(f).resolve().is_relative_to(checkout.root)}
    if foreign or len(modules) < 3:
        raise SystemExit(f"the checkout's modules are not the ones imported: {foreign or modules}")
    git = ["git", "-C", str(checkout.root)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True).stdout.strip())
    return {"repo": str(checkout.root), "commit": commit + (" + uncommitted changes" if dirty else ""),
            "mlops": str(checkout.mlops), "modules": modules}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="Checkout whose mlops is measured (default: the one this script is in).")
    parser.add_argument("--hang", type=float, default=30.0, help="Seconds the audit store hangs.")
    parser.add_argument("--out", default="isolation", help="Results file: benchmarks/results/NAME.json.")
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append", help="Run only this scenario "
                        "(repeatable; default: all).")
    parser.add_argument("--keep", action="store_true", help="Keep the scratch directory (watcher and server logs).")
    args = parser.parse_args()
    checkout = Checkout(args.repo.resolve())
    code = code_under_test(checkout)
    print(f"code under test: {code['repo']} at {code['commit']}")
    for module, path in code["modules"].items():
        print(f"  {module}: {path}")
    scratch = Path(tempfile.mkdtemp(prefix="isolation-"))
    try:
        with ServingStack(scratch, versions=0) as stack:
            bench = Bench(checkout, stack.uri, scratch, args.hang)
            rows = [row for name in (args.only or SCENARIOS) for row in SCENARIOS[name](bench)]
    finally:
        if args.keep:
            print(f"logs kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"\nIsolation (process runtime, --poll-interval {POLL_S:g}, one replica each; {code['commit']})")
    print_table(["scenario", "figure", "value"], [[r.scenario, r.figure, r.value] for r in rows])
    data = {**code, "poll_interval_s": POLL_S, "hang_s": args.hang, "results": [asdict(r) for r in rows]}
    print(f"written {write_json(args.out, data)}")


if __name__ == "__main__":
    main()
