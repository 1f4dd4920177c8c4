from __future__ import annotations

import io
import threading

import orjson
import pytest

from streamserve.codecs.base import InputRecord
from streamserve.codecs.json import JsonCodec
from streamserve.errors import InfrastructureError
from streamserve.runtime.embedded import EmbeddedRuntime
from streamserve.runtime.streams import (
    LineSink,
    MemorySink,
    MemorySource,
    StreamSource,
    read_length_delimited,
    write_length_delimited,
)
from streamserve.serving.core import ServingCore
from streamserve.settings import BatchSettings, ServingSettings


def test_length_delimited_framing_round_trips() -> None:
    messages = [b"", b"a", b"x" * 300, b"y" * 70_000]
    buffer = io.BytesIO()
    write_length_delimited(messages, buffer)
    buffer.seek(0)
    assert list(read_length_delimited(buffer)) == messages


def test_a_truncated_length_delimited_stream_stops_the_source() -> None:
    buffer = io.BytesIO()
    write_length_delimited([b"complete", b"truncated"], buffer)
    source = StreamSource(io.BytesIO(buffer.getvalue()[:-3]), "data", length_delimited=True)
    assert [r.payload for r in source.poll(10, 5)] == [b"complete"]
    with pytest.raises(InfrastructureError, match="reading data failed: stream ends inside"):
        source.poll(10, 5)


def test_stream_source_numbers_lines_and_skips_blank_ones() -> None:
    source = StreamSource(io.BytesIO(b"a\n\nb\r\nc"), "in.jsonl")
    records: list[InputRecord] = []
    while not source.exhausted:
        records += source.poll(10, 1)
    assert [(r.payload, r.position) for r in records] == [
        (b"a", "in.jsonl:1"),
        (b"b", "in.jsonl:2"),
        (b"c", "in.jsonl:3"),
    ]


def test_memory_source_waits_for_records_or_close() -> None:
    source = MemorySource()
    assert source.poll(5, 0.01) == []
    threading.Timer(0.05, lambda: source.put([InputRecord(b"x")])).start()
    assert [r.payload for r in source.poll(5, 10)] == [b"x"]
    source.close()
    assert source.exhausted


def test_line_sink_writes_values_one_per_line() -> None:
    buffer = io.BytesIO()
    LineSink(buffer).write([(b"k", b"{}"), (None, b"[]")])
    assert buffer.getvalue() == b"{}\n[]\n"


def _runtime(source: MemorySource, results: MemorySink, batch: BatchSettings) -> EmbeddedRuntime:
    return EmbeddedRuntime(
        ServingCore(ServingSettings()), JsonCodec(), source, results, MemorySink(), batch
    )


def test_run_stops_after_count_records() -> None:
    source = MemorySource([InputRecord(orjson.dumps({"dataType": "k", "x": 1}))] * 10)
    results = MemorySink()
    summary = _runtime(source, results, BatchSettings(max_records=4)).run(count=6)
    assert summary.records == 6
    assert summary.batches == 2
    assert len(source) == 4


def test_run_stops_at_its_timeout_when_no_data_comes() -> None:
    summary = _runtime(MemorySource(), MemorySink(), BatchSettings()).run(timeout_s=0.2)
    assert summary.records == 0
    assert summary.elapsed_s >= 0.2


def test_a_batch_closes_at_its_size() -> None:
    source = MemorySource([InputRecord(orjson.dumps({"dataType": "k", "x": 1}))] * 10, closed=True)
    summary = _runtime(source, MemorySink(), BatchSettings(max_records=3, max_delay_ms=1000)).run()
    assert (summary.records, summary.batches) == (10, 4)


def test_a_pipe_hands_each_record_over_as_it_arrives() -> None:
    import os

    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as reader, os.fdopen(write_end, "wb") as writer:
        source = StreamSource(reader, "pipe")
        writer.write(b'{"a": 1}\n')
        writer.flush()
        records = source.poll(10, 30)  # the pipe stays open: no EOF to wait for
        assert [r.payload for r in records] == [b'{"a": 1}']
