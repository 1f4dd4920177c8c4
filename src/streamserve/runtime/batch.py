"""One micro-batch through the core: decode, score, encode — one output for every record.

Every runtime calls :func:`process_batch`; it is where contract 4 is held at the edge of the run
loop. A record or a model can make a step raise (a codec defect, a model returning what no
encoder takes, a plug-in that raises something unexpected): that step is then retried for each
record alone, so only the records concerned become error records, with the reason, and the run
loop goes on; no record is scored twice. Only :class:`InfrastructureError` (the stream cannot go
on) propagates.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streamserve.codecs.base import Codec, DecodedBatch, FieldOrder, InputRecord
from streamserve.errors import InfrastructureError, RecordDecodeError
from streamserve.runtime.encoding import OutputMessage, encode_internal_error, encode_outcome
from streamserve.serving.core import ServingCore
from streamserve.serving.outcome import INTERNAL_ERROR, BatchOutcome, RecordError


@dataclass(frozen=True)
class EncodedBatch:
    """A batch's outputs, each list in input order; one entry per record across both."""

    results: list[OutputMessage]
    errors: list[OutputMessage]


def process_batch(core: ServingCore, codec: Codec, records: Sequence[InputRecord]) -> EncodedBatch:
    """Decodes, scores and encodes ``records``: exactly one result or one error for each."""
    return encode_batch(score_batch(core, codec, records))


def score_batch(core: ServingCore, codec: Codec, records: Sequence[InputRecord]) -> BatchOutcome:
    """Decodes and scores ``records``: exactly one outcome for each, each scored once.

    Decoding and scoring isolate failing records themselves; this is the last line of defence
    against what they did not foresee (a codec returning a malformed batch): the records are
    then scored one at a time, and one that still fails alone gets an ``internal_error``.
    """
    try:
        return core.score(decode(codec, records))
    except InfrastructureError:
        raise
    except Exception as err:  # noqa: BLE001 - isolate the record that made the batch fail
        if len(records) == 1:
            core.count_internal_error()
            outcome = BatchOutcome(records)
            outcome.errors.append(RecordError(0, INTERNAL_ERROR, f"{type(err).__name__}: {err}"))
            return outcome
    return BatchOutcome.concatenate(records, [score_batch(core, codec, [r]) for r in records])


def encode_batch(outcome: BatchOutcome) -> EncodedBatch:
    """``outcome`` encoded; if encoding raises where it did not foresee (a key or a value of a
    plug-in's making), each record's outcome is encoded alone, and one that still fails becomes
    an ``internal_error`` record. Nothing is scored again."""
    try:
        return EncodedBatch(*encode_outcome(outcome))
    except InfrastructureError:
        raise
    except Exception as err:  # noqa: BLE001 - isolate the record that made the batch fail
        if len(outcome.records) == 1:
            return EncodedBatch([], [encode_internal_error(outcome.records[0], err)])
    alone = [encode_batch(outcome.only(row)) for row in range(len(outcome.records))]
    return EncodedBatch(
        [result for batch in alone for result in batch.results],
        [error for batch in alone for error in batch.errors],
    )


def decode(codec: Codec, records: Sequence[InputRecord]) -> DecodedBatch:
    """``codec.decode(records)``; if the codec raises instead of failing a record, each record is
    decoded alone and those that still raise become undecodable."""
    try:
        return codec.decode(records)
    except (Exception, SystemExit) as err:  # noqa: BLE001 - a codec defect fails its records only
        if len(records) == 1:
            return _undecodable(records, RecordDecodeError(f"the {codec.name} codec failed: {err}"))
    return _concatenate([decode(codec, [record]) for record in records], records)


def _undecodable(records: Sequence[InputRecord], error: RecordDecodeError) -> DecodedBatch:
    return DecodedBatch(
        records,
        [None] * len(records),
        (),
        np.full((len(records), 0), np.nan),
        {row: error for row in range(len(records))},
    )


def _concatenate(batches: list[DecodedBatch], records: Sequence[InputRecord]) -> DecodedBatch:
    """Batches of one record each, as one batch over the union of their columns."""
    names = tuple(dict.fromkeys(name for batch in batches for name in batch.feature_names))
    column = {name: index for index, name in enumerate(names)}
    values = np.full((len(batches), len(names)), np.nan)
    keys: list[str | None] = []
    errors: dict[int, RecordDecodeError] = {}
    field_orders: dict[str, Counter[FieldOrder]] = {}
    for row, batch in enumerate(batches):
        keys.append(batch.keys[0])
        for key, orders in batch.field_orders.items():
            field_orders.setdefault(key, Counter()).update(orders)
        if 0 in batch.errors:
            errors[row] = batch.errors[0]
        for name, value in zip(batch.feature_names, batch.values[0].tolist(), strict=True):
            values[row, column[name]] = value
    return DecodedBatch(records, keys, names, values, errors, field_orders)


@dataclass(frozen=True, slots=True)
class RecordOutput:
    """One record's output, as Python values: a result (``error_kind`` is ``None``) naming the
    key and the model that scored it, or an error saying what was wrong."""

    record: InputRecord
    key: str | None
    model: str | None
    version: str | None
    value: object = None
    error_kind: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_kind is None


def score_records(
    core: ServingCore, codec: Codec, records: Sequence[InputRecord | bytes]
) -> list[RecordOutput]:
    """Decodes and scores ``records`` (raw payloads or :class:`InputRecord` s) in-process: one
    :class:`RecordOutput` per record, in input order. Nothing a record or a model does makes
    this raise; each becomes that record's error."""
    inputs = [r if isinstance(r, InputRecord) else InputRecord(r) for r in records]
    if not inputs:
        return []  # nothing to score: no batch to count
    outcome = score_batch(core, codec, inputs)
    outputs: list[RecordOutput | None] = [None] * len(inputs)
    for row, group, value in outcome.results():
        model = group.model
        outputs[row] = RecordOutput(inputs[row], group.key, model.name, model.version, value)
    for error in outcome.errors:
        model_name, version = (
            (error.model.name, error.model.version) if error.model else (None, None)
        )
        outputs[error.row] = RecordOutput(
            inputs[error.row], error.key, model_name, version, None, error.kind, error.reason
        )
    return [output or _lost(inputs[row]) for row, output in enumerate(outputs)]


def _lost(record: InputRecord) -> RecordOutput:
    """The output of a record that got no outcome: a defect, said rather than hidden."""
    return RecordOutput(record, None, None, None, None, INTERNAL_ERROR, "no outcome (a defect)")
