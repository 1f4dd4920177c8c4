"""Sources and sinks of the embedded runtime: in memory, files and the standard streams.

A source delivers records in order through :meth:`poll`; it is ``exhausted`` once closed and
empty. File sources read on a thread of their own, so the runtime never blocks on input.
"""

from __future__ import annotations

import io
import os
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import BinaryIO, Protocol, cast

from streamserve.codecs.base import InputRecord
from streamserve.errors import ConfigurationError, InfrastructureError
from streamserve.runtime.encoding import OutputMessage
from streamserve.runtime.model_directory import ModelMessage


class Source(Protocol):
    """Records in order, for the embedded runtime: in memory, a file, stdin."""

    def poll(self, max_records: int, timeout_s: float) -> list[InputRecord]:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` for the first."""
        ...

    @property
    def exhausted(self) -> bool: ...


class Sink(Protocol):
    """Where the embedded runtime writes results or errors, one message per record."""

    def write(self, messages: Sequence[OutputMessage]) -> None: ...

    def flush(self) -> None: ...


class MemorySource:
    """A thread-safe queue of records; producers :meth:`put` and finally :meth:`close`."""

    def __init__(self, records: Iterable[InputRecord] = (), *, closed: bool = False) -> None:
        self._items: deque[InputRecord] = deque(records)
        self._ready = threading.Condition()
        self._closed = closed

    def put(self, records: Iterable[InputRecord]) -> None:
        with self._ready:
            self._items.extend(records)
            self._ready.notify_all()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def poll(self, max_records: int, timeout_s: float) -> list[InputRecord]:
        with self._ready:
            self._ready.wait_for(lambda: self._items or self._closed, timeout=timeout_s)
            count = min(max_records, len(self._items))
            return [self._items.popleft() for _ in range(count)]

    @property
    def exhausted(self) -> bool:
        with self._ready:
            return self._closed and not self._items

    def __len__(self) -> int:
        return len(self._items)


def read_lines(stream: BinaryIO) -> Iterator[bytes]:
    """Non-empty lines without their line ending."""
    for line in stream:
        stripped = line.rstrip(b"\r\n")
        if stripped:
            yield stripped


def read_length_delimited(stream: BinaryIO) -> Iterator[bytes]:
    """Messages each prefixed by its varint length (protobuf's writeDelimitedTo framing).

    Raises ValueError, saying why, at a prefix longer than a 64-bit varint (10 bytes) or a
    stream that ends inside a prefix or a message. A message is read in chunks, so a corrupt
    prefix declaring a huge length costs no more memory than the bytes actually there.
    """
    while True:
        length = _read_varint(stream)
        if length is None:
            return
        yield _read_exactly(stream, length)


MAX_VARINT_BYTES = 10
READ_CHUNK_BYTES = 1 << 20


def _read_varint(stream: BinaryIO) -> int | None:
    """The next length prefix; ``None`` at a clean end of the stream (before a prefix)."""
    length = 0
    for index in range(MAX_VARINT_BYTES):
        byte = stream.read(1)
        if not byte:
            if index:
                raise ValueError("stream ends inside a length prefix")
            return None
        length |= (byte[0] & 0x7F) << (7 * index)
        if not byte[0] & 0x80:
            if length >= 1 << 64:
                raise ValueError(f"length prefix {length} does not fit in 64 bits")
            return length
    raise ValueError(f"length prefix runs over {MAX_VARINT_BYTES} bytes (not a varint)")


def _read_exactly(stream: BinaryIO, length: int) -> bytes:
    chunks: list[bytes] = []
    remaining = length
    while remaining:
        chunk = stream.read(min(remaining, READ_CHUNK_BYTES))
        if not chunk:
            raise ValueError(
                f"stream ends inside a message: {length - remaining} of {length} bytes"
            )
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def write_length_delimited(messages: Iterable[bytes], stream: BinaryIO) -> None:
    for message in messages:
        length = len(message)
        prefix = bytearray()
        while True:
            byte, length = length & 0x7F, length >> 7
            prefix.append(byte | (0x80 if length else 0))
            if not length:
                break
        stream.write(bytes(prefix) + message)


class StreamSource(MemorySource):
    """Reads framed messages from a binary stream on a daemon thread into memory."""

    def __init__(
        self,
        stream: BinaryIO,
        name: str,
        *,
        length_delimited: bool = False,
        max_buffered: int = 65536,
    ) -> None:
        super().__init__()
        self._stream = stream
        self._name = name
        self._frames = read_length_delimited if length_delimited else read_lines
        self._max_buffered = max_buffered
        # A regular file is all there: hand records over in chunks. A pipe, a terminal or a
        # socket delivers them as they come: hand each over at once, or it waits for company.
        self._chunk_records = CHUNK_RECORDS if _is_regular_file(stream) else 1
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._pump, name=f"source-{name}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        chunk: list[InputRecord] = []
        error: Exception | None = None
        try:
            for number, payload in enumerate(self._frames(self._stream), start=1):
                chunk.append(InputRecord(payload, position=f"{self._name}:{number}"))
                if len(chunk) >= self._chunk_records:
                    self._put_bounded(chunk)
                    chunk = []
        except (OSError, ValueError) as err:
            error = err
        finally:
            self._put_bounded(chunk)
            # Only now: every record read before the error is handed over, so a poll that
            # sees the error and no record has scored them all.
            self.error = error
            self.close()

    def poll(self, max_records: int, timeout_s: float) -> list[InputRecord]:
        error = self.error  # read first: records put before it was set are polled below
        records = super().poll(max_records, timeout_s)
        if not records and error is not None:
            raise InfrastructureError(f"reading {self._name} failed: {error}") from error
        return records

    def _put_bounded(self, chunk: list[InputRecord]) -> None:
        while len(self) > self._max_buffered:
            time.sleep(0.001)
        self.put(chunk)


CHUNK_RECORDS = 256


def _is_regular_file(stream: BinaryIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, io.UnsupportedOperation):
        return False  # in-memory streams and the like: hand records over one by one


class MemorySink:
    """Keeps every message (tests, the demo)."""

    def __init__(self) -> None:
        self.messages: list[OutputMessage] = []

    def write(self, messages: Sequence[OutputMessage]) -> None:
        self.messages.extend(messages)

    def flush(self) -> None:
        pass


class CountingSink:
    """Counts messages and drops them."""

    def __init__(self) -> None:
        self.count = 0

    def write(self, messages: Sequence[OutputMessage]) -> None:
        self.count += len(messages)

    def flush(self) -> None:
        pass


class LineSink:
    """Writes each message's value as one line to a binary stream."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def write(self, messages: Sequence[OutputMessage]) -> None:
        if messages:
            self._stream.write(b"".join(value + b"\n" for _, value in messages))

    def flush(self) -> None:
        self._stream.flush()


class ModelQueue:
    """Model messages published in memory (tests, the demo), taken by the runtime in order."""

    def __init__(self) -> None:
        self._messages: deque[ModelMessage] = deque()
        self._lock = threading.Lock()

    def publish(self, payload: bytes, origin: str = "memory") -> None:
        with self._lock:
            self._messages.append(ModelMessage(origin, payload=payload))

    def poll(self) -> list[ModelMessage]:
        with self._lock:
            messages = list(self._messages)
            self._messages.clear()
            return messages


def open_input(name: str) -> AbstractContextManager[BinaryIO]:
    """The data file ``name`` opened for reading, or the standard input for ``-``."""
    if name == "-":
        return _private_stdin()
    return _opened(name, sys.stdin.buffer, "rb", "data file")


@contextmanager
def _private_stdin() -> Iterator[BinaryIO]:
    """The standard input through a reader of its own (on a copy of its descriptor).

    The reader thread blocks in a read while it waits for records. Blocked in
    ``sys.stdin.buffer``, it would hold that object's lock when the interpreter shuts down, and
    the interpreter, which flushes ``sys.stdin`` at exit, would abort the process (a fatal
    error, after the run had ended well). It is not closed after the run, as ``sys.stdin`` is
    not: closing it would wait for the reader's lock, held by the thread blocked in a read.
    """
    yield os.fdopen(os.dup(sys.stdin.fileno()), "rb")


def open_output(name: str, default: BinaryIO) -> AbstractContextManager[BinaryIO]:
    """The file ``name`` opened for appending, or ``default`` (stdout, stderr) for ``-``."""
    return _opened(name, default, "ab", "output file")


@contextmanager
def _opened(name: str, default: BinaryIO, mode: str, what: str) -> Iterator[BinaryIO]:
    if name == "-":
        yield default
        return
    try:
        stream = open(name, mode)  # noqa: SIM115 - closed below, after the caller is done
    except OSError as err:
        raise ConfigurationError(f"cannot open {what} {name}: {err}") from err
    with stream:
        yield cast(BinaryIO, stream)
