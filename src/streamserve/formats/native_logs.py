"""The log lines a format's native library writes itself, brought into Python logging.

TensorFlow's C++ side writes its own lines to file descriptor 2 (absl and TSL logging), out of
reach of Python's ``logging``. Two things keep them under the Python logger of the library
(``tensorflow``), so that whatever configures logging (the CLI's ``--log-level``, or an
application embedding streamserve) decides what is shown:

* before the library loads, its environment variable for the minimum native level
  (``TF_CPP_MIN_LOG_LEVEL``) is derived from that logger's level, unless the user set it;
* while the library is imported, descriptor 2 is a pipe read by a thread of its own: the lines
  in the native log format (and absl's "before absl::InitializeLog()" notice) are logged at their
  own level to that logger once the import is over, and every other line is written on to the
  real stderr as it arrives. The process's other threads go on logging while the import runs
  (seconds), and what they write is not held back, to be lost if the process dies meanwhile or
  held for good if the import hangs; a native fatal line goes on at once too, as it is: the
  library aborts the process next. TensorFlow 2.21 writes its oneDNN notice at import through
  absl, which no environment variable silences.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import selectors
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# I0000 00:00:1795678607.984445    5139 port.cc:153] oneDNN custom operations are on. ...
_ABSL_LINE = re.compile(rb"^([IWEF])\d{4} [\d:.]+\s+\d+ ([^\s\]]+:\d+)\] ?(.*)$")
# 2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not ...
_TSL_LINE = re.compile(rb"^\d{4}-\d\d-\d\d [\d:.]+: ([IWEF]) ([^\s\]]+:\d+)\] ?(.*)$")
_ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called"
# Second lines of native messages written as two (cpu_feature_guard.cc's, at INFO): they join
# the line before them. Only known ones: any other line may be another thread's.
_CONTINUATIONS = (b"To enable the following instructions:",)
_LEVELS = {
    b"I": logging.INFO,
    b"W": logging.WARNING,
    b"E": logging.ERROR,
    b"F": logging.CRITICAL,
}
_READ_BYTES = 64 * 1024
MAX_PIPE_BYTES = 1024 * 1024  # Linux's default /proc/sys/fs/pipe-max-size: what a pipe can hold
# A library's start-up says a few dozen lines: past these, its lines are dropped (counted).
MAX_NATIVE_LINES = 1000
# A "line" that never ends is written on in pieces of this size.
MAX_LINE_BYTES = 64 * 1024


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
    try:
        os.fstat(2)
    except OSError:  # no stderr: nothing to keep the lines out of
        yield
        return
    _flush_stderr()
    capture = _Capture(logger)
    # A process that ends during the import (a hung import left behind by the loader's time
    # limit) still writes out what it said meanwhile: the block's end never comes.
    atexit.register(capture.end)
    try:
        yield
    finally:
        atexit.unregister(capture.end)
        capture.end()


class _Capture:
    """Descriptor 2 made the writer of a :class:`_NativeLines` pipe until :meth:`end`."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._lock = threading.Lock()
        self._saved, self._lines = os.dup(2), _NativeLines(os.dup(2))
        os.dup2(self._lines.write_end, 2)
        os.close(self._lines.write_end)  # descriptor 2 is the pipe's writer now
        self._ended = False

    def end(self) -> None:
        """Gives descriptor 2 back and logs the native lines (once)."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            _flush_stderr()
            os.dup2(self._saved, 2)  # the pipe's writer closes, unless a child inherited it
            os.close(self._saved)
            native, dropped = self._lines.finish()
        _log(native, dropped, self._logger)


class _NativeLines:
    """The reader of the pipe that stands in for descriptor 2, on a daemon thread: keeps the
    native lines for :func:`_log`, writes every other line on to the real stderr (``stderr``,
    a descriptor it owns) as it arrives. :meth:`finish` returns the native lines once the pipe
    holds nothing written before it was called; a child process that inherited the pipe is
    still read from, its lines written on, until it closes it."""

    def __init__(self, stderr: int) -> None:
        self.stderr = stderr
        self._pipe, self.write_end = os.pipe()
        self._wake, self._waker = os.pipe()
        os.set_blocking(self._pipe, False)
        self._native: list[bytes] = []
        self._dropped = 0
        self._partial = b""
        self._finishing = False
        self._drained = threading.Event()
        threading.Thread(target=self._run, name="native-log-lines", daemon=True).start()

    def finish(self) -> tuple[list[bytes], int]:
        """The native lines written while capturing, and how many more were dropped."""
        os.write(self._waker, b"\0")
        self._drained.wait()
        os.close(self._wake)
        os.close(self._waker)
        return self._native, self._dropped

    def _run(self) -> None:
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._pipe, selectors.EVENT_READ)
                selector.register(self._wake, selectors.EVENT_READ)
                at_end = False
                while not at_end:
                    for key, _ in selector.select():
                        if key.fd == self._pipe:
                            at_end = at_end or self._read() is False
                        elif not self._finishing:  # finish() was called
                            selector.unregister(self._wake)
                            at_end = self._drain()
                            self._sort(self._partial)  # a line left unended by its writer
                            self._partial = b""
                            self._finishing = True  # what comes now: a child's, passed on
                            self._drained.set()
        except OSError:
            pass  # stderr itself is gone: there is nowhere left to write to
        finally:
            self._drained.set()
            os.close(self._pipe)
            os.close(self.stderr)

    def _drain(self) -> bool:
        """Reads what was written before :meth:`finish`: no more than the pipe holds (a child
        that inherited it may write on); whether the pipe is at its end."""
        for _ in range(MAX_PIPE_BYTES // _READ_BYTES):
            read = self._read()
            if read is not True:
                return read is False
        return False

    def _read(self) -> bool | None:
        """Reads what the pipe holds: True if it read something, False at its end (no writer
        left), None if it held nothing for now."""
        try:
            chunk = os.read(self._pipe, _READ_BYTES)
        except BlockingIOError:
            return None
        if not chunk:
            self._sort(self._partial)  # a line left unended by its writer
            self._partial = b""
            return False
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            self._sort(line + b"\n")
        if len(self._partial) > MAX_LINE_BYTES:
            self._pass_on(self._partial)
            self._partial = b""
        return True

    def _sort(self, line: bytes) -> None:
        if not line:
            return
        text = line.rstrip(b"\r\n")
        match = _ABSL_LINE.match(text) or _TSL_LINE.match(text)
        native = match is not None or text.startswith(_ABSL_PREAMBLE)
        if not self._finishing and self._native and text.startswith(_CONTINUATIONS):
            self._native[-1] += b" " + text
        elif self._finishing or not native or (match is not None and match.group(1) == b"F"):
            self._pass_on(line)
        elif len(self._native) < MAX_NATIVE_LINES:
            self._native.append(text)
        else:
            self._dropped += 1

    def _pass_on(self, data: bytes) -> None:
        pending = memoryview(data)
        while pending:
            pending = pending[os.write(self.stderr, pending) :]


def _log(lines: list[bytes], dropped: int, logger: logging.Logger) -> None:
    for text in lines:
        match = _ABSL_LINE.match(text) or _TSL_LINE.match(text)
        if match is None:  # absl's notice
            logger.debug("%s", text.decode("utf-8", "replace"))
            continue
        severity, source, message = match.groups()
        logger.log(
            _LEVELS[severity],
            "%s",
            message.decode("utf-8", "replace"),
            extra={"native_source": source.decode("utf-8", "replace")},
        )
    if dropped:
        logger.warning("%d more native log lines dropped", dropped)


def _flush_stderr() -> None:
    if sys.stderr is not None:
        sys.stderr.flush()
