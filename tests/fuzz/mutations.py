"""What the fuzz targets share: case counts, byte mutations, protobuf field shuffles, odd JSON.

Counts are sized for CI; ``STREAMSERVE_FUZZ_SCALE`` multiplies every one (``=20`` for a long
local run). Mutations are hypothesis strategies, so failures shrink to a small edit of a valid
input and replay from the example database under ``.hypothesis/``.
"""

from __future__ import annotations

import json
import math
import os

from hypothesis import settings
from hypothesis import strategies as st

from streamserve.codecs.protobuf import WINE_FEATURES

SCALE_ENV = "STREAMSERVE_FUZZ_SCALE"


def fuzz_scale() -> float:
    return float(os.environ.get(SCALE_ENV, "1"))


def fuzz_settings(cases: int) -> settings:
    """``cases`` examples (times the scale) on top of the suite's fuzz profile."""
    return settings(max_examples=max(1, math.ceil(cases * fuzz_scale())))


# --- byte mutations ------------------------------------------------------------------------

INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x0A, 0x22, 0x2C, 0x3B, 0x7B, 0x7D)


def _position(draw: st.DrawFn, data: bytearray, *, inclusive: bool = False) -> int:
    return draw(st.integers(0, len(data) if inclusive else max(len(data) - 1, 0)))


def _truncate(draw: st.DrawFn, data: bytearray) -> bytearray:
    return data[: _position(draw, data, inclusive=True)]


def _flip_bits(draw: st.DrawFn, data: bytearray) -> bytearray:
    if data:
        at = _position(draw, data)
        data[at] ^= draw(st.integers(1, 255))
    return data


def _overwrite(draw: st.DrawFn, data: bytearray) -> bytearray:
    if data:
        data[_position(draw, data)] = draw(st.sampled_from(INTERESTING_BYTES))
    return data


def _insert(draw: st.DrawFn, data: bytearray) -> bytearray:
    at = _position(draw, data, inclusive=True)
    data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return data


def _delete(draw: st.DrawFn, data: bytearray) -> bytearray:
    at = _position(draw, data)
    del data[at : at + draw(st.integers(1, 64))]
    return data


def _duplicate(draw: st.DrawFn, data: bytearray) -> bytearray:
    at = _position(draw, data)
    chunk = data[at : at + draw(st.integers(1, 64))]
    to = _position(draw, data, inclusive=True)
    data[to:to] = chunk
    return data


def _swap(draw: st.DrawFn, data: bytearray) -> bytearray:
    if len(data) < 2:
        return data
    first, second = sorted((_position(draw, data), _position(draw, data)))
    size = draw(st.integers(1, max(1, min(64, second - first))))
    a, b = bytes(data[first : first + size]), bytes(data[second : second + size])
    data[second : second + size] = a
    data[first : first + size] = b
    return data


MUTATIONS = (_truncate, _flip_bits, _overwrite, _insert, _delete, _duplicate, _swap)


@st.composite
def mutated(draw: st.DrawFn, data: bytes, max_edits: int = 4) -> bytes:
    """``data`` after 1 to ``max_edits`` edits: truncation, bit flips, inserted, deleted,
    duplicated or swapped bytes."""
    edited = bytearray(data)
    for _ in range(draw(st.integers(1, max_edits))):
        edited = draw(st.sampled_from(MUTATIONS))(draw, edited)
    return bytes(edited)


# --- protobuf wire fields ------------------------------------------------------------------


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at


def wire_fields(message: bytes) -> list[bytes]:
    """A valid protobuf message split into its top-level fields, each with its tag."""
    fields, at = [], 0
    while at < len(message):
        start = at
        tag, at = _varint(message, at)
        wire_type = tag & 7
        if wire_type == 0:
            _, at = _varint(message, at)
        elif wire_type == 1:
            at += 8
        elif wire_type == 5:
            at += 4
        else:  # 2: length-delimited (the only other type these messages use)
            length, at = _varint(message, at)
            at += length
        fields.append(message[start:at])
    return fields


@st.composite
def shuffled_fields(draw: st.DrawFn, message: bytes) -> bytes:
    """The message's fields reordered, some repeated, dropped, or moved to another number."""
    fields = draw(st.permutations(wire_fields(message)))
    edit = draw(st.sampled_from(("keep", "repeat", "drop", "renumber")))
    if fields and edit == "repeat":
        fields.append(draw(st.sampled_from(fields)))
    elif fields and edit == "drop":
        fields.pop(draw(st.integers(0, len(fields) - 1)))
    elif fields and edit == "renumber":
        at = draw(st.integers(0, len(fields) - 1))
        number = draw(st.integers(1, 20))
        fields[at] = bytes([(number << 3) | (fields[at][0] & 7)]) + _untagged(fields[at])
    return b"".join(fields)


def _untagged(field: bytes) -> bytes:
    _, at = _varint(field, 0)
    return field[at:]


# --- JSON records --------------------------------------------------------------------------

WINE_ROW = (7.4, 0.7, 0.0, 1.9, 0.076, 11.0, 34.0, 0.9978, 3.51, 0.56, 9.4)

odd_numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**70), 2**70),
    st.sampled_from((0, -0.0, 1e308, -1e308, 5e-324, 2**63, 2**64 - 1, -(2**63) - 1)),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    odd_numbers,
    st.text(max_size=20),
    st.integers(1_000, 20_000).map(lambda length: "é" * length),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2)
    ),
    max_leaves=4,
)

# Literals JSON does not have, or spells differently, spliced into otherwise valid records.
ODD_LITERALS = (
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e400",
    b"-1e400",
    b"123456789012345678901234567890",
    b'"\\ud800"',
    b'"\\udc00x"',
    b'"\xff\xfe"',
    b"\xed\xa0\x80",
    b"01",
    b"1.",
    b".5",
    b"+1",
    b"0x10",
    b"true",
    b"[]",
    b"{}",
    b"[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]",
)


ODD_VALUES: tuple[object, ...] = (
    None,
    True,
    False,
    0,
    -0.0,
    7,
    2**63,
    2**64 - 1,
    -(2**63) - 1,
    2**70,
    1e308,
    5e-324,
    "9.4",
    "",
    "é" * 20_000,
    [],
    [1, 2.5],
    [True],
    ["x"],
    {"a": 1},
    {"alcohol": [9.4]},
)
KEYS: tuple[object, ...] = ("wine", "other", "", None, 5, ["wine"], "w" * 5000)


@st.composite
def wine_documents(draw: st.DrawFn) -> dict[str, object]:
    """A wine record as JSON: named or positional, fields reordered, dropped, misspelled,
    extra, with ints for floats, booleans, strings and nested values among them.

    The edits come from one drawn ``random`` (cheap to generate); hypothesis picks how many."""
    rng = draw(st.randoms(use_true_random=False))
    if rng.random() < 0.5:
        document: dict[str, object] = dict(zip(WINE_FEATURES, WINE_ROW, strict=True))
    else:
        document = {"features": list(WINE_ROW)}
    items = list(document.items())
    if draw(st.booleans()):
        rng.shuffle(items)
    del items[len(items) - draw(st.integers(0, 2)) :]  # missing fields
    if items and draw(st.booleans()):  # a typo
        name, value = items.pop(rng.randrange(len(items)))
        items.append((name[:-1] + name[-1].upper() + "x", value))
    edited = dict(items)
    for _ in range(draw(st.integers(0, 3))):  # odd values in known and extra fields
        name = rng.choice((*WINE_FEATURES, "features", "extra", "", "Alcohol", "features[0]"))
        edited[name] = rng.choice(ODD_VALUES)
    if draw(st.booleans()):
        edited[draw(st.text(max_size=4))] = draw(json_values)
    key = rng.choice(KEYS)
    if key is not None:
        edited["dataType"] = key
    return edited


@st.composite
def json_records(draw: st.DrawFn) -> bytes:
    """One JSON record payload: odd but valid, broken by a literal JSON lacks, or mutated."""
    ascii_only = draw(st.booleans())  # escaped (\\u00e9) or raw UTF-8 text
    document = json.dumps(draw(wine_documents()), ensure_ascii=ascii_only).encode()
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return document
    if choice == 1:
        colon = document.find(b":")
        literal = draw(st.sampled_from(ODD_LITERALS))
        end = document.find(b",", colon)
        return document[: colon + 1] + literal + (document[end:] if end > 0 else b"}")
    if choice == 2:
        return draw(mutated(document))
    if choice == 3:
        return draw(st.sampled_from((b"", b" ", b"\n", b"null", b"[]", b'"wine"', b"\xff")))
    if choice == 4:
        return b" " * draw(st.integers(0, 3)) + document + b"\n"
    return draw(st.binary(max_size=64))
