"""The local Kafka-protocol broker the Kafka scenarios run against (the tests' own launcher)."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from kafka_broker import TEST_CONSUMER_SETTINGS, Broker, running_broker  # noqa: E402

__all__ = ["TEST_CONSUMER_SETTINGS", "Broker", "running_broker"]
