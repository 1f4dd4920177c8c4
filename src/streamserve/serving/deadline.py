"""Calls with a time limit: model loads, validation probes and the scoring of a batch.

Python cannot interrupt a thread, and a model library stuck in native code (a kernel that never
returns, a lock that is never released) cannot be stopped from the outside at all. So a call
with a time limit runs on a worker thread while its caller waits for it at most that long; a
call that overruns is *left running* on its worker, and the caller goes on without it (the
worker is replaced by a fresh one for the next calls). The overrunning call keeps what it holds
(a model instance stays open while its call runs); its result, when it ever comes, is handed to
the cleanup the caller registered, never to the caller.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, cast

T = TypeVar("T")
IDLE_WORKER_S = 60.0  # an idle worker ends after this; the next call starts a new one


class CallOverran(Exception):  # noqa: N818 - an outcome of a call, caught by the caller
    """A call did not return within its time limit; it goes on running on ``worker``."""

    def __init__(self, call: TimedCall, timeout_s: float) -> None:
        super().__init__(f"{call.description} did not return within {timeout_s:g} s")
        self.call = call
        self.timeout_s = timeout_s


LateCleanup = Callable[[object, BaseException | None], None]


@dataclass(eq=False)
class TimedCall:
    """One call handed to a worker; ``worker`` is the thread that runs it, once started."""

    function: Callable[[], object]
    description: str
    handed_at: float = field(default_factory=time.monotonic)
    worker: threading.Thread | None = None
    started_at: float | None = None
    result: object = None
    error: BaseException | None = None
    _done: threading.Event = field(default_factory=threading.Event)
    _late_cleanup: LateCleanup | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    abandoned: bool = False

    def run(self) -> None:
        self.worker = threading.current_thread()
        self.started_at = time.monotonic()
        try:
            self.result = self.function()
        except BaseException as err:  # noqa: BLE001 - handed to the caller, who decides
            self.error = err
        with self._lock:
            self._done.set()
            cleanup = self._late_cleanup if self.abandoned else None
        if cleanup is not None:
            cleanup(self.result, self.error)

    def wait(self, timeout_s: float) -> bool:
        return self._done.wait(timeout_s)

    def abandon(self, cleanup: LateCleanup | None) -> bool:
        """Leaves the call running; ``cleanup`` gets its result or error if it ever returns.
        Returns False if it returned meanwhile (the caller may use its result after all)."""
        with self._lock:
            if self._done.is_set():
                return False
            self.abandoned = True
            self._late_cleanup = cleanup
            return True

    @property
    def running(self) -> bool:
        return not self._done.is_set()


class TimedCalls:
    """Runs calls on worker threads and waits for each at most its time limit.

    Idle workers wait for the next call; a call finds an idle worker or starts one, so a worker
    stuck in an overrunning call never delays the calls after it. :attr:`overrunning` lists the
    calls abandoned and still running: the threads a process has lost to stuck models.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._numbers = itertools.count(1)
        self._calls: queue.SimpleQueue[TimedCall | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._workers: set[threading.Thread] = set()
        self._abandoned: list[TimedCall] = []
        self._closed = False

    def call(self, function: Callable[[], T], timeout_s: float, description: str) -> T:
        """``function()``'s result, run on a worker; raises what it raises, or
        :class:`CallOverran` (carrying the call, still running) once ``timeout_s`` passes."""
        timed = self.start(function, description)
        if not timed.wait(timeout_s):
            raise CallOverran(timed, timeout_s)
        return cast(T, result_of(timed))

    def start(self, function: Callable[[], object], description: str) -> TimedCall:
        """``function`` handed to a worker; wait for it with :meth:`TimedCall.wait`."""
        timed = TimedCall(function, description)
        self._hand_over(timed)
        return timed

    def abandon(self, timed: TimedCall, cleanup: LateCleanup | None = None) -> bool:
        """Gives up on a running call (see :meth:`TimedCall.abandon`)."""
        abandoned = timed.abandon(cleanup)
        if abandoned:
            with self._lock:
                self._abandoned = [call for call in self._abandoned if call.running]
                self._abandoned.append(timed)
        return abandoned

    @property
    def overrunning(self) -> list[TimedCall]:
        """The abandoned calls still running."""
        with self._lock:
            self._abandoned = [call for call in self._abandoned if call.running]
            return list(self._abandoned)

    def close(self) -> None:
        """Ends the workers idle now, and each busy one once its call returns (a call handed
        over later runs on a worker of its own, which ends with it)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, 0
        for _ in range(idle):
            self._calls.put(None)

    def _hand_over(self, timed: TimedCall) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                worker = threading.Thread(
                    target=self._work, name=f"{self._name}-{next(self._numbers)}", daemon=True
                )
                self._workers.add(worker)
                worker.start()
        self._calls.put(timed)

    def _work(self) -> None:
        try:
            while (timed := self._next_call()) is not None:
                timed.run()
                abandoned = timed.abandoned
                del timed  # an idle worker holds nothing of its last call (nor its caller's)
                with self._lock:
                    # an abandoned call's caller counted on another worker meanwhile: this one
                    # leaves, so idle workers never outnumber the callers that hand them calls
                    if abandoned or self._closed:
                        return
                    self._idle += 1
        finally:
            with self._lock:
                self._workers.discard(threading.current_thread())

    def _next_call(self) -> TimedCall | None:
        """The next call; ``None`` to end, after ``IDLE_WORKER_S`` with no call on its way to
        this worker (so a core nobody closed leaves no threads behind)."""
        while True:
            try:
                return self._calls.get(timeout=IDLE_WORKER_S)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # no call was handed to this worker: it may end
                        self._idle -= 1
                        return None


def result_of(timed: TimedCall) -> object:
    """A returned call's result, or the error it raised, raised."""
    if timed.error is not None:
        raise timed.error
    return timed.result


class CallSite(Protocol):
    """A call a deadline can find a worker stuck in (a model's, a router's), hashable."""

    def describe(self) -> str: ...

    def call_stuck(self) -> None:
        """A call here overran: no more calls until :meth:`call_returned`."""
        ...

    def call_returned(self) -> None: ...

    def __hash__(self) -> int: ...


class CallWatch:
    """Where each worker is in its work, for a deadline to read: the call it is in (a model's,
    a router's) and since when, or since when it is between calls.

    A deadline then judges each call by its own time, not the whole batch's: a batch of many
    keys, each answered in time, is slow but not stuck.
    """

    def __init__(self) -> None:
        self._where: dict[int, tuple[CallSite | None, float]] = {}

    def begin(self) -> None:
        """The calling thread starts a new piece of work (a batch), in no call yet."""
        self._where[threading.get_ident()] = (None, time.monotonic())

    def enter(self, site: CallSite) -> None:
        self._where[threading.get_ident()] = (site, time.monotonic())

    def leave(self) -> None:
        self._where[threading.get_ident()] = (None, time.monotonic())

    def where(self, call: TimedCall) -> tuple[CallSite | None, float]:
        """The call site ``call``'s worker is in (``None`` between calls) and since when, as
        far as it got in ``call``: before its worker began it, since it was handed over."""
        worker, started = call.worker, call.started_at
        if worker is not None and worker.ident is not None and started is not None:
            site, since = self._where.get(worker.ident, (None, started))
            if since >= started:
                return site, since
            return None, started
        return None, call.handed_at
