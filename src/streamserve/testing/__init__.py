"""Pieces for tests of streamserve, of code built on it, and of outside model formats.

* :mod:`streamserve.testing.memory`: :func:`serve_records` (the embedded runtime over records in
  memory), :class:`GatedFactory` (a load that waits for the test), :class:`FunctionModel` and
  :class:`FunctionFactory` (a model from a Python function).
* :mod:`streamserve.testing.conformance`: :func:`check_factory`, the conformance suite that every
  model format passes; an outside format package runs it in its own tests (the example is in
  that module's docstring).

Importing this package imports no model library; a format imports its own when it loads.
"""

from streamserve.testing.conformance import (
    CONFORMANCE_CHECKS,
    ConformanceError,
    ConformanceReport,
    check_factory,
)
from streamserve.testing.memory import (
    FunctionFactory,
    FunctionModel,
    GatedFactory,
    ServedRun,
    records_from,
    serve_records,
)

__all__ = [
    "CONFORMANCE_CHECKS",
    "ConformanceError",
    "ConformanceReport",
    "FunctionFactory",
    "FunctionModel",
    "GatedFactory",
    "ServedRun",
    "check_factory",
    "records_from",
    "serve_records",
]
