"""Calls with a time limit: results, errors, overruns left running, workers reused."""

from __future__ import annotations

import threading

import pytest

from streamserve.serving import deadline
from streamserve.serving.deadline import CallOverran, TimedCalls


@pytest.fixture
def calls() -> TimedCalls:
    return TimedCalls("test")


def _workers(name: str = "test") -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith(f"{name}-")]


def test_a_call_returns_its_result_and_raises_its_error(calls: TimedCalls) -> None:
    assert calls.call(lambda: 42, 10, "answer") == 42
    with pytest.raises(ZeroDivisionError):
        calls.call(lambda: 1 / 0, 10, "divide")
    calls.close()


def test_an_overrunning_call_is_left_running_and_its_late_result_cleaned_up(
    calls: TimedCalls,
) -> None:
    gate, cleaned = threading.Event(), threading.Event()
    late: list[object] = []

    def stuck() -> str:
        gate.wait(60)
        return "late"

    with pytest.raises(CallOverran) as overran:
        calls.call(stuck, 0.1, "stuck call")
    assert "stuck call did not return within 0.1 s" in str(overran.value)
    worker = overran.value.call.worker
    assert worker is not None
    assert worker.is_alive()
    cleanup = lambda result, _error: (late.append(result), cleaned.set())  # noqa: E731
    assert calls.abandon(overran.value.call, cleanup)
    assert calls.overrunning == [overran.value.call]
    # the next call does not wait behind the stuck worker
    assert calls.call(lambda: "next", 10, "next") == "next"
    gate.set()
    assert cleaned.wait(10)
    assert late == ["late"]
    worker.join(10)
    assert not worker.is_alive(), "the worker of an abandoned call stayed after it returned"
    assert calls.overrunning == []
    calls.close()


def test_a_call_that_returns_before_it_is_abandoned_keeps_its_result(calls: TimedCalls) -> None:
    gate = threading.Event()
    with pytest.raises(CallOverran) as overran:
        calls.call(lambda: gate.wait(60), 0.05, "slow")
    gate.set()
    overran.value.call.wait(10)
    assert not calls.abandon(overran.value.call)
    assert overran.value.call.result is True
    calls.close()


def test_workers_are_reused_and_closing_ends_them(calls: TimedCalls) -> None:
    for number in range(200):
        assert calls.call(lambda n=number: n, 10, "small") == number
    assert len(_workers()) == 1
    calls.close()
    for thread in _workers():
        thread.join(10)
    assert _workers() == []
    assert calls.call(lambda: "after", 10, "after closing") == "after"


def test_an_idle_worker_ends_and_the_next_call_starts_another(
    calls: TimedCalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A core nobody closes leaves no threads behind: idle workers end after a while."""
    monkeypatch.setattr(deadline, "IDLE_WORKER_S", 0.2)
    assert calls.call(lambda: 1, 10, "first") == 1
    (worker,) = _workers()
    worker.join(10)
    assert not worker.is_alive()
    assert calls.call(lambda: 2, 10, "after the idle worker ended") == 2
    calls.close()
