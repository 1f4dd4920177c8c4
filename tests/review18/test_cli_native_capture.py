"""While TensorFlow's first import runs (seconds), streamserve keeps TensorFlow's own start-up
lines out of stderr by capturing file descriptor 2. The other threads of the server go on
writing their log lines meanwhile: they must reach stderr as they are written, not be held
until the import ends (lost for good if the process dies during the import: an out-of-memory
kill, TensorFlow's own abort; held forever if the import hangs). Run as a user runs it: a
subprocess serving the original frozen graph, a real TensorFlow import."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import orjson
import pytest

USER_ENV = {name: value for name, value in os.environ.items() if not name.startswith("TF_")}
STEP_S = 0.005
PATIENCE_S = 300.0  # only separates "never" from "eventually"


def _stderr_target(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/fd/2")
    except OSError:
        return None


@pytest.mark.slow
def test_log_lines_of_other_threads_reach_stderr_while_tensorflow_imports(
    tmp_path: Path, wine_dir: Path
) -> None:
    (tmp_path / "models" / "wine").mkdir(parents=True)
    shutil.copy(wine_dir / "optimized_WineQuality.pb", tmp_path / "models" / "wine" / "graph.pb")
    config = tmp_path / "streamserve.toml"
    config.write_text("[logging]\nsummary_interval_s = 0.05\n")
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "streamserve", "serve", "--config", str(config)),
            *("--models", "models", "--data", "-", "--key", "wine", "--log-format", "json"),
            *("--results", "results", "--errors", "errors"),
        ],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=USER_ENV,
    )
    assert server.stderr is not None
    assert server.stdin is not None
    lines: queue.SimpleQueue[tuple[bytes, bool]] = queue.SimpleQueue()
    own_stderr: list[str] = []
    captured_since: list[float] = []

    def read() -> None:
        assert server.stderr is not None
        for line in server.stderr:
            target = _stderr_target(server.pid)
            lines.put((line, bool(own_stderr) and target is not None and target != own_stderr[0]))
        lines.put((b"", False))

    reader = threading.Thread(target=read, daemon=True)
    try:
        while (target := _stderr_target(server.pid)) is None and server.poll() is None:
            time.sleep(STEP_S)
        assert target is not None, "the server ended at once"
        own_stderr.append(target)
        reader.start()
        waited = 0.0
        while _stderr_target(server.pid) == own_stderr[0] and waited < PATIENCE_S:
            time.sleep(STEP_S)  # until TensorFlow's import captures descriptor 2
            waited += STEP_S
        captured_since.append(datetime.now().astimezone().timestamp())
        assert server.poll() is None, "the server ended before TensorFlow's import"

        live = []  # summary lines written once the capture began, read while it went on
        while True:
            line, during_capture = lines.get(timeout=PATIENCE_S)
            if not line:
                break
            document = orjson.loads(line)
            written = datetime.fromisoformat(document["time"]).timestamp()
            if document.get("event") == "summary" and written > captured_since[0]:
                if not during_capture:
                    break  # the capture is over: what was held back has come out
                live.append(document)
                if len(live) >= 3:
                    break
        assert live, (
            "the server's log lines written while TensorFlow imported were held back until the "
            "import ended (and are lost if the process dies meanwhile)"
        )
    finally:
        server.stdin.close()
        server.wait(timeout=PATIENCE_S)
        if reader.is_alive():
            reader.join(timeout=PATIENCE_S)
        server.stderr.close()
    assert server.returncode == 0
