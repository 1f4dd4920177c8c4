"""Signed model messages: with trusted keys configured, a server serves only models (and
applies only tombstones) signed by one of them. Unsigned, wrongly signed, tampered and replayed
messages are rejected with the reason, counted, and published to the errors output; the
current model keeps serving. Through the Kafka runtime on Apache Kafka (the signature in a
header) and through the embedded runtime's models folder (the signature in a sidecar file)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from apache_kafka import ApacheKafka, unique_name
from confluent_kafka import Producer
from kafka_broker import running_broker
from review_support import MEAN_TYPE, wine_records

from builders import onnx_constant, onnx_descriptor, wine_json_lines
from streamserve.codecs.json import JsonCodec
from streamserve.codecs.protobuf import WineRecordCodec
from streamserve.descriptor import ModelDescriptor, encode_descriptor
from streamserve.descriptor.signing import SIGNATURE_HEADER, Signer, generate_key
from streamserve.formats.base import FactoryContext
from streamserve.formats.registry import FactoryRegistry
from streamserve.runtime.embedded import EmbeddedRuntime
from streamserve.runtime.kafka import KafkaRuntime
from streamserve.runtime.model_directory import ModelDirectory, model_message_of, sidecar_path
from streamserve.runtime.publish import Publisher
from streamserve.runtime.streams import MemorySink, MemorySource
from streamserve.serving.core import ServingCore
from streamserve.settings import (
    BatchSettings,
    KafkaSettings,
    ModelSecuritySettings,
    ServingSettings,
)
from streamserve.testing import FunctionFactory, records_from

MAX_MESSAGE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Keys:
    trusted: Signer
    untrusted: Signer
    trusted_public: Path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    public, _ = generate_key(folder / "publisher.pem")
    generate_key(folder / "intruder.pem")
    return Keys(
        Signer.from_file(folder / "publisher.pem"),
        Signer.from_file(folder / "intruder.pem"),
        public,
    )


def _security(keys: Keys) -> ModelSecuritySettings:
    return ModelSecuritySettings(
        trusted_keys=[str(keys.trusted_public)], max_model_message_bytes=MAX_MESSAGE_BYTES
    )


def _rejections(errors: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["error_kind"], e["reason"]) for e in errors if e["kind"] == "model_rejected"]


def _mean(name: str, key: str = "wine", **extra: Any) -> ModelDescriptor:
    return ModelDescriptor(
        name=name, data_type=key, model_type=MEAN_TYPE, data=name.encode(), **extra
    )


# --- Kafka: the signature in a header ----------------------------------------------------------
@pytest.fixture(scope="module")
def kafka() -> Iterator[ApacheKafka]:
    with running_broker() as broker:
        yield broker


def _signed(signer: Signer, payload: bytes) -> list[tuple[str, bytes]]:
    return [(SIGNATURE_HEADER, signer.sign_model(payload).encode())]


def _hostile_messages(keys: Keys) -> list[tuple[bytes, bytes | None, list[tuple[str, bytes]]]]:
    """(key, value, headers) of every message a hostile or careless publisher might write."""
    tampered = encode_descriptor(_mean("tampered"))
    tampered_headers = _signed(keys.trusted, tampered)
    tampered = tampered.replace(b"tampered", b"Tampered")  # one byte changed after signing
    beer = encode_descriptor(_mean("beer-model", key="beer"))
    good = encode_descriptor(_mean("good"))
    location = encode_descriptor(
        ModelDescriptor(name="by-path", data_type="wine", model_type=MEAN_TYPE, location="/m")
    )
    oversize = encode_descriptor(_mean("oversize", options={"pad": "x" * MAX_MESSAGE_BYTES}))
    unsigned = encode_descriptor(_mean("unsigned"))
    untrusted = encode_descriptor(_mean("untrusted"))
    replayed = encode_descriptor(_mean("replayed"))
    return [
        (b"wine", unsigned, []),
        (b"wine", untrusted, _signed(keys.untrusted, untrusted)),
        (b"wine", tampered, tampered_headers),
        (b"wine", replayed, _signed(keys.trusted, beer)),  # another message's signature
        (b"wine", location, _signed(keys.trusted, location)),
        (b"wine", oversize, _signed(keys.trusted, oversize)),
        (b"wine", None, []),  # an unsigned tombstone
        (b"wine", None, _signed(keys.trusted, good)),  # a model's signature on a tombstone
        (b"wine", None, [(SIGNATURE_HEADER, keys.trusted.sign_tombstone(b"beer").encode())]),
    ]


EXPECTED_KAFKA_REJECTIONS = [
    ("bad_signature", "model message is unsigned"),
    ("bad_signature", "which is not trusted"),
    ("bad_signature", "does not verify"),
    ("bad_signature", "does not verify"),
    ("bad_signature", "must declare its digest"),
    ("model_too_large", f"over the limit of {MAX_MESSAGE_BYTES} bytes"),
    ("bad_signature", "tombstone for key 'wine' is unsigned"),
    ("bad_signature", "tombstone for key 'wine': the signature"),
    ("bad_signature", "tombstone for key 'wine': the signature"),
]


def test_a_signing_replica_serves_only_what_a_trusted_key_signed(
    kafka: ApacheKafka, keys: Keys
) -> None:
    name = unique_name("signed")
    models, data, results, errors = (f"{name}-{t}" for t in ("models", "data", "results", "errors"))
    kafka.create_topics(data, results, errors, partitions=1)
    kafka.create_topics(models, partitions=1, config={"cleanup.policy": "compact"})
    publisher = Publisher(kafka.bootstrap, {})
    publisher.publish_model(models, _mean("good"), keys.trusted)  # the real publishing path
    publisher.publish_model(models, _mean("beer-model", key="beer"), keys.trusted)
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    for key, value, headers in _hostile_messages(keys):
        producer.produce(models, value=value, key=key, headers=headers)
    assert producer.flush(30) == 0
    publisher.publish_tombstone(models, "beer", keys.trusted)
    kafka.produce(data, wine_records(20))

    registry = FactoryRegistry(FactoryContext())
    registry.register(MEAN_TYPE, FunctionFactory(lambda x: x.mean(axis=1), width=11))
    core = ServingCore(ServingSettings(security=_security(keys)), registry)
    settings = KafkaSettings(
        bootstrap_servers=kafka.bootstrap,
        group_id=name,
        data_topics=[data],
        models_topic=models,
        results_topic=results,
        errors_topic=errors,
    )
    runtime = KafkaRuntime(core, WineRecordCodec(), settings, BatchSettings(max_delay_ms=20))
    try:
        runtime.run(count=20, timeout_s=120)
        wine = core.find_slot("wine")
        assert wine is not None
        assert wine.current is not None
        assert wine.current.identity.name == "good"
        assert core.find_slot("beer") is None, "the signed tombstone did not unload beer"
        assert core.counts["model_messages_rejected"] == len(EXPECTED_KAFKA_REJECTIONS)
    finally:
        core.close()

    served = [orjson.loads(m.value()) for m in kafka.read_all(results)]
    assert len(served) == 20
    assert {r["model"] for r in served} == {"good"}
    rejected = _rejections([orjson.loads(m.value()) for m in kafka.read_all(errors)])
    assert len(rejected) == len(EXPECTED_KAFKA_REJECTIONS), rejected
    for (kind, reason), (expected_kind, fragment) in zip(
        rejected, EXPECTED_KAFKA_REJECTIONS, strict=True
    ):
        assert kind == expected_kind, reason
        assert fragment in reason


def test_unsigned_publishers_are_served_as_before_when_no_key_is_trusted(
    kafka: ApacheKafka,
) -> None:
    """FLIP-23 compatibility: without trusted keys, nothing about signatures is required."""
    name = unique_name("unsigned")
    models, data, results, errors = (f"{name}-{t}" for t in ("models", "data", "results", "errors"))
    kafka.create_topics(data, results, errors, partitions=1)
    kafka.create_topics(models, partitions=1, config={"cleanup.policy": "compact"})
    kafka.produce(models, [(b"wine", encode_descriptor(_mean("plain")))])
    kafka.produce(data, wine_records(5))
    registry = FactoryRegistry(FactoryContext())
    registry.register(MEAN_TYPE, FunctionFactory(lambda x: x.mean(axis=1), width=11))
    core = ServingCore(ServingSettings(), registry)
    settings = KafkaSettings(
        bootstrap_servers=kafka.bootstrap,
        group_id=name,
        data_topics=[data],
        models_topic=models,
        results_topic=results,
        errors_topic=errors,
    )
    try:
        KafkaRuntime(core, WineRecordCodec(), settings, BatchSettings(max_delay_ms=20)).run(
            count=5, timeout_s=120
        )
    finally:
        core.close()
    assert {orjson.loads(m.value())["model"] for m in kafka.read_all(results)} == {"plain"}


# --- the embedded runtime's models folder: the signature in a sidecar file ---------------------
def _sign(signer: Signer, path: Path) -> None:
    sidecar_path(path).write_bytes(signer.sign_model(model_message_of(path, signed=True)).encode())


def _serve_folder(core: ServingCore, folder: ModelDirectory, keys_served: list[str]) -> Any:
    records = records_from(
        line for key in keys_served for line in wine_json_lines(_rows(), key=key)
    )
    results, errors = MemorySink(), MemorySink()
    runtime = EmbeddedRuntime(
        core,
        JsonCodec(),
        MemorySource(records, closed=True),
        results,
        errors,
        BatchSettings(max_records=64, max_delay_ms=0),
        models=folder,
    )
    runtime.run(timeout_s=300)
    return (
        [orjson.loads(value) for _, value in results.messages],
        [orjson.loads(value) for _, value in errors.messages],
    )


def _rows() -> Any:
    import numpy as np

    return np.random.default_rng(0).random((3, 12))


def test_a_models_folder_serves_only_models_with_a_trusted_sidecar_signature(
    tmp_path: Path, keys: Keys, wine_dir: Path
) -> None:
    root = tmp_path / "models"
    for key in ("good", "unsigned", "untrusted", "tampered", "moved", "desc", "saved"):
        (root / key).mkdir(parents=True)
    good = root / "good" / "model.onnx"
    good.write_bytes(onnx_constant(11, 1.0))
    _sign(keys.trusted, good)
    (root / "unsigned" / "model.onnx").write_bytes(onnx_constant(11, 2.0))
    (root / "untrusted" / "model.onnx").write_bytes(onnx_constant(11, 3.0))
    _sign(keys.untrusted, root / "untrusted" / "model.onnx")
    tampered = root / "tampered" / "model.onnx"
    tampered.write_bytes(onnx_constant(11, 4.0))
    _sign(keys.trusted, tampered)
    tampered.write_bytes(onnx_constant(11, 5.0))  # changed after signing
    # a signed model and its signature copied under another key: the key is signed too
    shutil.copy(good, root / "moved" / "model.onnx")
    shutil.copy(sidecar_path(good), sidecar_path(root / "moved" / "model.onnx"))
    desc = root / "desc" / "model.desc"
    desc.write_bytes(
        encode_descriptor(onnx_descriptor("from-desc", onnx_constant(11, 6.0), "desc"))
    )
    _sign(keys.trusted, desc)
    saved = root / "saved" / "wine-saved"
    shutil.copytree(wine_dir / "saved" / "1", saved)
    _sign(keys.trusted, saved)  # a SavedModel folder: its location and digest are signed

    security = _security(keys).model_copy(update={"max_model_message_bytes": 1024**2})
    core = ServingCore(ServingSettings(model_roots=[root], security=security))
    try:
        results, errors = _serve_folder(
            core, ModelDirectory(root, security.max_model_message_bytes), ["good", "desc", "saved"]
        )
        for key in ("unsigned", "untrusted", "tampered", "moved"):
            assert core.find_slot(key) is None, f"{key}: a model without a good signature served"
    finally:
        core.close()

    assert {r["key"]: r["model"] for r in results} == {
        "good": "model",
        "desc": "from-desc",
        "saved": "wine-saved",
    }
    assert all(r["value"] == 1.0 for r in results if r["key"] == "good")
    rejected = {e["origin"]: (e["error_kind"], e["reason"]) for e in errors if "origin" in e}
    assert rejected["unsigned/model.onnx"] == (
        "bad_signature",
        rejected["unsigned/model.onnx"][1],
    )
    assert "is unsigned" in rejected["unsigned/model.onnx"][1]
    assert "is not trusted" in rejected["untrusted/model.onnx"][1]
    assert "does not verify" in rejected["tampered/model.onnx"][1]
    assert "does not verify" in rejected["moved/model.onnx"][1]
    assert len(_rejections(errors)) == 4, errors


def test_a_signature_that_arrives_after_its_model_makes_it_served(
    tmp_path: Path, keys: Keys
) -> None:
    root = tmp_path / "models"
    model = root / "wine" / "model.onnx"
    model.parent.mkdir(parents=True)
    model.write_bytes(onnx_constant(11, 7.0))
    core = ServingCore(ServingSettings(security=_security(keys)))
    folder = ModelDirectory(root)
    try:
        _, errors = _serve_folder(core, folder, [])
        assert [kind for kind, _ in _rejections(errors)] == ["bad_signature"]
        _sign(keys.trusted, model)
        folder.poll()  # the new sidecar is seen once, then taken once it holds still
        results, errors = _serve_folder(core, folder, ["wine"])
    finally:
        core.close()
    assert _rejections(errors) == []
    assert {r["model"] for r in results} == {"model"}
