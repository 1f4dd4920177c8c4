"""Model checks in a short-lived child process, run once per distinct model.

Some libraries crash their whole process on malformed models — XGBoost 3.2 segfaults on
out-of-range tree indices, LightGBM 4.7 aborts while parsing trees — and no exception handler can
catch that. Their formats first load the model in a child process and load it here only if that
succeeds. A check costs a child process (half a second of CPU, most of it the library's import),
so the bytes that passed are remembered: in memory (the last ``capacity`` digests; an evicted
model is made again from the same bytes) and, with an artifact cache, on disk for every process
sharing it, for the same check and version of the library (:meth:`ChildCheck.fingerprint`).
"""

from __future__ import annotations

import hashlib
import importlib
import subprocess
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass

from streamserve.errors import ModelLoadError
from streamserve.formats.cache import ArtifactCache, bytes_digest

REMEMBERED_PASSES = 10_000  # hex digests: about 1.8 MB when full
CHECK_TIMEOUT_S = 300.0
# The first line of a check's script: XGBoost and LightGBM import scikit-learn and pandas when
# installed, for their estimator and data-frame interfaces, which a check never uses (it parses
# a model and scores a NumPy array); marked missing, they are not imported, and a check's child
# process takes 0.4 s of CPU instead of 1.7 to 2 s.
WITHOUT_OPTIONAL_IMPORTS = "import sys; sys.modules.update(dict.fromkeys(('sklearn', 'pandas')))\n"

# For a child check: raises unless every split of every tree in a model's JSON form names a
# feature the model has. Tree libraries index arrays with these numbers unchecked: a model
# whose trees name feature 10**9 loads, and crashes the process on the first row reaching it.
FEATURE_INDEX_CHECK = """
def check_feature_indices(document, key, width):
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            for name, value in item.items():
                if name != key:
                    stack.append(value)
                    continue
                for index in value if isinstance(value, list) else [value]:
                    if type(index) is not int or not 0 <= index < width:
                        sys.exit(f"Error: a tree splits on feature {index!r} of {width}")
"""


@dataclass(frozen=True)
class ChildCheck:
    """A Python ``script`` that reads a model from stdin and exits 0 if the library takes it.

    ``library`` and ``verb`` name it in errors ("XGBoost cannot load it"); ``marker`` picks the
    line of the child's stderr that says why (the last one containing it, else the last line).
    ``module``: the library's module, whose version a remembered pass holds for.
    """

    name: str
    script: str
    library: str
    verb: str
    marker: str
    module: str

    def fingerprint(self) -> str:
        """What a pass holds for: this check's script and the library's version (another
        version may crash on a model this one takes, and another script checks otherwise)."""
        version = str(getattr(importlib.import_module(self.module), "__version__", "unknown"))
        text = f"{self.script}\0{self.module}\0{version}"
        return f"{self.name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"

    def run(self, data: bytes, where: str) -> None:
        """Raises :class:`ModelLoadError` unless a child process takes ``data``."""
        try:
            done = subprocess.run(
                [sys.executable, "-c", self.script],
                input=data,
                capture_output=True,
                timeout=CHECK_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise ModelLoadError(
                f"{where}: checking the model in a child process failed: {err}"
            ) from err
        if done.returncode != 0:
            lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
            detail = next((line for line in reversed(lines) if self.marker in line), None)
            detail = (detail or (lines[-1] if lines else "no output")).strip()
            how = "crashed" if done.returncode < 0 else "failed"
            raise ModelLoadError(
                f"{where}: {self.library} cannot {self.verb} it (the check {how}: {detail})"
            )


class CheckedOnce:
    """Runs a :class:`ChildCheck` once per distinct model bytes, safe between loader threads."""

    def __init__(
        self, check: ChildCheck, cache: ArtifactCache | None, capacity: int = REMEMBERED_PASSES
    ) -> None:
        self._check = check
        self._cache = cache
        self._capacity = capacity
        self._passed: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._cache_name: str | None = None  # the check's name in the cache: its fingerprint
        self._running: dict[str, threading.Event] = {}  # digests being checked, set when done

    def ensure(self, data: bytes, where: str) -> None:
        """Returns if ``data`` passed before (here or in the cache), else checks it now; a
        thread that finds the same bytes being checked waits for that check (the same model on
        many keys is checked once)."""
        digest = bytes_digest(data)
        while True:
            with self._lock:
                if digest in self._passed:
                    self._passed.move_to_end(digest)  # the models in use stay remembered
                    return
                running = self._running.get(digest)
                if running is None:
                    self._running[digest] = threading.Event()
                    break
            running.wait()  # then passed, or failed: checked again here, for this caller's error
        try:
            self._check_now(data, digest, where)
        finally:
            with self._lock:
                self._running.pop(digest).set()

    def _check_now(self, data: bytes, digest: str, where: str) -> None:
        cache = self._cache
        if cache is None:
            self._check.run(data, where)
        else:
            if self._cache_name is None:
                self._cache_name = self._check.fingerprint()
            if not cache.has_passed(self._cache_name, digest):
                self._check.run(data, where)
                cache.record_pass(self._cache_name, digest)
        with self._lock:
            self._passed[digest] = None
            while len(self._passed) > self._capacity:
                self._passed.popitem(last=False)
