"""Contract 4, sharpened: a record fails alone. An odd record (another field order, an extra
field, a typo) never fails its batch mates, and nothing a codec, a model or an encoder does
escapes the run loop: it becomes error records for the records concerned."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson

from builders import onnx_linear
from streamserve.codecs.base import DecodedBatch, InputRecord
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor, ModelType
from streamserve.formats.base import FactoryContext
from streamserve.formats.registry import FactoryRegistry
from streamserve.runtime.batch import process_batch
from streamserve.serving.core import ServingCore
from streamserve.settings import ServingSettings
from streamserve.testing import FunctionFactory, records_from, serve_records

WEIGHTS = np.array([1.0, 10.0, 100.0])  # a positional model: a + 10 b + 100 c


def _positional_model() -> ModelDescriptor:
    return ModelDescriptor(
        name="abc", data_type="k", model_type=ModelType.ONNX, data=onnx_linear(WEIGHTS, 0.0)
    )


def _record(**fields: object) -> bytes:
    return orjson.dumps({"dataType": "k", **fields})


def test_one_odd_json_record_fails_alone_and_another_field_order_scores_the_same() -> None:
    good = [_record(a=1, b=2, c=3)] * 1020
    odd = [
        _record(b=2, c=3, a=1),  # another order: the same record
        _record(a=1, bb=2, c=3),  # a typo: lacks b
        _record(a=1, b=2, c=3, d=4),  # an extra numeric field: no place for it
        _record(a=1, b=2),  # lacks c
    ]
    core = ServingCore(ServingSettings())
    with core:
        run = serve_records(
            core, JsonCodec(), records_from(good + odd), models=[_positional_model()]
        )
        slot = core.find_slot("k")
        assert slot is not None
        assert slot.positional_order == ("a", "b", "c")
    assert len(run.results) == 1021, "the good records and the reordered one all score"
    assert {r["value"] for r in run.results} == {321.0}
    by_position = {e["position"]: e for e in run.errors}
    assert set(by_position) == {"record:1022", "record:1023", "record:1024"}
    assert "lacks feature(s) the model needs: b" in by_position["record:1022"]["reason"]
    assert "carries field(s) d" in by_position["record:1023"]["reason"]
    assert "lacks feature(s) the model needs: c" in by_position["record:1024"]["reason"]
    assert {e["kind"] for e in run.errors} == {"missing_features"}


def test_the_positional_order_comes_from_the_records_most_of_them_carry() -> None:
    odd_first = [_record(c=3, b=2, a=1, x=0)] + [_record(a=1, b=2, c=3)] * 5
    core = ServingCore(ServingSettings())
    with core:
        run = serve_records(
            core, JsonCodec(), records_from(odd_first), models=[_positional_model()]
        )
    assert len(run.results) == 5
    assert [e["position"] for e in run.errors] == ["record:1"]


class RaisingCodec:
    """A plug-in codec with a defect: it raises on one record instead of failing it."""

    name = "raising"

    def decode(self, records: Sequence[InputRecord]) -> DecodedBatch:
        if any(record.payload == b"boom" for record in records):
            raise RuntimeError("codec defect")
        return JsonCodec().decode(records)


class BrokenBatchCodec:
    """A codec whose batch is malformed (one key short) when it sees a poison record."""

    name = "broken"

    def decode(self, records: Sequence[InputRecord]) -> DecodedBatch:
        batch = JsonCodec().decode(records)
        if any(b"poison" in record.payload for record in records):
            batch.keys = batch.keys[:-1]
        return batch


def test_a_codec_that_raises_fails_only_the_record_it_raised_on() -> None:
    core = _core_with_python_model(lambda x: x[:, 0])
    with core:
        records = records_from([_record(features=[1.0, 2.0, 3.0])] * 3 + [b"boom"])
        batch = process_batch(core, RaisingCodec(), records)
    assert len(batch.results) == 3
    (error,) = (orjson.loads(value) for _, value in batch.errors)
    assert error["kind"] == "undecodable_record"
    assert "the raising codec failed: codec defect" in error["reason"]
    assert error["input"] == "boom"


def test_a_batch_the_core_cannot_score_is_processed_one_record_at_a_time() -> None:
    core = _core_with_python_model(lambda x: x[:, 0])
    with core:
        poison = _record(features=[1.0, 2.0, 3.0], poison=1)
        records = records_from([_record(features=[1.0, 2.0, 3.0])] * 3 + [poison])
        batch = process_batch(core, BrokenBatchCodec(), records)
        counts = core.counts
    assert len(batch.results) == 3
    (error,) = (orjson.loads(value) for _, value in batch.errors)
    assert error["kind"] == "internal_error"
    assert "malformed batch from the codec" in error["reason"]
    assert error["input"] == poison.decode()
    assert counts["errors.internal_error"] == 1


def test_a_value_no_encoder_takes_fails_its_record_alone() -> None:
    """A model whose text passed validation but is not UTF-8 for one record."""

    def text(features: np.ndarray) -> np.ndarray:
        return np.array(["\udcff" if row[0] == 666 else "fine" for row in features.tolist()])

    core = _core_with_python_model(text)
    with core:
        records = records_from(
            [_record(features=[1.0, 2.0, 3.0])] * 3 + [_record(features=[666.0, 0.0, 0.0])]
        )
        batch = process_batch(core, JsonCodec(), records)
    assert [orjson.loads(value)["value"] for _, value in batch.results] == ["fine"] * 3
    (error,) = (orjson.loads(value) for _, value in batch.errors)
    assert error["kind"] == "scoring_failed"
    assert "not valid UTF-8" in error["reason"]


def _core_with_python_model(function: object) -> ServingCore:
    registry = FactoryRegistry(FactoryContext())
    registry.register(301, FunctionFactory(function, width=3))  # type: ignore[arg-type]
    core = ServingCore(ServingSettings(), registry)
    core.submit_model(ModelDescriptor(name="py", data_type="k", model_type=301, data=b"x"))
    assert core.wait_for_models(60)
    return core


def test_the_feature_names_option_names_a_positional_models_columns() -> None:
    """With its columns named by the publisher, a positional model takes named records in any
    field order, and one odd first record can fix nothing wrong."""
    named = ModelDescriptor(
        name="abc",
        data_type="k",
        model_type=ModelType.ONNX,
        data=onnx_linear(WEIGHTS, 0.0),
        options={"feature_names": "a, b, c"},
    )
    records = [_record(c=3, a=1, bb=2)] + [_record(c=3, b=2, a=1), _record(a=1, b=2, c=3)] * 3
    core = ServingCore(ServingSettings())
    with core:
        run = serve_records(core, JsonCodec(), records_from(records), models=[named])
        slot = core.find_slot("k")
        assert slot is not None
        assert slot.positional_order is None, "named by its publisher: no order needed"
    assert [r["value"] for r in run.results] == [321.0] * 6
    (error,) = run.errors
    assert "lacks feature(s) the model needs: b" in error["reason"]


def test_a_feature_names_option_of_the_wrong_width_rejects_the_model() -> None:
    wrong = ModelDescriptor(
        name="abc",
        data_type="k",
        model_type=ModelType.ONNX,
        data=onnx_linear(WEIGHTS, 0.0),
        options={"feature_names": "a,b"},
    )
    core = ServingCore(ServingSettings())
    with core:
        run = serve_records(core, JsonCodec(), records_from([_record(a=1, b=2)]), models=[wrong])
    (rejection,) = [e for e in run.errors if e["kind"] == "model_rejected"]
    assert "must name each of its 3 input columns once" in rejection["reason"]


def _first_column_unless_negative(features: np.ndarray) -> np.ndarray:
    if (features[:, 0] < 0).any():
        raise SystemExit("the model library gave up on a negative input")
    return features[:, 0]


def test_a_model_calling_sys_exit_on_one_record_fails_that_record_alone() -> None:
    """SystemExit is no Exception, yet a model library calling sys.exit() is a model failure:
    escaping, it would fail the whole batch, and on Kafka replay it at every restart."""
    registry = FactoryRegistry(FactoryContext())
    factory = FunctionFactory(_first_column_unless_negative, width=2)
    registry.register(1415, lambda context: factory)
    model = ModelDescriptor(name="m", data_type="k", model_type=1415, data=b"-")
    records = records_from([_record(a=value, b=0.0) for value in (1.0, -1.0, 2.0)])

    with ServingCore(ServingSettings(), registry) as core:
        run = serve_records(core, JsonCodec(), records, models=[model])

    assert (len(run.results), len(run.errors)) == (2, 1)
    assert [r["value"] for r in run.results] == [1.0, 2.0]
    assert "gave up on a negative input" in run.errors[0]["reason"]
