"""Options the ``streamserve`` command cannot use are refused at once with a message saying
which and why: never a thread dying with a traceback, a demo that hangs deaf to Ctrl-C, or a
port number taken modulo 65536; and a failure nobody foresaw is still a log line (a JSON object
with ``--log-format json``). Run as a user runs it: a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest

STREAMSERVE = [sys.executable, "-m", "streamserve"]
USER_ENV = {name: value for name, value in os.environ.items() if not name.startswith("TF_")}
PATIENCE_S = 180.0  # only separates "hangs" from "answers"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            [*STREAMSERVE, *args],
            capture_output=True,
            env=USER_ENV,
            cwd=cwd,
            timeout=PATIENCE_S,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"streamserve {' '.join(args)} hung: {(err.stderr or b'')[-2000:]!r}")


@pytest.mark.parametrize(
    "options", [["--rate", "0"], ["--rate", "-5"], ["--rate", "nan"], ["--seconds-per-model", "-1"]]
)
def test_the_demo_refuses_rates_it_cannot_stream_at(options: list[str]) -> None:
    # --rate 0 killed the records thread (a division by zero) and the demo then waited for
    # records forever, ignoring Ctrl-C and SIGTERM.
    done = run("demo", *options)
    err = done.stderr.decode()
    assert done.returncode == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert f"argument {options[0]}" in err, err


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_an_http_port_out_of_range_is_refused(command: str, tmp_path: Path) -> None:
    # serve --http-port 99999 got past the settings' own check (0 to 65535) and failed in the
    # server's thread, a traceback and a misleading "is the port in use?".
    done = run(command, "--http-port", "99999", cwd=tmp_path)
    err = done.stderr.decode()
    assert done.returncode == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert "99999 is not a port" in err, err


def test_a_grpc_port_out_of_range_is_not_bound_modulo_65536(tmp_path: Path) -> None:
    done = run(
        *("serve", "--grpc-port", "70000", "--key", "wine", "--data", os.devnull),
        *("--log-format", "json"),
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr.decode()[-2000:]
    [failed] = [orjson.loads(line) for line in done.stderr.splitlines()]
    assert failed["event"] == "failed"
    assert "api.grpc_port" in failed["message"]


def test_an_unforeseen_failure_is_a_json_log_line() -> None:
    # A URL without a scheme made urllib raise what status did not foresee: a traceback of
    # plain text among JSON lines.
    done = run("status", "--url", "not-a-url", "--log-format", "json")
    assert done.returncode != 0
    lines = [orjson.loads(line) for line in done.stderr.splitlines()]
    assert lines, done.stdout.decode()
    assert lines[-1]["event"] == "failed"


def test_an_exception_no_thread_caught_is_a_json_log_line(tmp_path: Path) -> None:
    script = (
        "import threading, sys\n"
        "from streamserve.cli import main\n"
        "main(['keygen', sys.argv[1], '--log-format', 'json', '--log-level', 'info'])\n"
        "def fail(): raise RuntimeError('a defect in a thread')\n"
        "thread = threading.Thread(target=fail, name='worker'); thread.start(); thread.join()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "signing.pem")],
        capture_output=True,
        env=USER_ENV,
        timeout=PATIENCE_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    [failure] = [orjson.loads(line) for line in done.stderr.splitlines()]
    assert failure["event"] == "thread_failed", failure
    assert failure["thread_name"] == "worker"
    assert "RuntimeError: a defect in a thread" in failure["exc_info"]
    assert threading.current_thread().name == "MainThread"  # this process's hook untouched
