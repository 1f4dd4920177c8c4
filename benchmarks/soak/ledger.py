"""The soak's accounting: every record the driver sent, matched with the one output the server
wrote for it, read by an independent consumer of the results and errors topics.

A record is known by its position (``topic/partition@offset``, from the producer's delivery
report); every result and error record names the position of its input. Each sent record must
get exactly one output: none is *missing*, a second is a *duplicate* (the soak crashes nothing,
so at-least-once has no reason to repeat one), and an output for a position never sent is
*unknown*. Latency is the output's Kafka timestamp minus the record's (one clock: one host).

Each result also names the model version that scored it: the ledger keeps the distinct
(key, version) pairs, so a swap counts once the server's results show the new model scoring,
not when the driver published it.
"""

from __future__ import annotations

import math
import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from benchmarks.common import percentiles

_SENT, _ANSWERED = 1, 2


@dataclass(frozen=True)
class Window:
    """What the ledger saw since the previous window: latencies (ms) and outputs, and how long
    the oldest record still waiting for its output had waited when the window was taken."""

    latencies_ms: array[float]
    outputs: int
    oldest_wait_ms: float = 0.0  # 0: no record waited

    def figures(self, interval_s: float) -> dict[str, float]:
        """The window's columns: latency percentiles and maximum (NaN without outputs), the
        oldest wait, and outputs per second over ``interval_s``."""
        p50, p99 = percentiles(self.latencies_ms)
        return {
            "p50_ms": round(p50, 2),
            "p99_ms": round(p99, 2),
            "max_ms": round(max(self.latencies_ms), 2) if self.latencies_ms else math.nan,
            "oldest_wait_ms": round(self.oldest_wait_ms, 1),
            "throughput_rps": round(self.outputs / interval_s, 1),
        }


@dataclass(frozen=True)
class Accounts:
    """The totals: what was sent, and how each record was answered."""

    sent: int
    send_failures: int
    results: int
    errors: int
    missing: int
    duplicates: int
    unknown: int
    error_kinds: dict[str, int]
    model_events: dict[str, int]
    # distinct (key, version) pairs and keys in the results; None: not recorded (an old run)
    models_served: int | None = None
    keys_served: int | None = None

    @property
    def unaccounted(self) -> int:
        return self.send_failures + self.missing + self.duplicates + self.unknown

    @property
    def swaps_served(self) -> int | None:
        """Models that scored records after their key's first one: the swaps the server made."""
        if self.models_served is None or self.keys_served is None:
            return None
        return self.models_served - self.keys_served


class Ledger:
    """Sent records and their outputs, by position; safe to feed from several threads.

    Per partition, one byte per offset says whether the record was sent and answered (18 MB for
    a 30-minute run at 10k records/s); only records still waiting keep their send time.
    """

    def __init__(self, data_topic: str) -> None:
        self._topic = data_topic
        self._lock = threading.Lock()
        self._status: dict[int, bytearray] = {}
        self._waiting: dict[tuple[int, int], int] = {}  # (partition, offset) -> sent at (ms)
        self._early: dict[tuple[int, int], int] = {}  # answered before its delivery report
        self._latencies: array[float] = array("d")
        self._window_outputs = 0
        self._sent = self._send_failures = self._results = self._errors = 0
        self._duplicates = self._foreign = 0
        self._error_kinds: Counter[str] = Counter()
        self._model_events: Counter[str] = Counter()
        self._served: set[tuple[str, str]] = set()  # (key, version) pairs that scored
        self._keys_served: set[str] = set()

    # --- the producer's side ---------------------------------------------------------------
    def delivered(self, partition: int, offset: int, sent_ms: int) -> None:
        key = (partition, offset)
        with self._lock:
            self._sent += 1
            status = self._status_of(partition, offset)
            status[offset] = _SENT
            answered_ms = self._early.pop(key, None)
            if answered_ms is None:
                self._waiting[key] = sent_ms
            else:
                status[offset] = _ANSWERED
                self._latencies.append(answered_ms - sent_ms)

    def send_failed(self) -> None:
        with self._lock:
            self._send_failures += 1

    # --- the consumer's side ---------------------------------------------------------------
    def output(self, message: Any) -> None:
        """One message of the results or errors topic."""
        document = orjson.loads(message.value())
        position = document.get("position")
        if position is None:  # a model event (a rejected or quarantined model)
            with self._lock:
                self._model_events[str(document.get("kind"))] += 1
            return
        is_error = "kind" in document
        with self._lock:
            if is_error:
                self._errors += 1
                self._error_kinds[str(document["kind"])] += 1
            else:
                self._results += 1
                key = str(document.get("key"))
                self._served.add((key, str(document.get("version"))))
                self._keys_served.add(key)
            self._window_outputs += 1
            self._answer(str(position), message.timestamp()[1])

    def _answer(self, position: str, answered_ms: int) -> None:
        topic, _, place = position.rpartition("/")
        partition, _, offset_text = place.partition("@")
        if topic != self._topic or not partition.isdigit() or not offset_text.isdigit():
            self._foreign += 1
            return
        key = (int(partition), int(offset_text))
        status = self._status_of(*key)
        if status[key[1]] == _ANSWERED or key in self._early:
            self._duplicates += 1
        elif status[key[1]] == _SENT:
            status[key[1]] = _ANSWERED
            self._latencies.append(answered_ms - self._waiting.pop(key))
        else:
            self._early[key] = answered_ms

    def _status_of(self, partition: int, offset: int) -> bytearray:
        status = self._status.setdefault(partition, bytearray())
        if offset >= len(status):
            status.extend(bytes(max(offset + 1 - len(status), len(status))))
        return status

    # --- readers -----------------------------------------------------------------------------
    def take_window(self, now_ms: float | None = None) -> Window:
        """The window since the previous one; ``now_ms`` (the wall clock, as the records'
        timestamps) dates the oldest wait."""
        now_ms = time.time() * 1000 if now_ms is None else now_ms
        with self._lock:
            oldest = min(self._waiting.values(), default=None)
            window = Window(
                self._latencies,
                self._window_outputs,
                0.0 if oldest is None else max(now_ms - oldest, 0.0),
            )
            self._latencies, self._window_outputs = array("d"), 0
        return window

    @property
    def swaps_served(self) -> int:
        """Models that scored records after their key's first one (see :class:`Accounts`)."""
        with self._lock:
            return len(self._served) - len(self._keys_served)

    @property
    def waiting(self) -> int:
        """Records sent and not answered yet."""
        with self._lock:
            return len(self._waiting)

    @property
    def answered(self) -> int:
        with self._lock:
            return self._results + self._errors

    def accounts(self) -> Accounts:
        with self._lock:
            return Accounts(
                sent=self._sent,
                send_failures=self._send_failures,
                results=self._results,
                errors=self._errors,
                missing=len(self._waiting),
                duplicates=self._duplicates,
                unknown=len(self._early) + self._foreign,
                error_kinds=dict(self._error_kinds),
                model_events=dict(self._model_events),
                models_served=len(self._served),
                keys_served=len(self._keys_served),
            )


class OutputReader:
    """A stock consumer of the results and errors topics, from their beginning, feeding the
    ledger on its own thread until stopped."""

    def __init__(self, bootstrap: str, topics: list[str], ledger: Ledger) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "soak-ledger",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        metadata = self._consumer.list_topics(timeout=30).topics
        self._consumer.assign(
            [
                TopicPartition(topic, partition, OFFSET_BEGINNING)
                for topic in topics
                for partition in metadata[topic].partitions
            ]
        )
        self._ledger = ledger
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._read, name="soak-ledger", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _read(self) -> None:
        while not self._stopping.is_set():
            for message in self._consumer.consume(2000, 0.1):
                if message.error() is None:
                    self._ledger.output(message)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(30)
        self._consumer.close()
