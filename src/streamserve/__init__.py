"""streamserve: serve machine-learning models on streams."""

__version__ = "0.1.0"
