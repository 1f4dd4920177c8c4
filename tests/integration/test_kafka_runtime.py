"""The Kafka runtime against a real broker (Apache Kafka, tests/kafka_broker.py), never a mock."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest
from codec_plugins import install_packed_floats
from confluent_kafka import Producer
from kafka_broker import TEST_CONSUMER_SETTINGS, Broker, running_broker
from plugins import on_sys_path

from builders import onnx_constant, onnx_descriptor
from streamserve.codecs.csv import wine_csv_codec
from streamserve.codecs.protobuf import WineRecordCodec, encode_wine_record
from streamserve.codecs.registry import build_codec
from streamserve.descriptor import ModelDescriptor, ModelType, encode_descriptor
from streamserve.errors import InfrastructureError
from streamserve.runtime.kafka import KafkaRuntime
from streamserve.serving.core import ServingCore
from streamserve.settings import BatchSettings, CodecSettings, KafkaSettings, ServingSettings
from streamserve.testing import records_from, serve_records

pytestmark = pytest.mark.slow


@pytest.fixture
def broker() -> Iterator[Broker]:
    with running_broker() as running:
        running.create_topics("wine-data", "models", "results", "errors")
        yield running


def kafka_settings(broker: Broker) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=broker.bootstrap,
        data_topics=["wine-data"],
        consumer=TEST_CONSUMER_SETTINGS,
    )


def frozen_graph(wine_dir: Path) -> ModelDescriptor:
    return ModelDescriptor(
        name="wine-frozen-graph",
        data_type="wine",
        model_type=ModelType.TENSORFLOW,
        data=(wine_dir / "optimized_WineQuality.pb").read_bytes(),
    )


def serve(broker: Broker, count: int) -> tuple[KafkaRuntime, ServingCore]:
    core = ServingCore(ServingSettings())
    runtime = KafkaRuntime(
        core,
        WineRecordCodec(),
        kafka_settings(broker),
        BatchSettings(max_records=256, max_delay_ms=20),
    )
    runtime.run(count=count, timeout_s=120)
    return runtime, core


def test_original_publishers_get_the_same_results_as_the_embedded_runtime(
    broker: Broker, wine_dir: Path, wine_matrix: np.ndarray
) -> None:
    # As the original publisher did: descriptors and WineRecords with null message keys.
    broker.produce("models", [(None, encode_descriptor(frozen_graph(wine_dir)))])
    rows = wine_matrix[:600]
    broker.produce("wine-data", [(None, encode_wine_record(row[:11])) for row in rows])

    _, core = serve(broker, count=len(rows))
    core.close()

    embedded_core = ServingCore(ServingSettings())
    lines = (wine_dir / "winequality_red.csv").read_bytes().splitlines()[: len(rows)]
    embedded = serve_records(
        embedded_core, wine_csv_codec(), records_from(lines), models=[frozen_graph(wine_dir)]
    )
    embedded_core.close()
    expected_by_payload = {
        encode_wine_record(row[:11]): result["value"]
        for row, result in zip(rows, embedded.results, strict=True)
    }
    payload_at = {
        f"{m.topic()}/{m.partition()}@{m.offset()}": m.value() for m in broker.read_all("wine-data")
    }
    results = [orjson.loads(m.value()) for m in broker.read_all("results")]
    assert len(results) == len(rows)
    assert {r["model"] for r in results} == {"wine-frozen-graph"}
    for result in results:
        assert result["value"] == expected_by_payload[payload_at[result["position"]]], result


def test_bad_model_messages_and_undecodable_records_reach_the_errors_topic(
    broker: Broker, wine_dir: Path, wine_matrix: np.ndarray
) -> None:
    broker.produce(
        "models",
        [
            (b"wine", encode_descriptor(frozen_graph(wine_dir))),
            (b"wine", b"\xff\xfe not a descriptor"),
            (
                b"wine",
                encode_descriptor(
                    ModelDescriptor(
                        name="broken", data_type="wine", model_type=ModelType.ONNX, data=b"junk"
                    )
                ),
            ),
        ],
    )
    good = [(None, encode_wine_record(row[:11])) for row in wine_matrix[:20]]
    broker.produce("wine-data", [*good[:10], (None, b"\xff\xff\xff"), *good[10:]])

    _, core = serve(broker, count=21)
    core.close()

    results = [orjson.loads(m.value()) for m in broker.read_all("results")]
    errors = [orjson.loads(m.value()) for m in broker.read_all("errors")]
    assert len(results) == 20
    assert {r["model"] for r in results} == {"wine-frozen-graph"}
    kinds = sorted((e["kind"], e.get("error_kind", "")) for e in errors)
    assert kinds == [
        ("model_rejected", "bad_descriptor"),
        ("model_rejected", "model_load_failed"),
        ("undecodable_record", ""),
    ]
    undecodable = next(e for e in errors if e["kind"] == "undecodable_record")
    assert "not a WineRecord protobuf" in undecodable["reason"]
    assert undecodable["input_base64"] == "////"


def test_a_restarted_replica_resumes_from_committed_offsets_with_its_models_rebuilt(
    broker: Broker, wine_dir: Path, wine_matrix: np.ndarray
) -> None:
    broker.produce("models", [(b"wine", encode_descriptor(frozen_graph(wine_dir)))])
    broker.produce("wine-data", [(None, encode_wine_record(r[:11])) for r in wine_matrix[:300]])
    _, first_core = serve(broker, count=300)
    first_core.close()
    broker.produce("wine-data", [(None, encode_wine_record(r[:11])) for r in wine_matrix[300:500]])

    _, second_core = serve(broker, count=200)  # a new process's core: nothing in memory
    second_core.close()

    results = [orjson.loads(m.value()) for m in broker.read_all("results")]
    errors = [orjson.loads(m.value()) for m in broker.read_all("errors")]
    assert errors == [], "a record was scored before the models were rebuilt"
    positions = [r["position"] for r in results]
    assert len(positions) == 500
    assert len(set(positions)) == 500, "records were scored twice after a clean restart"


def test_exactly_once_mode_commits_outputs_and_offsets_in_one_transaction(
    broker: Broker, wine_dir: Path, wine_matrix: np.ndarray
) -> None:
    """The transactional path runs end to end and a restart resumes after committed batches:
    nothing is lost or repeated on a clean restart (read_committed, as downstream readers must).
    Kills mid-transaction: tests/e2e/test_kafka_exactly_once.py."""
    broker.produce("models", [(b"wine", encode_descriptor(frozen_graph(wine_dir)))])
    broker.produce("wine-data", [(None, encode_wine_record(r[:11])) for r in wine_matrix[:200]])
    settings = kafka_settings(broker).model_copy(update={"exactly_once": True})
    for count in (120, 80):
        core = ServingCore(ServingSettings())
        KafkaRuntime(
            core, WineRecordCodec(), settings, BatchSettings(max_records=64, max_delay_ms=20)
        ).run(count=count, timeout_s=120)
        core.close()
    positions = [orjson.loads(m.value())["position"] for m in broker.read_all("results")]
    assert len(positions) == 200
    assert len(set(positions)) == 200


def test_a_tombstone_on_the_models_topic_unloads_its_key(
    broker: Broker, wine_dir: Path, wine_matrix: np.ndarray
) -> None:
    """Compaction deletes a key's model with a null value; every replica unloads the key, and
    a replica started later, replaying the topic, ends in the same state."""
    broker.produce(
        "models",
        [
            (b"wine", encode_descriptor(frozen_graph(wine_dir))),
            (b"other", encode_descriptor(replace(frozen_graph(wine_dir), data_type="other"))),
            (b"wine", None),
            (None, None),  # a tombstone without a key: ignored
        ],
    )
    broker.produce("wine-data", [(None, encode_wine_record(r[:11])) for r in wine_matrix[:5]])
    _, core = serve(broker, count=5)
    assert core.find_slot("wine") is None
    other = core.find_slot("other")
    assert other is not None
    assert other.staged is not None, "a tombstone unloaded another key"
    core.close()

    errors = [orjson.loads(m.value()) for m in broker.read_all("errors")]
    assert [e["kind"] for e in errors] == ["no_model"] * 5
    assert {e["key"] for e in errors} == {"wine"}
    assert broker.read_all("results") == []


def test_a_full_local_producer_queue_delays_outputs_but_loses_or_reorders_none(
    broker: Broker, wine_dir: Path, wine_matrix: np.ndarray
) -> None:
    """librdkafka's local queue holds 50 messages here, fewer than a batch: every batch is
    refused part way, and its tail is queued again once the queue drains."""
    broker.produce("models", [(b"wine", encode_descriptor(frozen_graph(wine_dir)))])
    broker.produce("wine-data", [(None, encode_wine_record(r[:11])) for r in wine_matrix[:600]])
    settings = kafka_settings(broker).model_copy(
        update={"producer": {"queue.buffering.max.messages": 50}}
    )
    core = ServingCore(ServingSettings())
    KafkaRuntime(
        core, WineRecordCodec(), settings, BatchSettings(max_records=256, max_delay_ms=20)
    ).run(count=600, timeout_s=120)
    core.close()

    results = broker.read_all("results")
    positions = [orjson.loads(m.value())["position"] for m in results]
    assert len(positions) == 600
    assert len(set(positions)) == 600
    assert len({m.partition() for m in results}) == 1  # one key: one partition, in produce order
    offsets_by_input_partition: dict[str, list[int]] = {}
    for position in positions:
        partition, offset = position.rsplit("@", 1)
        offsets_by_input_partition.setdefault(partition, []).append(int(offset))
    for partition, offsets in offsets_by_input_partition.items():
        assert offsets == sorted(offsets), f"results of {partition} out of input order"


def test_an_output_the_client_refuses_stops_the_run_before_its_batch_is_committed(
    broker: Broker, wine_dir: Path, wine_matrix: np.ndarray
) -> None:
    """An error record (it carries its 2,000-byte input) over the producer's message.max.bytes
    is refused: the run stops naming the topic and the reason, and a replica started after it
    scores that batch again, so the record still reaches the errors topic."""
    broker.produce("models", [(b"wine", encode_descriptor(frozen_graph(wine_dir)))])
    junk = b"\xff" * 2000
    good = [(None, encode_wine_record(r[:11])) for r in wine_matrix[:10]]
    broker.produce("wine-data", [*good[:5], (None, junk), *good[5:]])
    small = kafka_settings(broker).model_copy(update={"producer": {"message.max.bytes": 1000}})
    core = ServingCore(ServingSettings())
    runtime = KafkaRuntime(core, WineRecordCodec(), small, BatchSettings(max_records=256))
    with pytest.raises(InfrastructureError, match=r"for errors were refused.*too large"):
        runtime.run(count=11, timeout_s=120)
    core.close()
    assert [m.value() for m in broker.read_all("errors")] == []

    _, core = serve(broker, count=11)
    core.close()
    errors = [orjson.loads(m.value()) for m in broker.read_all("errors")]
    assert [e["kind"] for e in errors] == ["undecodable_record"]
    assert base64.b64decode(errors[0]["input_base64"]) == junk
    positions = {orjson.loads(m.value())["position"] for m in broker.read_all("results")}
    assert len(positions) == 10


def test_outputs_unacknowledged_past_the_flush_timeout_stop_the_run_with_nothing_committed(
    broker: Broker, wine_dir: Path, wine_matrix: np.ndarray
) -> None:
    """Outputs go to a second broker that accepts connections and answers nothing (paused):
    the run stops at flush_timeout_s saying so, commits nothing, and a replica started later
    scores every record."""
    broker.produce("models", [(b"wine", encode_descriptor(frozen_graph(wine_dir)))])
    broker.produce("wine-data", [(None, encode_wine_record(r[:11])) for r in wine_matrix[:50]])
    with running_broker() as silent:
        silent.create_topics("results", "errors")
        settings = kafka_settings(broker).model_copy(
            update={"flush_timeout_s": 3.0, "producer": {"bootstrap.servers": silent.bootstrap}}
        )
        core = ServingCore(ServingSettings())
        runtime = KafkaRuntime(core, WineRecordCodec(), settings, BatchSettings(max_records=16))
        with (
            silent.paused(),
            pytest.raises(InfrastructureError, match="not acknowledged within 3 s"),
        ):
            runtime.run(count=50, timeout_s=120)
        core.close()

    _, core = serve(broker, count=50)
    core.close()
    positions = {orjson.loads(m.value())["position"] for m in broker.read_all("results")}
    assert len(positions) == 50, "records were committed before their outputs were acknowledged"


def test_a_codec_sees_each_records_topic_and_headers(broker: Broker, tmp_path: Path) -> None:
    # The packed-floats plug-in keys a record by its data-type header, else by its topic.
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce("wine-data", struct.pack("<3d", 1, 2, 3), headers=[("data-type", b"red")])
    producer.produce("wine-data", struct.pack("<3d", 4, 5, 6))
    producer.flush(30)
    broker.produce(
        "models",
        [
            (None, encode_descriptor(onnx_descriptor("by-header", onnx_constant(3, 5.0), "red"))),
            (
                None,
                encode_descriptor(onnx_descriptor("by-topic", onnx_constant(3, 7.0), "wine-data")),
            ),
        ],
    )
    with (
        on_sys_path(install_packed_floats(tmp_path / "site")),
        ServingCore(ServingSettings()) as core,
    ):
        codec = build_codec(CodecSettings(format="packed-floats", options={"width": 3}))
        runtime = KafkaRuntime(core, codec, kafka_settings(broker), BatchSettings())
        summary = runtime.run(count=2, timeout_s=120)

    assert (summary.results, summary.errors) == (2, 0)
    results = [orjson.loads(m.value()) for m in broker.read_all("results")]
    assert sorted((r["key"], r["model"], r["value"]) for r in results) == [
        ("red", "by-header", 5.0),
        ("wine-data", "by-topic", 7.0),
    ]
