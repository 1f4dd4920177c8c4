"""What the soak sends: records at a steady pace across the keys, and the churn beside them (a
model swap every second, an admin rollback now and then, KServe V2 requests), with stock
clients: confluent_kafka and httpx."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from confluent_kafka import Producer

from benchmarks.soak.fleet import Fleet
from benchmarks.soak.ledger import Ledger
from streamserve.codecs.protobuf import WINE_FEATURES

PACE_TICK_S = 0.005


class RecordSender:
    """Produces the fleet's records round-robin over the keys; every delivery report goes to
    the ledger. ``send`` is flat out; ``pace`` holds a rate on its own thread until stopped."""

    def __init__(self, bootstrap: str, topic: str, fleet: Fleet, ledger: Ledger) -> None:
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 2, "queue.buffering.max.messages": 200000}
        )
        self._topic = topic
        self._fleet = fleet
        self._ledger = ledger
        self._next = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def _on_delivery(self, error: Any, message: Any) -> None:
        if error is not None:
            self._ledger.send_failed()
        else:
            self._ledger.delivered(message.partition(), message.offset(), message.timestamp()[1])

    def send(self, count: int) -> None:
        keys = len(self._fleet.keys)
        for _ in range(count):
            index = self._next
            payloads = self._fleet.records[index % keys]
            value = payloads[(index // keys) % len(payloads)]
            while True:
                try:
                    self._producer.produce(self._topic, value, on_delivery=self._on_delivery)
                    break
                except BufferError:  # the client's queue is full: wait for acknowledgements
                    self._producer.poll(0.01)
            self._next += 1
        self._producer.poll(0)

    @property
    def sent(self) -> int:
        return self._next

    def poll(self, timeout_s: float) -> None:
        """Serves delivery reports (to the ledger) for up to ``timeout_s``."""
        self._producer.poll(timeout_s)

    def pace(self, records_per_s: float) -> None:
        """Sends at ``records_per_s`` on a thread of its own, from now until :meth:`stop`."""

        def run() -> None:
            started, base = time.monotonic(), self._next
            while not self._stopping.is_set():
                due = base + int(records_per_s * (time.monotonic() - started))
                if due > self._next:
                    self.send(due - self._next)
                else:
                    self._producer.poll(PACE_TICK_S)

        self._thread = threading.Thread(target=run, name="soak-records", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(30)
        if self._producer.flush(120):
            raise RuntimeError("the soak's records were not all acknowledged within 120 s")


@dataclass(frozen=True)
class ChurnPlan:
    """How often each kind of churn happens (seconds between two)."""

    swap_every_s: float = 1.0
    rollback_every_s: float = 10.0
    v2_every_s: float = 1.0


class Churn:
    """On its own thread: publishes the next model of one key every ``swap_every_s`` (keys in
    turn, variants alternating), rolls back a recently swapped key every ``rollback_every_s``
    (through the admin API) and sends a V2 inference request every ``v2_every_s``. Counts what
    it did in ``counts``: swaps (models published: whether the server swapped them shows in its
    results, see :class:`~benchmarks.soak.ledger.Ledger`), rollbacks, rollbacks refused (409:
    nothing to roll back), v2 requests, and the failures of each (any other answer)."""

    def __init__(
        self,
        fleet: Fleet,
        plan: ChurnPlan,
        *,
        bootstrap: str,
        models_topic: str,
        api: httpx.Client,
        admin_token: str,
    ) -> None:
        self._fleet = fleet
        self._plan = plan
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        self._models_topic = models_topic
        self._api = api
        self._admin = {"Authorization": f"Bearer {admin_token}"}
        self._generations = [0] * len(fleet.keys)  # the initial models are generation 0
        self._rng = np.random.default_rng(3)
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-churn", daemon=True)

    @property
    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def _count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(60)
        self._producer.flush(30)

    def _run(self) -> None:
        started = time.monotonic()
        due = {"swap": started, "rollback": started + self._plan.rollback_every_s, "v2": started}
        every = {
            "swap": self._plan.swap_every_s,
            "rollback": self._plan.rollback_every_s,
            "v2": self._plan.v2_every_s,
        }
        act = {"swap": self._swap, "rollback": self._rollback, "v2": self._infer}
        while not self._stopping.wait(max(min(due.values()) - time.monotonic(), 0)):
            what = min(due, key=due.__getitem__)
            due[what] += every[what]
            try:
                act[what]()
            except httpx.HTTPError:
                self._count(f"{what}_failures")

    def _swap(self) -> None:
        swaps = self.counts.get("swaps", 0)
        index = swaps % len(self._fleet.keys)
        self._generations[index] += 1
        key, value = self._fleet.model_message(index, self._generations[index])
        self._producer.produce(self._models_topic, value, key=key)
        self._producer.poll(0)
        self._count("swaps")

    def _rollback(self) -> None:
        swaps = self.counts.get("swaps", 0)
        if swaps < 3:
            return
        # A key swapped a few seconds ago: its new model has served, the old one is previous.
        key = self._fleet.keys[(swaps - 3) % len(self._fleet.keys)]
        answer = self._api.post(f"/admin/keys/{key}/rollback", headers=self._admin)
        if answer.status_code == 200:
            self._count("rollbacks")
        elif answer.status_code == 409:
            self._count("rollbacks_refused")
        else:
            self._count("rollback_failures")

    def _infer(self) -> None:
        """Four wine rows, one tensor per feature (named models map them by name;
        positional ones take them in WineRecord order)."""
        index = int(self._rng.integers(len(self._fleet.keys)))
        rows = self._fleet.rows[self._rng.integers(len(self._fleet.rows), size=4)]
        body = {
            "inputs": [
                {"name": name, "shape": [4], "datatype": "FP64", "data": rows[:, column].tolist()}
                for column, name in enumerate(WINE_FEATURES)
            ]
        }
        answer = self._api.post(f"/v2/models/{self._fleet.keys[index]}/infer", json=body)
        outputs = answer.json().get("outputs") if answer.status_code == 200 else None
        if outputs and len(outputs[0]["data"]) == 4:
            self._count("v2_requests")
        else:
            self._count("v2_failures")
