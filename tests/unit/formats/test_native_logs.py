"""A native library's own log lines, written to file descriptor 2 while it is imported, join
its Python logger at their level; every other line written meanwhile reaches stderr unchanged."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest

from streamserve.formats.native_logs import native_logs_to

ONEDNN = (
    b"I0000 00:00:1795678607.984445    5139 port.cc:153] oneDNN custom operations are on. "
    b"You may see slightly different numerical results"
)
PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
TSL_ERROR = b"2025-09-17 14:44:05.176998: E external/xla/cuda_fft.cc:467] Unable to register cuFFT"


def test_native_lines_become_records_of_the_library_logger(
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STREAMSERVE_TEST_NATIVE_LEVEL", raising=False)
    caplog.set_level(logging.DEBUG, logger="streamserve-test-native")
    with native_logs_to("streamserve-test-native", "STREAMSERVE_TEST_NATIVE_LEVEL"):
        os.write(2, b"\n".join([PREAMBLE, ONEDNN, b"a line of someone else", TSL_ERROR]) + b"\n")

    records = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert records == [
        (logging.DEBUG, PREAMBLE.decode()),
        (logging.INFO, ONEDNN.split(b"] ", 1)[1].decode()),
        (logging.ERROR, "Unable to register cuFFT"),
    ]
    assert caplog.records[1].native_source == "port.cc:153"
    assert capfd.readouterr().err == "a line of someone else\n"
    assert os.environ["STREAMSERVE_TEST_NATIVE_LEVEL"] == "0"  # the logger shows INFO


@pytest.mark.parametrize(
    ("level", "native"), [(logging.INFO, "0"), (logging.WARNING, "1"), (logging.ERROR, "2")]
)
def test_the_native_minimum_level_follows_the_logger_unless_the_user_set_it(
    level: int, native: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = logging.getLogger("streamserve-test-native-level")
    logger.setLevel(level)
    try:
        monkeypatch.delenv("STREAMSERVE_TEST_NATIVE_LEVEL", raising=False)
        with native_logs_to(logger.name, "STREAMSERVE_TEST_NATIVE_LEVEL"):
            pass
        assert os.environ["STREAMSERVE_TEST_NATIVE_LEVEL"] == native

        monkeypatch.setenv("STREAMSERVE_TEST_NATIVE_LEVEL", "3")
        with native_logs_to(logger.name, "STREAMSERVE_TEST_NATIVE_LEVEL"):
            pass
        assert os.environ["STREAMSERVE_TEST_NATIVE_LEVEL"] == "3"
    finally:
        logger.setLevel(logging.NOTSET)


CPU_GUARD = (
    b"2025-09-17 14:44:05.157831: I tensorflow/core/platform/cpu_feature_guard.cc:210] This "
    b"TensorFlow binary is optimized to use available CPU instructions in performance-critical "
    b"operations.\nTo enable the following instructions: AVX2 FMA, in other operations, rebuild "
    b"TensorFlow with the appropriate compiler flags.\n"
)
FATAL = b"F0000 00:00:1795678607.984445    5139 cpu_info.cc:12] The CPU lacks AVX: aborting\n"
PATIENCE_S = 60.0  # only separates "never" from "eventually"


def _stderr_until(capfd: pytest.CaptureFixture[str], *wanted: str) -> str:
    """What reached stderr, once it holds every one of ``wanted`` (or the patience ran out)."""
    seen = ""
    deadline = time.monotonic() + PATIENCE_S
    while not all(text in seen for text in wanted) and time.monotonic() < deadline:
        seen += capfd.readouterr().err
        time.sleep(0.01)
    return seen


def test_a_native_message_of_two_lines_is_one_record(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # TensorFlow's CPU notice (at DEBUG, shown) has a second line: with JSON logs, it was a line
    # of plain text among them.
    caplog.set_level(logging.DEBUG, logger="streamserve-test-native")
    with native_logs_to("streamserve-test-native", "STREAMSERVE_TEST_NATIVE_LEVEL"):
        os.write(2, CPU_GUARD)
    [record] = caplog.records
    assert record.getMessage().endswith("rebuild TensorFlow with the appropriate compiler flags.")
    assert capfd.readouterr().err == ""


def test_other_lines_and_a_fatal_native_line_reach_stderr_during_the_import(
    capfd: pytest.CaptureFixture[str],
) -> None:
    # Held back until the import ended, they were lost when the process died during it (a
    # fatal native line is the library's last word before it aborts the process).
    with native_logs_to("streamserve-test-native", "STREAMSERVE_TEST_NATIVE_LEVEL"):
        os.write(2, b"another thread's log line\n" + FATAL)
        during = _stderr_until(capfd, "another thread's log line", "The CPU lacks AVX")
    assert "another thread's log line\n" in during, "held back while the library imported"
    assert FATAL.decode() in during, "a fatal native line held back: lost when the process aborts"


def test_a_child_started_during_the_import_keeps_its_stderr(
    capfd: pytest.CaptureFixture[str],
) -> None:
    # A process started meanwhile (another model's loader, a plug-in's helper) inherits
    # descriptor 2: what it writes after the import must still reach stderr, and the import
    # must not wait for it.
    script = "import sys; sys.stdin.read(); sys.stderr.write('the child speaks late\\n')"
    with native_logs_to("streamserve-test-native", "STREAMSERVE_TEST_NATIVE_LEVEL"):
        child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE)
    assert child.stdin is not None
    child.stdin.close()
    assert child.wait(timeout=PATIENCE_S) == 0
    assert "the child speaks late" in _stderr_until(capfd, "the child speaks late")


def test_what_was_said_during_an_import_that_never_ends_reaches_stderr_at_exit() -> None:
    # A hung import (the loader leaves it behind after its time limit) never leaves the block:
    # the process's lines written meanwhile, and the library's, still come out when it ends.
    script = f"""
import logging, os, sys, threading
from streamserve.formats.native_logs import native_logs_to
logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
capturing = threading.Event()
def hung_import():
    with native_logs_to("hung-library", "STREAMSERVE_TEST_NATIVE_LEVEL"):
        os.write(2, {ONEDNN!r} + b"\\n")
        capturing.set()
        threading.Event().wait()
threading.Thread(target=hung_import, daemon=True).start()
capturing.wait()
logging.getLogger("server").info("the last words of the server")
sys.exit(3)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=PATIENCE_S, check=False
    )
    assert done.returncode == 3
    err = done.stderr.decode()
    assert "server INFO the last words of the server" in err, err
    assert "hung-library INFO oneDNN custom operations are on." in err, err


def test_native_lines_still_in_the_pipe_when_the_import_ends_are_records(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="streamserve-test-native")
    with native_logs_to("streamserve-test-native", "STREAMSERVE_TEST_NATIVE_LEVEL"):
        os.write(2, (ONEDNN + b"\n") * 900 + TSL_ERROR)  # the last one unended
    assert len(caplog.records) == 901
    assert caplog.records[-1].getMessage() == "Unable to register cuFFT"
    assert capfd.readouterr().err == ""
