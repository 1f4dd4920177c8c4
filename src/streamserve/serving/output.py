"""What a model may publish: one JSON value per record, of one type per key.

Validation and serving call the same :func:`publishable` on a model's output, so a model whose
outputs serving or encoding would refuse never becomes current (contract 3). What it refuses for
a whole batch (the wrong number of rows, complex numbers, dates, objects) raises
:class:`ScoringError`; what concerns single rows (NaN, infinity, text that is not UTF-8) fails
only those rows.

Each model publishes values of one :class:`ValueType`, seen in validation. A key keeps one value
type across model swaps (contract 4): a model of another type is rejected unless its descriptor
declares that type in its ``value_type`` option, the publisher's way of saying the change is
meant.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import orjson

from streamserve.errors import ModelValidationError, ScoringError

VALUE_TYPE_OPTION = "value_type"


class ValueType(enum.StrEnum):
    """The JSON type of the values a model publishes."""

    NUMBER = "number"
    STRING = "string"
    BOOLEAN = "boolean"
    ARRAY = "array"


@dataclass(frozen=True)
class PublishableOutput:
    """A model's output for a batch: ``values`` one per row (ready for ``tolist``), and the rows
    whose value cannot be published, with the reason."""

    values: np.ndarray
    value_type: ValueType
    failed: Mapping[int, str] = field(default_factory=dict)


def publishable(output: object, rows: int) -> PublishableOutput:
    """Checks a model's output for ``rows`` records, raising :class:`ScoringError` when none of
    it can be published."""
    values = np.asarray(output)
    if values.ndim == 0 or len(values) != rows:
        count = values.size if values.ndim == 0 else len(values)
        raise ScoringError(f"model returned {count} outputs for {rows} records")
    values = _as_plain_array(values)
    kind = values.dtype.kind
    if kind in "iub":
        return PublishableOutput(values, _value_type(values))
    if kind == "f":
        finite = np.isfinite(values.reshape(rows, -1)).all(axis=1)
        failed = {} if finite.all() else _failed_rows(~finite, values, "a value that is not finite")
        return PublishableOutput(values, _value_type(values), failed)
    if kind == "U":
        return PublishableOutput(values, _value_type(values), _non_utf8_rows(values))
    raise ScoringError(f"model returned values of type {values.dtype}, not numbers or strings")


def _as_plain_array(values: np.ndarray) -> np.ndarray:
    """Byte strings as text, and object arrays of one plain type as that type's array."""
    if values.dtype.kind == "S":
        try:
            return np.char.decode(values, "utf-8")
        except UnicodeDecodeError as err:
            raise ScoringError(f"model returned byte strings that are not UTF-8: {err}") from err
    if values.dtype.kind != "O":
        return values
    items = values.ravel().tolist()
    types = {type(item) for item in items}
    if types <= {str}:
        return values.astype(str)
    if types <= {bytes}:
        return _as_plain_array(values.astype(bytes))
    if types <= {bool, np.bool_}:
        return values.astype(bool)
    if all(issubclass(t, int | float | np.number) and not issubclass(t, bool) for t in types):
        return values.astype(np.float64)
    names = ", ".join(sorted(t.__name__ for t in types))
    raise ScoringError(f"model returned objects ({names}), not numbers or strings")


def _value_type(values: np.ndarray) -> ValueType:
    if values.ndim > 1:
        return ValueType.ARRAY
    if values.dtype.kind == "b":
        return ValueType.BOOLEAN
    if values.dtype.kind == "U":
        return ValueType.STRING
    return ValueType.NUMBER


def _failed_rows(mask: np.ndarray, values: np.ndarray, what: str) -> dict[int, str]:
    return {
        row: f"model returned {what} for the record: {values[row].tolist()!r}"
        for row in np.flatnonzero(mask).tolist()
    }


def _non_utf8_rows(values: np.ndarray) -> dict[int, str]:
    """Rows holding text with lone surrogates, which no UTF-8 output can carry."""
    try:
        np.char.encode(values, "utf-8")
        return {}
    except UnicodeEncodeError:
        pass
    flat = values.reshape(len(values), -1)
    bad = np.array([not _is_utf8(row) for row in flat.tolist()])
    return _failed_rows(bad, values, "text that is not valid UTF-8")


def _is_utf8(texts: list[str]) -> bool:
    try:
        for text in texts:
            text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_probe(output: object, rows: int, *, name: str, declared: str | None) -> ValueType:
    """Validation's check of a probe batch's output: what serving and encoding check, and the
    declared value type if any. Returns the model's value type; whether the key takes it is
    checked where it stages (:meth:`ModelSlot.stage`), under the slot's lock."""
    try:
        checked = publishable(output, rows)
        orjson.dumps(checked.values.tolist())  # what the encoders do with every value
    except (ScoringError, TypeError, ValueError) as err:
        raise ModelValidationError(
            f"model {name!r} returns output that cannot be published: {err}"
        ) from err
    if checked.failed:
        row, reason = next(iter(checked.failed.items()))
        raise ModelValidationError(f"model {name!r}, probe row {row}: {reason}")
    value_type = checked.value_type
    if declared is not None:
        if declared not in ValueType.__members__.values():
            raise ModelValidationError(
                f"model {name!r}: option {VALUE_TYPE_OPTION}={declared!r} is not one of "
                f"{', '.join(ValueType)}"
            )
        if declared != value_type:
            raise ModelValidationError(
                f"model {name!r} declares {VALUE_TYPE_OPTION}={declared} but returns "
                f"{value_type} values"
            )
    return value_type


def value_type_conflict(name: str, value_type: ValueType, key_type: ValueType) -> str:
    return (
        f"model {name!r} returns {value_type} values where its key publishes {key_type} "
        f"values; declare option {VALUE_TYPE_OPTION}={value_type} to change the key's value "
        "type on purpose"
    )
