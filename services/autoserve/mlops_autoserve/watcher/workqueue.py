"""The watcher's deploy and stop work, scheduled so that no model can hold up another.

A deploy can take minutes (an environment build, a slow model load); one shared thread
pool let a model whose replicas all waited on a hanging build keep every other model's
alias move, and every stop, waiting behind it. Here:

* deploys wait in one FIFO queue per model and start round-robin across models, at most
  ``per_model_limit`` of one model and ``global_limit`` in all at a time: a model with
  every one of its slots blocked delays another model by one slot at most;
* stops have threads of their own and never wait behind a deploy (a drain is decided by
  the reconciler's cycle, before the stop is submitted);
* every queue is bounded: a deploy beyond ``max_waiting`` of its model, a stop beyond
  ``max_waiting_stops``, or anything submitted after :meth:`WorkQueue.shutdown` is not
  queued and its future fails at once with :class:`QueueFull` (or :class:`QueueClosed`).
  Submitting never raises, so the caller's ordinary failure path (a failed deploy is
  retried after its back-off, a failed stop at the next cycle) handles a full queue.

The futures are :class:`concurrent.futures.Future`: ``done()``, ``exception()``,
``cancelled()`` and ``add_done_callback`` work as with a ``ThreadPoolExecutor``.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("autoserve.workqueue")

__all__ = ["QueueClosed", "QueueFull", "WorkQueue"]


class QueueFull(Exception):
    """The work was not queued: too much of its kind is already waiting."""


class QueueClosed(Exception):
    """The work was not queued: the queue is shut down."""


@dataclass(frozen=True)
class _Task:
    future: Future
    fn: Callable[..., Any]
    args: tuple[Any, ...]

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():  # cancelled while it waited
            return
        try:
            result = self.fn(*self.args)
        except BaseException as exc:  # noqa: BLE001 - the future carries it, as ThreadPoolExecutor does
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)


class WorkQueue:
    """Per-model FIFO deploy queues served round-robin under two limits, and a stop lane."""

    def __init__(self, global_limit: int = 8, per_model_limit: int = 2, stop_workers: int = 2,
                 max_waiting: int = 64, max_waiting_stops: int = 1024, name: str = "deploy") -> None:
        if min(global_limit, per_model_limit, stop_workers, max_waiting, max_waiting_stops) < 1:
            raise ValueError("every work queue limit must be at least 1")
        self.global_limit = global_limit
        self.per_model_limit = per_model_limit
        self.stop_workers = stop_workers
        self.max_waiting = max_waiting
        self.max_waiting_stops = max_waiting_stops
        self._name = name
        self._lock = threading.Lock()
        self._wakeup = {"deploy": threading.Condition(self._lock), "stop": threading.Condition(self._lock)}
        self._waiting: dict[str, deque[_Task]] = {}  # model -> its deploys, oldest first
        self._turn: deque[str] = deque()  # models with waiting deploys, the next to be served first
        self._running: dict[str, int] = {}  # model -> deploys running now
        self._stops: deque[_Task] = deque()
        self._idle = {"deploy": 0, "stop": 0}  # threads waiting for work, by lane
        self._threads: dict[str, list[threading.Thread]] = {"deploy": [], "stop": []}
        self._closed = False

    # -- submitting ------------------------------------------------------------------------
    def submit_deploy(self, model: str, fn: Callable[..., Any], *args: Any) -> Future:
        """Queue ``fn(*args)`` behind ``model``'s earlier deploys; a failed future if it cannot wait."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                return _failed(future, QueueClosed("the work queue is shut down: deploy not queued"))
            queue = self._waiting.setdefault(model, deque())
            for task in [t for t in queue if t.future.cancelled()]:  # cancelled by the caller: no room taken
                queue.remove(task)
            waiting = len(queue)
            if waiting >= self.max_waiting:
                log.warning("deploy not queued: too many waiting for this model",
                            extra={"model": model, "waiting": waiting, "limit": self.max_waiting})
                return _failed(future, QueueFull(f"{waiting} deploys of {model} already waiting "
                                                 f"(limit {self.max_waiting}): not queued"))
            queue.append(_Task(future, fn, args))
            if model not in self._turn:
                self._turn.append(model)
            self._wake("deploy", self._runnable(), self.global_limit)
        return future

    def submit_stop(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` on the stop threads, which deploys never occupy."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                return _failed(future, QueueClosed("the work queue is shut down: stop not queued"))
            if len(self._stops) >= self.max_waiting_stops:
                log.warning("stop not queued: too many waiting", extra={"waiting": len(self._stops),
                                                                        "limit": self.max_waiting_stops})
                return _failed(future, QueueFull(f"{len(self._stops)} stops already waiting "
                                                 f"(limit {self.max_waiting_stops}): not queued"))
            self._stops.append(_Task(future, fn, args))
            self._wake("stop", len(self._stops), self.stop_workers)
        return future

    # -- what waits --------------------------------------------------------------------------
    def pending(self, model: str) -> int:
        """``model``'s deploys not finished yet: waiting (not cancelled) plus running."""
        with self._lock:
            waiting = sum(1 for task in self._waiting.get(model, ()) if not task.future.cancelled())
            return waiting + self._running.get(model, 0)

    def running(self, model: str | None = None) -> int:
        """Deploys running now, of ``model`` or of every model."""
        with self._lock:
            return self._running.get(model, 0) if model is not None else sum(self._running.values())

    # -- ending --------------------------------------------------------------------------------
    def shutdown(self, wait: bool = True, cancel: bool = True) -> None:
        """Accept nothing more. ``cancel``: cancel every deploy and stop still waiting (else they
        still run). ``wait``: return once the running ones finished; otherwise they are
        abandoned (their threads are daemons and do not keep the process alive)."""
        with self._lock:
            self._closed = True
            if cancel:
                for queue in self._waiting.values():
                    for task in queue:
                        task.future.cancel()
                for task in self._stops:
                    task.future.cancel()
                self._waiting.clear()
                self._turn.clear()
                self._stops.clear()
            for condition in self._wakeup.values():
                condition.notify_all()
            threads = [t for lane in self._threads.values() for t in lane]
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()

    # -- the workers ---------------------------------------------------------------------------
    def _runnable(self) -> int:
        """Deploys that could start now if a thread were free (caller holds the lock)."""
        return sum(min(len(queue), max(0, self.per_model_limit - self._running.get(model, 0)))
                   for model, queue in self._waiting.items())

    def _wake(self, lane: str, runnable: int, limit: int) -> None:
        """Wake idle threads for new work; start one more while work outnumbers idle threads
        (threads start on demand, never more than ``limit``; caller holds the lock)."""
        self._wakeup[lane].notify_all()
        threads = self._threads[lane]
        if runnable > self._idle[lane] and len(threads) < limit:
            target = self._deploy_worker if lane == "deploy" else self._stop_worker
            prefix = self._name if lane == "deploy" else "stop"
            thread = threading.Thread(target=target, name=f"{prefix}-{len(threads)}", daemon=True)
            threads.append(thread)
            thread.start()

    def _next_deploy(self) -> tuple[str, _Task] | None:
        """The oldest deploy of the first model in turn below its limit (caller holds the lock)."""
        for model in list(self._turn):
            if self._running.get(model, 0) >= self.per_model_limit:
                continue  # keeps its place in turn
            queue = self._waiting[model]
            task = queue.popleft()
            self._turn.remove(model)
            if queue:
                self._turn.append(model)  # served: to the back of the line
            else:
                del self._waiting[model]
            return model, task
        return None

    def _deploy_worker(self) -> None:
        while True:
            with self._lock:
                picked = self._next_deploy()
                while picked is None:
                    if self._closed and not self._waiting:
                        return
                    self._idle["deploy"] += 1
                    self._wakeup["deploy"].wait()
                    self._idle["deploy"] -= 1
                    picked = self._next_deploy()
                model, task = picked
                self._running[model] = self._running.get(model, 0) + 1
            try:
                task.run()
            finally:
                with self._lock:
                    left = self._running[model] - 1
                    if left:
                        self._running[model] = left
                    else:
                        del self._running[model]
                    if model in self._waiting or self._closed:  # its next may start; or nothing is left
                        self._wakeup["deploy"].notify_all()

    def _stop_worker(self) -> None:
        while True:
            with self._lock:
                while not self._stops:
                    if self._closed:
                        return
                    self._idle["stop"] += 1
                    self._wakeup["stop"].wait()
                    self._idle["stop"] -= 1
                task = self._stops.popleft()
            task.run()


def _failed(future: Future, error: Exception) -> Future:
    future.set_exception(error)
    return future
