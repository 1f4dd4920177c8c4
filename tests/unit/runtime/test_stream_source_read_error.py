"""A read error stops a :class:`StreamSource` only after every record read before it is polled."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from streamserve.codecs.base import InputRecord
from streamserve.errors import InfrastructureError
from streamserve.runtime.streams import CHUNK_RECORDS, StreamSource, write_length_delimited


class FailingFile(io.BytesIO):
    """A regular file's bytes (so the source hands records over in chunks) whose read past the
    end fails, as a disk or a network file system can; ``failed`` is set as it fails."""

    def __init__(self, content: bytes, regular_file: Path) -> None:
        super().__init__(content)
        self._file = regular_file.open("rb")
        self.failed = threading.Event()

    def fileno(self) -> int:
        return self._file.fileno()

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        if not data:
            self.failed.set()
            raise OSError(5, "Input/output error")
        return data

    def close(self) -> None:
        self._file.close()
        super().close()


def test_records_read_before_a_read_error_are_all_polled_before_it(tmp_path: Path) -> None:
    """A full chunk is buffered, the source holds the last chunk read before the error while
    the buffer is full: the error must not surface while that chunk is still on its way."""
    payloads = [f"record {n}".encode() for n in range(CHUNK_RECORDS + 4)]
    framed = io.BytesIO()
    write_length_delimited(payloads, framed)
    (tmp_path / "data.bin").write_bytes(framed.getvalue())
    stream = FailingFile(framed.getvalue(), tmp_path / "data.bin")
    try:
        source = StreamSource(stream, "data.bin", length_delimited=True, max_buffered=0)
        assert stream.failed.wait(60), "the stream was never read to its failing end"
        polled: list[InputRecord] = []
        with pytest.raises(InfrastructureError, match=r"reading data\.bin failed: .*Input/output"):
            _poll_until_it_raises(source, polled)
        assert [r.payload for r in polled] == payloads
    finally:
        stream.close()


def _poll_until_it_raises(source: StreamSource, polled: list[InputRecord]) -> None:
    """Polls as the run loop does, without waiting while records come."""
    while True:
        polled += source.poll(1000, 0)
