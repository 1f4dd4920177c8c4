"""Columnar decoding of protobuf records that share one wire layout.

A stream's records of a fixed schema mostly share their layout: the same fields in the same
order at the same byte offsets (they differ where a publisher leaves a zero-valued field out, or
in a string's length). Such records are decoded a batch at a time with numpy: the records of one
length are stacked into a byte matrix, compared with a template record at every byte that
decides the parse (tags, lengths, varint continuation bits), and their double fields read as
columns. Any record that does not match exactly is left to the message class's own parser, so
what comes out is what protobuf gives for every record; only the time differs.

The template's layout is read by a scanner of the wire format that knows four wire types and
gives up (``None``) on anything else: a repeated field, a group, a 10-byte varint, a field of
another type than the schema says. Giving up costs only speed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
MAX_VARINT_BYTES = 9  # a 10-byte varint's last byte may carry bits a parser refuses
MAX_TEMPLATES = 4  # per length: past that, the records are too varied to be worth matching
MIN_MATCHED = 8  # fewer records of a length than this are parsed one by one


@dataclass(frozen=True)
class WireSchema:
    """What the columnar decoder needs to know of a message type: the field number of each
    double column, in column order, and of the string field read per record (the key)."""

    doubles: tuple[int, ...]
    string: int


@dataclass(frozen=True)
class Layout:
    """Where a template record keeps its values, and which of its bytes any record of the same
    layout must repeat exactly (``fixed``) or in their continuation bit (``varint``)."""

    fixed: npt.NDArray[np.intp]
    varint: npt.NDArray[np.intp]
    doubles: Mapping[int, int]  # column -> offset of its 8 bytes
    string: tuple[int, int] | None  # offset and length of the string field's bytes


@dataclass
class Columns:
    """What the columnar decoder read: ``rows`` of the batch, their values, and their strings as
    indices into ``strings`` (each distinct value once); every other row is for the message
    class's parser."""

    rows: npt.NDArray[np.intp]
    values: npt.NDArray[np.float64]
    string_ids: npt.NDArray[np.intp]
    strings: list[bytes]


def read_layout(payload: bytes, schema: WireSchema) -> Layout | None:
    """The layout of ``payload``, or ``None`` if the scanner cannot vouch for it."""
    fixed: list[int] = []
    varint: list[int] = []
    doubles: dict[int, int] = {}
    string: tuple[int, int] | None = None
    columns = {number: column for column, number in enumerate(schema.doubles)}
    seen: set[int] = set()
    position, end = 0, len(payload)
    while position < end:
        tag, after = _varint(payload, position)
        if tag is None:
            return None
        fixed.extend(range(position, after))
        number, wire_type = tag >> 3, tag & 7
        if number == 0 or number in seen:
            return None
        seen.add(number)
        position = after
        if number in columns and wire_type != FIXED64:
            return None
        if number == schema.string and wire_type != LENGTH_DELIMITED:
            return None
        if wire_type == VARINT:
            value, after = _varint(payload, position)
            if value is None:
                return None
            varint.extend(range(position, after))
        elif wire_type == FIXED64:
            after = position + 8
            if number in columns:
                doubles[columns[number]] = position
            else:
                fixed.extend(range(position, after))
        elif wire_type == FIXED32:
            after = position + 4
            fixed.extend(range(position, after))
        elif wire_type == LENGTH_DELIMITED:
            size, start = _varint(payload, position)
            if size is None:
                return None
            fixed.extend(range(position, start))
            after = start + size
            if number == schema.string:
                string = (start, size)
            else:  # a message or bytes of its own: its parse depends on every byte
                fixed.extend(range(start, after))
        else:
            return None
        if after > end:
            return None
        position = after
    return Layout(np.array(fixed, np.intp), np.array(varint, np.intp), doubles, string)


def _varint(payload: bytes, position: int) -> tuple[int | None, int]:
    value, shift = 0, 0
    for index in range(position, min(position + MAX_VARINT_BYTES, len(payload))):
        byte = payload[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index + 1
        shift += 7
    return None, position


def read_columns(
    payloads: Sequence[bytes], schema: WireSchema, parses: Callable[[bytes], bool]
) -> Columns:
    """The rows of ``payloads`` that match a template of their length, decoded: the doubles of
    ``schema`` (0.0 where a record leaves one out, as protobuf reads it) and the string field's
    bytes (empty when left out). ``parses`` tells whether the message class's parser takes a
    template: the scanner knows the wire format, not every rule of the parser (such as the
    largest field number), and a record that repeats a template's structure parses as it does."""
    width = len(schema.doubles)
    lengths = np.fromiter(map(len, payloads), np.intp, len(payloads))
    found = Columns(np.empty(0, np.intp), np.empty((0, width)), np.empty(0, np.intp), [])
    parts: list[tuple[npt.NDArray[np.intp], npt.NDArray[np.float64], npt.NDArray[np.intp]]] = []
    one_length = len(lengths) and lengths.min() == lengths.max()
    for length in [int(lengths[0])] if one_length else np.unique(lengths).tolist():
        rows = np.flatnonzero(lengths == length)
        if len(rows) < MIN_MATCHED or length == 0:
            continue
        group = payloads if len(rows) == len(payloads) else [payloads[row] for row in rows.tolist()]
        matrix = np.frombuffer(b"".join(group), np.uint8).reshape(len(rows), length)
        for _ in range(MAX_TEMPLATES):
            template = matrix[0]
            layout = read_layout(template.tobytes(), schema)
            if layout is None or not parses(template.tobytes()):
                break
            matched = _matching(matrix, template, layout)
            string_ids = _string_ids(matrix[matched], layout, found.strings)
            parts.append((rows[matched], _doubles(matrix[matched], layout, width), string_ids))
            rows, matrix = rows[~matched], matrix[~matched]
            if len(rows) < MIN_MATCHED:
                break
    if parts:
        found.rows = np.concatenate([rows for rows, _, _ in parts])
        found.values = np.concatenate([values for _, values, _ in parts])
        found.string_ids = np.concatenate([ids for _, _, ids in parts])
    return found


def _matching(
    matrix: npt.NDArray[np.uint8], template: npt.NDArray[np.uint8], layout: Layout
) -> npt.NDArray[np.bool_]:
    matched: npt.NDArray[np.bool_] = (matrix[:, layout.fixed] == template[layout.fixed]).all(axis=1)
    if len(layout.varint):
        bits = (matrix[:, layout.varint] & 0x80) == (template[layout.varint] & 0x80)
        matched &= bits.all(axis=1)
    return matched


def _doubles(matrix: npt.NDArray[np.uint8], layout: Layout, width: int) -> npt.NDArray[np.float64]:
    values = np.zeros((len(matrix), width))
    if layout.doubles:
        columns = list(layout.doubles)
        offsets = np.array([layout.doubles[column] for column in columns], np.intp)
        cells = matrix[:, (offsets[:, None] + np.arange(8)).ravel()]  # one copy, 8 bytes a cell
        values[:, columns] = np.ascontiguousarray(cells).view("<f8")
    return values


def _string_ids(
    matrix: npt.NDArray[np.uint8], layout: Layout, strings: list[bytes]
) -> npt.NDArray[np.intp]:
    """Each row's string as an index into ``strings``, which gains the values not in it yet."""
    start, size = layout.string if layout.string is not None else (0, 0)
    if size == 0:  # left out, or empty: one value for every row
        strings.append(b"")
        return np.full(len(matrix), len(strings) - 1, np.intp)
    cells = matrix[:, start : start + size]
    if (cells == cells[0]).all():  # the usual case: one data type in the whole batch
        strings.append(cells[0].tobytes())
        return np.full(len(matrix), len(strings) - 1, np.intp)
    cells = np.ascontiguousarray(cells).view(np.dtype((np.void, size)))
    distinct, inverse = np.unique(cells.ravel(), return_inverse=True)
    ids = []
    for value in distinct.tolist():
        ids.append(len(strings))
        strings.append(bytes(value))
    return np.asarray(ids, np.intp)[inverse.ravel()]
