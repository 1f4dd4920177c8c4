"""The hypothesis profile of the fuzz targets: no deadline (first calls import libraries), a
random seed per run, failures kept in ``.hypothesis/`` and replayed first next time."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

ROOT = Path(__file__).resolve().parents[2]

settings.register_profile(
    "streamserve-fuzz",
    deadline=None,
    derandomize=False,
    database=DirectoryBasedExampleDatabase(ROOT / ".hypothesis" / "examples"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile("streamserve-fuzz")
