"""The fair work queue on real threads: no MLflow, no processes; each test runs in well under a second."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from mlops_autoserve.watcher.workqueue import QueueClosed, QueueFull, WorkQueue

WAIT = 5.0  # seconds any single step may take on a loaded machine (each normally takes milliseconds)


class Concurrency:
    """Counts how many tasks run at once, overall and per model; tasks block until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started: list[str] = []
        self.now: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.peak_total = 0
        self._lock = threading.Lock()

    def task(self, model: str, label: str | None = None) -> str:
        with self._lock:
            self.started.append(label or model)
            self.now[model] = self.now.get(model, 0) + 1
            self.peak[model] = max(self.peak.get(model, 0), self.now[model])
            self.peak_total = max(self.peak_total, sum(self.now.values()))
        try:
            assert self.release.wait(WAIT), "never released"
            time.sleep(0.002)  # overlap enough for a limit breach to show
        finally:
            with self._lock:
                self.now[model] -= 1
        return label or model


@pytest.fixture
def queue() -> Iterator[WorkQueue]:
    work = WorkQueue(global_limit=4, per_model_limit=2, stop_workers=2, max_waiting=8)
    yield work
    work.shutdown(wait=True, cancel=True)


def _wait(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_a_model_blocked_on_every_slot_delays_another_model_by_one_slot_at_most(queue):
    hang = threading.Event()
    blocked = [queue.submit_deploy("a", hang.wait, WAIT) for _ in range(6)]  # a failing build, six replicas
    _wait(lambda: queue.running("a") == 2, "a's two slots taken")
    started = time.monotonic()
    other = queue.submit_deploy("b", lambda: "b ready")
    assert other.result(timeout=WAIT) == "b ready"
    assert time.monotonic() - started < 1.0
    assert queue.running("a") == 2 and queue.pending("a") == 6  # a still holds only its own two
    hang.set()
    assert all(f.result(timeout=WAIT) for f in blocked)


def test_stops_run_while_every_deploy_slot_is_blocked(queue):
    hang = threading.Event()
    for model in ("a", "b"):
        for _ in range(3):
            queue.submit_deploy(model, hang.wait, WAIT)
    _wait(lambda: queue.running() == 4, "all four deploy slots taken")
    stopped = [queue.submit_stop(lambda n=n: f"stopped {n}") for n in range(5)]
    assert [f.result(timeout=WAIT) for f in stopped] == [f"stopped {n}" for n in range(5)]
    assert queue.running() == 4  # the deploys were never in the way
    hang.set()


def test_per_model_and_global_limits_hold():
    work = WorkQueue(global_limit=5, per_model_limit=2, stop_workers=1, max_waiting=20)
    counter = Concurrency()
    futures = [work.submit_deploy(m, counter.task, m) for m in ("a", "b", "c", "d") for _ in range(6)]
    _wait(lambda: sum(counter.now.values()) == 5, "five running")
    time.sleep(0.05)  # a breach would show up now: nothing else may start
    assert sum(counter.now.values()) == 5 and max(counter.now.values()) <= 2
    counter.release.set()
    assert sorted(f.result(timeout=WAIT) for f in futures) == sorted(["a", "b", "c", "d"] * 6)
    assert counter.peak_total == 5 and max(counter.peak.values()) == 2
    work.shutdown(wait=True, cancel=True)


def test_models_take_turns_and_each_keeps_its_own_order():
    work = WorkQueue(global_limit=1, per_model_limit=1, stop_workers=1)
    gate = threading.Event()
    first = work.submit_deploy("a", gate.wait, WAIT)  # holds the only slot while the rest queue up
    _wait(lambda: work.running() == 1, "the first deploy running")
    order: list[str] = []
    for label in ("a1", "a2", "a3", "b1", "b2", "c1"):
        work.submit_deploy(label[0], order.append, label)
    gate.set()
    first.result(timeout=WAIT)
    _wait(lambda: len(order) == 6, "every deploy done")
    assert order == ["a1", "b1", "c1", "a2", "b2", "a3"]  # one each in turn, not a's three first
    work.shutdown(wait=True, cancel=True)


def test_a_model_queue_is_bounded_and_a_full_one_fails_the_future(queue):
    hang = threading.Event()
    queued = [queue.submit_deploy("a", hang.wait, WAIT) for _ in range(2)]
    _wait(lambda: queue.running("a") == 2, "a's two slots taken")
    queued += [queue.submit_deploy("a", hang.wait, WAIT) for _ in range(8)]  # the most that may wait
    assert not any(f.done() for f in queued)
    refused = queue.submit_deploy("a", hang.wait, WAIT)
    assert refused.done() and isinstance(refused.exception(), QueueFull)
    assert "8 deploys of a already waiting (limit 8)" in str(refused.exception())
    assert queue.submit_deploy("b", lambda: "fine").result(timeout=WAIT) == "fine"  # other models unaffected
    assert queue.pending("a") == 10
    queued[-1].cancel()  # a cancelled deploy gives its place back
    assert not queue.submit_deploy("a", lambda: None).done()
    hang.set()


def test_shutdown_cancels_what_waits_and_lets_the_running_finish():
    work = WorkQueue(global_limit=2, per_model_limit=1, stop_workers=1)
    gate = threading.Event()
    running = [work.submit_deploy(m, gate.wait, WAIT) for m in ("a", "b")]
    _wait(lambda: work.running() == 2, "both running")
    waiting = [work.submit_deploy(m, gate.wait, WAIT) for m in ("a", "a", "b")]

    def release_once_cancelled() -> None:  # the running ones end only after shutdown cancelled the rest
        _wait(lambda: all(f.cancelled() for f in waiting), "the waiting ones cancelled")
        gate.set()

    threading.Thread(target=release_once_cancelled, daemon=True).start()
    work.shutdown(wait=True, cancel=True)
    assert all(f.cancelled() for f in waiting)
    assert all(f.done() and not f.cancelled() and f.result() is True for f in running)
    late = work.submit_deploy("a", lambda: None)
    assert isinstance(late.exception(), QueueClosed)
    assert isinstance(work.submit_stop(lambda: None).exception(), QueueClosed)


def test_shutdown_without_cancel_runs_what_waits():
    work = WorkQueue(global_limit=1, per_model_limit=1, stop_workers=1)
    gate = threading.Event()
    futures = [work.submit_deploy("a", gate.wait, WAIT) for _ in range(3)]
    threading.Timer(0.05, gate.set).start()
    work.shutdown(wait=True, cancel=False)
    assert [f.result(timeout=0) for f in futures] == [True, True, True]


def test_futures_behave_like_thread_pool_futures(queue):
    seen = threading.Event()
    failed = queue.submit_deploy("a", _raise, ValueError("build failed: no such package"))
    failed.add_done_callback(lambda _: seen.set())
    assert seen.wait(WAIT) and failed.done() and not failed.cancelled()
    assert str(failed.exception()) == "build failed: no such package"
    stop = queue.submit_stop(_raise, OSError("gone"))
    assert isinstance(stop.exception(timeout=WAIT), OSError)


def test_threads_start_on_demand_and_limits_must_be_positive():
    work = WorkQueue(global_limit=8, per_model_limit=2, stop_workers=2)
    before = threading.active_count()
    assert work.submit_deploy("a", lambda: 1).result(timeout=WAIT) == 1
    assert threading.active_count() - before <= 1  # one deploy, one thread: not eight idle ones
    work.shutdown(wait=True, cancel=True)
    with pytest.raises(ValueError, match="at least 1"):
        WorkQueue(per_model_limit=0)


def _raise(exc: BaseException) -> None:
    raise exc
