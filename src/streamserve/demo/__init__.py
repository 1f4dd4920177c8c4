"""The wine demo: the original FLIP-23 example, embedded, with its own models and data."""
