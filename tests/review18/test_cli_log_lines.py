"""What ``streamserve serve`` writes on stderr stays log lines the operator can trust, whatever
the models and settings hold: names and reasons from model messages cannot forge or hide lines
(newlines, escape sequences), nor make lines of megabytes; warnings are one line each; a setting
or a settings file the server cannot use is a message, never a traceback. Run as a user runs
it: a subprocess, real model files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from builders import onnx_constant, wine_json_lines
from streamserve.descriptor import ModelDescriptor, ModelType, encode_descriptor
from streamserve.descriptor.model_descriptor import MAX_NAME_CHARS as MAX_DESCRIPTOR_NAME

STREAMSERVE = [sys.executable, "-m", "streamserve"]
USER_ENV = {name: value for name, value in os.environ.items() if not name.startswith("TF_")}
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")
# Docker's json-file and journald split longer lines; a log shipper then sees broken JSON.
MAX_LINE_BYTES = 16 * 1024
FORGED = "2026-01-01 00:00:00 INFO models: key 'wine': forged -> everything fine"


def serve(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            *STREAMSERVE,
            "serve",
            *("--results", str(tmp_path / "results"), "--errors", str(tmp_path / "errors")),
            *options,
        ],
        capture_output=True,
        env=USER_ENV,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )


def _records(tmp_path: Path, wine_matrix: np.ndarray) -> Path:
    data = tmp_path / "records.jsonl"
    data.write_bytes(b"\n".join(wine_json_lines(wine_matrix[:5])) + b"\n")
    return data


def test_model_names_cannot_forge_or_hide_log_lines(
    tmp_path: Path, wine_matrix: np.ndarray
) -> None:
    models = tmp_path / "models"
    (models / "wine").mkdir(parents=True)
    hiding = f"five\n{FORGED}\x1b[8m hidden \x1b[0m\u202e"
    (models / "wine" / f"{hiding}.onnx").write_bytes(onnx_constant(11, 5.0))
    (models / "beer").mkdir()
    (models / "beer" / f"bad\n{FORGED}.onnx").write_bytes(b"not a model")

    done = serve(tmp_path, "--models", str(models), "--data", str(_records(tmp_path, wine_matrix)))
    err = done.stderr.decode()
    assert done.returncode == 0, err[-3000:]
    for line in err.splitlines():
        assert LOG_LINE.match(line), f"a model's name started a line of its own: {line!r}"
        assert not line.startswith(FORGED), f"a model's name forged a log line: {line!r}"
    assert "\x1b" not in err, "a model's name sent an escape sequence to the operator's terminal"
    assert "\u202e" not in err, "a model's name reorders the text of the operator's terminal"
    assert "five\\n2026-01-01" in err  # the name is there, escaped


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_huge_model_name_makes_no_huge_log_line(
    tmp_path: Path, wine_matrix: np.ndarray, log_format: str
) -> None:
    models = tmp_path / "models"
    (models / "wine").mkdir(parents=True)
    huge = ModelDescriptor(
        name="n" * MAX_DESCRIPTOR_NAME,  # the longest a model message may name
        version="v" * MAX_DESCRIPTOR_NAME,
        data_type="wine",
        model_type=ModelType.ONNX,
        data=b"not a model",
    )
    (models / "wine" / "huge.desc").write_bytes(encode_descriptor(huge))

    done = serve(
        tmp_path,
        *("--models", str(models), "--data", str(_records(tmp_path, wine_matrix))),
        *("--log-format", log_format),
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    lines = done.stderr.splitlines()
    rejected = [line for line in lines if b"rejected (model_load_failed)" in line]
    assert rejected, done.stderr[-3000:]  # the rejection is still said
    longest = max(len(line) for line in lines)
    assert longest <= MAX_LINE_BYTES, (
        f"a model message's name made a log line of {longest:,} bytes (log shippers split "
        f"lines over {MAX_LINE_BYTES:,})"
    )
    if log_format == "json":
        [document] = [orjson.loads(line) for line in rejected]
        assert document["model"].startswith("nnnn")
        assert document["event"] == "model_rejected"


def test_a_warning_is_one_log_line(tmp_path: Path) -> None:
    # A warning raised while a model scores (numpy's, here) reaches the operator as one line.
    script = (
        "import numpy as np\n"
        "from streamserve.logs import configure_logging\n"
        "configure_logging('INFO', 'text')\n"
        "np.log(np.array([-1.0]))\n"
        "configure_logging('INFO', 'json')\n"
        "np.sqrt(np.array([-1.0]))\n"
    )
    program = tmp_path / "scores.py"
    program.write_text(script)
    done = subprocess.run(
        [sys.executable, str(program)], capture_output=True, env=USER_ENV, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    text, json_line = done.stderr.decode().splitlines(), done.stderr.splitlines()[-1]
    assert len(text) == 2, f"a warning spans several lines of the log: {text}"
    assert LOG_LINE.match(text[0]), text
    assert "RuntimeWarning: invalid value encountered in log" in text[0]
    document = orjson.loads(json_line)
    assert document["event"] == "warning", document
    assert document["message"].endswith("RuntimeWarning: invalid value encountered in sqrt")


@pytest.mark.parametrize("interval", ["inf", "1e300"])
def test_a_summary_interval_beyond_reach_is_refused_not_a_traceback(
    tmp_path: Path, wine_matrix: np.ndarray, interval: str
) -> None:
    config = tmp_path / "streamserve.toml"
    config.write_text(f"[logging]\nsummary_interval_s = {interval}\n")
    done = serve(
        tmp_path,
        *("--config", str(config), "--key", "wine"),
        *("--data", str(_records(tmp_path, wine_matrix))),
    )
    err = done.stderr.decode()
    assert "Traceback" not in err, f"summary_interval_s = {interval}: a traceback\n{err[-2000:]}"
    assert done.returncode == 2, err
    assert "logging.summary_interval_s" in err, err


@pytest.mark.parametrize(
    ("content", "log_format"),
    [(b"[logging\nlevel = 'INFO'\n", "text"), (b"\xff\xfe[kafka]\n", "text"), (b"[x\n", "json")],
)
def test_a_settings_file_that_is_not_toml_is_a_message_not_a_traceback(
    tmp_path: Path, content: bytes, log_format: str
) -> None:
    config = tmp_path / "streamserve.toml"
    config.write_bytes(content)
    done = serve(tmp_path, "--config", str(config), "--log-format", log_format)
    err = done.stderr.decode()
    assert "Traceback" not in err, f"a broken settings file: a traceback\n{err[-2000:]}"
    assert done.returncode == 2, err
    assert str(config) in err, err
    if log_format == "json":
        [document] = [orjson.loads(line) for line in done.stderr.splitlines()]
        assert document["event"] == "failed"


def test_log_format_takes_any_case_as_log_level_does(
    tmp_path: Path, wine_matrix: np.ndarray
) -> None:
    data = str(_records(tmp_path, wine_matrix))
    done = serve(tmp_path, "--key", "wine", "--data", data, "--log-format", "JSON")
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert all(orjson.loads(line) for line in done.stderr.splitlines())


def test_models_caught_up_counts_the_models_rejected_unread(
    tmp_path: Path, wine_matrix: np.ndarray
) -> None:
    # "N models ... loaded or rejected": a model message that is no descriptor at all is
    # rejected as well (its line says so), and was left out of N.
    models = tmp_path / "models"
    (models / "wine").mkdir(parents=True)
    (models / "wine" / "five.onnx").write_bytes(onnx_constant(11, 5.0))
    (models / "wine" / "garbage.desc").write_bytes(b"\xff\xff\xff not a descriptor")
    done = serve(tmp_path, "--models", str(models), "--data", str(_records(tmp_path, wine_matrix)))
    err = done.stderr.decode()
    assert done.returncode == 0, err[-3000:]
    assert "a model message at wine/garbage.desc rejected (bad_descriptor)" in err
    assert "models caught up: 2 models from the models folder loaded or rejected" in err, err


def test_the_summary_counts_a_key_whose_model_awaits_its_first_record(tmp_path: Path) -> None:
    # "models caught up: ... 1 key has a model", then "keys served 0" on every summary line
    # until a record came: a model becomes current at its key's first batch, and the summary
    # counted current models only.
    models = tmp_path / "models"
    (models / "wine").mkdir(parents=True)
    (models / "wine" / "five.onnx").write_bytes(onnx_constant(11, 5.0))
    config = tmp_path / "streamserve.toml"
    config.write_text("[logging]\nsummary_interval_s = 0.05\n")
    server = subprocess.Popen(
        [
            *(*STREAMSERVE, "serve", "--config", str(config), "--models", str(models)),
            *("--data", "-", "--log-format", "json"),
            *("--results", str(tmp_path / "results"), "--errors", str(tmp_path / "errors")),
        ],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=USER_ENV,
    )
    assert server.stdin is not None
    assert server.stderr is not None
    caught_up = summary = None
    try:
        for line in server.stderr:
            document = orjson.loads(line)
            if document["event"] == "models_caught_up":
                caught_up = document
            elif document["event"] == "summary" and caught_up is not None:
                summary = document
                break
    finally:
        server.stdin.close()
        server.wait(timeout=300)
        server.stderr.close()
    assert caught_up is not None
    assert summary is not None
    assert caught_up["keys"] == 1
    assert summary["keys_served"] == caught_up["keys"], (
        "the summary says no key is served while the caught-up line says 1 key has a model"
    )
