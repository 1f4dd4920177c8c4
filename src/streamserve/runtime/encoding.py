"""Result and error records as JSON, one document per input record.

A result names the key, the model (name and version) that scored the record, the value and the
per-record scoring time. An error carries the kind, the reason, the key and model when known,
and the input itself (as text, or base64 when it is not UTF-8), so nothing is lost.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import orjson

from streamserve.codecs.base import InputRecord
from streamserve.serving.core import ServingCore
from streamserve.serving.events import ModelEvent, ModelEventKind
from streamserve.serving.outcome import BatchOutcome, RecordError

Encoded = tuple[bytes | None, bytes]  # (message key, message value)


def encode_outcome(outcome: BatchOutcome) -> tuple[list[Encoded], list[Encoded]]:
    """``(results, errors)`` encoded, each in input order."""
    results: list[tuple[int, Encoded]] = []
    for group in outcome.groups:
        key = group.key.encode()
        model = group.model
        scoring_us = round(group.scoring_s_per_record * 1e6, 3)
        for row, value in zip(group.rows.tolist(), group.values.tolist(), strict=True):
            document = {
                "key": group.key,
                "model": model.name,
                "version": model.version,
                "value": value,
                "position": outcome.records[row].position,
                "scoring_us": scoring_us,
            }
            results.append((row, (key, orjson.dumps(document))))
    if len(outcome.groups) > 1:  # one group's rows are in input order already
        results.sort(key=lambda item: item[0])
    errors = [
        encode_record_error(error, outcome.records[error.row])
        for error in sorted(outcome.errors, key=lambda error: error.row)
    ]
    return [encoded for _, encoded in results], errors


def encode_record_error(error: RecordError, record: InputRecord) -> Encoded:
    document: dict[str, object] = {
        "kind": error.kind,
        "reason": error.reason,
        "key": error.key,
        "model": error.model.name if error.model else None,
        "version": error.model.version if error.model else None,
        "position": record.position,
    }
    try:
        document["input"] = record.payload.decode("utf-8")
    except UnicodeDecodeError:
        document["input_base64"] = base64.b64encode(record.payload).decode("ascii")
    key = error.key.encode() if error.key else record.key
    return key, orjson.dumps(document)


def encode_model_event(event: ModelEvent) -> Encoded:
    document = {
        "kind": str(event.kind),
        "key": event.key,
        "model": event.name,
        "version": event.version,
        "reason": event.reason,
        "error_kind": event.error_kind,
        "origin": event.origin,
        "at": event.at,
    }
    return (event.key.encode() or None), orjson.dumps(document)


def drain_model_events(
    core: ServingCore, on_event: Callable[[ModelEvent], None] | None
) -> tuple[list[Encoded], int]:
    """Takes the core's model events: the rejections encoded for the errors output, and how
    many events there were. ``on_event`` (the demo's display, say) sees every event."""
    events = core.drain_events()
    if on_event is not None:
        for event in events:
            on_event(event)
    rejected = [encode_model_event(e) for e in events if e.kind is ModelEventKind.REJECTED]
    return rejected, len(events)
