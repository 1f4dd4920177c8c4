"""Scenario 7: streamserve beside its peers, on the same broker, records and models.

The peers are what a user could pick instead: the per-record loop written by hand
(``loop_app.py``), a Quix Streams application (``quix_app.py``) and a PyFlink job
(``flink_job.py``), each written as its own docs recommend and run as a process of its own, in its
own environment (``scripts/peers-env.sh``; the loop runs in ``.venv``). streamserve runs as in
scenario 2 (the Kafka runtime in this process). Each reads WineRecord protobufs from a topic and
writes one JSON result per record, the same document streamserve writes, scored by the same model
through the same library: the original TF frozen graph through TensorFlow, the MLP through
onnxruntime.

Every system is measured the same way, from the broker's append times of its outputs (every
topic here is ``LogAppendTime``): throughput is the outputs over the time from the first to the
last (the topic is full before the system starts, so its startup, the JVM's and the group join,
counts for none of them; a slow peer is stopped after a time budget and measured on what it
answered); latency is the output's time minus its record's (matched by the ``position`` each
result names), for records published at a steady rate by ``streamserve publish-data`` after a
warm-up. Every run is checked: no record answered twice or skipped, and every output what
streamserve wrote for a record of the same bytes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition

from benchmarks.broker import BenchBroker, running
from benchmarks.common import Row, Sizes, WineData, percentiles, rate
from benchmarks.kafka import _produce_fast, _publish_paced, _start_runtime
from streamserve.codecs.protobuf import encode_wine_record
from streamserve.descriptor import ModelType

SCENARIO = "7 peers side by side"
REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 4
WARM_UP_RECORDS = 20
MODELS = {  # label: (streamserve's model type, the peers' --model-kind)
    "TF frozen graph": (ModelType.TENSORFLOW, "tf-frozen-graph"),
    "ONNX MLP": (ModelType.ONNX, "onnx"),
}


@dataclass(frozen=True)
class AppendTimeBroker(BenchBroker):
    """The broker, creating every topic with the broker's append time as each message's
    timestamp: the clients' own (CreateTime) differ by design (Quix Streams gives a result its
    record's timestamp), and one clock, the broker's, times every system alike."""

    def create_topics(self, *names: str, partitions: int = PARTITIONS) -> None:
        self.broker.create_topics(
            *names, partitions=partitions, config={"message.timestamp.type": "LogAppendTime"}
        )


@dataclass(frozen=True)
class Peer:
    """A peer: its label in the report, and the command that runs it until SIGTERM."""

    label: str
    command: list[str]


@dataclass(frozen=True)
class Sent:
    """A record in a data topic."""

    timestamp_ms: int
    payload: bytes


@dataclass(frozen=True)
class Ledger:
    """A run's outputs, checked against its records: throughput and latency from timestamps."""

    outputs: int
    complete: bool  # every record answered; else the system was stopped after its time budget
    rate: float  # outputs/s from the first output's timestamp to the last's
    results: dict[bytes, set[bytes]]  # record bytes -> the outputs written for them
    latencies_ms: dict[str, float]  # position -> result produced - record produced
    wall_s: float  # from the start of the system to its last output: startup included


def run(wine: WineData, mlp_onnx: bytes, sizes: Sizes, broker_kind: str) -> list[Row]:
    if broker_kind != "kafka":
        # tansu keeps the producer's timestamp on a LogAppendTime topic: the peers' outputs
        # could not be timed alike
        print(f"peers: not run on {broker_kind} (Apache Kafka only)", file=sys.stderr)
        return []
    connector = _peer_environments()
    # enough records for several produce requests each, even in the smoke run: throughput is
    # timed between the outputs' append times
    records = max(sizes.kafka_records // 2, 5_000)
    # a slow peer is stopped after its budget (from its first output), not made to read them all
    budget_s = 3 * sizes.latency_seconds
    models = {
        "TF frozen graph": (wine.directory / "optimized_WineQuality.pb").read_bytes(),
        "ONNX MLP": mlp_onnx,
    }
    with tempfile.TemporaryDirectory(prefix="peers-") as scratch, running(broker_kind) as started:
        broker = AppendTimeBroker(started.broker, started.label, started.consumer)
        paths = {label: Path(scratch) / f"model-{index}" for index, label in enumerate(models)}
        for label, data in models.items():
            paths[label].write_bytes(data)
        peers = _peers(connector)
        broker.create_topics("peers-data", partitions=PARTITIONS)
        _produce_fast(broker, "peers-data", [encode_wine_record(r) for r in wine.cycled(records)])
        sent = _sent_at(broker, "peers-data")
        label = f"{SCENARIO}, {broker.label}"
        rows: list[Row] = []
        rates: dict[str, dict[str, float]] = {}
        for model, data in models.items():
            model_type, kind = MODELS[model]
            ours = _streamserve_throughput(broker, kind, model_type, data, sent)
            rates[model] = {}
            for peer in peers:
                theirs = _peer_throughput(broker, peer, kind, paths[model], sent, budget_s)
                _check_results(peer.label, theirs, ours)
                rates[model][peer.label] = theirs.rate
                rows.append(
                    Row(
                        label,
                        f"{model}: streamserve records/s vs {peer.label}",
                        ours.rate,
                        "rec/s",
                        f"{peer.label}, same model",
                        theirs.rate,
                        details={
                            "records": ours.outputs,
                            "peer_records": theirs.outputs,
                            "peer_read_all": theirs.complete,
                            "streamserve_wall_s": round(ours.wall_s, 2),
                            "peer_wall_s": round(theirs.wall_s, 2),
                        },
                    )
                )
            best = max(rates[model], key=rates[model].__getitem__)
            rows.append(
                Row(
                    label,
                    f"{model}: streamserve records/s vs the best peer ({best})",
                    ours.rate,
                    "rec/s",
                    f"{best}, same model",
                    rates[model][best],
                    "≥ 3x the best peer",
                    ours.rate >= 3 * rates[model][best],
                    {"peers": rates[model]},
                )
            )
        frozen, tf_rates = models["TF frozen graph"], rates["TF frozen graph"]
        best_tf = max(tf_rates, key=tf_rates.__getitem__)
        for peer in peers:
            row = _latency_row(
                broker,
                label,
                peer,
                paths["TF frozen graph"],
                frozen,
                tf_rates[peer.label] / 2,
                sizes,
            )
            if peer.label == best_tf:  # the target: at equal or lower p99 than the best peer
                row.target, row.met = (
                    "p99 ≤ the best peer's",
                    row.value <= (row.baseline_value or 0),
                )
            rows.append(row)
    return rows


def _latency_row(
    broker: BenchBroker,
    label: str,
    peer: Peer,
    frozen_path: Path,
    frozen: bytes,
    paced: float,
    sizes: Sizes,
) -> Row:
    """streamserve and the peer on the same paced stream: half the peer's maximum rate."""
    slug = _slug(peer.label)
    ours = _streamserve_latency(broker, f"latency-{slug}", frozen, paced, sizes)
    theirs = _peer_latency(broker, peer, slug, frozen_path, paced, sizes)
    ours_p50, ours_p99 = percentiles(ours)
    their_p50, their_p99 = percentiles(theirs)
    return Row(
        label,
        f"TF frozen graph: latency p50 / p99 at {paced:,.0f} rec/s (half {peer.label}'s max)",
        ours_p99,
        "ms",
        f"{peer.label} p99, same paced stream",
        their_p99,
        details={
            "p50_ms": ours_p50,
            "peer_p50_ms": their_p50,
            "records": len(ours),
            "peer_records": len(theirs),
        },
    )


def _peer_environments() -> Path:
    """Installs the peers' environments if needed; the Flink connector jar's path."""
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "peers-env.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Path(done.stdout.strip().splitlines()[-1])


def _peers(connector: Path) -> list[Peer]:
    def module(python: Path, name: str) -> list[str]:
        return [str(python), "-m", f"benchmarks.peers.{name}"]

    flink = module(REPO / ".venv-peers-flink/bin/python", "flink_job")
    return [
        Peer("per-record loop", module(Path(sys.executable), "loop_app")),
        Peer("Quix Streams", module(REPO / ".venv-peers-quix/bin/python", "quix_app")),
        Peer("PyFlink", [*flink, "--connector-jar", str(connector)]),
    ]


def _streamserve_throughput(
    broker: BenchBroker, kind: str, model_type: int, data: bytes, sent: dict[str, Sent]
) -> Ledger:
    """streamserve reads the peers' topic to its end (scenario 2's runtime, counted)."""
    name = _model_name(kind)
    started = time.time()
    _, core, thread, outcome = _start_runtime(
        broker, name, model_type, data, ["peers-data"], len(sent)
    )
    thread.join()
    core.close()
    summary = outcome["summary"]
    if summary.results != len(sent) or summary.errors:
        raise RuntimeError(f"{name}: {summary.results} results, {summary.errors} errors")
    return _ledger(broker, f"results-{name}", sent, started)


def _peer_throughput(
    broker: BenchBroker,
    peer: Peer,
    kind: str,
    model_path: Path,
    sent: dict[str, Sent],
    budget_s: float,
) -> Ledger:
    """The peer reads the topic to its end, or for ``budget_s`` from its first output."""
    slug = f"{_slug(peer.label)}-{kind}"
    output = f"peers-out-{slug}"
    broker.create_topics(output, partitions=PARTITIONS)
    started = time.time()
    with _running_peer(
        peer, broker, "peers-data", output, f"peers-{slug}", kind, model_path
    ) as process:
        _wait_for_outputs(broker, output, len(sent), peer.label, process, budget_s)
    return _ledger(broker, output, sent, started)


def _streamserve_latency(
    broker: BenchBroker, name: str, data: bytes, paced: float, sizes: Sizes
) -> list[float]:
    topic = f"peers-{name}-streamserve"
    broker.create_topics(topic, partitions=PARTITIONS)
    runtime, core, thread, _ = _start_runtime(
        broker, name, ModelType.TENSORFLOW, data, [topic], None
    )
    try:
        count = _paced(broker, topic, f"results-{name}", paced, sizes, "streamserve")
    finally:
        runtime.stop()
        thread.join()
        core.close()
    return _paced_latencies(broker, topic, f"results-{name}", count)


def _peer_latency(
    broker: BenchBroker, peer: Peer, slug: str, model_path: Path, paced: float, sizes: Sizes
) -> list[float]:
    topic, output = f"peers-latency-{slug}", f"peers-latency-out-{slug}"
    broker.create_topics(topic, output, partitions=PARTITIONS)
    with _running_peer(
        peer, broker, topic, output, f"peers-latency-{slug}", "tf-frozen-graph", model_path
    ) as process:
        count = _paced(broker, topic, output, paced, sizes, peer.label, process)
    return _paced_latencies(broker, topic, output, count)


def _paced(
    broker: BenchBroker,
    topic: str,
    output: str,
    paced: float,
    sizes: Sizes,
    who: str,
    process: subprocess.Popen[bytes] | None = None,
) -> int:
    """A warm-up (the group joined, the model's first call made), then records at ``paced``
    records/s; the number of records sent, warm-up included."""
    warm_up = [encode_wine_record([7.0] * 11) for _ in range(WARM_UP_RECORDS)]
    broker.produce(topic, [(None, payload) for payload in warm_up])
    _wait_for_outputs(broker, output, WARM_UP_RECORDS, who, process)
    count = max(int(paced * sizes.latency_seconds), 100)
    _publish_paced(broker, topic, count, paced)
    _wait_for_outputs(broker, output, WARM_UP_RECORDS + count, who, process)
    return WARM_UP_RECORDS + count


def _paced_latencies(broker: BenchBroker, topic: str, output: str, count: int) -> list[float]:
    """Record produced -> result produced, in ms, of the paced records (not the warm-up's)."""
    sent = _sent_at(broker, topic)
    if len(sent) != count:
        raise RuntimeError(f"{topic} holds {len(sent)} records, {count} were sent")
    latencies = _ledger(broker, output, sent, time.time()).latencies_ms
    # the warm-up was answered before the paced records were published: its records came first
    warm_up = sorted(sent, key=lambda position: sent[position].timestamp_ms)[:WARM_UP_RECORDS]
    for position in warm_up:
        del latencies[position]
    return list(latencies.values())


@contextmanager
def _running_peer(
    peer: Peer,
    broker: BenchBroker,
    topic: str,
    output: str,
    group: str,
    kind: str,
    model_path: Path,
) -> Iterator[subprocess.Popen[bytes]]:
    """The peer as a process group of its own (the JVM and Python workers of Flink with it),
    ended with SIGTERM (then SIGKILL) on exit; its output goes to a log shown if it fails."""
    with tempfile.TemporaryDirectory(prefix="peer-") as scratch:
        log_path = Path(scratch) / "peer.log"
        command = [
            *peer.command,
            *["--bootstrap-servers", broker.bootstrap, "--group", group],
            *["--input-topic", topic, "--output-topic", output],
            *["--model-kind", kind, "--model-path", str(model_path)],
            *["--model-name", _model_name(kind)],
        ]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True
            )
        try:
            yield process
        except BaseException:
            _stop(process)
            sys.stderr.write(f"--- {peer.label} log ---\n{_tail(log_path)}\n")
            raise
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the peer's process group (its own session: the group's id is its pid), then
    SIGKILL to whatever of the group is left after 30 s or after the peer ended."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _wait_for_outputs(
    broker: BenchBroker,
    topic: str,
    count: int,
    who: str,
    process: subprocess.Popen[bytes] | None = None,
    budget_s: float | None = None,
) -> None:
    """Until ``topic`` holds ``count`` messages, or ``budget_s`` after its first, read from the
    partitions' ends alone (no message is fetched while the system works); ``process``: the peer,
    which must not end."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "peers-watch"})
    try:
        partitions = [TopicPartition(topic, partition) for partition in range(PARTITIONS)]
        deadline = time.monotonic() + 600
        first_output = 0.0
        while True:
            try:
                held = sum(
                    consumer.get_watermark_offsets(partition, timeout=10)[1]
                    for partition in partitions
                )
            except KafkaException:  # a topic just created: its leaders not known yet
                held = 0
            if held >= count:
                if held > count:
                    raise RuntimeError(f"{who}: {held} outputs in {topic}, {count} expected")
                return
            if held and not first_output:
                first_output = time.monotonic()
            if budget_s is not None and first_output and time.monotonic() - first_output > budget_s:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{who}: {held} of {count} outputs in {topic} after 600 s")
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{who} ended (status {process.returncode}) at {held} outputs")
            time.sleep(0.25)
    finally:
        consumer.close()


def _sent_at(broker: BenchBroker, topic: str) -> dict[str, Sent]:
    """Each record by its position (as results name it): its Kafka timestamp and its bytes."""
    return {
        f"{m.topic()}/{m.partition()}@{m.offset()}": Sent(m.timestamp()[1], m.value())
        for m in broker.read_all(topic, timeout_s=120)
    }


def _outputs(broker: BenchBroker, topic: str) -> dict[str, tuple[int, bytes]]:
    """position -> (the output's timestamp, what any system must write for the record: its
    message key and its document but for where the record was and how long scoring took),
    refusing a record answered twice."""
    outputs: dict[str, tuple[int, bytes]] = {}
    for message in broker.read_all(topic, timeout_s=300):
        document = orjson.loads(message.value())
        position = document.pop("position")
        if position in outputs:
            raise RuntimeError(f"{topic}: record {position} answered twice")
        del document["scoring_us"]
        same = (message.key() or b"") + b" " + orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
        outputs[position] = (message.timestamp()[1], same)
    return outputs


def _ledger(broker: BenchBroker, topic: str, sent: dict[str, Sent], started: float) -> Ledger:
    """The outputs in ``topic`` of the records of ``sent``, each answered once, and all of them
    unless the system was stopped after its budget; ``started``: the system's start
    (``time.time()``)."""
    outputs = _outputs(broker, topic)
    foreign = outputs.keys() - sent.keys()
    if foreign:
        raise RuntimeError(f"{topic}: {len(foreign)} outputs of no record, e.g. {min(foreign)}")
    # a peer stopped after its budget answered part of the records: a prefix of each partition
    complete = len(outputs) == len(sent)
    if not complete and _holes(outputs.keys()):
        raise RuntimeError(f"{topic}: records skipped, e.g. {_holes(outputs.keys())[0]}")
    stamps = [timestamp for timestamp, _ in outputs.values()]
    first, last = min(stamps), max(stamps)
    # a broker stamps a whole produce request with one append time: the outputs of the first
    # request mark the start, the others were appended between it and the last
    after_first = sum(1 for timestamp in stamps if timestamp > first)
    return Ledger(
        len(outputs),
        complete,
        rate(after_first, (last - first) / 1000) if after_first else float("nan"),
        _by_record(sent, outputs),
        {
            position: timestamp - sent[position].timestamp_ms
            for position, (timestamp, _) in outputs.items()
        },
        last / 1000 - started,
    )


def _holes(positions: Iterable[str]) -> list[str]:
    """The records missing before the last answered one, per partition (``topic/p@offset``)."""
    offsets: dict[str, list[int]] = {}
    for position in positions:
        partition, offset = position.rsplit("@", 1)
        offsets.setdefault(partition, []).append(int(offset))
    holes = []
    for partition, answered in offsets.items():
        missing = set(range(max(answered) + 1)) - set(answered)
        holes += [f"{partition}@{offset}" for offset in sorted(missing)]
    return holes


def _by_record(
    sent: dict[str, Sent], outputs: dict[str, tuple[int, bytes]]
) -> dict[bytes, set[bytes]]:
    """Each record's bytes (the topic cycles through the 1,599 wine rows) and the distinct
    outputs written for it."""
    results: dict[bytes, set[bytes]] = {}
    for position, (_, same) in outputs.items():
        results.setdefault(sent[position].payload, set()).add(same)
    return results


def _check_results(peer: str, theirs: Ledger, ours: Ledger) -> None:
    """The peer wrote for every record what streamserve wrote for a record of the same bytes,
    and both wrote one output for the same bytes every time."""
    for who, ledger in (("streamserve", ours), (peer, theirs)):
        varying = [outputs for outputs in ledger.results.values() if len(outputs) > 1]
        if varying:
            raise RuntimeError(f"{who} wrote different outputs for equal records: {varying[0]}")
    wrong = [
        payload
        for payload, outputs in theirs.results.items()
        if outputs != ours.results.get(payload)
    ]
    if wrong:
        raise RuntimeError(
            f"{peer}: {len(wrong)} records answered otherwise than by streamserve, e.g. "
            f"{theirs.results[wrong[0]]} where streamserve wrote {ours.results.get(wrong[0])}"
        )


def _model_name(kind: str) -> str:
    return f"peers-{kind}"


def _slug(label: str) -> str:
    return label.lower().replace(" ", "-")
