"""Peers of streamserve, each written as its own docs recommend, scoring the same records with
the same models on the same broker (``python -m benchmarks --only peers``; docs/benchmarks.md)."""
