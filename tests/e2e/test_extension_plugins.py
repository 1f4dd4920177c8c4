"""A runtime and a key router added from outside the package: each one module plus one entry
point, used by the stock ``streamserve serve`` command through its settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
from plugins import install_distribution

from builders import onnx_constant, onnx_descriptor, wine_json_lines, wine_rows
from streamserve.descriptor import encode_descriptor

# A transport of its own under streamserve's batch loop, written against the public API only:
# each record is a file of an inbox folder, acknowledged by deleting it once its output is
# written; model messages are files of a models folder.
SPOOL_RUNTIME = """
import threading
from dataclasses import dataclass
from pathlib import Path

import streamserve


@dataclass(frozen=True)
class SpoolBatch:
    records: list
    files: list


class SpoolTransport:
    def __init__(self, core, options):
        self._core = core
        self._inbox = Path(options["inbox"])
        self._outbox = Path(options["outbox"])
        self._models = Path(options["models"])
        self._seen = set()
        self.ready = threading.Event()
        self.consumer_lag = None

    @property
    def exhausted(self):
        return not any(self._inbox.iterdir())

    def start(self, stopping):
        self.take_models()
        self._core.wait_for_models(60)
        self.ready.set()

    def take_models(self):
        for path in sorted(self._models.glob("*.model")):
            if path.name not in self._seen:
                self._seen.add(path.name)
                self._core.submit_model_message(path.read_bytes(), origin=str(path))

    def next_batch(self, limit, wait_s):
        files = sorted(self._inbox.glob("*.rec"))[:limit]
        records = [
            streamserve.InputRecord(path.read_bytes(), position=path.name, topic="spool")
            for path in files
        ]
        return SpoolBatch(records, files) if files else None

    def emit(self, batch, outputs):
        self._write("results.jsonl", outputs.results)
        self._write("errors.jsonl", outputs.errors)
        for path in batch.files:
            path.unlink()

    def emit_events(self, events):
        self._write("errors.jsonl", events)

    def _write(self, name, messages):
        if not messages:
            return
        with open(self._outbox / name, "ab") as out:
            out.writelines(value + b"\\n" for _, value in messages)

    def after_batch(self):
        pass

    def finish(self):
        pass

    def close(self, failed):
        pass


def spool_runtime(context):
    transport = SpoolTransport(context.core, context.settings.runtime_options)
    return streamserve.BatchLoop(
        context.core, context.codec, transport, context.settings.batch, on_event=context.on_event
    )
"""

# Every other record of a key goes to the model of a canary key.
EVERY_OTHER_ROUTER = """
class EveryOther:
    def __init__(self, target):
        self._target = target

    def route(self, key, records, rows):
        return {key: rows[0::2], self._target: rows[1::2]}


def every_other(options):
    return EveryOther(str(options["target"]))
"""


def test_a_plugin_runtime_and_router_serve_through_the_stock_command(
    tmp_path: Path, wine_dir: Path
) -> None:
    site = install_distribution(
        tmp_path / "site",
        "spool-and-canary",
        {"spool_runtime": SPOOL_RUNTIME, "every_other_router": EVERY_OTHER_ROUTER},
        {
            "streamserve.runtimes": {"spool": "spool_runtime:spool_runtime"},
            "streamserve.routers": {"every-other": "every_other_router:every_other"},
        },
    )
    inbox, outbox, models = (tmp_path / name for name in ("inbox", "outbox", "models"))
    for folder in (inbox, outbox, models):
        folder.mkdir()
    lines = wine_json_lines(wine_rows(wine_dir)[:10])
    for number, line in enumerate(lines):
        (inbox / f"{number:03d}.rec").write_bytes(line)
    for name, key, value in (("main", "wine", 5.0), ("canary", "wine-canary", 7.0)):
        descriptor = onnx_descriptor(name, onnx_constant(11, value), key=key)
        (models / f"{name}.model").write_bytes(encode_descriptor(descriptor))
    config = tmp_path / "streamserve.toml"
    config.write_text(
        f"""
runtime = "spool"

[runtime_options]
inbox = "{inbox}"
outbox = "{outbox}"
models = "{models}"

[serving]
router = "every-other"
router_options = {{ target = "wine-canary" }}
"""
    )
    env = {**os.environ, "PYTHONPATH": str(site), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-m", "streamserve", "serve", "--config", str(config)],
        capture_output=True,
        env=env,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stderr.decode()[-2000:]
    results = [orjson.loads(line) for line in (outbox / "results.jsonl").read_bytes().splitlines()]
    served = [(r["position"], r["key"], r["model"], r["value"]) for r in results]
    assert sorted(served) == [
        (f"{n:03d}.rec", *(("wine", "main", 5.0) if n % 2 == 0 else ("wine-canary", "canary", 7.0)))
        for n in range(10)
    ]
    assert not (outbox / "errors.jsonl").exists()
    assert not list(inbox.iterdir()), "every record file acknowledged"
    assert "10 records, 10 results, 0 errors" in done.stderr.decode()


def test_an_unknown_runtime_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streamserve", "serve", "--runtime", "nope", "--data", "-"],
        input=b"",
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    message = done.stderr.decode()
    assert "unknown runtime 'nope'" in message
    assert "embedded, kafka" in message
    assert "streamserve.runtimes" in message
