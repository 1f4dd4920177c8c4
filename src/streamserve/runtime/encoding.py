"""Result and error records as JSON, one document per input record.

A result names the key, the model (name and version) that scored the record, the value and the
per-record scoring time. An error carries the kind, the reason, the key and model when known,
and the input itself (as text, or base64 when it is not UTF-8), so nothing is lost.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable

import orjson

from streamserve.codecs.base import InputRecord
from streamserve.errors import ScoringError
from streamserve.logs import cut
from streamserve.serving.core import ServingCore
from streamserve.serving.events import ModelEvent, ModelEventKind
from streamserve.serving.outcome import INTERNAL_ERROR, BatchOutcome, RecordError, ScoredGroup

OutputMessage = tuple[bytes | None, bytes]  # (message key, message value)
MAX_ERROR_INPUT_BYTES = 64 * 1024  # at most 6x that once JSON-escaped: under Kafka's 1 MB
MAX_REASON_CHARS = 4096
MAX_ERROR_KEY_CHARS = 1024  # an error record's key (in the document and as the message key)


def encode_outcome(outcome: BatchOutcome) -> tuple[list[OutputMessage], list[OutputMessage]]:
    """``(results, errors)`` encoded, each in input order.

    A value the encoder refuses fails its record alone (``scoring_failed``, with the reason);
    validation runs the same check on every new model, so a model whose outputs cannot be
    published never becomes current.
    """
    results: list[tuple[int, OutputMessage]] = []
    record_errors = list(outcome.errors)
    for group in outcome.groups:
        try:
            results.extend(_encode_group(group, outcome))
        except (TypeError, ValueError, orjson.JSONEncodeError):
            encoded, failed = _encode_rows_alone(group, outcome)
            results.extend(encoded)
            record_errors.extend(failed)
    if len(outcome.groups) > 1:  # one group's rows are in input order already
        results.sort(key=lambda item: item[0])
    errors = [
        encode_record_error(error, outcome.records[error.row])
        for error in sorted(record_errors, key=lambda error: error.row)
    ]
    return [encoded for _, encoded in results], errors


def _encode_group(group: ScoredGroup, outcome: BatchOutcome) -> list[tuple[int, OutputMessage]]:
    """The group's result documents. Their key, model, version and scoring time are the same for
    every record: they are encoded once, and each document is joined from those bytes and its
    own value and position (the bytes ``orjson.dumps`` of the whole document would give)."""
    key = group.key.encode()
    model = group.model
    head = orjson.dumps({"key": group.key, "model": model.name, "version": model.version})
    at_value = head[:-1] + b',"value":'
    scoring_us = round(group.scoring_s_per_record * 1e6, 3)
    tail = b',"scoring_us":' + orjson.dumps(scoring_us) + b"}"
    records, dumps, join = outcome.records, orjson.dumps, b"".join
    at_position = b',"position":'
    return [
        (
            row,
            (key, join((at_value, dumps(value), at_position, dumps(records[row].position), tail))),
        )
        for row, value in zip(group.rows.tolist(), group.values.tolist(), strict=True)
    ]


def _encode_rows_alone(
    group: ScoredGroup, outcome: BatchOutcome
) -> tuple[list[tuple[int, OutputMessage]], list[RecordError]]:
    encoded: list[tuple[int, OutputMessage]] = []
    failed: list[RecordError] = []
    for index, row in enumerate(group.rows.tolist()):
        single = dataclasses.replace(
            group, rows=group.rows[index : index + 1], values=group.values[index : index + 1]
        )
        try:
            encoded.extend(_encode_group(single, outcome))
        except (TypeError, ValueError, orjson.JSONEncodeError) as err:
            reason = f"model {group.model.name!r} returned a value that cannot be published: {err}"
            failed.append(RecordError(row, ScoringError.kind, reason, group.key, group.model))
    return encoded, failed


def encode_internal_error(record: InputRecord, err: BaseException) -> OutputMessage:
    """The error record of a record that failed in a way no step foresaw (a defect)."""
    error = RecordError(0, INTERNAL_ERROR, f"{type(err).__name__}: {err}")
    return encode_record_error(error, record)


def encode_record_error(error: RecordError, record: InputRecord) -> OutputMessage:
    """The error record of ``record``: its reason and its input, both bounded.

    An error record must always be publishable, whatever the record: past
    ``MAX_ERROR_INPUT_BYTES`` the input is cut (``input_truncated``, ``input_bytes``; the record
    itself stays at its ``position``), since JSON escaping can grow it sixfold and an output the
    broker refuses would stop the replica at that record again after every restart. The key is
    cut past ``MAX_ERROR_KEY_CHARS`` (``key_truncated``) for the same reason: a record's key
    comes from the record.
    """
    document: dict[str, object] = {
        "kind": error.kind,
        "reason": cut(error.reason, MAX_REASON_CHARS),
        "key": error.key,
        "model": cut(error.model.name, MAX_ERROR_KEY_CHARS) if error.model else None,
        "version": cut(error.model.version, MAX_ERROR_KEY_CHARS) if error.model else None,
        "position": record.position,
    }
    key = error.key.encode("utf-8", "replace") if error.key else record.key
    if error.key is not None and len(error.key) > MAX_ERROR_KEY_CHARS:
        document["key"] = error.key[:MAX_ERROR_KEY_CHARS]
        document["key_truncated"] = True
    if key is not None and len(key) > MAX_ERROR_KEY_CHARS:
        key = key[:MAX_ERROR_KEY_CHARS]
    payload = record.payload
    if len(payload) > MAX_ERROR_INPUT_BYTES:
        document["input_truncated"] = True
        document["input_bytes"] = len(payload)
        payload = payload[:MAX_ERROR_INPUT_BYTES]
    try:
        document["input"] = payload.decode("utf-8")
    except UnicodeDecodeError:
        document["input_base64"] = base64.b64encode(payload).decode("ascii")
    try:
        return key, orjson.dumps(document)
    except orjson.JSONEncodeError:  # text that is not UTF-8 (a lone surrogate): replace it
        return key, orjson.dumps({name: _utf8(value) for name, value in document.items()})


def _utf8(value: object) -> object:
    return value.encode("utf-8", "replace").decode("utf-8") if isinstance(value, str) else value


def encode_model_event(event: ModelEvent) -> OutputMessage:
    """A model event's document, each text bounded as an error record's are."""
    document = {
        "kind": str(event.kind),
        "key": cut(event.key, MAX_ERROR_KEY_CHARS),
        "model": cut(event.name, MAX_ERROR_KEY_CHARS),
        "version": cut(event.version, MAX_ERROR_KEY_CHARS),
        "reason": cut(event.reason, MAX_REASON_CHARS),
        "error_kind": event.error_kind,
        "origin": event.origin,
        "at": event.at,
    }
    return (event.key[:MAX_ERROR_KEY_CHARS].encode() or None), orjson.dumps(document)


PUBLISHED_EVENTS = frozenset((ModelEventKind.REJECTED, ModelEventKind.QUARANTINED))


def drain_model_events(
    core: ServingCore, on_event: Callable[[ModelEvent], None] | None
) -> tuple[list[OutputMessage], int]:
    """Takes the core's model events: the rejections encoded for the errors output, and how
    many events there were. ``on_event`` (the demo's display, say) sees every event."""
    events = core.drain_events()
    if on_event is not None:
        for event in events:
            on_event(event)
    rejected = [encode_model_event(e) for e in events if e.kind in PUBLISHED_EVENTS]
    return rejected, len(events)
