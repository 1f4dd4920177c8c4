"""What the ``streamserve`` command shows a person: the demo's swaps and table without library
chatter, help without markup, and ``serve``'s lifecycle lines (text and JSON, by level), run as
a user runs it: a subprocess, real models, a real broker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from kafka_broker import running_broker, serve_kafka_command

from builders import onnx_constant, wine_json_lines
from streamserve.demo.wine import PMML_FILES
from streamserve.descriptor import ModelDescriptor, ModelType, encode_descriptor

STREAMSERVE = [sys.executable, "-m", "streamserve"]
# As a user's shell has it: nothing set to quiet TensorFlow.
USER_ENV = {name: value for name, value in os.environ.items() if not name.startswith("TF_")}
COMMANDS = (
    "demo",
    "serve",
    "publish-model",
    "publish-tombstone",
    "keygen",
    "sign",
    "publish-data",
    "status",
)
# What TensorFlow, absl, the JVM and Python's warnings print when nobody keeps them out.
CHATTER = re.compile(
    r"absl::InitializeLog|oneDNN|cpu_feature_guard|port\.cc|^[IWEF]\d{4} \d|WARNING:tensorflow"
    r"|Unable to create a python object|reference variable|OpenJDK|VM warning|SLF4J"
    r"|DeprecationWarning|FutureWarning|UserWarning",
    re.MULTILINE,
)
SWAP = re.compile(
    r"^\[ *[\d.]+s\] swap wine: now served by (\S+) \(sha256:[0-9a-f]{12}\), loaded in \d+ ms; "
    r"[\d,]+ records scored so far$"
)
MARKUP = re.compile(r"``|:(?:class|mod|func|meth|attr):`|\*\*")
CATCH_UP_LINE = "models caught up: 3 models from the models topic 'models' loaded or rejected"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*STREAMSERVE, *args],
        capture_output=True,
        env=env or USER_ENV,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_the_demo_prints_the_swaps_and_the_table_only() -> None:
    done = run("demo", "--seconds-per-model", "0.2", "--rate", "3000")
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, err[-2000:]
    assert CHATTER.search(out + err) is None, (out + err)[:3000]
    assert err == ""

    lines = out.splitlines()
    assert lines[0].startswith("Streaming the wine data at ~3,000 records/s")
    table_at = next(i for i, line in enumerate(lines) if re.match(r"[\d,]+ records in ", line))
    swaps = [SWAP.match(line) for line in lines[1 : table_at - 1]]
    assert all(swaps), lines[1 : table_at - 1]  # between the first line and the table: swaps
    assert [swap.group(1) for swap in swaps if swap] == [
        "wine-savedmodel",
        *(f.removesuffix(".pmml") for f in PMML_FILES),
        "wine-frozen-graph",
    ]
    assert lines[table_at - 1] == ""
    table = lines[table_at + 1 : -3]
    assert "Serving statistics of key 'wine'" in table[0]
    assert all(line[0] in "┏┃┡│└" for line in table[1:]), table  # the table's rows and rules
    assert lines[-3] == ""
    assert lines[-2].startswith("Watch it live: streamserve demo --http-port 8080")
    assert "streamserve status --url http://127.0.0.1:8080" in lines[-1]


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_is_plain_text_with_examples(command: str) -> None:
    done = run(*([command] if command else []), "--help")
    text = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert MARKUP.search(text) is None, text
    assert "\nexamples:\n  streamserve " in text or "\nexamples:\n  tail " in text
    if command:
        assert "--log-level {DEBUG,INFO,WARNING,ERROR}" in text
        assert "--log-format {text,json}" in text


def test_the_version_is_still_there() -> None:
    from streamserve import __version__

    assert run("--version").stdout.decode() == f"streamserve {__version__}\n"


def test_serve_embedded_says_what_it_does(tmp_path: Path, wine_matrix: np.ndarray) -> None:
    models = tmp_path / "models"
    (models / "wine").mkdir(parents=True)
    (models / "wine" / "five.onnx").write_bytes(onnx_constant(11, 5.0))
    (models / "beer").mkdir()
    (models / "beer" / "broken.onnx").write_bytes(b"not a model")
    data = tmp_path / "records.jsonl"
    data.write_bytes(b"\n".join(wine_json_lines(wine_matrix[:20])) + b"\n")

    done = run(
        "serve",
        *("--models", str(models), "--data", str(data)),
        *("--results", str(tmp_path / "results"), "--errors", str(tmp_path / "errors")),
    )
    err = done.stderr.decode()
    assert done.returncode == 0, err[-2000:]
    assert "models caught up: 2 models from the models folder loaded or rejected" in err
    assert "1 key has a model" in err
    assert "INFO models: key 'wine': no model -> five (sha256:" in err
    assert re.search(r"WARNING models: key 'beer': model broken \(\S+\) rejected \(", err), err
    assert "INFO streamserve: 20 records, 20 results, 0 errors" in err
    first = err.splitlines()[0]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO runtime\.embedded: ", first), first


@pytest.fixture(scope="module")
def kafka_stream(wine_matrix: np.ndarray) -> Iterator[str]:
    """A broker whose models topic holds a good model for wine and beer each, then a bad one for
    wine; 40 wine and 10 beer records on two partitions. Each test reads it in its own group."""
    with running_broker() as broker:
        broker.create_topics("models", partitions=1)
        broker.create_topics("wine-data", partitions=2)
        broker.create_topics("results", "errors")
        broker.produce(
            "models",
            [
                _model("five", "wine", ModelType.ONNX, onnx_constant(11, 5.0)),
                _model("seven", "beer", ModelType.ONNX, onnx_constant(11, 7.0)),
                _model("broken", "wine", ModelType.ONNX, b"not a model"),
            ],
        )
        records = wine_json_lines(wine_matrix[:40]) + wine_json_lines(wine_matrix[:10], "beer")
        broker.produce("wine-data", [(None, record) for record in records])
        yield broker.bootstrap


def _model(name: str, key: str, model_type: ModelType, data: bytes) -> tuple[bytes, bytes]:
    descriptor = ModelDescriptor(name=name, data_type=key, model_type=model_type, data=data)
    return key.encode(), encode_descriptor(descriptor)


def _serve_kafka(
    tmp_path: Path, bootstrap: str, group: str, *options: str
) -> subprocess.CompletedProcess[bytes]:
    config = tmp_path / "streamserve.toml"
    config.write_text(f"""
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
data_topics = ["wine-data"]

[logging]
summary_interval_s = 0.5
""")
    command = serve_kafka_command(config, "--count", "50", "--timeout-s", "120", *options)
    return subprocess.run(command, capture_output=True, env=USER_ENV, timeout=300, check=False)


@pytest.mark.slow
def test_serve_kafka_prints_its_lifecycle(kafka_stream: str, tmp_path: Path) -> None:
    done = _serve_kafka(tmp_path, kafka_stream, "lifecycle-text")
    err = done.stderr.decode()
    assert done.returncode == 0, err[-3000:]
    expected = [
        f"INFO runtime.kafka: connected to Kafka at {kafka_stream}: group 'lifecycle-text' on "
        "data topics wine-data; reading the models topic 'models' (1 partition)",
        f"INFO runtime.kafka: {CATCH_UP_LINE}",
        "INFO runtime.kafka: partitions assigned: wine-data/0, wine-data/1 (group "
        "'lifecycle-text'; 2 partitions held)",
        "INFO streamserve: 50 records, 50 results, 0 errors",
    ]
    positions = [err.find(line) for line in expected]
    assert all(at >= 0 for at in positions), err
    assert positions == sorted(positions), err  # in the order they happen
    assert "2 keys have a model" in err
    assert "WARNING models: key 'wine': model broken (sha256:" in err
    assert "rejected (model_load_failed): " in err
    assert "INFO models: key 'wine': no model -> five (sha256:" in err
    assert "INFO models: key 'beer': no model -> seven (sha256:" in err
    assert "INFO runtime.kafka: partitions revoked: wine-data/0, wine-data/1" in err
    summaries = re.findall(
        r"INFO summary: last \d+ s: [\d,.]+ records/s, records [\d,]+, errors \d+, "
        r"(?:consumer lag \d+, )?keys served \d, live models \d$",
        err,
        re.MULTILINE,
    )
    assert summaries, err
    assert CHATTER.search(err) is None
    for line in err.splitlines():  # every line is a log line: time, level, logger
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING) [\w.]+: ", line), line


@pytest.mark.slow
def test_serve_kafka_json_logs_are_one_object_a_line(kafka_stream: str, tmp_path: Path) -> None:
    done = _serve_kafka(tmp_path, kafka_stream, "lifecycle-json", "--log-format", "json")
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    lines = [orjson.loads(line) for line in done.stderr.splitlines()]
    for line in lines:
        assert {"time", "level", "logger", "message", "event"} <= line.keys(), line
        datetime.fromisoformat(line["time"])
    events: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        events.setdefault(line["event"], []).append(line)
    [connected] = events["connected"]
    assert connected["bootstrap_servers"] == kafka_stream
    assert connected["group"] == "lifecycle-json"
    [caught_up] = events["models_caught_up"]
    assert (caught_up["models"], caught_up["keys"]) == (3, 2)
    assert caught_up["message"].startswith(CATCH_UP_LINE)
    [assigned] = events["partitions_assigned"]
    assert assigned["partitions"] == ["wine-data/0", "wine-data/1"]
    swaps = {(e["key"], e["model"], e["previous_model"]) for e in events["model_swapped"]}
    assert swaps == {("wine", "five", ""), ("beer", "seven", "")}
    [rejected] = events["model_rejected"]
    assert (rejected["level"], rejected["key"], rejected["model"]) == ("WARNING", "wine", "broken")
    assert rejected["error_kind"] == "model_load_failed"
    assert rejected["origin"] == "models/0@2"
    assert all(s["logger"] == "streamserve.summary" for s in events["summary"])
    assert {"records_per_s", "errors", "consumer_lag", "live_models"} <= events["summary"][0].keys()
    [stopped] = events["stopped"]
    assert (stopped["records"], stopped["results"], stopped["errors"]) == (50, 50, 0)


@pytest.mark.slow
def test_serve_kafka_at_warning_shows_problems_only(kafka_stream: str, tmp_path: Path) -> None:
    done = _serve_kafka(tmp_path, kafka_stream, "lifecycle-quiet", "--log-level", "warning")
    err = done.stderr.decode()
    assert done.returncode == 0, err[-3000:]
    lines = err.splitlines()
    # The bad model: a warning about the operator's model stays; the lifecycle lines go.
    assert any(" WARNING models: key 'wine': model broken (sha256:" in line for line in lines)
    assert all(re.match(r"\S+ \S+ (WARNING|ERROR) ", line) for line in lines), err
    for lifecycle in ("connected", "caught up", "partitions", "-> five", "summary", "records,"):
        assert lifecycle not in err
