"""Fuzz target: length-delimited framing (``read_length_delimited``) on arbitrary streams.

Invariant: it yields the messages a reference parser finds, then ends at the end of the stream
or raises ValueError with a reason; it never asks the stream for everything at once nor for
more than a bounded chunk (a corrupt length costs no memory), so it never reads past the end.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mutations import fuzz_settings, mutated

from streamserve.runtime.streams import read_length_delimited, write_length_delimited

CASES = 10_000
MAX_READ_BYTES = 1 << 20


class RecordingStream(io.BytesIO):
    """A stream that remembers the largest read asked of it."""

    largest_read = 0

    def read(self, size: int | None = -1, /) -> bytes:
        self.largest_read = max(self.largest_read, -1 if size is None else size)
        assert size is not None
        assert size >= 0, "framing must never read to the end of the stream at once"
        return super().read(size)


def framed(messages: list[bytes]) -> bytes:
    stream = io.BytesIO()
    write_length_delimited(messages, stream)
    return stream.getvalue()


streams = st.one_of(
    st.binary(max_size=512),
    st.lists(st.binary(max_size=64), max_size=8).map(framed),
    st.lists(st.binary(max_size=64), min_size=1, max_size=8).map(framed).flatmap(mutated),
    st.tuples(
        st.lists(st.binary(max_size=16), max_size=3).map(framed),
        st.binary(min_size=1, max_size=12).map(lambda prefix: bytes(b | 0x80 for b in prefix)),
        st.binary(max_size=4),
    ).map(b"".join),  # a long or endless varint after good messages
)


def read_all(data: bytes) -> tuple[list[bytes], ValueError | None, RecordingStream]:
    stream = RecordingStream(data)
    messages: list[bytes] = []
    try:
        for message in read_length_delimited(stream):
            messages.append(message)
    except ValueError as err:
        return messages, err, stream
    return messages, None, stream


def reference_frames(data: bytes) -> tuple[list[bytes], bool]:
    """The messages of ``data`` and whether it ends cleanly, by the protobuf rules, on a slice."""
    messages, at = [], 0
    while at < len(data):
        length, shift = 0, 0
        while True:
            if at >= len(data) or shift >= 70:
                return messages, False
            length |= (data[at] & 0x7F) << shift
            at, shift = at + 1, shift + 7
            if not data[at - 1] & 0x80:
                break
        if length >= 1 << 64 or at + length > len(data):
            return messages, False
        messages.append(data[at : at + length])
        at += length
    return messages, True


@pytest.mark.timeout(240)
@fuzz_settings(CASES)
@given(streams)
def test_framing_yields_messages_or_a_reason_and_never_overreads(data: bytes) -> None:
    messages, error, stream = read_all(data)
    expected, clean = reference_frames(data)
    assert messages == expected
    if clean:
        assert error is None
        assert stream.tell() == len(data)
    else:
        assert error is not None
        assert str(error).strip()
    assert stream.largest_read <= MAX_READ_BYTES


@fuzz_settings(CASES // 10)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_framed_messages_read_back_unchanged(messages: list[bytes]) -> None:
    assert read_all(framed(messages))[:2] == (messages, None)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff" * 20 + b"\x01", "over 10 bytes"),
        (b"\xff" * 9 + b"\x7f", "64 bits"),
        (b"\xff\xff\xff\xff\xff\xff\xff\xff\x7f", "0 of 9223372036854775807"),
        (b"\x02a", "1 of 2"),
        (b"\x80", "inside a length prefix"),
    ],
)
def test_corrupt_prefixes_are_rejected_with_a_reason(data: bytes, reason: str) -> None:
    """Regressions: a varint of 11+ bytes raised OverflowError, and a huge declared length made
    a file stream allocate that many bytes (MemoryError) before finding the stream short."""
    messages, error, stream = read_all(data)
    assert messages == []
    assert error is not None
    assert reason in str(error)
    assert stream.largest_read <= MAX_READ_BYTES


def test_a_huge_declared_length_on_a_real_file_reads_only_what_is_there(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.bin"
    path.write_bytes(b"\xff\xff\xff\xff\xff\xff\x7f" + b"x" * 10)
    with path.open("rb") as stream, pytest.raises(ValueError, match="10 of 562949953421311"):
        list(read_length_delimited(stream))
