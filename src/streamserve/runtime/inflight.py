"""Batches whose outputs are produced but not yet acknowledged, committed strictly in order.

The Kafka runtime does not wait for each batch's acknowledgements before scoring the next: it
keeps up to ``max_batches_in_flight`` batches pending. A batch's offsets are committed only once
its outputs *and those of every batch before it* are acknowledged — at-least-once holds, and the
broker's round trips overlap with scoring instead of adding to it.
"""

from __future__ import annotations

from collections import deque
from typing import Any

Place = tuple[str, int]  # (topic, partition)


class PendingBatch:
    """One batch's offsets to commit and the count of its outputs not yet acknowledged."""

    __slots__ = ("failures", "next_offsets", "pending")

    def __init__(self, next_offsets: dict[Place, int], outputs: int) -> None:
        self.next_offsets = next_offsets
        self.pending = outputs
        self.failures: list[str] = []

    def delivered(self, error: Any, message: Any) -> None:
        """librdkafka's delivery callback for each of the batch's outputs."""
        self.pending -= 1
        if error is not None:
            self.failures.append(f"{message.topic()}: {error}")


class DeliveryError(Exception):
    """An output of a batch was not delivered: the batch must not be committed.

    ``committable`` holds the offsets of the acknowledged batches before it, which may be."""

    def __init__(self, reason: str, committable: dict[Place, int]) -> None:
        super().__init__(reason)
        self.committable = committable


class InFlightBatches:
    def __init__(self) -> None:
        self._batches: deque[PendingBatch] = deque()

    def add(self, batch: PendingBatch) -> None:
        self._batches.append(batch)

    def __len__(self) -> int:
        return len(self._batches)

    @property
    def outputs_pending(self) -> int:
        return sum(batch.pending for batch in self._batches)

    def take_acknowledged(self) -> dict[Place, int]:
        """The offsets to commit for the leading batches that are fully acknowledged (merged,
        later batches winning); raises :class:`DeliveryError` at the first failed batch, with
        the offsets of the batches before it."""
        offsets: dict[Place, int] = {}
        while self._batches and self._batches[0].pending == 0:
            batch = self._batches[0]
            if batch.failures:
                raise DeliveryError("; ".join(batch.failures[:3]), offsets)
            self._batches.popleft()
            offsets.update(batch.next_offsets)
        return offsets
