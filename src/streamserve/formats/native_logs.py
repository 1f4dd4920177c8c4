"""The log lines a format's native library writes itself, brought into Python logging.

TensorFlow's C++ side writes its own lines to file descriptor 2 (absl and TSL logging), out of
reach of Python's ``logging``. Two things keep them under the Python logger of the library
(``tensorflow``), so that whatever configures logging (the CLI's ``--log-level``, or an
application embedding streamserve) decides what is shown:

* before the library loads, its environment variable for the minimum native level
  (``TF_CPP_MIN_LOG_LEVEL``) is derived from that logger's level, unless the user set it;
* while the library is imported, descriptor 2 is captured: the lines in the native log format
  (and absl's "before absl::InitializeLog()" notice) are logged at their own level to that
  logger, and every other line is written back to descriptor 2 unchanged, only delayed by the
  import (other threads may write meanwhile). TensorFlow 2.21 writes its oneDNN notice at import
  through absl, which no environment variable silences.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

# I0000 00:00:1795678607.984445    5139 port.cc:153] oneDNN custom operations are on. ...
_ABSL_LINE = re.compile(rb"^([IWEF])\d{4} [\d:.]+\s+\d+ ([^\s\]]+:\d+)\] ?(.*)$")
# 2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not ...
_TSL_LINE = re.compile(rb"^\d{4}-\d\d-\d\d [\d:.]+: ([IWEF]) ([^\s\]]+:\d+)\] ?(.*)$")
_ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called"
_LEVELS = {
    b"I": logging.INFO,
    b"W": logging.WARNING,
    b"E": logging.ERROR,
    b"F": logging.CRITICAL,
}


def native_min_level(logger: logging.Logger) -> str:
    """The TSL/absl minimum level (0 INFO, 1 WARNING, 2 ERROR) matching ``logger``'s. Errors
    are never hidden: a native error says why a model fails."""
    if logger.isEnabledFor(logging.INFO):
        return "0"
    if logger.isEnabledFor(logging.WARNING):
        return "1"
    return "2"


@contextmanager
def native_logs_to(logger_name: str, level_variable: str) -> Iterator[None]:
    """Runs the block (a native library's import) with its log lines sent to ``logger_name``
    (see the module). ``level_variable`` is set from the logger's level if the user did not set
    it."""
    logger = logging.getLogger(logger_name)
    os.environ.setdefault(level_variable, native_min_level(logger))
    _flush_stderr()
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            _replay(captured.read(), logger)


def _replay(output: bytes, logger: logging.Logger) -> None:
    passed_on: list[bytes] = []
    for line in output.splitlines(keepends=True):
        text = line.rstrip(b"\r\n")
        match = _ABSL_LINE.match(text) or _TSL_LINE.match(text)
        if match is not None:
            severity, source, message = match.groups()
            logger.log(
                _LEVELS[severity],
                "%s",
                message.decode("utf-8", "replace"),
                extra={"native_source": source.decode("utf-8", "replace")},
            )
        elif text.startswith(_ABSL_PREAMBLE):
            logger.debug("%s", text.decode("utf-8", "replace"))
        else:
            passed_on.append(line)
    pending = memoryview(b"".join(passed_on))
    while pending:
        pending = pending[os.write(2, pending) :]


def _flush_stderr() -> None:
    if sys.stderr is not None:
        sys.stderr.flush()
