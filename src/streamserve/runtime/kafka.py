"""The Kafka runtime: data topics in a consumer group, the models topic broadcast to every replica.

Per micro-batch: consume -> decode -> score -> produce results and errors. A batch's offsets are
committed once its outputs and those of every batch before it are acknowledged; meanwhile up to
``max_batches_in_flight`` batches are scored, so the broker's round trips overlap with scoring.
A crash re-delivers what was not committed (at-least-once); nothing is committed that was not
published. Before partitions are revoked (inside ``consume``, between batches) and before the
run ends, every batch in flight is acknowledged and committed.

The models topic (compacted, keyed by data type) is read with ``assign`` from the beginning by
every replica, so any replica can serve any key: at startup up to its end (the latest model of
each key is loaded before the first record is scored), then followed between batches.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from streamserve.codecs.base import Codec, InputRecord
from streamserve.errors import InfrastructureError
from streamserve.runtime.batch import process_batch
from streamserve.runtime.encoding import Encoded, drain_model_events
from streamserve.runtime.heap import freeze_startup_objects
from streamserve.runtime.inflight import DeliveryError, InFlightBatches, PendingBatch, Place
from streamserve.runtime.local import RunSummary
from streamserve.serving.core import ServingCore
from streamserve.serving.events import ModelEvent
from streamserve.settings import BatchSettings, KafkaSettings

log = logging.getLogger(__name__)

METADATA_TIMEOUT_S = 30.0
MAX_BACKOFF_S = 10.0
ERROR_LOG_INTERVAL_S = 5.0
LAG_INTERVAL_S = 2.0
FLUSH_STEP_S = 1.0
IDLE_WAIT_S = 0.1  # with no records: how long one wait lasts before models are checked
# Model messages submitted and not yet loaded, at most: the loader's queue holds their bytes (a
# models topic of 10,000 models read at once would hold all of them). Enough to keep the
# loader's threads busy: submitting is much faster than loading.
MAX_LOADS_PENDING = 32
LOADER_WAIT_S = 0.01  # one wait for the loader while its queue is full
MODELS_WAIT_S = 0.2  # one wait for model messages during the catch-up

# The data consumer's defaults (settings.consumer overrides them). librdkafka stops fetching a
# partition while its local queue holds queued.min.messages (100k) and looks again only after
# fetch.queue.backoff.ms (1 s by default): at 100k+ small records a second, the queue drains
# before that and the serving loop waits for records the broker has. Looking again after 10 ms
# took one replica from ~125k to ~280k rec/s (ONNX, 4 partitions, measured side by side).
DATA_CONSUMER_DEFAULTS: dict[str, object] = {"fetch.queue.backoff.ms": 10}


class ClientLog:
    """librdkafka's log lines in Python logging, at most one per facility every few seconds.

    While a broker is down, librdkafka logs every failed connection attempt of every client,
    many a second; the first of each kind says enough, with a count of those left out.
    """

    def __init__(self, interval_s: float = ERROR_LOG_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}
        self._log = logging.getLogger(f"{__name__}.client")

    def log(self, level: int, fmt: str, facility: str, client: str, text: str) -> None:
        now = time.monotonic()
        if now - self._last.get(facility, -self._interval_s) < self._interval_s:
            self._left_out[facility] = self._left_out.get(facility, 0) + 1
            return
        self._last[facility] = now
        left_out = self._left_out.pop(facility, 0)
        suffix = f" ({left_out} similar lines left out)" if left_out else ""
        self._log.log(level, "%s [%s] %s%s", facility, client, text, suffix)


class CatchUpWatch:
    """How long the models catch-up has gone without progress: a model message read or a
    model load finished. Past ``catch_up_timeout_s``, :meth:`check` stops the replica."""

    def __init__(self, core: ServingCore, settings: KafkaSettings) -> None:
        self._core = core
        self._settings = settings
        self.submitted = 0  # models submitted for loading by the catch-up
        self._finished = 0
        self._progressed_at = time.monotonic()

    def check(self, read: int) -> None:
        """Notes ``read`` messages and the loads finished since the last check; raises
        :class:`InfrastructureError` once nothing moved for ``catch_up_timeout_s``."""
        now = time.monotonic()
        pending = self._core.loads_pending
        finished = self.submitted - pending
        if read or finished > self._finished:
            self._finished = finished
            self._progressed_at = now
        limit_s = self._settings.catch_up_timeout_s
        if now - self._progressed_at <= limit_s:
            return
        topic = self._settings.models_topic
        if pending:
            raise InfrastructureError(
                f"{pending} models of the models topic {topic!r} were still loading after "
                f"{limit_s:.0f} s without one finishing (kafka.catch_up_timeout_s); stopping "
                "before scoring any record with models missing"
            )
        raise InfrastructureError(
            f"the models topic {topic!r} was not read to its end: nothing arrived for "
            f"{limit_s:.0f} s (kafka.catch_up_timeout_s)"
        )


def confluent_kafka_module() -> Any:
    try:
        import confluent_kafka
    except ImportError as err:
        raise InfrastructureError(
            "confluent-kafka is not installed: pip install 'streamserve[kafka]'"
        ) from err
    return confluent_kafka


class KafkaRuntime:
    def __init__(
        self,
        core: ServingCore,
        codec: Codec,
        settings: KafkaSettings,
        batch: BatchSettings,
        *,
        on_event: Callable[[ModelEvent], None] | None = None,
    ) -> None:
        self._kafka = confluent_kafka_module()
        self._core = core
        self._codec = codec
        self._settings = settings
        self._batch = batch
        self._on_event = on_event
        self._stop = False
        self._failing = False  # the run is ending on an error: leave without waiting for outputs
        common = {
            "bootstrap.servers": settings.bootstrap_servers,
            "error_cb": self._on_error,
            "logger": ClientLog(),
        }
        self._last_error_log = 0.0
        self._producer = self._client(
            "producer",
            {
                **common,
                "message.max.bytes": 200 * 1024 * 1024,
                "linger.ms": 2,
                **settings.producer,
            },
        )
        self._data = self._client(
            "consumer",
            {
                **common,
                "group.id": settings.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "on_commit": self._on_commit,
                **DATA_CONSUMER_DEFAULTS,
                **settings.consumer,
            },
        )
        self._models = self._client(
            "consumer",
            {
                **common,
                "group.id": f"{settings.group_id}-models-reader",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "fetch.message.max.bytes": 200 * 1024 * 1024,
                **settings.consumer,
            },
        )
        self._transactions: Any = None  # a transactional producer, with exactly_once
        if settings.exactly_once:
            transactional_id = settings.transactional_id or (
                f"{settings.group_id}-{socket.gethostname()}-{os.getpid()}"
            )
            self._transactions = self._client(
                "producer",
                {
                    **common,
                    "transactional.id": transactional_id,
                    "message.max.bytes": 200 * 1024 * 1024,
                    **settings.producer,
                },
            )
        self._in_flight = InFlightBatches()
        self.ready = threading.Event()  # models caught up and data partitions assigned
        self._caught_up = False
        self._assigned: set[Place] = set()  # grows and shrinks by increments (cooperative)
        self._revoked: set[Place] = set()  # revoked inside the current consume call
        # Per partition, the offset after the last acknowledged batch not yet committed
        # synchronously: an asynchronous commit may have failed, so revoke and stop commit it.
        self._acknowledged: dict[Place, int] = {}
        self.consumer_lag: int | None = None  # records behind the high watermarks, when known
        self._next_lag_check = 0.0

    def _client(self, role: str, config: dict[str, Any]) -> Any:
        """A librdkafka producer or consumer; settings it refuses (an unknown property, TLS or
        SASL settings missing a part) stop the replica here, saying which and why."""
        make = self._kafka.Producer if role == "producer" else self._kafka.Consumer
        try:
            return make(config)
        except self._kafka.KafkaException as err:
            raise InfrastructureError(
                f"the Kafka {role} refused its settings (kafka.{role} in the configuration): "
                f"{err.args[0].str()}"
            ) from err

    def stop(self) -> None:
        """Asks :meth:`run` to return after the batch in hand is committed (any thread)."""
        self._stop = True

    # --- models ----------------------------------------------------------------------------
    def catch_up_models(self) -> int:
        """Reads the models topic to its end, submitting every model in order, and waits until
        each one is loaded or rejected: no record is scored before (records of a key whose model
        is still loading would get ``no_model`` errors, or an older model's scores).

        Every message, not only the latest per key: if a key's latest model is bad, a restarted
        replica must keep the good one before it, exactly as a running replica does.

        ``catch_up_timeout_s`` bounds the time *without progress* (no model message read, no
        load finished), not the whole catch-up: a topic of thousands of slow models takes as long
        as it needs while it moves, and a broker gone quiet or a load that hangs stops the replica
        with an :class:`InfrastructureError` saying what it waited for, rather than serve with
        models missing. At most ``MAX_LOADS_PENDING`` models wait in the loader's queue at once,
        so it holds the bytes of that many models, not of the whole topic.
        """
        partitions = self._assign_models_topic()
        watch = CatchUpWatch(self._core, self._settings)
        at_end: set[int] = set()
        while len(at_end) < partitions:
            room = self._wait_for_loader(MAX_LOADS_PENDING - 1, watch)
            messages = self._models.consume(room, MODELS_WAIT_S)
            watch.check(read=len(messages))
            for message in messages:
                if self._is_partition_end(message):
                    at_end.add(message.partition())
                elif message.error() is None:
                    watch.submitted += self._submit_model(message)
        self._wait_for_loader(0, watch)
        return watch.submitted

    def _wait_for_loader(self, max_pending: int, watch: CatchUpWatch) -> int:
        """Waits while more than ``max_pending`` models are loading; how many more may be
        submitted now (at least 1)."""
        while self._core.loads_pending > max_pending:
            self._core.wait_for_models(LOADER_WAIT_S)  # returns early once the loader is idle
            watch.check(read=0)
        return max(MAX_LOADS_PENDING - self._core.loads_pending, 1)

    def _on_error(self, error: Any) -> None:
        """librdkafka's client-level errors: it reconnects by itself, with backoff; say so."""
        if error.fatal():
            log.error("Kafka client failed for good: %s", error)
            return
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_INTERVAL_S:
            self._last_error_log = now
            log.warning(
                "Kafka at %s: %s (reconnecting with backoff)",
                self._settings.bootstrap_servers,
                error,
            )

    def _models_topic_partitions(self) -> list[int]:
        """The models topic's partitions, retried with backoff until the catch-up limit.

        The broker may be down or the topic not created yet: both are waited for, saying so.
        """
        topic = self._settings.models_topic
        deadline = time.monotonic() + self._settings.catch_up_timeout_s
        backoff_s = 0.5
        while True:
            try:
                timeout_s = min(METADATA_TIMEOUT_S, backoff_s * 4)
                described = self._models.list_topics(topic, timeout=timeout_s).topics.get(topic)
                if described is not None and described.error is None and described.partitions:
                    return sorted(described.partitions)
                problem = f"the models topic {topic!r} does not exist yet"
            except self._kafka.KafkaException as err:
                problem = f"Kafka at {self._settings.bootstrap_servers} is not answering ({err})"
            if self._stop or time.monotonic() + backoff_s > deadline:
                raise InfrastructureError(
                    f"{problem}; gave up after {self._settings.catch_up_timeout_s:.0f} s"
                )
            log.warning("%s; retrying in %.1f s", problem, backoff_s)
            time.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)

    def _assign_models_topic(self) -> int:
        kafka = self._kafka
        topic = self._settings.models_topic
        partitions = self._models_topic_partitions()
        self._models.assign(
            [kafka.TopicPartition(topic, p, kafka.OFFSET_BEGINNING) for p in partitions]
        )
        return len(partitions)

    def _follow_models(self) -> None:
        """Submits the model messages that arrived, never more than the loader's queue has room
        for (``MAX_LOADS_PENDING``): the rest wait on the broker, and serving never waits."""
        room = MAX_LOADS_PENDING - self._core.loads_pending
        if room <= 0:
            return
        for message in self._models.consume(room, 0):
            if message.error() is None:
                self._submit_model(message)

    def _submit_model(self, message: Any) -> int:
        """Hands a model message to the core: how many models it submitted for loading."""
        origin = _position(message)
        payload = message.value()
        if payload is not None:
            return int(self._core.submit_model_message(payload, origin) is not None)
        # A tombstone deletes its key's model from the compacted topic: unload the key too.
        key = message.key()
        if key is None:
            log.warning("ignored a tombstone without a key at %s", origin)
            return 0
        self._core.unload(key.decode("utf-8", "replace"), origin)
        return 0

    def _is_partition_end(self, message: Any) -> bool:
        error = message.error()
        return error is not None and error.code() == self._kafka.KafkaError._PARTITION_EOF

    # --- data --------------------------------------------------------------------------------
    def run(self, count: int | None = None, timeout_s: float | None = None) -> RunSummary:
        """Serves until stopped, ``count`` records are committed, or ``timeout_s`` passes."""
        started = time.monotonic()
        summary = RunSummary()
        try:
            self._init_transactions()
            self.catch_up_models()  # before any record: see its docstring
            freeze_startup_objects()
            self._caught_up = True
            self._data.subscribe(
                self._settings.data_topics, on_assign=self._on_assign, on_revoke=self._on_revoke
            )
            while not self._stop and (count is None or summary.records < count):
                if timeout_s is not None and time.monotonic() - started >= timeout_s:
                    break
                self._follow_models()
                limit = (
                    self._batch.max_records
                    if count is None
                    else min(self._batch.max_records, count - summary.records)
                )
                messages = self._consume(limit)
                if messages:
                    self._process(messages, summary)
                summary.model_events += self._publish_events()
                self._measure_lag()
            self._settle(0, final=True)  # every batch acknowledged...
            self._commit_latest(set(self._acknowledged))  # ...and committed
        except BaseException:
            self._failing = True
            raise
        finally:
            self._data.close()  # leaves the group: partitions move to other replicas now
            self._models.close()
            # Pending model events; when failing, whatever is not committed is re-delivered.
            self._producer.flush(FLUSH_STEP_S if self._failing else self._settings.flush_timeout_s)
        summary.elapsed_s = time.monotonic() - started
        return summary

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        """Called inside consume(), between batches, with the partitions added: all of them
        with the eager protocols, only the increment with ``cooperative-sticky``."""
        self._assigned.update((p.topic, p.partition) for p in partitions)
        if self._caught_up and self._assigned:
            self.ready.set()

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        """Called inside consume() with the partitions taken away (with ``cooperative-sticky``
        only those; the others stay assigned, and the replica stays ready).

        Before they move: every batch in flight acknowledged, and every partition's latest
        acknowledged offset committed synchronously, even if its asynchronous commit failed.
        When the run is failing, only the batches acknowledged already (a refused output never
        will be). Nothing is committed for the revoked partitions afterwards; records of them
        still in hand are dropped unscored (see :meth:`_consume_more`).
        """
        revoked = {(p.topic, p.partition) for p in partitions}
        if self._failing:
            self._take_acknowledged_while_failing()
        else:
            self._settle(0, final=True)
        self._commit_latest(set(self._acknowledged))
        self._assigned -= revoked
        self._revoked |= revoked
        if not self._assigned:
            self.ready.clear()

    def _measure_lag(self) -> None:
        """Sums (high watermark - position) over the assigned partitions, every few seconds."""
        now = time.monotonic()
        if now < self._next_lag_check or not self._assigned:
            return
        self._next_lag_check = now + LAG_INTERVAL_S
        lag = 0
        assigned = [self._kafka.TopicPartition(t, p) for t, p in sorted(self._assigned)]
        for place in self._data.position(assigned):
            low, high = self._data.get_watermark_offsets(place, cached=True)
            if high < 0:
                return  # no fetch response yet: unknown
            lag += max(high - (place.offset if place.offset >= 0 else low), 0)
        self.consumer_lag = lag

    def _consume(self, limit: int) -> list[Any]:
        """A micro-batch: the records queued already (they waited while the last batch was
        scored: no more waiting), else the first record to arrive (waiting up to
        ``IDLE_WAIT_S``) and those arriving up to ``max_delay_ms`` after it, up to ``limit``."""
        consumer = self._data
        messages = consumer.consume(limit, 0)
        if not messages:
            messages = consumer.consume(1, IDLE_WAIT_S)
            if messages and limit > 1 and self._batch.max_delay_ms > 0:
                messages = self._consume_more(messages, limit - 1, self._batch.max_delay_ms / 1000)
        records = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(message)
            elif not self._is_partition_end(message):
                if error.fatal():
                    raise InfrastructureError(f"the data consumer failed: {error}")
                log.warning("data consumer: %s", error)
        return records

    def _consume_more(self, held: list[Any], limit: int, timeout_s: float) -> list[Any]:
        """``held`` and up to ``limit`` more messages, waiting up to ``timeout_s``.

        A rebalance inside the call may revoke the partitions of messages in ``held``: those
        are dropped unscored, as their new owner (or this replica, if the eager protocol gives
        them back) reads them again from the committed offset; scoring them here would score
        them twice and commit for a partition owned elsewhere. librdkafka itself drops those
        of a revoked partition that the call would return.
        """
        self._revoked.clear()
        more: list[Any] = self._data.consume(limit, timeout_s)
        if self._revoked:
            held = [m for m in held if (m.topic(), m.partition()) not in self._revoked]
        return held + more

    def _process(self, messages: Sequence[Any], summary: RunSummary) -> None:
        records = [InputRecord(m.value() or b"", m.key(), _position(m)) for m in messages]
        encoded = process_batch(self._core, self._codec, records)
        results, errors = encoded.results, encoded.errors
        if self._transactions is not None:
            self._commit_transactionally(results, errors, messages)
        else:
            batch = PendingBatch(self._next_offsets(messages), len(results) + len(errors))
            self._in_flight.add(batch)
            self._produce(self._settings.results_topic, results, on_delivery=batch.delivered)
            self._produce(self._settings.errors_topic, errors, on_delivery=batch.delivered)
            self._settle(self._settings.max_batches_in_flight)
        summary.records += len(records)
        summary.results += len(results)
        summary.errors += len(errors)
        summary.batches += 1

    def _produce(
        self,
        topic: str,
        messages: Sequence[Encoded],
        producer: Any = None,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        """Queues ``messages`` in order with one ``produce_batch`` call (0.7 µs a message
        against 1.2 µs for ``produce``), waiting while librdkafka's local queue is full.

        librdkafka queues a batch in order; once its queue is full it refuses that message and
        every later one of the batch, so what is retried is always a tail, and order holds.
        """
        producer = producer or self._producer
        on_delivery = on_delivery or self._on_delivery
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

    def _init_transactions(self) -> None:
        if self._transactions is None:
            return
        try:
            self._transactions.init_transactions(self._settings.catch_up_timeout_s)
        except self._kafka.KafkaException as err:
            raise InfrastructureError(
                f"exactly_once is on, but transactions cannot start at "
                f"{self._settings.bootstrap_servers}: {err.args[0]} (does the broker support "
                "them? turn exactly_once off for at-least-once)"
            ) from err

    def _commit_transactionally(
        self, results: Sequence[Encoded], errors: Sequence[Encoded], messages: Sequence[Any]
    ) -> None:
        """Outputs and the batch's offsets in one transaction: all of them count, or none."""
        transactions = self._transactions
        timeout_s = self._settings.flush_timeout_s
        try:
            transactions.begin_transaction()
            self._produce(self._settings.results_topic, results, transactions)
            self._produce(self._settings.errors_topic, errors, transactions)
            transactions.send_offsets_to_transaction(
                self._topic_partitions(self._next_offsets(messages)),
                self._data.consumer_group_metadata(),
                timeout_s,
            )
            transactions.commit_transaction(timeout_s)
        except self._kafka.KafkaException as err:
            error = err.args[0]
            if error.txn_requires_abort():
                transactions.abort_transaction(timeout_s)
            raise InfrastructureError(
                f"the transaction of a batch failed ({error}); nothing of it was committed, "
                "the batch will be re-delivered"
            ) from err

    def _on_delivery(self, error: Any, message: Any) -> None:
        """Deliveries outside batches: model events (transactional outputs fail their commit)."""
        if error is not None:
            log.warning("a model event was not delivered to %s: %s", message.topic(), error)

    def _settle(self, max_in_flight: int, *, final: bool = False) -> None:
        """Commits the acknowledged batches, in order, then waits while more than
        ``max_in_flight`` batches are unacknowledged, saying so if the broker is away.

        Commits are asynchronous; with ``final`` (before a revoke or the end) none is sent
        here: the caller commits the partitions' latest acknowledged offsets synchronously.

        librdkafka retries delivery by itself (for ``message.timeout.ms``); a delivery error, or
        ``flush_timeout_s`` without progress, ends the run before the batch is committed, so it
        is re-delivered to whichever replica owns its partitions next.
        """
        producer = self._producer
        producer.poll(0)
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
            producer.flush(FLUSH_STEP_S)
            self._commit_acknowledged(send=not final)
            if self._in_flight.outputs_pending and waited_s >= next_warning_s:
                next_warning_s += ERROR_LOG_INTERVAL_S
                log.warning(
                    "waiting %.0f s so far for Kafka at %s to acknowledge %d outputs",
                    waited_s,
                    self._settings.bootstrap_servers,
                    self._in_flight.outputs_pending,
                )

    def _take_acknowledged_while_failing(self) -> None:
        """Takes the leading acknowledged batches (for :meth:`_commit_latest`), without waiting
        for more and without raising over the error that ends the run."""
        try:
            self._producer.poll(0)
            self._commit_acknowledged(send=False)
        except InfrastructureError as err:
            log.warning("leaving without committing the batches in flight: %s", err)

    def _commit_acknowledged(self, send: bool) -> None:
        """Takes the leading acknowledged batches' offsets into ``_acknowledged`` and, if
        ``send``, commits them asynchronously."""
        try:
            offsets = self._in_flight.take_acknowledged()
        except DeliveryError as err:
            if err.committable:  # the batches before the failed one are delivered
                self._acknowledged.update(err.committable)
                self._commit_latest(set(err.committable))
            raise InfrastructureError(
                f"outputs were not delivered ({err}); stopping without committing, "
                "the batch will be re-delivered"
            ) from err
        if not offsets:
            return
        self._acknowledged.update(offsets)
        if not send:
            return
        try:
            self._data.commit(offsets=self._topic_partitions(offsets), asynchronous=True)
        except self._kafka.KafkaException as err:
            log.warning("could not send a commit (%s); a later commit covers it", err.args[0])

    def _commit_latest(self, places: set[Place]) -> None:
        """Commits synchronously the latest acknowledged offset of each of ``places`` (those of
        failed asynchronous commits included) and forgets them: at revoke and at the end."""
        offsets = {
            place: self._acknowledged.pop(place) for place in places & self._acknowledged.keys()
        }
        if offsets:
            self._commit(self._topic_partitions(offsets))

    def _commit(self, offsets: list[Any]) -> None:
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

    def _on_commit(self, error: Any, partitions: list[Any]) -> None:
        """Asynchronous commits' results: a failed one is covered by the next, or by the
        synchronous commit of the latest acknowledged offsets at revoke and at the end."""
        if error is not None:
            log.warning(
                "a commit failed (%s); the next one, or the final one, covers its offsets", error
            )

    def _next_offsets(self, messages: Sequence[Any]) -> dict[tuple[str, int], int]:
        """Per partition, the offset after the batch's last message: what a commit stores.

        A partition's messages arrive in offset order, so its last one is its highest.
        """
        return {(m.topic(), m.partition()): m.offset() + 1 for m in messages}

    def _topic_partitions(self, offsets: dict[tuple[str, int], int]) -> list[Any]:
        return [self._kafka.TopicPartition(t, p, o) for (t, p), o in offsets.items()]

    def _publish_events(self) -> int:
        rejected, count = drain_model_events(self._core, self._on_event)
        if rejected:
            self._produce(self._settings.errors_topic, rejected)
            self._producer.poll(0)
        return count


def _position(message: Any) -> str:
    return f"{message.topic()}/{message.partition()}@{message.offset()}"
