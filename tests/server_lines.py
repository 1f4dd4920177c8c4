"""Reading a streamserve process's stderr in tests: the log lines that come before the one a test
waits for (models caught up, warnings, ...) are skipped, whatever their order."""

from __future__ import annotations

import re
from typing import IO


def wait_for_line(stream: IO[bytes], pattern: str) -> re.Match[str]:
    """The match of ``pattern`` in the first line of ``stream`` that has one; fails, showing
    what was read, if the stream ends first."""
    read = ""
    while line := stream.readline().decode():
        read += line
        match = re.search(pattern, line)
        if match is not None:
            return match
    raise AssertionError(f"no line matches {pattern!r} before the end of stderr:\n{read}")
