"""Many independent items (X-rays to register, DRRs to render) on the workers of a Dask distributed cluster.

    client = connect("tcp://scheduler:8786")          # InputError when unreachable: nothing is written before it
    results = map_in_order(client, fn, tasks, names, progress, failed=lambda index, error: ...)

`fn(progress, *task)` runs on a worker (it must be a module-level function of an installed module) and gets a
Progress whose updates and log lines come back to the caller's Progress as Dask events, named by item; the results
come back in task order. A worker keeps what is expensive to build (a CT, its pyramid, a renderer) between items with
`worker_cached(key, build)`. An item whose task raises is run once more (`retries=1`); a worker that dies while
running one has it rerun elsewhere by the scheduler (its `distributed.scheduler.allowed-failures`); what still fails
goes to `failed(index, error)`, which returns the item's result (or raises to stop the run). Ctrl-C / SIGTERM cancels
every future, and the running tasks stop at their next progress update (their atomic writers clean up).

Dask is imported lazily: the engine works without it (`pip install 'xraytodrr[dask]'` adds it).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import pickle
import queue
import threading
import time
import uuid
from typing import Callable

from .errors import InputError
from .progress import Progress

CONNECT_TIMEOUT = 10.0  # seconds to reach the scheduler before the address counts as wrong
UPDATE_INTERVAL = 0.5   # seconds between a worker's progress events (scheduler traffic, not every iteration)
POLL_INTERVAL = 0.1     # seconds between the caller's looks at finished futures and events
CACHE_SIZE = 2          # objects a worker keeps (e.g. two CTs while a run's items alternate between them)
INSTALL_FIX = "install it with pip install 'xraytodrr[dask]' (on the workers too)"


class Cancelled(Exception):
    """Raised inside a worker's task once its future was cancelled (the caller stopped)."""


def _distributed():
    try:
        import distributed
    except ImportError:
        raise InputError("--dask needs Dask distributed, which is not installed", None, INSTALL_FIX) from None
    return distributed


def connect(address: str, timeout: float | None = None):
    """A `distributed.Client` of the scheduler at `address`, or InputError saying how to fix it."""
    distributed = _distributed()
    timeout = CONNECT_TIMEOUT if timeout is None else timeout
    fix = ("start a scheduler (`dask scheduler`) and workers (`dask worker ADDRESS`) and give the address it "
           "prints, e.g. --dask tcp://HOST:8786 (see the README: Many X-rays on a cluster)")
    try:
        return distributed.Client(str(address), timeout=timeout, set_as_default=False)
    except ValueError as e:  # not an address at all
        raise InputError(f"--dask {address}: {e}", None, fix) from None
    except (OSError, TimeoutError) as e:
        raise InputError(f"--dask {address}: no Dask scheduler answered within {timeout:g} s ({e})", None,
                         fix) from None


# --- on a worker ------------------------------------------------------------------------------------------------
_cache: collections.OrderedDict = collections.OrderedDict()  # key -> (object, lock); per worker process
_cache_lock = threading.Lock()


def cache_key(*parts) -> str:
    """A short stable key of picklable parts (options dataclasses, paths)."""
    return hashlib.sha256(pickle.dumps(parts)).hexdigest()[:24]


@contextlib.contextmanager
def worker_cached(key: str, build: Callable[[], object]):
    """The object `build()` made for `key` in this worker process (built on first use), held under its own lock
    so a worker with several threads never shares it between two tasks at once."""
    with _cache_lock:
        entry = _cache.get(key)
        if entry is None:
            entry = _cache[key] = (None, threading.Lock())
        _cache.move_to_end(key)
        while len(_cache) > CACHE_SIZE:  # the oldest goes (its GPU memory with it) unless a task still holds it
            _cache.popitem(last=False)
    with entry[1]:
        obj = _cache.get(key, entry)[0]
        if obj is None:
            obj = build()
            with _cache_lock:
                _cache[key] = (obj, entry[1])
        yield obj


class WorkerProgress(Progress):
    """A task's Progress on a worker: updates (throttled) and log lines as events on the run's topic; raises
    Cancelled once the caller has cancelled the task."""

    def __init__(self, topic: str, index: int):
        super().__init__()
        from distributed import get_worker

        self.worker, self.topic, self.index, self._last = get_worker(), topic, index, 0.0
        self.key = self.worker.get_current_task()

    def _check(self) -> None:
        task = self.worker.state.tasks.get(self.key)
        if task is None or task.state in ("cancelled", "released", "forgotten"):
            raise Cancelled(f"task {self.key} was cancelled")

    def update(self, fraction: float, message: str = "") -> None:
        now = time.monotonic()
        if fraction < 1.0 and now - self._last < UPDATE_INTERVAL:
            return
        self._last = now
        self._check()
        self.worker.log_event(self.topic, {"index": self.index, "fraction": float(fraction), "message": message})

    def log(self, message: str) -> None:
        self.worker.log_event(self.topic, {"index": self.index, "log": message})


def _run(fn, topic: str, index: int, *task):
    return fn(WorkerProgress(topic, index), *task)


# --- on the caller ----------------------------------------------------------------------------------------------
def map_in_order(client, fn: Callable, tasks: list[tuple], names: list[str], progress: Progress,
                 failed: Callable[[int, BaseException], object],
                 finished: Callable[[int, object], object] | None = None) -> list:
    """fn(progress, *tasks[i]) on the cluster for every i; the results in task order (see the module docstring),
    each passed through `finished(index, result)` as it arrives when given. Closes nothing: the caller owns
    `client`."""
    distributed = _distributed()
    topic = f"xraytodrr-{uuid.uuid4().hex}"
    events: queue.SimpleQueue = queue.SimpleQueue()
    client.subscribe_topic(topic, events.put)
    workers = len(client.nthreads())
    progress.log(f"{len(tasks)} item(s) on the Dask cluster at {client.scheduler.address} "
                 f"({workers} worker{'s' * (workers != 1)} now{': they wait for workers to join' * (not workers)})")
    n = len(tasks)
    results: list = [None] * n
    fractions = [0.0] * n
    futures = [client.submit(_run, fn, topic, i, *task, key=f"{getattr(fn, '__name__', 'task')}-{i}-{topic}",
                             retries=1, pure=False) for i, task in enumerate(tasks)]
    index_of = {f.key: i for i, f in enumerate(futures)}

    def drain() -> None:
        while True:
            try:
                _, message = events.get_nowait()
            except queue.Empty:
                return
            i = message.get("index")
            if not isinstance(i, int) or not 0 <= i < n or fractions[i] >= 1.0:
                continue
            if "log" in message:
                progress.log(f"{names[i]}: {message['log']}")
            else:
                fractions[i] = max(fractions[i], min(float(message["fraction"]), 0.99))  # never goes back
                progress.update(sum(fractions) / n, f"{names[i]}: {message['message']}")

    def record(future) -> None:
        i = index_of[future.key]
        drain()  # the item's last log lines before its result
        if future.status == "finished":
            results[i] = future.result() if finished is None else finished(i, future.result())
        else:
            try:
                error = future.exception()
            except distributed.CancelledError as e:  # cancelled elsewhere (e.g. the scheduler restarted)
                error = e
            results[i] = failed(i, error)
        fractions[i] = 1.0
        done = sum(f == 1.0 for f in fractions)
        progress.log(f"[{done}/{n}] {names[i]}")
        progress.update(sum(fractions) / n, f"{done}/{n} done")

    pending = distributed.as_completed(futures, loop=client.loop)
    try:
        while not pending.is_empty():
            if pending.has_ready():
                for future in pending.next_batch(block=False):
                    record(future)
            else:
                drain()
                time.sleep(POLL_INTERVAL)
        drain()
    except BaseException:  # Ctrl-C, SIGTERM (SystemExit), or `failed` stopping the run: stop the others
        client.cancel(futures)
        raise
    finally:
        with contextlib.suppress(Exception):
            client.unsubscribe_topic(topic)
    return results
