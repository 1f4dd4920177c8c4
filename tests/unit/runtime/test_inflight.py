"""Batches in flight are committed strictly in order, and only once fully acknowledged."""

from __future__ import annotations

import pytest

from streamserve.errors import DeliveryError
from streamserve.runtime.kafka.commits import InFlightBatches, PendingBatch


class Message:
    def topic(self) -> str:
        return "results"


def _ack(batch: PendingBatch, times: int, error: str | None = None) -> None:
    for _ in range(times):
        batch.delivered(error, Message())


def test_a_batch_is_committed_only_after_every_batch_before_it() -> None:
    in_flight = InFlightBatches()
    first = PendingBatch({("data", 0): 10, ("data", 1): 5}, outputs=2)
    second = PendingBatch({("data", 0): 20}, outputs=1)
    in_flight.add(first)
    in_flight.add(second)

    _ack(second, 1)
    assert in_flight.take_acknowledged() == {}, "a later batch committed before an earlier one"
    _ack(first, 1)
    assert in_flight.take_acknowledged() == {}
    assert in_flight.outputs_pending == 1
    _ack(first, 1)
    assert in_flight.take_acknowledged() == {("data", 0): 20, ("data", 1): 5}
    assert len(in_flight) == 0


def test_a_batch_without_outputs_commits_at_once() -> None:
    in_flight = InFlightBatches()
    in_flight.add(PendingBatch({("data", 3): 7}, outputs=0))
    assert in_flight.take_acknowledged() == {("data", 3): 7}


def test_a_failed_delivery_stops_the_commits_at_its_batch() -> None:
    in_flight = InFlightBatches()
    good = PendingBatch({("data", 0): 10}, outputs=1)
    bad = PendingBatch({("data", 0): 20}, outputs=2)
    in_flight.add(good)
    in_flight.add(bad)
    _ack(good, 1)
    _ack(bad, 1)
    _ack(bad, 1, error="Local: Message timed out")
    with pytest.raises(DeliveryError, match="results: Local: Message timed out") as failure:
        in_flight.take_acknowledged()
    assert failure.value.committable == {("data", 0): 10}, "the good batch before it commits"
    assert len(in_flight) == 1, "the failed batch must stay uncommitted"
