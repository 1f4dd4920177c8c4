"""Offsets committed strictly in order, and only for batches whose outputs are acknowledged.

The Kafka runtime does not wait for each batch's acknowledgements before scoring the next: it
keeps up to ``max_batches_in_flight`` batches pending. A batch's offsets are committed only once
its outputs *and those of every batch before it* are acknowledged: at-least-once holds, and the
broker's round trips overlap with scoring instead of adding to it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING

from streamserve.errors import DeliveryError, InfrastructureError
from streamserve.runtime.kafka.clients import ERROR_LOG_INTERVAL_S
from streamserve.settings import KafkaSettings

if TYPE_CHECKING:
    from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

log = logging.getLogger("streamserve.runtime.kafka")

PartitionId = tuple[str, int]  # (topic, partition)
FLUSH_STEP_S = 1.0


class PendingBatch:
    """One batch's offsets to commit and the count of its outputs not yet acknowledged."""

    __slots__ = ("failures", "next_offsets", "pending")

    def __init__(self, next_offsets: dict[PartitionId, int], outputs: int) -> None:
        self.next_offsets = next_offsets
        self.pending = outputs
        self.failures: list[str] = []

    def delivered(self, error: KafkaError | None, message: Message) -> None:
        """librdkafka's delivery callback for each of the batch's outputs."""
        self.pending -= 1
        if error is not None:
            self.failures.append(f"{message.topic()}: {error}")


class InFlightBatches:
    """The batches produced and not yet fully acknowledged, oldest first.

    ``topic_settings`` names the setting of each output topic (``results`` ->
    ``kafka.results_topic``), for the message of a failed delivery.
    """

    def __init__(self, topic_settings: Mapping[str, str] | None = None) -> None:
        self._batches: deque[PendingBatch] = deque()
        self._topic_settings = dict(topic_settings or {})

    def add(self, batch: PendingBatch) -> None:
        self._batches.append(batch)

    def __len__(self) -> int:
        return len(self._batches)

    @property
    def outputs_pending(self) -> int:
        return sum(batch.pending for batch in self._batches)

    def _named(self, failure: str) -> str:
        """``topic: error`` as ``the results topic 'topic' (kafka.results_topic): error``."""
        topic, _, error = failure.partition(": ")
        setting = self._topic_settings.get(topic)
        if setting is None:
            return failure
        role = setting.removeprefix("kafka.").removesuffix("_topic")
        return f"the {role} topic {topic!r} ({setting}): {error}"

    def take_acknowledged(self) -> dict[PartitionId, int]:
        """The offsets to commit for the leading batches that are fully acknowledged (merged,
        later batches winning); raises :class:`DeliveryError` at the first failed batch, with
        the offsets of the batches before it."""
        offsets: dict[PartitionId, int] = {}
        while self._batches and self._batches[0].pending == 0:
            batch = self._batches[0]
            if batch.failures:
                reasons = [self._named(failure) for failure in batch.failures[:3]]
                raise DeliveryError("; ".join(reasons), offsets)
            self._batches.popleft()
            offsets.update(batch.next_offsets)
        return offsets


class OffsetCommits:
    """Commits the data consumer's offsets as the producer's acknowledgements come in.

    Routine commits are asynchronous. Per partition, the offset after the last acknowledged
    batch is also kept until it is committed synchronously, at a revoke and at the end: an
    asynchronous commit may have failed, and its partition may be about to move.
    """

    def __init__(
        self, kafka: ModuleType, settings: KafkaSettings, data: Consumer, producer: Producer
    ) -> None:
        self._kafka = kafka
        self._settings = settings
        self._data = data
        self._producer = producer
        self._in_flight = InFlightBatches(
            {
                settings.errors_topic: "kafka.errors_topic",
                settings.results_topic: "kafka.results_topic",
            }
        )
        self._acknowledged: dict[PartitionId, int] = {}

    def track(self, next_offsets: dict[PartitionId, int], outputs: int) -> PendingBatch:
        """A batch whose ``outputs`` are being produced; commit ``next_offsets`` once they and
        every earlier batch's are acknowledged."""
        batch = PendingBatch(next_offsets, outputs)
        self._in_flight.add(batch)
        return batch

    def wait_for_acknowledgements(self, max_in_flight: int, *, final: bool = False) -> None:
        """Commits the acknowledged batches, in order, then waits while more than
        ``max_in_flight`` batches are unacknowledged, saying so if the broker is away.

        With ``final`` (before a revoke or the end) no asynchronous commit is sent: the caller
        commits the partitions' latest acknowledged offsets synchronously.

        librdkafka retries delivery by itself (for ``message.timeout.ms``); a delivery error, or
        ``flush_timeout_s`` without progress, ends the run before the batch is committed, so it
        is re-delivered to whichever replica owns its partitions next.
        """
        self._producer.poll(0)
        self._commit_acknowledged(send=not final)
        started = time.monotonic()
        next_warning_s = ERROR_LOG_INTERVAL_S
        while len(self._in_flight) > max_in_flight:
            waited_s = time.monotonic() - started
            if waited_s >= self._settings.flush_timeout_s:
                raise InfrastructureError(
                    f"outputs were not acknowledged within {self._settings.flush_timeout_s:.0f} s "
                    f"({self._in_flight.outputs_pending} pending); stopping without committing, "
                    "the batches will be re-delivered"
                )
            self._producer.flush(FLUSH_STEP_S)
            self._commit_acknowledged(send=not final)
            if self._in_flight.outputs_pending and waited_s >= next_warning_s:
                next_warning_s += ERROR_LOG_INTERVAL_S
                log.warning(
                    "waiting %.0f s so far for Kafka at %s to acknowledge %d outputs",
                    waited_s,
                    self._settings.bootstrap_servers,
                    self._in_flight.outputs_pending,
                )

    def take_acknowledged_while_failing(self) -> None:
        """Takes the leading acknowledged batches (for :meth:`commit_latest`), without waiting
        for more and without raising over the error that ends the run."""
        try:
            self._producer.poll(0)
            self._commit_acknowledged(send=False)
        except InfrastructureError as err:
            log.warning("leaving without committing the batches in flight: %s", err)

    def _commit_acknowledged(self, send: bool) -> None:
        """Takes the leading acknowledged batches' offsets and, if ``send``, commits them
        asynchronously."""
        try:
            offsets = self._in_flight.take_acknowledged()
        except DeliveryError as err:
            if err.committable:  # the batches before the failed one are delivered
                self._acknowledged.update(err.committable)
                self.commit_latest(set(err.committable))
            raise InfrastructureError(
                f"outputs were not delivered ({err}); stopping without committing, "
                f"the batch will be re-delivered{_topic_advice(str(err))}"
            ) from err
        if not offsets:
            return
        self._acknowledged.update(offsets)
        if not send:
            return
        try:
            self._data.commit(offsets=self.topic_partitions(offsets), asynchronous=True)
        except self._kafka.KafkaException as err:
            log.warning("could not send a commit (%s); a later commit covers it", err.args[0])

    def commit_latest(self, partitions: set[PartitionId] | None = None) -> None:
        """Commits synchronously the latest acknowledged offset of each of ``partitions`` (all
        if ``None``), those of failed asynchronous commits included, and forgets them."""
        chosen = self._acknowledged.keys() if partitions is None else partitions
        offsets = {p: self._acknowledged.pop(p) for p in chosen & self._acknowledged.keys()}
        if offsets:
            self._commit(self.topic_partitions(offsets))

    def _commit(self, offsets: list[TopicPartition]) -> None:
        """Commits synchronously; retried while the coordinator is unreachable.

        If the group took the partitions away meanwhile (the session timed out while the broker
        was down), the commit is refused: the new owner scores the batch again (at-least-once),
        and this replica goes on with what it is assigned now.
        """
        deadline = time.monotonic() + self._settings.flush_timeout_s
        while True:
            try:
                self._data.commit(offsets=offsets, asynchronous=False)
                return
            except self._kafka.KafkaException as err:
                error = err.args[0]
                if not error.retriable() or time.monotonic() >= deadline:
                    log.warning(
                        "the offsets of published batches were not committed (%s); their "
                        "records will be scored again (at-least-once)",
                        error,
                    )
                    return
            time.sleep(FLUSH_STEP_S)

    def topic_partitions(self, offsets: Mapping[PartitionId, int]) -> list[TopicPartition]:
        return [self._kafka.TopicPartition(t, p, o) for (t, p), o in offsets.items()]


_TOPIC_GONE = ("Unknown topic", "Unknown partition", "authorization failed")


def _topic_advice(reason: str) -> str:
    """What to check when librdkafka's reason says a topic is gone or refused."""
    if not any(words.lower() in reason.lower() for words in _TOPIC_GONE):
        return ""
    return " (does the topic still exist, and may this replica's user write to it?)"


def on_commit(error: KafkaError | None, partitions: list[TopicPartition]) -> None:
    """Asynchronous commits' results: a failed one is covered by the next, or by the
    synchronous commit of the latest acknowledged offsets at revoke and at the end."""
    if error is not None:
        log.warning(
            "a commit failed (%s); the next one, or the final one, covers its offsets", error
        )
