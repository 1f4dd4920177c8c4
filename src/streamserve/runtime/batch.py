"""One micro-batch through the core: decode, score, encode — one output for every record.

Every runtime calls :func:`process_batch`; it is where contract 4 is held at the edge of the run
loop. A record or a model can make any step raise (a codec defect, a model returning what no
encoder takes, a plug-in that raises something unexpected): the step is then retried for each
record alone, so only the records concerned become error records, with the reason, and the run
loop goes on. Only :class:`InfrastructureError` (the stream cannot go on) propagates.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streamserve.codecs.base import Codec, DecodedBatch, FieldOrder, InputRecord
from streamserve.errors import InfrastructureError, RecordDecodeError
from streamserve.runtime.encoding import Encoded, encode_internal_error, encode_outcome
from streamserve.serving.core import ServingCore


@dataclass(frozen=True)
class EncodedBatch:
    """A batch's outputs, each list in input order; one entry per record across both."""

    results: list[Encoded]
    errors: list[Encoded]


def process_batch(core: ServingCore, codec: Codec, records: Sequence[InputRecord]) -> EncodedBatch:
    """Decodes, scores and encodes ``records``: exactly one result or one error for each.

    Decoding, scoring and encoding each isolate failing records themselves; this is the last
    line of defence against what they did not foresee: the batch is processed again one record
    at a time, and a record that still fails alone becomes an error record with the reason.
    """
    try:
        results, errors = encode_outcome(core.score(decode(codec, records)))
        return EncodedBatch(results, errors)
    except InfrastructureError:
        raise
    except Exception as err:  # noqa: BLE001 - isolate the record that made the batch fail
        if len(records) == 1:
            core.count_internal_error()
            return EncodedBatch([], [encode_internal_error(records[0], err)])
    alone = [process_batch(core, codec, [record]) for record in records]
    return EncodedBatch(
        [result for batch in alone for result in batch.results],
        [error for batch in alone for error in batch.errors],
    )


def decode(codec: Codec, records: Sequence[InputRecord]) -> DecodedBatch:
    """``codec.decode(records)``; if the codec raises instead of failing a record, each record is
    decoded alone and those that still raise become undecodable."""
    try:
        return codec.decode(records)
    except Exception as err:  # noqa: BLE001 - a codec defect must fail its records only
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
