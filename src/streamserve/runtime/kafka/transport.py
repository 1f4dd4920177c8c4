"""The Kafka runtime: data topics in a consumer group, the models topic broadcast to every replica.

Per micro-batch: consume -> decode -> score -> produce results and errors. A batch's offsets are
committed once its outputs and those of every batch before it are acknowledged
(:mod:`.commits`); with ``exactly_once``, outputs and offsets go in one transaction instead. A
crash re-delivers what was not committed; nothing is committed that was not published. Before
partitions are revoked (inside ``consume``, between batches) and before the run ends, every
batch in flight is acknowledged and committed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from streamserve.codecs.base import Codec, Headers, InputRecord
from streamserve.errors import InfrastructureError
from streamserve.runtime.base import BatchLoop, collect_batch, counted, log_caught_up
from streamserve.runtime.batch import EncodedBatch
from streamserve.runtime.encoding import OutputMessage
from streamserve.runtime.kafka.clients import KafkaClients, is_partition_end
from streamserve.runtime.kafka.commits import FLUSH_STEP_S, OffsetCommits, PartitionId, on_commit
from streamserve.runtime.kafka.models_topic import ModelsTopicReader, position_of
from streamserve.runtime.kafka.topics import TopicCheck
from streamserve.serving.core import ServingCore
from streamserve.serving.events import ModelEvent
from streamserve.settings import BatchSettings, KafkaSettings

if TYPE_CHECKING:
    from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

    from streamserve.runtime.registry import RuntimeContext

log = logging.getLogger("streamserve.runtime.kafka")

LAG_INTERVAL_S = 2.0


@dataclass(frozen=True)
class KafkaBatch:
    """A batch's records and, per partition, the offset after its last one."""

    records: Sequence[InputRecord]
    next_offsets: dict[PartitionId, int]

    @classmethod
    def of(cls, messages: Sequence[Message]) -> KafkaBatch:
        # A partition's messages arrive in offset order: its last one is its highest.
        return cls(
            [_record(message) for message in messages],
            {(m.topic() or "", m.partition() or 0): (m.offset() or 0) + 1 for m in messages},
        )


def _record(message: Message) -> InputRecord:
    headers = message.headers()
    return InputRecord(
        message.value() or b"",
        message.key(),
        position_of(message),
        message.topic() or "",
        # A consumer returns a list of (name, bytes or None); the stubs allow any header form.
        cast(Headers, tuple(headers)) if headers else (),
    )


class KafkaTransport:
    """The data consumer, the models reader and the producers of one replica."""

    def __init__(
        self,
        core: ServingCore,
        settings: KafkaSettings,
        batch: BatchSettings,
        *,
        freeze_imports: bool = False,  # a server process: see ImportFreezer
    ) -> None:
        self._core = core
        self._settings = settings
        self._max_delay_s = batch.max_delay_ms / 1000
        self._clients = KafkaClients(
            settings,
            max_model_message_bytes=core.settings.security.max_model_message_bytes,
            on_commit=on_commit,
        )
        self._kafka = self._clients.kafka
        self._data = self._clients.data
        self._producer = self._clients.producer
        self._models = ModelsTopicReader(
            core, settings, self._clients, freeze_imports=freeze_imports
        )
        self._commits = OffsetCommits(self._kafka, settings, self._data, self._producer)
        self._topics = TopicCheck(settings, self._clients)
        self._failing = False  # the run is ending on an error: leave without waiting for outputs
        self.ready = threading.Event()  # models caught up and data partitions assigned
        self._caught_up = False
        self._assigned: set[PartitionId] = set()  # grows and shrinks by increments (cooperative)
        self._revoked: set[PartitionId] = set()  # revoked inside the current consume call
        self.consumer_lag: int | None = None  # records behind the high watermarks, when known
        self._next_lag_check = 0.0

    exhausted = False  # a topic never ends

    # --- startup and models --------------------------------------------------------------------
    def start(self, stopping: threading.Event) -> None:
        self._topics.run(stopping)  # before any record is read
        if stopping.is_set():
            return
        self._init_transactions()
        started = time.monotonic()
        models = self.catch_up_models(stopping)  # before any record: ModelsTopicReader.catch_up
        if stopping.is_set():
            return  # asked to stop while catching up: never join the group
        source = f"the models topic {self._settings.models_topic!r}"
        log_caught_up(log, self._core, source, models, started)
        self._caught_up = True
        self._data.subscribe(
            self._settings.data_topics, on_assign=self._on_assign, on_revoke=self._on_revoke
        )

    def catch_up_models(self, stopping: threading.Event | None = None) -> int:
        return self._models.catch_up(stopping or threading.Event())

    def take_models(self) -> None:
        self._models.follow()

    def _init_transactions(self) -> None:
        transactional = self._clients.transactional
        if transactional is None:
            return
        try:
            transactional.init_transactions(self._settings.catch_up_timeout_s)
        except self._kafka.KafkaException as err:
            raise InfrastructureError(
                f"exactly_once is on, but transactions cannot start at "
                f"{self._settings.bootstrap_servers}: {err.args[0]} (does the broker support "
                "them? turn exactly_once off for at-least-once)"
            ) from err

    # --- group membership ------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Called inside consume(), between batches, with the partitions added: all of them
        with the eager protocols, only the increment with ``cooperative-sticky``."""
        self._assigned.update((p.topic, p.partition) for p in partitions)
        self._log_partitions("assigned", partitions)
        if self._caught_up and self._assigned:
            self.ready.set()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Called inside consume() with the partitions taken away (with ``cooperative-sticky``
        only those; the others stay assigned, and the replica stays ready).

        Before they move: every batch in flight acknowledged, and every partition's latest
        acknowledged offset committed synchronously, even if its asynchronous commit failed.
        When the run is failing, only the batches acknowledged already (a refused output never
        will be). Nothing is committed for the revoked partitions afterwards; records of them
        still in hand are dropped unscored (see :meth:`next_batch`).
        """
        revoked = {(p.topic, p.partition) for p in partitions}
        if self._failing:
            self._commits.take_acknowledged_while_failing()
        else:
            self._commits.wait_for_acknowledgements(0, final=True)
        self._commits.commit_latest()
        self._assigned -= revoked
        self._revoked |= revoked
        self._log_partitions("revoked", partitions)
        if not self._assigned:
            self.ready.clear()

    def _log_partitions(self, change: str, partitions: list[TopicPartition]) -> None:
        if not partitions:  # cooperative rebalances call with empty increments
            return
        named = [f"{p.topic}/{p.partition}" for p in partitions]
        log.info(
            "partitions %s: %s (group %r; %s held)",
            change,
            ", ".join(named),
            self._settings.group_id,
            counted(len(self._assigned), "partition"),
            extra={
                "event": f"partitions_{change}",
                "partitions": named,
                "group": self._settings.group_id,
                "held": len(self._assigned),
            },
        )

    # --- records -----------------------------------------------------------------------------
    def next_batch(self, limit: int, wait_s: float) -> KafkaBatch | None:
        """A micro-batch (see :func:`collect_batch`).

        A rebalance inside a later ``consume`` call may revoke the partitions of messages held
        from an earlier one: those are dropped unscored, as their new owner (or this replica, if
        the eager protocol gives them back) reads them again from the committed offset; scoring
        them here would score them twice and commit for a partition owned elsewhere. librdkafka
        itself drops those of a revoked partition that the call would return.
        """
        messages = collect_batch(
            self._consume, limit, wait_s, self._max_delay_s, keep=self._drop_revoked
        )
        return KafkaBatch.of(messages) if messages else None

    def _consume(self, limit: int, timeout_s: float) -> list[Message]:
        self._revoked.clear()  # from here on: what this call revokes
        records = []
        for message in self._data.consume(limit, timeout_s):
            error = message.error()
            if error is None:
                records.append(message)
            elif not is_partition_end(self._kafka, message):
                if error.fatal():
                    raise InfrastructureError(f"the data consumer failed: {error}")
                log.warning("data consumer: %s", error)
        return records

    def _drop_revoked(self, held: list[Message]) -> list[Message]:
        if not self._revoked:
            return held
        return [m for m in held if (m.topic(), m.partition()) not in self._revoked]

    # --- outputs -------------------------------------------------------------------------------
    def emit(self, batch: KafkaBatch, outputs: EncodedBatch) -> None:
        if self._clients.transactional is not None:
            self._commit_transactionally(batch, outputs, self._clients.transactional)
            return
        pending = self._commits.track(
            batch.next_offsets, len(outputs.results) + len(outputs.errors)
        )
        self._produce(self._settings.results_topic, outputs.results, on_delivery=pending.delivered)
        self._produce(self._settings.errors_topic, outputs.errors, on_delivery=pending.delivered)
        self._commits.wait_for_acknowledgements(self._settings.max_batches_in_flight)

    def emit_events(self, events: Sequence[OutputMessage]) -> None:
        self._produce(self._settings.errors_topic, events)
        self._producer.poll(0)

    def _produce(
        self,
        topic: str,
        messages: Sequence[OutputMessage],
        producer: Producer | None = None,
        on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
    ) -> None:
        """Queues ``messages`` in order with one ``produce_batch`` call, waiting while
        librdkafka's local queue is full.

        librdkafka queues a batch in order; once its queue is full it refuses that message and
        every later one of the batch, so what is retried is always a tail, and order holds.
        """
        producer = producer or self._producer
        on_delivery = on_delivery or _on_event_delivery
        pending: list[dict[str, Any]] = [{"key": key, "value": value} for key, value in messages]
        while pending:
            queued = producer.produce_batch(topic, pending, on_delivery=on_delivery)
            if queued == len(pending):
                return
            refused = [message for message in pending if "_error" in message]
            for message in refused:
                if message["_error"].code() != self._kafka.KafkaError._QUEUE_FULL:
                    raise InfrastructureError(
                        f"{len(refused)} of {len(pending)} messages for {topic} were refused; "
                        f"the first: {message['_error'].str()}"
                    )
            producer.poll(0.05)  # the local queue is full: let it drain
            pending = [{"key": message["key"], "value": message["value"]} for message in refused]

    def _commit_transactionally(
        self, batch: KafkaBatch, outputs: EncodedBatch, transactional: Producer
    ) -> None:
        """Outputs and the batch's offsets in one transaction: all of them count, or none."""
        timeout_s = self._settings.flush_timeout_s
        try:
            transactional.begin_transaction()
            self._produce(self._settings.results_topic, outputs.results, transactional)
            self._produce(self._settings.errors_topic, outputs.errors, transactional)
            transactional.send_offsets_to_transaction(
                self._commits.topic_partitions(batch.next_offsets),
                self._data.consumer_group_metadata(),
                timeout_s,
            )
            transactional.commit_transaction(timeout_s)
        except self._kafka.KafkaException as err:
            error = err.args[0]
            if error.txn_requires_abort():
                transactional.abort_transaction(timeout_s)
            raise InfrastructureError(
                f"the transaction of a batch failed ({error}); nothing of it was committed, "
                "the batch will be re-delivered"
            ) from err

    # --- after each batch, and the end -----------------------------------------------------------
    def after_batch(self) -> None:
        """Takes the outputs' acknowledgements (a failed delivery stops the replica even while
        no record comes), checks the data topics again if a consumer reported one gone (a
        deleted data topic stops the replica), then measures the lag: (high watermark -
        position) summed over the assigned partitions, every few seconds; ``None`` (unknown)
        while it holds none."""
        self._commits.wait_for_acknowledgements(self._settings.max_batches_in_flight)
        if self._clients.topics_changed:
            self._clients.topics_changed = False
            self._topics.recheck_data_topics()
        now = time.monotonic()
        if not self._assigned:
            self.consumer_lag = None  # no partition: no lag of its own to report
            return
        if now < self._next_lag_check:
            return
        self._next_lag_check = now + LAG_INTERVAL_S
        lag = 0
        assigned = [self._kafka.TopicPartition(t, p) for t, p in sorted(self._assigned)]
        for place in self._read_positions(assigned):
            low, high = self._data.get_watermark_offsets(place, cached=True) or (-1, -1)
            if high < 0:  # no fetch response yet (a partition just assigned): unknown, not
                self.consumer_lag = None  # the last sum, which left this partition out
                return
            lag += max(high - (place.offset if place.offset >= 0 else low), 0)
        self.consumer_lag = lag

    def _read_positions(self, assigned: list[TopicPartition]) -> list[TopicPartition]:
        """Each partition's position; where nothing was read since the assignment (a replica
        restarted with nothing left to read), the group's committed offset."""
        positions = self._data.position(assigned)
        unread = [p for p in positions if p.offset < 0]
        if not unread:
            return positions
        try:
            committed = {
                (c.topic, c.partition): c for c in self._data.committed(unread, timeout=1.0)
            }
        except self._kafka.KafkaException:
            return positions
        return [committed.get((p.topic, p.partition), p) for p in positions]

    def finish(self) -> None:
        self._commits.wait_for_acknowledgements(0, final=True)  # every batch acknowledged...
        self._commits.commit_latest()  # ...and committed

    def close(self, failed: bool) -> None:
        self._failing = failed
        self._data.close()  # leaves the group: partitions move to other replicas now
        self._models.close()
        # Pending model events; when failing, whatever is not committed is re-delivered.
        self._producer.flush(FLUSH_STEP_S if failed else self._settings.flush_timeout_s)


def _on_event_delivery(error: KafkaError | None, message: Message) -> None:
    """Deliveries outside batches: model events (transactional outputs fail their commit)."""
    if error is not None:
        log.warning("a model event was not delivered to %s: %s", message.topic(), error)


class KafkaRuntime(BatchLoop[KafkaBatch]):
    """The batch loop over Kafka: one replica of a consumer group."""

    def __init__(
        self,
        core: ServingCore,
        codec: Codec,
        settings: KafkaSettings,
        batch: BatchSettings,
        *,
        on_event: Callable[[ModelEvent], None] | None = None,
        freeze_startup: bool = False,
    ) -> None:
        self._kafka_transport = KafkaTransport(core, settings, batch, freeze_imports=freeze_startup)
        super().__init__(
            core,
            codec,
            self._kafka_transport,
            batch,
            on_event=on_event,
            freeze_startup=freeze_startup,
        )

    def catch_up_models(self) -> int:
        """Reads the models topic to its end and waits for its models to load (done by
        :meth:`run` first); how many models were submitted."""
        return self._kafka_transport.catch_up_models()


def kafka_runtime(context: RuntimeContext) -> KafkaRuntime:
    """The Kafka runtime of the ``[kafka]`` settings."""
    settings = context.settings
    return KafkaRuntime(
        context.core,
        context.codec,
        settings.kafka,
        settings.batch,
        on_event=context.on_event,
        freeze_startup=True,  # a server process: it runs once
    )
