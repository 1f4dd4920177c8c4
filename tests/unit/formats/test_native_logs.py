"""A native library's own log lines, written to file descriptor 2 while it is imported, join
its Python logger at their level; every other line written meanwhile reaches stderr unchanged."""

from __future__ import annotations

import logging
import os

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
